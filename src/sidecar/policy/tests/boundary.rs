//! The boundary sections: limits, claim headers, path profile.

use super::{id, policy};
use crate::sidecar::policy::*;
use http::{HeaderMap, HeaderValue};

const RULES: &str = r#"
rules:
  - name: orders-read
    action: allow
    from: ["*"]
  - name: no-admin
    action: deny
    from: ["*"]
    paths: ["/admin/*"]
"#;

fn err(yaml: &str) -> String {
    match Policy::from_yaml(yaml, "p.yaml") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_limit_section_is_read_with_defaults() {
    let p = policy(&format!(
        "{RULES}limits:\n  - name: per-caller\n    rate: 2.5\n  - name: ns\n    key: namespace\n    from: [\"spiffe://cluster.local/ns/shop/*\"]\n    rules: [orders-read]\n    concurrency: 3\n    max_keys: 50\n"
    ));
    let limits = &p.boundary().limits;
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0].name(), "per-caller");
    assert_eq!(limits[0].key(), KeyBy::Id);
    assert_eq!(
        limits[0].rate(),
        Some(Rate {
            per_second: 2.5,
            burst: 3.0
        })
    );
    assert_eq!(limits[0].concurrency(), None);
    assert_eq!(limits[0].max_keys(), DEFAULT_MAX_KEYS);
    assert_eq!(limits[1].rate(), None);
    assert_eq!(limits[1].concurrency(), Some(3));
    assert_eq!(limits[1].max_keys(), 50);
    let shop = id("spiffe://cluster.local/ns/shop/sa/web");
    let other = id("spiffe://cluster.local/ns/edge/sa/gw");
    assert!(limits[1].applies(&shop, Some("orders-read")));
    assert!(
        !limits[1].applies(&shop, None),
        "rules: limits only those rules"
    );
    assert!(
        !limits[1].applies(&other, Some("orders-read")),
        "from: limits only those callers"
    );
    assert!(limits[0].applies(&other, None));
}

#[test]
fn limit_mistakes_are_refused_with_their_line() {
    for (section, wanted) in [
        ("  - name: a\n    rate: 0\n", "rate 0 must be"),
        ("  - name: a\n    rate: -1\n", "rate -1 must be"),
        (
            "  - name: a\n    burst: 0\n    rate: 1\n",
            "0 must be between 1",
        ),
        ("  - name: a\n    concurrency: 0\n", "0 must be between 1"),
        (
            "  - name: a\n    key: user\n    rate: 1\n",
            "unknown variant",
        ),
        (
            "  - name: a\n    rate: 1\n    colour: red\n",
            "unknown field",
        ),
    ] {
        let e = err(&format!("{RULES}limits:\n{section}"));
        assert!(e.contains(wanted), "{e}");
        assert!(e.starts_with("p.yaml:1"), "has a line: {e}");
    }
    for (section, wanted, line) in [
        ("  - name: a\n    key: id\n", "give `rate`", 11),
        (
            "  - name: a\n    rate: 1\n  - name: a\n    rate: 2\n",
            "already used",
            11,
        ),
        (
            "  - name: a\n    concurrency: 1\n    burst: 3\n",
            "`burst` needs a `rate`",
            11,
        ),
        (
            "  - name: a\n    rate: 1\n    rules: [nope]\n",
            "no rule is named \"nope\"",
            11,
        ),
        (
            "  - name: a\n    rate: 1\n    rules: [no-admin]\n",
            "is a deny rule",
            11,
        ),
        (
            "  - name: a\n    rate: 1\n    max_keys: 2000000\n",
            "above 1000000",
            11,
        ),
    ] {
        let e = err(&format!("{RULES}limits:\n{section}"));
        assert!(e.contains(wanted), "{e}");
        assert!(e.starts_with(&format!("p.yaml:{line}:")), "{e}");
    }
}

