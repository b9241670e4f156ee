//! Property tests of the invariants the trust boundary rests on:
//! - a normalised path is a fixed point of normalisation;
//! - a sanitised request carries no identity header the caller sent, only
//!   the one value meshguard sets (in a `HeaderMap`, and over a real mTLS
//!   connection with the caller's own spelling of every header);
//! - a SPIFFE ID prints back to exactly what was parsed;
//! - policy evaluation (with its source index) decides as a plain linear
//!   scan of the rules does.

mod support;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshguard::sidecar::headers::{strip_inbound, strip_outbound, PeerHeaders};
use meshguard::sidecar::identity::SpiffeId;
use meshguard::sidecar::pathnorm::normalize_path;
use meshguard::sidecar::policy::{Policy, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use support::*;

// ---------------------------------------------------------------- paths

/// Pieces that exercise every normalisation rule, plus any character.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("/".to_string()),
        1 => Just("//".to_string()),
        2 => Just(".".to_string()),
        2 => Just("..".to_string()),
        1 => Just(";".to_string()),
        1 => Just(";p=1".to_string()),
        1 => Just("?".to_string()),
        1 => Just("%".to_string()),
        3 => "%[0-9a-fA-F]{2}",
        1 => "%(2[eE]|2[fF]|5[cC]|00|3[bB]|7[eE]|41|61)",
        4 => "[a-zA-Z0-9_~.-]{1,4}",
        1 => "[!$&'()*+,=:@]",
        1 => "[ {}|^`\"<>#\\\\]",
        1 => any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn request_target() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(path_piece(), 0..20),
    )
        .prop_map(|(slash, pieces)| {
            let mut s = if slash {
                "/".to_string()
            } else {
                String::new()
            };
            s.extend(pieces);
            s
        })
}

proptest! {
    #![proptest_config(RunnerConfig::with_cases(2048))]

    #[test]
    fn a_normalised_path_is_a_fixed_point(raw in request_target()) {
        if let Ok(normal) = normalize_path(&raw) {
            let path = normal.as_path();
            let again = normalize_path(path).expect("the normal form is valid");
            prop_assert_eq!(again.as_path(), path);
            prop_assert!(!again.is_rewritten(), "{:?} is rewritten again", path);

            let target = normal.to_request_target();
            let reparsed = normalize_path(&target).expect("the forwarded target is valid");
            prop_assert_eq!(reparsed.as_path(), path);
            prop_assert_eq!(reparsed.query(), normal.query());
            prop_assert!(!reparsed.is_rewritten());

            let segments: Vec<&str> = path[1..].split('/').collect();
            for (i, segment) in segments.iter().enumerate() {
                prop_assert!(*segment != "." && *segment != "..", "{:?}", path);
                prop_assert!(!segment.is_empty() || i + 1 == segments.len(), "{:?}", path);
            }
        }
    }
}

// -------------------------------------------------------------- headers

const PEER: &str = "spiffe://cluster.local/ns/default/sa/client";
const OWN: &str = "spiffe://cluster.local/ns/default/sa/server";

/// Identity-claiming names as the headers module documents them.
fn is_identity(name: &str) -> bool {
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

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Lowercase header names: identity claims, hop-by-hop, framing, and
/// ordinary ones.
fn lower_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "x-meshguard-client-id",
            "x-forwarded-client-cert",
            "x-forwarded-for",
            "x-forwarded-proto",
            "forwarded",
            "l5d-client-id",
            "x-envoy-peer-metadata",
            "x-envoy-internal",
            "x-ssl-client-cert",
            "ssl-client-verify",
            "x-client-cert-chain",
            "x-amzn-mtls-clientcert",
            "client-cert",
            "x-real-ip",
            "true-client-ip",
        ]).prop_map(str::to_string),
        2 => (
            prop::sample::select(vec!["x-meshguard-", "x-forwarded-", "l5d-", "x-envoy-", "x-ssl-"]),
            "[a-z0-9-]{0,8}",
        ).prop_map(|(p, s)| format!("{p}{s}")),
        2 => prop::sample::select(HOP_BY_HOP.to_vec()).prop_map(str::to_string),
        1 => prop::sample::select(vec!["host", "content-length", "transfer-encoding"])
            .prop_map(str::to_string),
        3 => "x-[a-z0-9]{1,8}",
        1 => "[a-z][a-z0-9-]{0,10}",
    ]
}

