//! Injection into one pod template (a Pod, or the template of a workload):
//! undo any earlier injection, decide whether to inject, then add the
//! containers, volumes, probe rewrites and status annotations.

use super::annotations::{self, BadAnnotation, Settings, APP_PROBES, INJECTED};
use super::probes;
use super::sidecar::{self, ADMIN_PORT_NAME, INIT_NAME, SIDECAR_NAME, VOLUMES};
use super::yaml::{child_map, child_seq, drop_if_empty, get_str, s, seq_maps};
use super::{InjectOptions, SidecarMode, SkipReason};
use crate::kube::contract::SHUTDOWN_PORT;
use crate::kube::contract::{self, AppProbes};
use serde_norway::{Mapping, Value};

/// Why a pod template cannot be handled: a malformed object (message with
/// its path) or an unusable annotation.
#[derive(Debug)]
pub(super) enum PodError {
    Malformed(String),
    Annotation(BadAnnotation),
}

impl From<String> for PodError {
    fn from(m: String) -> Self {
        PodError::Malformed(m)
    }
}

/// What happened to a template.
#[derive(Debug)]
pub(super) struct PodOutcome {
    pub was_injected: bool,
    /// None: injected. Some: left without a sidecar, for this reason.
    pub skipped: Option<SkipReason>,
    pub warnings: Vec<String>,
}

/// Containers of other meshes: two proxies fighting over iptables and
/// ports is worse than no injection.
const OTHER_MESH_CONTAINERS: &[&str] = &[
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "linkerd-proxy",
    "linkerd-init",
    "linkerd-network-validator",
];

fn meta_annotations(template: &Mapping) -> Option<&Mapping> {
    template
        .get("metadata")?
        .as_mapping()?
        .get("annotations")?
        .as_mapping()
}

fn spec_of(template: &mut Mapping) -> Result<&mut Mapping, String> {
    template
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| "spec: expected a mapping".to_owned())
}

/// Removes what an earlier injection added. Returns whether there was one
/// (the `meshguard.io/injected` annotation), plus warnings.
pub(super) fn uninject(template: &mut Mapping) -> Result<(bool, Vec<String>), PodError> {
    let Some(ann) = meta_annotations(template) else {
        return Ok((false, Vec::new()));
    };
    if !ann.contains_key(INJECTED) {
        return Ok((false, Vec::new()));
    }
    let records: AppProbes = match ann.get(APP_PROBES) {
        None => AppProbes::new(),
        Some(v) => {
            let text = v.as_str().unwrap_or_default();
            contract::parse_app_probes(text).map_err(|e| {
                PodError::Annotation(BadAnnotation {
                    name: APP_PROBES.into(),
                    value: text.into(),
                    message: format!("cannot be read back ({e}); was it edited by hand?"),
                })
            })?
        }
    };
    let spec = spec_of(template)?;
    for list in ["initContainers", "containers"] {
        if let Some(Value::Sequence(items)) = spec.get_mut(list) {
            items.retain(|c| {
                !matches!(
                    c.get("name").and_then(Value::as_str),
                    Some(SIDECAR_NAME | INIT_NAME)
                )
            });
        }
    }
    remove_app_assertion_mounts(spec);
    if let Some(Value::Sequence(items)) = spec.get_mut("volumes") {
        items.retain(|v| {
            !v.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| VOLUMES.contains(&n))
        });
    }
    drop_if_empty(spec, "initContainers");
    drop_if_empty(spec, "volumes");
    let warnings = probes::restore(spec, &records);
    let meta = child_map(template, "metadata")?;
    let ann = child_map(meta, "annotations")?;
    ann.shift_remove(INJECTED);
    ann.shift_remove(APP_PROBES);
    drop_if_empty(meta, "annotations");
    drop_if_empty(template, "metadata");
    Ok((true, warnings))
}

/// Brings one template to its injected state (or, when skipped, to its
/// un-injected state). `kind` is the workload kind, for warnings.
pub(super) fn inject(
    template: &mut Mapping,
    kind: &str,
    opts: &InjectOptions,
) -> Result<PodOutcome, PodError> {
    let (was_injected, mut warnings) = uninject(template)?;
    let settings =
        annotations::settings(meta_annotations(template), opts).map_err(PodError::Annotation)?;
    let app_port = match target(template, &settings)? {
        Ok(app_port) => app_port,
        Err(reason) => {
            return Ok(PodOutcome {
                was_injected,
                skipped: Some(reason),
                warnings,
            })
        }
    };
    warnings.extend(risk_warnings(kind, &settings, app_port));
    let spec = spec_of(template)?;
    let records = rewrite_probes(spec, &settings)?;
    add_sidecar(spec, &settings, opts, app_port, !records.is_empty())?;
    annotate(template, &settings, &records)?;
    Ok(PodOutcome {
        was_injected,
        skipped: None,
        warnings,
    })
}

