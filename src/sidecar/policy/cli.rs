//! `meshguard policy ...`: offline tools over a policy file. They print
//! their answer and return it as the exit status: 0 = allow / clean,
//! 1 = deny / findings, 2 = bad input.

use super::pattern::MethodName;
use super::{lint, Decision, MethodError, Policy, Request};
use crate::sidecar::identity::SpiffeId;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Decide one request as the sidecar would. Exit 0 = allow, 1 = deny, 2 = bad input.
    Check(CheckArgs),
    /// Report rules that can never match. Exit 0 = clean, 1 = findings, 2 = bad input.
    Lint(LintArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file (allow matrix) to decide with.
    #[arg(long)]
    policy: PathBuf,
    /// The caller's SPIFFE ID.
    #[arg(long)]
    from: String,
    /// The port the caller dialled (under iptables capture: the app's
    /// port; otherwise the inbound listener's).
    #[arg(long, default_value_t = 15006)]
    port: u16,
    /// The request method, as sent: uppercase, like a policy's `methods`
    /// (an extension method matches only rules without `methods`).
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request target as sent (normalised exactly as the proxy does).
    #[arg(long)]
    path: String,
}

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Policy file (allow matrix) to lint.
    #[arg(long)]
    policy: PathBuf,
    /// Trust domains this workload has bundles for (repeatable).
    #[arg(long = "trust-domain", default_value = "cluster.local")]
    trust_domains: Vec<String>,
}

/// Exit status: the request is allowed, or the policy is clean.
pub const EXIT_OK: u8 = 0;
/// Exit status: the request is denied, or the lint has findings.
pub const EXIT_NO: u8 = 1;
/// Exit status: the input could not be read or understood.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Runs the command; returns the exit status.
pub fn run(cmd: &PolicyCommand) -> u8 {
    let result = match cmd {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Lint(args) => run_lint(args),
    };
    result.unwrap_or_else(|msg| {
        eprintln!("meshguard: error: {msg}");
        EXIT_BAD_INPUT
    })
}

/// `Err` is a bad-input message.
fn check(args: &CheckArgs) -> Result<u8, String> {
    let policy = Policy::load(&args.policy).map_err(|e| e.to_string())?;
    let from = &args.from;
    let peer = from
        .parse::<SpiffeId>()
        .map_err(|e| format!("--from {from:?}: {e}"))?;
    let method = check_method(&args.method)?;
    let path = &args.path;
    let target = crate::sidecar::pathnorm::normalize_path(path)
        .map_err(|e| format!("--path {path:?}: {e} (the sidecar answers 400)"))?;
    // The policy's path profile, as the sidecar applies it before the rules.
    let profile = policy.boundary().path_profile;
    let matched = if profile.is_strict() {
        crate::sidecar::pathnorm::strict::check_strict(target.as_path(), profile.case_insensitive())
            .map_err(|e| {
                format!("--path {path:?}: {e} (the sidecar answers 400, strict profile)")
            })?
    } else {
        std::borrow::Cow::Borrowed(target.as_path())
    };
    let port = args.port;
    let decision = policy.evaluate(&Request {
        peer: &peer,
        port,
        method: &method,
        path: &matched,
    });
    let rule = match decision.rule() {
        Some(rule) => format!(
            "rule {:?} (line {})",
            rule.name(),
            rule.line().map_or("?".into(), |l| l.to_string())
        ),
        None => "no rule matched: default deny".to_owned(),
    };
    let verdict = match decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { .. } => "deny",
        Decision::AuditWouldDeny { .. } => {
            "deny (audit mode: the request would pass, logged as would-deny)"
        }
    };
    println!(
        "{verdict}: {method} {} from {peer} on port {port}; {rule}",
        target.as_path()
    );
    Ok(if matches!(decision, Decision::Allow { .. }) {
        EXIT_OK
    } else {
        EXIT_NO
    })
}

/// The method to decide for. A standard method in the wrong case is refused
/// by the rule policy files follow (it would silently match no `methods`
/// list); an extension method is a request the sidecar can see, so it is
/// decided.
fn check_method(method: &str) -> Result<http::Method, String> {
    if let Err(MethodError::Lowercase(upper)) = method.parse::<MethodName>() {
        return Err(format!(
            "--method {method:?}: {}",
            MethodError::Lowercase(upper)
        ));
    }
    http::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("--method {method:?} is not an HTTP method"))
}

/// `Err` is a bad-input message.
fn run_lint(args: &LintArgs) -> Result<u8, String> {
    let path = &args.policy;
    let policy = Policy::load(path).map_err(|e| e.to_string())?;
    let tds: Vec<&str> = args.trust_domains.iter().map(String::as_str).collect();
    let findings = lint(&policy, &tds);
    for f in &findings {
        println!("{}: {f}", path.display());
    }
    if findings.is_empty() {
        println!(
            "{}: {} rules, no findings",
            path.display(),
            policy.rules().len()
        );
        Ok(EXIT_OK)
    } else {
        Ok(EXIT_NO)
    }
}

#[cfg(test)]
mod tests;