/// A name as a caller may spell it: any mix of upper and lower case.
fn spelled_name() -> impl Strategy<Value = String> {
    (lower_name(), any::<u64>()).prop_map(|(name, mask)| {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

/// A header line's value: ordinary text, or a `Connection`-style list of
/// names (mixed case, odd whitespace, empty elements).
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}".prop_map(|v| v.trim().to_string()),
        prop::collection::vec(
            (
                spelled_name(),
                prop::sample::select(vec![",", ", ", " ,", ",,", " , "])
            ),
            1..4
        )
        .prop_map(|items| items
            .into_iter()
            .map(|(n, sep)| format!("{n}{sep}"))
            .collect()),
        Just("trailers".to_string()),
        Just("trailers, deflate;q=0.5".to_string()),
    ]
}

/// Caller header lines (duplicates likely), with one or more `Connection`
/// headers among them.
fn caller_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((spelled_name(), header_value()), 0..14)
}

fn header_map(lines: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What must hold of the headers that reach the app, or go to a peer.
fn check_sanitised(
    before: &HeaderMap,
    after: &HeaderMap,
    injected: Option<&PeerHeaders>,
) -> Result<(), TestCaseError> {
    let named = connection_tokens(before);
    for name in after.keys() {
        let n = name.as_str();
        let ours =
            injected.is_some() && (n == "x-meshguard-client-id" || n == "x-forwarded-client-cert");
        prop_assert!(
            !is_identity(n) || ours,
            "caller identity header {} survived",
            n
        );
        // CGI-style frameworks read `_` as `-`: no such name may pass.
        prop_assert!(!n.contains('_'), "underscored header {} survived", n);
        prop_assert!(
            !HOP_BY_HOP.contains(&n) || n == "te",
            "hop-by-hop {} survived",
            n
        );
        if named.iter().any(|t| t == n) {
            prop_assert!(
                ours || ["host", "content-length", "transfer-encoding", "te"].contains(&n),
                "{} is named by Connection but survived",
                n
            );
        }
    }
    if let Some(te) = after.get("te") {
        prop_assert_eq!(te, "trailers");
        prop_assert_eq!(after.get_all("te").iter().count(), 1);
    }
    if let Some(peer) = injected {
        let ids: Vec<_> = after.get_all("x-meshguard-client-id").iter().collect();
        prop_assert_eq!(ids, vec![peer.client_id()]);
        let xfcc: Vec<_> = after.get_all("x-forwarded-client-cert").iter().collect();
        prop_assert_eq!(xfcc, vec![peer.xfcc()]);
    }
    Ok(())
}

fn peer_headers() -> PeerHeaders {
    PeerHeaders::new(
        &SpiffeId::parse(PEER).unwrap(),
        &SpiffeId::parse(OWN).unwrap(),
        &[7; 32],
    )
    .unwrap()
}

proptest! {
    #![proptest_config(RunnerConfig::with_cases(1024))]

    #[test]
    fn sanitised_requests_carry_no_caller_identity_header(lines in caller_headers()) {
        let before = header_map(&lines);
        let peer = peer_headers();

        let mut inbound = before.clone();
        strip_inbound(&mut inbound, &[]);
        peer.apply(&mut inbound);
        check_sanitised(&before, &inbound, Some(&peer))?;

        let mut outbound = before.clone();
        strip_outbound(&mut outbound);
        check_sanitised(&before, &outbound, None)?;
    }
}

/// The same property end to end: raw header lines, spelled as the caller
/// chose, sent over mTLS to a real sidecar; the app must see only the
/// identity meshguard authenticated.
#[test]
fn sanitised_requests_over_mtls_carry_no_caller_identity_header() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pki, app, sidecar) = rt.block_on(async {
        let pki = Pki::new();
        let app = RecordingApp::start().await;
        let sidecar = start_inbound(&pki, "server", app.addr).await;
        (pki, app, sidecar)
    });
    let cert = pki.svid(&id("default", "client"));
    let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
    let addr = sidecar.inbound.unwrap();

    // Framing headers would change what the request means; leave them out.
    let lines = caller_headers().prop_map(|lines| {
        lines
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n != "host"
                    && n != "content-length"
                    && n != "transfer-encoding"
                    && n != "connection"
                    && n != "upgrade"
            })
            .collect::<Vec<_>>()
    });
    let mut runner = TestRunner::new(RunnerConfig::with_cases(48));
    runner
        .run(&lines, |lines| {
            let mut raw = String::from("GET /p HTTP/1.1\r\nHost: server.test\r\n");
            for (name, value) in &lines {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("Connection: close\r\n\r\n");
            let before_count = app.count();
            let response = rt.block_on(tls_raw(addr, client.clone(), &raw));
            prop_assert_eq!(status_of(&response), 200, "{}", response);
            prop_assert_eq!(app.count(), before_count + 1);
            let seen = app.last();
            for (name, value) in &seen.headers {
                if is_identity(name) {
                    let expected = match name.as_str() {
                        "x-meshguard-client-id" => PEER.to_string(),
                        "x-forwarded-client-cert" => format!(
                            "By={OWN};Hash={};URI={PEER}",
                            meshguard::sidecar::tls::sha256(&cert.der)
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>()
                        ),
                        other => {
                            return Err(TestCaseError::fail(format!("{other} reached the app")))
                        }
                    };
                    prop_assert_eq!(value, &expected);
                }
            }
            prop_assert_eq!(seen.header("x-meshguard-client-id").len(), 1);
            prop_assert_eq!(seen.header("x-forwarded-client-cert").len(), 1);
            Ok(())
        })
        .unwrap();
    drop(sidecar);
}

