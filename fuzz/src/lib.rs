//! What the fuzz targets share: the fixed trust store of the X509-SVID
//! targets, and the independent oracles the targets compare meshguard with.
//!
//! The oracles are written from the documented rules, not from the code
//! under test, and as plainly as possible (linear scans, fixed lists), so
//! that a disagreement points at a real difference in behaviour.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, Method};
use meshguard::sidecar::identity::SpiffeId;
use meshguard::sidecar::policy::{Decision, Policy, Request, Rule, Source};
use meshguard::sidecar::tls::{CredentialStore, Svid, TrustBundles};

/// The instant the X509-SVID targets verify at: 2026-06-01T00:00:00Z, inside
/// the validity of the seed leaves (2026) and of the fixture roots
/// (2025-2125). A fixed instant keeps every run reproducible.
pub const FIXED_NOW: i64 = 1_780_272_000;

/// Separates the leaf from the intermediates in an `svid_verify` input.
pub const CHAIN_SEPARATOR: &[u8] = b"MGSEP";

const CLUSTER_BUNDLE: &[u8] = include_bytes!("../fixtures/bundle-cluster.local.pem");
const PARTNER_BUNDLE: &[u8] = include_bytes!("../fixtures/bundle-partner.org.pem");

/// A credential store trusting the fixture roots for `cluster.local` and
/// `partner.org`. Our own SVID is made fresh (it must be valid now to
/// load); the verifiers never look at it beyond its trust domain.
pub fn fixed_store() -> Arc<CredentialStore> {
    static STORE: OnceLock<Arc<CredentialStore>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("meshguard-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut bundles = TrustBundles::new();
            for (td, pem) in [
                ("cluster.local", CLUSTER_BUNDLE),
                ("partner.org", PARTNER_BUNDLE),
            ] {
                let path = dir.join(format!("{td}.pem"));
                std::fs::write(&path, pem).expect("write bundle");
                bundles.load_domain(td, &path).expect("fixture bundle");
            }
            let ca = meshguard::dev::certs::DevCa::generate("cluster.local", time_days(1))
                .expect("own CA");
            let own = ca
                .issue(&meshguard::dev::certs::LeafSpec::svid(
                    "spiffe://cluster.local/ns/fuzz/sa/server",
                    time_days(1),
                ))
                .expect("own SVID");
            let svid = Svid::from_pem(
                own.cert_pem.as_bytes(),
                own.key_pem.as_bytes(),
                "own.crt".as_ref(),
                "own.key".as_ref(),
                &meshguard::sidecar::tls::crypto_provider(),
            )
            .expect("own SVID loads");
            let _ = std::fs::remove_dir_all(&dir);
            CredentialStore::new(svid, bundles).expect("store")
        })
        .clone()
}

fn time_days(days: i64) -> ::time::Duration {
    ::time::Duration::days(days)
}

/// The documented policy semantics, as a linear scan: any matching deny
/// rule denies (the first one in file order is reported), else the first
/// matching allow rule allows, else default deny. Returns the decision's
/// label and the deciding rule's name.
pub fn naive_decision<'p>(
    policy: &'p Policy,
    req: &Request<'_>,
) -> (&'static str, Option<&'p str>) {
    let matches = |rule: &Rule| {
        let peer = Source::Id(req.peer.clone());
        rule.sources().iter().any(|s| s.covers(&peer))
            && rule.ports().is_none_or(|p| p.contains(&req.port))
            && rule.methods().is_none_or(|m| m.contains(req.method))
            && rule
                .paths()
                .is_none_or(|ps| ps.iter().any(|p| p.matches(req.path)))
    };
    let refused = match policy.mode() {
        meshguard::sidecar::policy::Mode::Enforce => "deny",
        meshguard::sidecar::policy::Mode::Audit => "audit_would_deny",
    };
    let rules = policy.rules();
    if let Some(rule) = rules.iter().find(|r| r.action().is_deny() && matches(r)) {
        return (refused, Some(rule.name()));
    }
    if let Some(rule) = rules.iter().find(|r| !r.action().is_deny() && matches(r)) {
        return ("allow", Some(rule.name()));
    }
    (refused, None)
}

