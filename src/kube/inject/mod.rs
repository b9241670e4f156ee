//! `meshguard inject`: Kubernetes manifests in, the same manifests with the
//! meshguard sidecar out. Pure: text in, text and a report out.
//!
//! - Pods and the pod templates of Deployments, StatefulSets, DaemonSets,
//!   Jobs and CronJobs (and of those inside a `v1` `List`) get the capture
//!   init container, the sidecar (a native sidecar by default), volumes,
//!   rewritten probes and status annotations. Every other document passes
//!   through byte for byte.
//! - A document that already carries an injection is first restored from
//!   its status annotations and then injected again with the current
//!   annotations, so injecting twice gives the same bytes as injecting once
//!   and annotation changes take effect on re-injection.
//! - Every document left without a sidecar is reported with a named
//!   [`SkipReason`].
//!
//! The sidecar-side half of the probe rewrite is described in
//! [`probes`]; the capture rules in [`crate::iptables`]. [`webhook`]
//! applies the same injection at admission ([`inject_object`] is its
//! entry point, [`admission`] the AdmissionReview handling).

pub mod admission;
pub mod annotations;
mod cli;
mod docs;
mod emit;
pub mod jsonpatch;
mod pod;
pub mod probes;
pub mod sidecar;
pub mod webhook;
mod yaml;

pub use cli::{describe, run, InjectArgs, InjectCliError, InjectorArgs};

use crate::kube::contract::PROXY_UID;
use pod::PodError;
use serde_norway::{Mapping, Value};
use std::fmt;

/// Image used when none is given: this build's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/meshguard/meshguard:", env!("CARGO_PKG_VERSION"));

/// How the sidecar is added to the pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+):
    /// starts before the app, stops after it, lets Jobs complete.
    #[default]
    Native,
    /// A regular container, for clusters without native sidecars.
    Container,
}

/// Resource requests and limits of the sidecar container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    /// No CPU limit on purpose: CFS throttling of the proxy adds latency
    /// to every request of the app. Memory is bounded.
    fn default() -> Self {
        ProxyResources {
            cpu_request: Some("50m".into()),
            memory_request: Some("32Mi".into()),
            cpu_limit: None,
            memory_limit: Some("128Mi".into()),
        }
    }
}

/// Defaults for every pod; annotations override them per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    pub image: String,
    pub mode: SidecarMode,
    /// Container mode only: enable the loopback shutdown endpoint.
    pub shutdown_endpoint: bool,
    pub proxy_uid: u32,
    pub resources: ProxyResources,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: DEFAULT_IMAGE.into(),
            mode: SidecarMode::Native,
            shutdown_endpoint: false,
            proxy_uid: PROXY_UID,
            resources: ProxyResources::default(),
        }
    }
}

/// Why a document was left without a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a Pod or a workload with a pod template: passed through.
    UnsupportedKind,
    /// `meshguard.io/inject: disabled`.
    OptedOut,
    /// Injected already, and injecting again changes nothing.
    AlreadyInjected,
    /// `hostNetwork: true`: capture would rewrite the node's network.
    HostNetwork,
    /// Another mesh's containers are present.
    OtherMesh,
    /// A container or volume with one of our names that we did not add.
    NameConflict,
    /// The pod or an app container runs as the proxy UID, whose traffic
    /// is never captured.
    UidConflict,
    /// An app container uses one of the sidecar's ports.
    PortConflict,
    /// No config ConfigMap and no app port to forward inbound traffic to.
    NoConfig,
    /// (uninject) There is no meshguard injection to remove.
    NotInjected,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UnsupportedKind => "unsupported-kind",
            SkipReason::OptedOut => "opted-out",
            SkipReason::AlreadyInjected => "already-injected",
            SkipReason::HostNetwork => "host-network",
            SkipReason::OtherMesh => "other-mesh",
            SkipReason::NameConflict => "name-conflict",
            SkipReason::UidConflict => "uid-conflict",
            SkipReason::PortConflict => "port-conflict",
            SkipReason::NoConfig => "no-config",
            SkipReason::NotInjected => "not-injected",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == SkipReason::NoConfig {
            // The common case is a client-only workload (a Job, a worker):
            // it can be meshed, but only with a config that declares where
            // it may call (default deny has nothing else to go on).
            return write!(
                f,
                "{} (no container port and no {}: a client-only workload needs a config map \
                 declaring its outbound destinations)",
                self.as_str(),
                annotations::CONFIG_MAP
            );
        }
        f.write_str(self.as_str())
    }
}

