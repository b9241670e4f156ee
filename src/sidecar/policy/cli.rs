//! `meshguard policy ...`: offline tools over a policy file. They print
//! their answer and return it as the exit status: 0 = allow / clean,
//! 1 = deny / findings, 2 = bad input.

use super::pattern::MethodName;
use super::{lint, lint_jwt_providers, Decision, MethodError, Policy, Request};
use super::{TokenState, Tokens};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::jwt::Claims;
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
    /// A valid end-user token of a provider, as its verified claims:
    /// `PROVIDER=JSON` (e.g. `users={"iss":"https://id.example.com","sub":"u1"}`),
    /// repeatable. Without it the request carries no token, so a `jwt:`
    /// rule does not match and an allow rule needing one answers 401.
    #[arg(long = "token", value_name = "PROVIDER=JSON")]
    tokens: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Policy file (allow matrix) to lint.
    #[arg(long)]
    policy: PathBuf,
    /// Trust domains this workload has bundles for (repeatable).
    #[arg(long = "trust-domain", default_value = "cluster.local")]
    trust_domains: Vec<String>,
    /// The providers of `inbound.jwt` (repeatable); given, a rule naming any
    /// other provider is a finding.
    #[arg(long = "jwt-provider")]
    jwt_providers: Vec<String>,
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
    let tokens = GivenTokens::parse(&args.tokens)?;
    let req = Request {
        peer: &peer,
        port,
        method: &method,
        path: &matched,
    };
    let decision = policy.evaluate_with(&req, &tokens);
    let rule = match decision.rule() {
        Some(rule) => format!(
            "rule {:?} (line {})",
            rule.name(),
            rule.line().map_or("?".into(), |l| l.to_string())
        ),
        None => "no rule matched: default deny".to_owned(),
    };
    let challenge = match decision {
        Decision::Deny { .. } => policy.token_challenge(&req, &tokens),
        _ => None,
    };
    let verdict = match decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { .. } if challenge.is_some() => {
            "deny (401: an allow rule needs a valid end-user token)"
        }
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

/// The tokens `--token` says the request carries, taken as verified.
struct GivenTokens(Vec<(String, Claims)>);

impl GivenTokens {
    /// `Err` is a bad-input message.
    fn parse(args: &[String]) -> Result<GivenTokens, String> {
        let one = |arg: &String| {
            let (provider, json) = arg
                .split_once('=')
                .ok_or_else(|| format!("--token {arg:?}: expected PROVIDER=JSON"))?;
            let claims = Claims::from_json(json).map_err(|e| format!("--token {provider}: {e}"))?;
            Ok((provider.to_owned(), claims))
        };
        args.iter()
            .map(one)
            .collect::<Result<_, String>>()
            .map(GivenTokens)
    }
}

impl Tokens for GivenTokens {
    fn state(&self, provider: &str) -> TokenState<'_> {
        match self.0.iter().find(|(p, _)| p == provider) {
            Some((_, claims)) => TokenState::Valid(claims),
            None => TokenState::Missing,
        }
    }
}

/// `Err` is a bad-input message.
fn run_lint(args: &LintArgs) -> Result<u8, String> {
    let path = &args.policy;
    let policy = Policy::load(path).map_err(|e| e.to_string())?;
    let tds: Vec<&str> = args.trust_domains.iter().map(String::as_str).collect();
    let mut findings = lint(&policy, &tds);
    if !args.jwt_providers.is_empty() {
        let providers: Vec<&str> = args.jwt_providers.iter().map(String::as_str).collect();
        findings.extend(lint_jwt_providers(&policy, &providers));
    }
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
