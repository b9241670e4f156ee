//! The `meshguard inject` command line: files or stdin in, stdout out; on
//! stderr one line per object that needs a look, then one summary line.

use super::annotations::is_quantity;
use super::{
    inject, uninject, DocReport, InjectError, InjectOptions, ProxyResources, SidecarMode,
    SkipReason,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Add the meshguard sidecar to Kubernetes manifests (or remove it).
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// YAML files to read, in order; `-` or none reads stdin.
    pub files: Vec<PathBuf>,
    /// Remove meshguard injections instead, restoring the original probes.
    #[arg(long)]
    pub uninject: bool,
    #[command(flatten)]
    pub injector: InjectorArgs,
}

/// What every injected pod gets by default (shared by `inject` and
/// `webhook`); per-pod annotations override it.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectorArgs {
    /// Sidecar image (also runs the capture init container).
    #[arg(long, default_value = super::DEFAULT_IMAGE)]
    pub image: String,
    /// Default sidecar mode; `meshguard.io/sidecar-mode` overrides it.
    #[arg(long, value_enum, default_value_t = SidecarMode::Native)]
    pub mode: SidecarMode,
    /// Container mode: enable the loopback shutdown endpoint by default.
    #[arg(long)]
    pub shutdown_endpoint: bool,
    /// UID the sidecar runs as (never captured; no app may use it).
    #[arg(long, default_value_t = crate::kube::contract::PROXY_UID)]
    pub proxy_uid: u32,
    /// Sidecar CPU request (`none` for no request).
    #[arg(long, default_value = "50m")]
    pub proxy_cpu_request: String,
    /// Sidecar memory request (`none` for no request).
    #[arg(long, default_value = "32Mi")]
    pub proxy_memory_request: String,
    /// Sidecar CPU limit (`none`, the default, for no limit).
    #[arg(long, default_value = "none")]
    pub proxy_cpu_limit: String,
    /// Sidecar memory limit (`none` for no limit).
    #[arg(long, default_value = "128Mi")]
    pub proxy_memory_limit: String,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum InjectCliError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Input { file: String, source: InjectError },
    #[error("writing the output: {0}")]
    Write(std::io::Error),
    #[error("{0}")]
    Usage(String),
}

impl InjectArgs {
    pub fn options(&self) -> Result<InjectOptions, InjectCliError> {
        self.injector.options()
    }
}

impl InjectorArgs {
    pub fn options(&self) -> Result<InjectOptions, InjectCliError> {
        if self.proxy_uid == 0 {
            return Err(InjectCliError::Usage(
                "--proxy-uid must not be 0: root's traffic would bypass capture".into(),
            ));
        }
        let quantity = |flag: &str, v: &str| match v {
            "none" => Ok(None),
            v if is_quantity(v) => Ok(Some(v.to_owned())),
            v => Err(InjectCliError::Usage(format!(
                "--{flag} {v:?}: expected a Kubernetes quantity (e.g. 100m, 64Mi) or `none`"
            ))),
        };
        Ok(InjectOptions {
            image: self.image.clone(),
            mode: self.mode,
            shutdown_endpoint: self.shutdown_endpoint,
            proxy_uid: self.proxy_uid,
            resources: ProxyResources {
                cpu_request: quantity("proxy-cpu-request", &self.proxy_cpu_request)?,
                memory_request: quantity("proxy-memory-request", &self.proxy_memory_request)?,
                cpu_limit: quantity("proxy-cpu-limit", &self.proxy_cpu_limit)?,
                memory_limit: quantity("proxy-memory-limit", &self.proxy_memory_limit)?,
            },
        })
    }
}