/// What happened to one document (or one item of a `List`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocReport {
    /// 1-based number of the document in its input.
    pub doc: usize,
    /// 1-based item number inside a `List`.
    pub item: Option<usize>,
    /// Line where the document starts.
    pub line: usize,
    pub kind: String,
    /// `namespace/name`, or `name`.
    pub name: String,
    /// None: injected (or, for uninject, the injection was removed).
    pub skipped: Option<SkipReason>,
    /// Whether the output differs from the input.
    pub changed: bool,
    pub warnings: Vec<String>,
}

/// The output text and one report per object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub yaml: String,
    pub reports: Vec<DocReport>,
}

/// Why the input cannot be processed. Nothing is written then: a partial
/// output piped into `kubectl apply` would be worse than none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}, line {line}, column {column}: invalid YAML: {message}")]
    Yaml {
        doc: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("document {doc} (line {line}): {message}")]
    Malformed {
        doc: usize,
        line: usize,
        message: String,
    },
    #[error("document {doc}, line {line}: annotation {name}: {value:?}: {message}")]
    Annotation {
        doc: usize,
        line: usize,
        name: String,
        value: String,
        message: String,
    },
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Inject(&'a InjectOptions),
    Uninject,
}

/// Injects the sidecar into every supported object of a YAML stream.
pub fn inject(input: &str, opts: &InjectOptions) -> Result<Processed, InjectError> {
    process(input, Op::Inject(opts))
}

/// Removes meshguard injections, restoring the original probes.
pub fn uninject(input: &str) -> Result<Processed, InjectError> {
    process(input, Op::Uninject)
}

/// Injects the sidecar into one Kubernetes object given as a value (the
/// object of an admission request), exactly as [`inject`] does to a
/// document holding that object. Lists and YAML merge keys are not looked
/// at (an API object has neither). The report's `doc` and `line` are 1.
pub fn inject_object(value: &mut Value, opts: &InjectOptions) -> Result<DocReport, InjectError> {
    normalize_templates(value);
    let chunk = docs::Chunk {
        text: "",
        has_marker: false,
        first_line: 1,
    };
    object(value, Op::Inject(opts), &chunk, 1, None)
}

fn process(input: &str, op: Op<'_>) -> Result<Processed, InjectError> {
    let mut yaml = String::with_capacity(input.len() * 2);
    let mut reports = Vec::new();
    let mut doc = 0;
    for chunk in docs::split(input) {
        let value = docs::parse(&chunk, doc + 1)?;
        if value.is_null() {
            // Empty or comment-only: not a document anyone counts.
            yaml.push_str(&chunk.verbatim());
            continue;
        }
        doc += 1;
        let mut working = value;
        let malformed = |message: String| InjectError::Malformed {
            doc,
            line: chunk.content_line(),
            message,
        };
        working
            .apply_merge()
            .map_err(|e| malformed(format!("merge keys: {e}")))?;
        normalize_templates(&mut working);
        let before = working.clone();
        let mut doc_reports = Vec::new();
        match &mut working {
            Value::Mapping(m) if is_list(m) => {
                let items = m
                    .get_mut("items")
                    .and_then(Value::as_sequence_mut)
                    .ok_or_else(|| malformed("List: items: expected a sequence".into()))?;
                for (i, item) in items.iter_mut().enumerate() {
                    let r = object(item, op, &chunk, doc, Some(i + 1))?;
                    doc_reports.push(r);
                }
            }
            other => doc_reports.push(object(other, op, &chunk, doc, None)?),
        }
        let changed = working != before;
        if changed {
            if chunk.has_marker {
                yaml.push_str("---\n");
            }
            let comments = chunk.leading_comments();
            if !comments.is_empty() {
                yaml.push_str(comments);
                yaml.push('\n');
            }
            yaml.push_str(&emit::document(&working).map_err(malformed)?);
        } else {
            // Same content: keep the author's bytes, comments included.
            yaml.push_str(&chunk.verbatim());
        }
        reports.extend(doc_reports);
    }
    Ok(Processed { yaml, reports })
}

fn is_list(m: &Mapping) -> bool {
    yaml::get_str(m, "apiVersion") == Some("v1") && yaml::get_str(m, "kind") == Some("List")
}