/// Where the sidecar forwards inbound traffic (None: where its config
/// says), or why the pod gets no sidecar.
fn target(
    template: &mut Mapping,
    settings: &Settings,
) -> Result<Result<Option<u16>, SkipReason>, String> {
    if settings.opted_out {
        return Ok(Err(SkipReason::OptedOut));
    }
    let spec = spec_of(template)?;
    if let Some(reason) = skip_reason(spec, settings)? {
        return Ok(Err(reason));
    }
    if settings.config_map.is_some() {
        return Ok(Ok(None));
    }
    Ok(settings
        .app_port
        .or(first_tcp_port(spec)?)
        .map(Some)
        .ok_or(SkipReason::NoConfig))
}

/// Injections that work but leave a gap the author likely did not intend.
fn risk_warnings(kind: &str, settings: &Settings, app_port: Option<u16>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(p) = app_port {
        if settings
            .capture
            .inbound_exclusions()
            .iter()
            .any(|r| r.contains(p))
        {
            warnings.push(format!(
                "app port {p} is excluded from inbound capture: peers reach the app \
                 directly, without mTLS or policy"
            ));
        }
    }
    if matches!(kind, "Job" | "CronJob")
        && settings.mode == SidecarMode::Container
        && !settings.shutdown_endpoint
    {
        warnings.push(format!(
            "{kind} with sidecar-mode container: the sidecar keeps running after the app \
             exits, so the Job never completes; use native mode or enable {} and have the \
             app POST to http://127.0.0.1:{SHUTDOWN_PORT}/shutdown",
            annotations::SHUTDOWN_ENDPOINT
        ));
    }
    warnings
}

/// Probes of app containers and of app native sidecars (init containers
/// with restartPolicy Always, the only init containers with probes).
fn rewrite_probes(spec: &mut Mapping, settings: &Settings) -> Result<AppProbes, String> {
    let mut records = AppProbes::new();
    for list in ["initContainers", "containers"] {
        if let Some(Value::Sequence(items)) = spec.get_mut(list) {
            for (i, c) in items.iter_mut().enumerate() {
                let c = c
                    .as_mapping_mut()
                    .ok_or_else(|| format!("spec.{list}[{i}]: expected a mapping"))?;
                probes::rewrite(
                    c,
                    &settings.capture.inbound_exclusions(),
                    settings.capture.probe_port,
                    &mut records,
                )
                .map_err(|m| format!("spec.{list}[{i}]: {m}"))?;
            }
        }
    }
    Ok(records)
}

fn add_sidecar(
    spec: &mut Mapping,
    settings: &Settings,
    opts: &InjectOptions,
    app_port: Option<u16>,
    has_app_probes: bool,
) -> Result<(), String> {
    let init = sidecar::init_container(settings, opts);
    let proxy = sidecar::sidecar_container(settings, opts, app_port, has_app_probes);
    let inits = child_seq(spec, "initContainers").map_err(in_spec)?;
    // Capture first, so that no other init container opens a connection
    // around the proxy; in native mode the sidecar right after it, so the
    // app's own init containers already run inside the mesh.
    inits.insert(0, init);
    match settings.mode {
        SidecarMode::Native => inits.insert(1, proxy),
        SidecarMode::Container => child_seq(spec, "containers").map_err(in_spec)?.push(proxy),
    }
    child_seq(spec, "volumes")
        .map_err(in_spec)?
        .extend(sidecar::volumes(settings));
    if settings.assertion.is_some() {
        add_app_assertion_mounts(spec)?;
    }
    Ok(())
}

/// Every app container (not ours, not the app's init containers, which
/// run before the sidecar signs anything) reads the assertion volume.
fn add_app_assertion_mounts(spec: &mut Mapping) -> Result<(), String> {
    let Some(Value::Sequence(containers)) = spec.get_mut("containers") else {
        return Ok(());
    };
    for c in containers.iter_mut() {
        let Value::Mapping(c) = c else { continue };
        if c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME) {
            continue;
        }
        child_seq(c, "volumeMounts")
            .map_err(|m| format!("spec.containers[].{m}"))?
            .push(sidecar::app_assertion_mount());
    }
    Ok(())
}