/// One line for stderr about one object.
pub fn describe(source: &str, r: &DocReport, uninjecting: bool) -> String {
    let mut what = format!("{source}: document {}", r.doc);
    if let Some(i) = r.item {
        what.push_str(&format!(" item {i}"));
    }
    let object = match (r.kind.as_str(), r.name.as_str()) {
        ("", _) => "(no kind)".to_owned(),
        (k, "") => k.to_owned(),
        (k, n) => format!("{k} {n}"),
    };
    let outcome = match (r.skipped, uninjecting) {
        (None, false) if r.changed => "injected".to_owned(),
        (None, false) => "injected (unchanged)".to_owned(),
        (None, true) => "uninjected".to_owned(),
        (Some(reason), _) if r.changed => format!("skipped: {reason} (removed the sidecar)"),
        (Some(reason), _) => format!("skipped: {reason}"),
    };
    let mut line = format!("{what} ({object}): {outcome}");
    for w in &r.warnings {
        line.push_str(&format!("\n{source}: document {}: warning: {w}", r.doc));
    }
    line
}

/// Runs the command. Everything is read and processed before anything is
/// written, so an error leaves stdout empty.
pub fn run(args: &InjectArgs) -> Result<(), InjectCliError> {
    let opts = args.options()?;
    let stdin_only = [PathBuf::from("-")];
    let files: &[PathBuf] = if args.files.is_empty() {
        &stdin_only
    } else {
        &args.files
    };
    let mut output = String::new();
    let mut lines = Vec::new();
    let mut reports = Vec::new();
    let mut dropped_comments = false;
    for file in files {
        let (label, text) = read_source(file)?;
        let processed = if args.uninject {
            uninject(&text)
        } else {
            inject(&text, &opts)
        }
        .map_err(|source| InjectCliError::Input {
            file: label.clone(),
            source,
        })?;
        // Files are joined into one stream; make sure a document boundary
        // separates them.
        if !output.is_empty() && !processed.yaml.starts_with("---") {
            output.push_str("---\n");
        }
        output.push_str(&processed.yaml);
        // Objects that are not workloads are passed through by design:
        // only the summary counts them, unless they carry a warning.
        lines.extend(
            processed
                .reports
                .iter()
                .filter(|r| {
                    r.skipped != Some(SkipReason::UnsupportedKind) || !r.warnings.is_empty()
                })
                .map(|r| describe(&label, r, args.uninject)),
        );
        dropped_comments |= processed.reports.iter().any(|r| r.changed) && has_comments(&text);
        reports.extend(processed.reports);
    }
    lines.push(summary(&reports, args.uninject));
    if dropped_comments {
        lines.push(COMMENTS_NOTE.to_owned());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(output.as_bytes())
        .and_then(|()| out.flush())
        .map_err(InjectCliError::Write)?;
    let mut err = std::io::stderr().lock();
    for l in lines {
        // The report is informational; a closed stderr must not fail the run.
        let _ = writeln!(err, "meshguard inject: {l}");
    }
    Ok(())
}

/// The text of one input (`-` is stdin) and the label reports name it by.
fn read_source(file: &Path) -> Result<(String, String), InjectCliError> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| InjectCliError::Read {
                file: "<stdin>".into(),
                source,
            })?;
        return Ok(("<stdin>".to_owned(), text));
    }
    let label = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| InjectCliError::Read {
        file: label.clone(),
        source,
    })?;
    Ok((label, text))
}

/// Said once when the input had comments and a document was rewritten.
const COMMENTS_NOTE: &str = "note: comments inside the documents that changed are not kept \
                             (comments above a document, and unchanged documents, are)";

/// Whether the text has a YAML comment (a line starting with `#`, or ` #`
/// after a value); a `#` inside a quoted string may count too, which only
/// adds the note.
fn has_comments(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with('#') || l.contains(" #"))
}

/// `injected 3, skipped 9 (unsupported-kind: 9)`: every object, counted.
pub fn summary(reports: &[DocReport], uninjecting: bool) -> String {
    let done = reports.iter().filter(|r| r.skipped.is_none()).count();
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for reason in reports.iter().filter_map(|r| r.skipped) {
        match reasons
            .iter_mut()
            .find(|(name, _)| *name == reason.as_str())
        {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason.as_str(), 1)),
        }
    }
    let verb = if uninjecting {
        "uninjected"
    } else {
        "injected"
    };
    let skipped: usize = reasons.iter().map(|(_, n)| n).sum();
    let mut line = format!("{verb} {done}, skipped {skipped}");
    if !reasons.is_empty() {
        let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        line.push_str(&format!(" ({})", list.join(", ")));
    }
    line
}