// ---------------------------------------------------------- SPIFFE IDs

fn valid_spiffe_id() -> impl Strategy<Value = String> {
    (
        "[a-z0-9._-]{1,40}",
        prop::collection::vec("[a-zA-Z0-9._-]{1,12}", 0..6),
    )
        .prop_filter("no dot segments", |(_, segments)| {
            segments.iter().all(|s| s != "." && s != "..")
        })
        .prop_map(|(td, segments)| {
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            format!("spiffe://{td}{path}")
        })
}

proptest! {
    #![proptest_config(RunnerConfig::with_cases(1024))]

    #[test]
    fn a_valid_spiffe_id_round_trips(s in valid_spiffe_id()) {
        let id = SpiffeId::parse(&s).expect("built from the allowed alphabet");
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
        prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn any_accepted_spiffe_id_round_trips(s in prop_oneof![
        "spiffe://[ -~]{0,40}",
        "[sS][pP][iI][fF]{2}[eE]:/{0,3}[a-z.%:@]{0,10}(/[a-zA-Z0-9._%?#-]{0,6}){0,4}",
        any::<String>(),
    ]) {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert!(s.starts_with("spiffe://"));
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        }
    }
}

// --------------------------------------------------------------- policy

const SOURCES: &[&str] = &[
    "\"*\"",
    "spiffe://cluster.local/*",
    "spiffe://cluster.local/ns/shop/*",
    "spiffe://cluster.local/ns/shop/sa/orders",
    "spiffe://cluster.local/ns/default/sa/web",
    "spiffe://partner.org/*",
    "spiffe://partner.org/ns/shop/*",
];
const PORTS: &[u16] = &[8080, 9090, 15006];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT"];
const PATHS: &[&str] = &[
    "/*",
    "/api/*",
    "/api/admin",
    "/healthz",
    "/api",
    "/api/admin/*",
];

const PEERS: &[&str] = &[
    "spiffe://cluster.local/ns/shop/sa/orders",
    "spiffe://cluster.local/ns/shop/sa/cart",
    "spiffe://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local/ns/shop/sa/orders/v2",
    "spiffe://partner.org/ns/shop/sa/orders",
    "spiffe://evil.org/ns/shop/sa/orders",
];
const REQUEST_PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/admin",
    "/api/admin/x",
    "/apix",
    "/healthz",
    "/healthz/",
];
const REQUEST_METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "PURGE"];

#[derive(Debug, Clone)]
struct GenRule {
    deny: bool,
    from: Vec<usize>,
    ports: Option<Vec<usize>>,
    methods: Option<Vec<usize>>,
    paths: Option<Vec<usize>>,
}

fn indexes(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..len, 1..4)
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        any::<bool>(),
        indexes(SOURCES.len()),
        prop::option::of(indexes(PORTS.len())),
        prop::option::of(indexes(METHODS.len())),
        prop::option::of(indexes(PATHS.len())),
    )
        .prop_map(|(deny, from, ports, methods, paths)| GenRule {
            deny,
            from,
            ports,
            methods,
            paths,
        })
}