/// Asserts that `policy.evaluate` agrees with [`naive_decision`].
pub fn check_against_naive(policy: &Policy, req: &Request<'_>) {
    let decision: Decision<'_> = policy.evaluate(req);
    let got = (decision.label(), decision.rule_name());
    let want = naive_decision(policy, req);
    assert_eq!(
        got, want,
        "policy evaluation differs from the linear scan for {req:?}"
    );
}

/// Peers, methods and paths worth asking a policy about: fixed ones plus
/// everything the policy itself names.
pub fn probe_peers(policy: &Policy) -> Vec<SpiffeId> {
    let mut peers: Vec<SpiffeId> = [
        "spiffe://cluster.local/ns/shop/sa/orders",
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://cluster.local/ns/shop/sa/orders/extra",
        "spiffe://cluster.local/x",
        "spiffe://partner.org/ns/shop/sa/orders",
    ]
    .iter()
    .map(|s| SpiffeId::parse(s).expect("fixed peer"))
    .collect();
    for rule in policy.rules() {
        for source in rule.sources() {
            let peer = match source {
                Source::Id(id) => Some(id.clone()),
                Source::Namespace {
                    trust_domain,
                    namespace,
                } => SpiffeId::from_k8s(trust_domain, namespace, "probe").ok(),
                Source::TrustDomain(td) => SpiffeId::parse(&format!("spiffe://{td}/probe")).ok(),
                Source::Any => None,
            };
            peers.extend(peer);
        }
    }
    peers.truncate(12);
    peers
}

pub fn probe_paths(policy: &Policy) -> Vec<String> {
    let mut paths: Vec<String> = ["/", "/api", "/api/x", "/apix", "/admin/", "/healthz"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for rule in policy.rules() {
        for pattern in rule.paths().unwrap_or_default() {
            let text = pattern.to_string();
            match text.strip_suffix("/*") {
                Some(dir) => {
                    paths.push(format!("{dir}/below"));
                    paths.push(if dir.is_empty() {
                        "/".into()
                    } else {
                        dir.into()
                    });
                    paths.push(format!("{dir}x"));
                }
                None => {
                    paths.push(format!("{text}/"));
                    paths.push(text);
                }
            }
        }
    }
    paths.truncate(16);
    paths
}

pub fn probe_methods() -> Vec<Method> {
    vec![
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::from_bytes(b"PURGE").expect("extension method"),
    ]
}

pub fn probe_ports(policy: &Policy) -> Vec<u16> {
    let mut ports = vec![1, 8080, 65535];
    for rule in policy.rules() {
        ports.extend(rule.ports().unwrap_or_default().iter().take(2));
    }
    ports.truncate(6);
    ports
}

/// Header names that claim an identity or a client address, by the rules
/// documented in `meshguard::sidecar::headers` (exact names, then prefixes).
pub fn is_identity_header(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "client-cert",
        "client-cert-chain",
        "x-client-verify",
        "x-client-dn",
        "x-arr-clientcert",
        // The SPIFFE-ID family other meshes and gateways use (README).
        "x-istio-attributes",
        "x-client-spiffe-id",
        "x-peer-spiffe-id",
        "x-source-spiffe-id",
    ];
    const PREFIXES: &[&str] = &[
        "x-meshguard-",
        "x-forwarded-",
        "l5d-",
        "x-envoy-",
        "x-ssl-",
        "ssl-client-",
        "x-client-cert",
        "x-amzn-mtls-",
        "x-kuma-",
        "x-spiffe-",
    ];
    let name = name.to_ascii_lowercase();
    NAMES.contains(&name.as_str()) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) as meshguard documents them.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    ];
    HOP.contains(&name.to_ascii_lowercase().as_str())
}

/// Names listed in the `Connection` headers of `headers`, lowercased.
pub fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// A header map from text, one `name: value` per line (`\n`-separated);
/// lines whose name or value `http` refuses are skipped, as hyper would
/// refuse them before meshguard ever saw them.
pub fn header_map(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}