/// Where a kind keeps its pod template.
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") if api_version == "v1" => Some(&[]),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            Some(&["spec", "template"])
        }
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Applies [`yaml::fix_octal_modes`] to pod templates only: a ConfigMap
/// value `mode: "0644"` is a string and must stay one.
fn normalize_templates(doc: &mut Value) {
    let fix_object = |obj: &mut Value| {
        let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
        let Some(path) = template_path(field("apiVersion"), field("kind")) else {
            return;
        };
        let mut node = Some(obj);
        for key in path {
            node = node.and_then(|n| n.get_mut(*key));
        }
        if let Some(template) = node {
            yaml::fix_octal_modes(template);
        }
    };
    match doc {
        Value::Mapping(m) if is_list(m) => {
            if let Some(items) = m.get_mut("items").and_then(Value::as_sequence_mut) {
                items.iter_mut().for_each(fix_object);
            }
        }
        other => fix_object(other),
    }
}

/// Handles one Kubernetes object (a document, or an item of a List).
fn object(
    value: &mut Value,
    op: Op<'_>,
    chunk: &docs::Chunk<'_>,
    doc: usize,
    item: Option<usize>,
) -> Result<DocReport, InjectError> {
    let before = value.clone();
    let field = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let mut report = DocReport {
        doc,
        item,
        line: chunk.content_line(),
        kind: kind.clone(),
        name: object_name(value),
        skipped: Some(SkipReason::UnsupportedKind),
        changed: false,
        warnings: Vec::new(),
    };
    let Some(path) = template_path(&api_version, &kind) else {
        return Ok(report);
    };
    if matches!(op, Op::Inject(_)) && !path.is_empty() {
        report.warnings.extend(misplaced_annotations(value, &kind));
    }
    let where_ = match item {
        Some(i) => format!("item {i}: "),
        None => String::new(),
    };
    let malformed = |message: String| InjectError::Malformed {
        doc,
        line: chunk.content_line(),
        message: format!("{where_}{kind}{message}"),
    };
    let template = template_at(value, path).map_err(malformed)?;
    let was_injected = apply(op, template, &kind, &mut report).map_err(|e| match e {
        PodError::Malformed(m) => malformed(format!(" pod template: {m}")),
        PodError::Annotation(b) => InjectError::Annotation {
            doc,
            line: chunk.line_of(&b.name),
            name: b.name,
            value: b.value,
            message: b.message,
        },
    })?;
    report.changed = *value != before;
    if matches!(op, Op::Inject(_)) && was_injected && !report.changed && report.skipped.is_none() {
        report.skipped = Some(SkipReason::AlreadyInjected);
    }
    Ok(report)
}

/// `namespace/name`, `name`, or empty.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (meta_str("namespace"), meta_str("name")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => String::new(),
    }
}

/// A warning when a workload's own metadata carries `meshguard.io/`
/// annotations: easily mistaken for the pod template's, and ignored.
fn misplaced_annotations(value: &Value, kind: &str) -> Option<String> {
    let top = value.get("metadata").and_then(|m| m.get("annotations"));
    let misplaced = top.and_then(Value::as_mapping).is_some_and(|a| {
        a.keys().any(|k| {
            k.as_str()
                .is_some_and(|k| k.starts_with(annotations::PREFIX))
        })
    });
    misplaced.then(|| {
        format!(
            "{kind} metadata has meshguard.io/ annotations; only the pod template's \
             (spec.template.metadata.annotations) are read"
        )
    })
}

/// The pod template at `path`. The error is the rest of a message that
/// starts with the object's kind.
fn template_at<'v>(value: &'v mut Value, path: &[&str]) -> Result<&'v mut Mapping, String> {
    let mut template = value;
    let mut walked = String::new();
    for key in path {
        walked.push_str(key);
        template = template
            .get_mut(*key)
            .filter(|v| v.is_mapping())
            .ok_or_else(|| format!(" {walked}: expected a mapping"))?;
        walked.push('.');
    }
    template
        .as_mapping_mut()
        .ok_or_else(|| ": expected a mapping".to_owned())
}

/// Runs `op` on the template and records its outcome in `report`.
/// Returns whether the template carried an injection before.
fn apply(
    op: Op<'_>,
    template: &mut Mapping,
    kind: &str,
    report: &mut DocReport,
) -> Result<bool, PodError> {
    match op {
        Op::Inject(opts) => pod::inject(template, kind, opts).map(|o| {
            report.warnings.extend(o.warnings);
            report.skipped = o.skipped;
            o.was_injected
        }),
        Op::Uninject => pod::uninject(template).map(|(was, warnings)| {
            report.warnings.extend(warnings);
            report.skipped = (!was).then_some(SkipReason::NotInjected);
            was
        }),
    }
}

#[cfg(test)]
mod tests;