/// Undoes [`add_app_assertion_mounts`].
fn remove_app_assertion_mounts(spec: &mut Mapping) {
    let Some(Value::Sequence(containers)) = spec.get_mut("containers") else {
        return;
    };
    for c in containers.iter_mut() {
        let Value::Mapping(c) = c else { continue };
        if let Some(Value::Sequence(mounts)) = c.get_mut("volumeMounts") {
            let before = mounts.len();
            mounts.retain(|m| {
                m.get("name").and_then(Value::as_str) != Some(sidecar::ASSERTION_VOLUME)
            });
            // Only a list we emptied goes: an app's own `[]` stays.
            if mounts.len() < before {
                drop_if_empty(c, "volumeMounts");
            }
        }
    }
}

/// The status annotations uninject reads back.
fn annotate(
    template: &mut Mapping,
    settings: &Settings,
    records: &AppProbes,
) -> Result<(), String> {
    let meta = child_map(template, "metadata").map_err(|m| format!("template {m}"))?;
    let ann = child_map(meta, "annotations").map_err(|m| format!("metadata.{m}"))?;
    let mode = match settings.mode {
        SidecarMode::Native => "native",
        SidecarMode::Container => "container",
    };
    ann.insert(s(INJECTED), s(mode));
    if !records.is_empty() {
        ann.insert(s(APP_PROBES), s(&contract::to_json(records)?));
    }
    Ok(())
}

/// The checks that leave a pod without a sidecar, first match wins.
fn skip_reason(spec: &Mapping, settings: &Settings) -> Result<Option<SkipReason>, String> {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        // Capture rules would be written into the node's own namespace.
        return Ok(Some(SkipReason::HostNetwork));
    }
    let mut containers = seq_maps(spec, "containers").map_err(in_spec)?;
    if containers.is_empty() {
        return Err("spec.containers: a pod needs at least one container".into());
    }
    containers.extend(seq_maps(spec, "initContainers").map_err(in_spec)?);
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| get_str(c, "name"))
        .collect();
    let reason = if names.iter().any(|n| OTHER_MESH_CONTAINERS.contains(n)) {
        Some(SkipReason::OtherMesh)
    } else if has_our_names(spec, &names)? {
        Some(SkipReason::NameConflict)
    } else if runs_as_proxy(spec, &containers, settings.capture.proxy_uid) {
        Some(SkipReason::UidConflict)
    } else if uses_reserved_port(&containers, settings)? {
        Some(SkipReason::PortConflict)
    } else {
        None
    };
    Ok(reason)
}

/// Still present after undoing our own injection: someone else's.
fn has_our_names(spec: &Mapping, names: &[&str]) -> Result<bool, String> {
    let volumes = seq_maps(spec, "volumes").map_err(in_spec)?;
    Ok(names.iter().any(|n| *n == SIDECAR_NAME || *n == INIT_NAME)
        || volumes
            .iter()
            .any(|v| get_str(v, "name").is_some_and(|n| VOLUMES.contains(&n))))
}

/// An app running as the proxy UID would have its traffic skip capture.
fn runs_as_proxy(spec: &Mapping, containers: &[&Mapping], proxy_uid: u32) -> bool {
    let uid = u64::from(proxy_uid);
    let runs_as = |m: &Mapping| {
        m.get("securityContext")
            .and_then(|sc| sc.get("runAsUser"))
            .and_then(Value::as_u64)
            == Some(uid)
    };
    runs_as(spec) || containers.iter().any(|c| runs_as(c))
}

fn uses_reserved_port(containers: &[&Mapping], settings: &Settings) -> Result<bool, String> {
    let c = &settings.capture;
    let reserved = [
        c.inbound_port,
        c.outbound_port,
        c.admin_port,
        c.probe_port,
        SHUTDOWN_PORT,
    ];
    for container in containers {
        for p in seq_maps(container, "ports").map_err(|m| format!("ports: {m}"))? {
            let number = p.get("containerPort").and_then(Value::as_u64);
            if number.is_some_and(|n| reserved.iter().any(|r| u64::from(*r) == n))
                || get_str(p, "name") == Some(ADMIN_PORT_NAME)
            {
                return Ok(true);
            }
        }
    }
    Ok(settings.app_port.is_some_and(|p| reserved.contains(&p)))
}

/// Errors of `seq_maps`/`child_seq` name the key; this adds where it is.
fn in_spec(m: String) -> String {
    format!("spec.{m}")
}

/// The first TCP containerPort of the app containers, in order: where an
/// inbound-only sidecar without a config forwards to.
fn first_tcp_port(spec: &Mapping) -> Result<Option<u16>, String> {
    for c in seq_maps(spec, "containers").map_err(in_spec)? {
        for p in seq_maps(c, "ports").map_err(|m| format!("ports: {m}"))? {
            let tcp = matches!(get_str(p, "protocol"), None | Some("TCP"));
            let port = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0);
            if let (true, Some(port)) = (tcp, port) {
                return Ok(Some(port));
            }
        }
    }
    Ok(None)
}