fn to_yaml(audit: bool, rules: &[GenRule]) -> String {
    let list = |idx: &[usize], names: &[&str]| {
        idx.iter().map(|&i| names[i]).collect::<Vec<_>>().join(", ")
    };
    let mut yaml = format!(
        "mode: {}\nrules:{}\n",
        if audit { "audit" } else { "enforce" },
        if rules.is_empty() { " []" } else { "" }
    );
    for (i, rule) in rules.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: r{i}\n    action: {}\n    from: [{}]\n",
            if rule.deny { "deny" } else { "allow" },
            list(&rule.from, SOURCES)
        ));
        if let Some(ports) = &rule.ports {
            let ports: Vec<String> = ports.iter().map(|&p| PORTS[p].to_string()).collect();
            yaml.push_str(&format!("    ports: [{}]\n", ports.join(", ")));
        }
        if let Some(methods) = &rule.methods {
            yaml.push_str(&format!("    methods: [{}]\n", list(methods, METHODS)));
        }
        if let Some(paths) = &rule.paths {
            let quoted: Vec<String> = paths.iter().map(|&p| format!("\"{}\"", PATHS[p])).collect();
            yaml.push_str(&format!("    paths: [{}]\n", quoted.join(", ")));
        }
    }
    yaml
}

/// Source patterns read from their text, independently of the policy code.
fn source_matches(pattern: &str, peer: &str) -> bool {
    let pattern = pattern.trim_matches('"');
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        None => pattern == peer,
        Some(base) => {
            let Some(rest) = peer.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
                return false;
            };
            if base.matches('/').count() == 2 {
                // spiffe://td/* : the whole trust domain
                true
            } else {
                // spiffe://td/ns/<ns>/* : exactly /ns/<ns>/sa/<sa>
                let parts: Vec<&str> = rest.split('/').collect();
                parts.len() == 2 && parts[0] == "sa"
            }
        }
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(dir) => path == dir || path.starts_with(&format!("{dir}/")),
        None => pattern == path,
    }
}

/// The documented semantics as a linear scan of the generated rules.
fn naive(
    audit: bool,
    rules: &[GenRule],
    peer: &str,
    port: u16,
    method: &str,
    path: &str,
) -> (&'static str, Option<String>) {
    let matches = |r: &GenRule| {
        r.from.iter().any(|&s| source_matches(SOURCES[s], peer))
            && r.ports
                .as_ref()
                .is_none_or(|p| p.iter().any(|&i| PORTS[i] == port))
            && r.methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|&i| METHODS[i] == method))
            && r.paths
                .as_ref()
                .is_none_or(|p| p.iter().any(|&i| path_matches(PATHS[i], path)))
    };
    let refused = if audit { "audit_would_deny" } else { "deny" };
    if let Some(i) = rules.iter().position(|r| r.deny && matches(r)) {
        return (refused, Some(format!("r{i}")));
    }
    if let Some(i) = rules.iter().position(|r| !r.deny && matches(r)) {
        return ("allow", Some(format!("r{i}")));
    }
    (refused, None)
}

proptest! {
    #![proptest_config(RunnerConfig::with_cases(512))]

    #[test]
    fn policy_evaluation_equals_a_linear_scan(
        audit in any::<bool>(),
        rules in prop::collection::vec(gen_rule(), 0..8),
    ) {
        let yaml = to_yaml(audit, &rules);
        let policy = Policy::from_yaml(&yaml, "prop.yaml")
            .unwrap_or_else(|e| panic!("generated policy refused: {e}\n{yaml}"));
        for peer in PEERS {
            let peer_id = SpiffeId::parse(peer).unwrap();
            for &port in PORTS.iter().chain(&[1]) {
                for method in REQUEST_METHODS {
                    let m = Method::from_bytes(method.as_bytes()).unwrap();
                    for path in REQUEST_PATHS {
                        let req = Request { peer: &peer_id, port, method: &m, path };
                        let decision = policy.evaluate(&req);
                        let got = (decision.label(), decision.rule_name().map(str::to_string));
                        let want = naive(audit, &rules, peer, port, method, path);
                        prop_assert_eq!(got, want, "{:?}\n{}", req, yaml);
                    }
                }
            }
        }
    }
}