const CLAIMS: &str = r#"
claim_headers:
  on_untrusted: strip
  headers:
    - name: X-Authenticated-User-Id
      from: [spiffe://cluster.local/ns/edge/sa/gateway]
    - name: x-user-roles
      from: ["spiffe://cluster.local/ns/edge/*"]
      on_untrusted: deny
    - name: x-tenant
      from: ["spiffe://partner.org/*"]
"#;

/// Callers × claim headers: who may send what, and what happens otherwise.
#[test]
fn claim_headers_are_kept_only_from_the_callers_allowed_to_assert_them() {
    let p = policy(&format!("{RULES}{CLAIMS}"));
    let claims = &p.boundary().claims;
    let gateway = "spiffe://cluster.local/ns/edge/sa/gateway";
    let edge_other = "spiffe://cluster.local/ns/edge/sa/metrics";
    let shop = "spiffe://cluster.local/ns/shop/sa/orders";
    let partner = "spiffe://partner.org/billing";
    // (caller, header, expected): "keep", "strip" or "deny".
    let table = [
        (gateway, "x-authenticated-user-id", "keep"),
        (gateway, "x-user-roles", "keep"),
        (gateway, "x-tenant", "strip"),
        (edge_other, "x-authenticated-user-id", "strip"),
        (edge_other, "x-user-roles", "keep"),
        (edge_other, "x-tenant", "strip"),
        (shop, "x-authenticated-user-id", "strip"),
        (shop, "x-user-roles", "deny"),
        (shop, "x-tenant", "strip"),
        (partner, "x-authenticated-user-id", "strip"),
        (partner, "x-user-roles", "deny"),
        (partner, "x-tenant", "keep"),
        // A header the policy does not declare is not its business.
        (shop, "x-request-id", "keep"),
    ];
    for (caller, header, expected) in table {
        let mut headers = HeaderMap::new();
        headers.append(header, HeaderValue::from_static("alice"));
        headers.append(header, HeaderValue::from_static("mallory"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        let mut removed = Vec::new();
        let result = claims.enforce(&id(caller), &mut headers, |u| {
            removed.push(u.header.to_owned())
        });
        let got = match result {
            Err(u) => {
                assert_eq!(u.header, header);
                assert_eq!(u.action, OnUntrusted::Deny);
                "deny"
            }
            Ok(()) if headers.contains_key(header) => {
                assert_eq!(
                    headers.get_all(header).iter().count(),
                    2,
                    "values untouched"
                );
                "keep"
            }
            Ok(()) => {
                assert_eq!(removed, [header], "reported by name");
                "strip"
            }
        };
        assert_eq!(got, expected, "{caller} sending {header}");
        assert!(headers.contains_key("x-other"));
    }
}

#[test]
fn claim_headers_cannot_name_what_meshguard_owns() {
    for (name, wanted) in [
        ("x-forwarded-client-cert", "identity or hop-by-hop"),
        ("x-meshguard-client-id", "identity or hop-by-hop"),
        ("x-spiffe-id", "identity or hop-by-hop"),
        ("connection", "identity or hop-by-hop"),
        ("host", "frames or routes"),
        ("bad header", "not an HTTP header name"),
    ] {
        let e = err(&format!(
            "{RULES}claim_headers:\n  headers:\n    - name: {name:?}\n      from: [\"*\"]\n"
        ));
        assert!(e.contains(wanted), "{name}: {e}");
        assert!(e.starts_with("p.yaml:12:"), "{e}");
    }
    let e = err(&format!(
        "{RULES}claim_headers:\n  headers:\n    - name: x-a\n      from: [\"*\"]\n    - name: X-A\n      from: [\"*\"]\n"
    ));
    assert!(e.contains("declared twice"), "{e}");
}

#[test]
fn the_path_profile_is_read_and_case_insensitivity_folds_the_rules() {
    assert_eq!(policy(RULES).boundary().path_profile, PathProfile::Standard);
    let strict = policy(&format!("{RULES}path_profile: strict\n"));
    assert_eq!(strict.boundary().path_profile, PathProfile::Strict);
    let yaml = "path_profile: strict_case_insensitive\nrules:\n  - name: deny-admin\n    action: deny\n    from: [\"*\"]\n    paths: [\"/Admin/*\"]\n  - name: all\n    action: allow\n    from: [\"*\"]\n";
    let folded = policy(yaml);
    let peer = id("spiffe://cluster.local/ns/shop/sa/web");
    let req = |path| Request {
        peer: &peer,
        port: 80,
        method: &http::Method::GET,
        path,
    };
    // The request path arrives lowercased (pathnorm::strict), the rule too.
    assert_eq!(folded.evaluate(&req("/admin/x")).label(), "deny");
    assert!(err("path_profile: loose\nrules: []\n").contains("unknown variant"));
}
