//! Policy tests: semantics here, parsing, linting and scale in submodules.

mod boundary;
mod connection;
mod jwt;
mod lint;
mod parse;
mod scale;

use super::*;

pub(super) fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(yaml, "policy.yaml").unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

const SHOP: &str = r#"
mode: enforce
rules:
  - name: orders-read
    action: allow
    from: [spiffe://cluster.local/ns/shop/sa/orders]
    ports: [8080]
    methods: [GET, HEAD]
    paths: ["/api/*", /healthz]
  - name: shop-write
    action: allow
    from: ["spiffe://cluster.local/ns/shop/*"]
    methods: [POST]
    paths: [/api/orders]
  - name: partner-status
    action: allow
    from: ["spiffe://partner.org/*"]
    paths: [/status]
  - name: anyone-health
    action: allow
    from: ["*"]
    paths: [/healthz]
  - name: no-admin
    action: deny
    from: ["*"]
    paths: ["/api/admin/*"]
  - name: block-legacy
    action: deny
    from: [spiffe://cluster.local/ns/shop/sa/legacy]
  - name: metrics
    action: allow
    from: ["*"]
    ports: [9090]
"#;

const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const LEGACY: &str = "spiffe://cluster.local/ns/shop/sa/legacy";
const OTHER_NS: &str = "spiffe://cluster.local/ns/other/sa/x";
const NOT_K8S: &str = "spiffe://cluster.local/shop/orders";
const PARTNER: &str = "spiffe://partner.org/billing";
const PARTNER_K8S: &str = "spiffe://partner.org/ns/shop/sa/orders";

/// (peer, port, method, path, deciding rule or None, allowed?)
type Row = (
    &'static str,
    u16,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
);

const TABLE: &[Row] = &[
    // Exact source, with port, method and path criteria.
    (ORDERS, 8080, "GET", "/api/items", Some("orders-read"), true),
    (
        ORDERS,
        8080,
        "HEAD",
        "/api/items",
        Some("orders-read"),
        true,
    ),
    (ORDERS, 8080, "GET", "/api", Some("orders-read"), true),
    (ORDERS, 8080, "GET", "/api/", Some("orders-read"), true),
    (ORDERS, 8080, "GET", "/apix", None, false),
    (ORDERS, 8081, "GET", "/api/items", None, false),
    (ORDERS, 8080, "DELETE", "/api/items", None, false),
    (ORDERS, 8080, "PURGE", "/api/items", None, false),
    // Several allow rules match: the first in the file is reported.
    (ORDERS, 8080, "GET", "/healthz", Some("orders-read"), true),
    (ORDERS, 8080, "GET", "/healthz/", None, false),
    // Namespace source.
    (
        ORDERS,
        8080,
        "POST",
        "/api/orders",
        Some("shop-write"),
        true,
    ),
    (CART, 1234, "POST", "/api/orders", Some("shop-write"), true),
    (CART, 8080, "GET", "/api/items", None, false),
    (OTHER_NS, 8080, "POST", "/api/orders", None, false),
    (NOT_K8S, 8080, "POST", "/api/orders", None, false),
    (PARTNER_K8S, 8080, "POST", "/api/orders", None, false),
    // Trust-domain source.
    (PARTNER, 443, "GET", "/status", Some("partner-status"), true),
    (
        PARTNER_K8S,
        443,
        "PUT",
        "/status",
        Some("partner-status"),
        true,
    ),
    (ORDERS, 8080, "GET", "/status", None, false),
    // Any authenticated peer.
    (OTHER_NS, 1, "GET", "/healthz", Some("anyone-health"), true),
    (
        PARTNER,
        1,
        "OPTIONS",
        "/healthz",
        Some("anyone-health"),
        true,
    ),
    (NOT_K8S, 9090, "PURGE", "/anything", Some("metrics"), true),
    // Deny wins over allow, wherever it is in the file.
    (ORDERS, 8080, "GET", "/api/admin", Some("no-admin"), false),
    (
        ORDERS,
        8080,
        "GET",
        "/api/admin/users",
        Some("no-admin"),
        false,
    ),
    (
        ORDERS,
        8080,
        "GET",
        "/api/adminx",
        Some("orders-read"),
        true,
    ),
    (
        LEGACY,
        8080,
        "POST",
        "/api/orders",
        Some("block-legacy"),
        false,
    ),
    (LEGACY, 9090, "GET", "/metrics", Some("block-legacy"), false),
    // Two deny rules match: the first in the file is reported.
    (LEGACY, 8080, "GET", "/api/admin/x", Some("no-admin"), false),
];

fn decide<'p>(p: &'p Policy, peer: &SpiffeId, port: u16, method: &str, path: &str) -> Decision<'p> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    p.evaluate(&Request {
        peer,
        port,
        method: &method,
        path,
    })
}

#[test]
fn semantics_table_in_enforce_mode() {
    let p = policy(SHOP);
    for &(peer, port, method, path, rule, allowed) in TABLE {
        let d = decide(&p, &id(peer), port, method, path);
        let row = format!("{peer} {port} {method} {path}");
        assert_eq!(d.rule_name(), rule, "{row}");
        assert_eq!(d.verdict() == Verdict::Allow, allowed, "{row}");
        assert_eq!(d.permit().is_some(), allowed, "{row}");
        assert!(!d.audit_would_deny(), "{row}");
        let expected_label = if allowed { "allow" } else { "deny" };
        assert_eq!(d.label(), expected_label, "{row}");
    }
}

#[test]
fn audit_mode_lets_would_deny_requests_pass_and_marks_them() {
    let p = policy(&SHOP.replace("mode: enforce", "mode: audit"));
    assert_eq!(p.mode(), Mode::Audit);
    for &(peer, port, method, path, rule, allowed) in TABLE {
        let d = decide(&p, &id(peer), port, method, path);
        let row = format!("{peer} {port} {method} {path}");
        assert_eq!(d.rule_name(), rule, "{row}");
        assert_eq!(d.verdict(), Verdict::Allow, "{row}");
        assert!(d.permit().is_some(), "{row}");
        assert_eq!(d.audit_would_deny(), !allowed, "{row}");
        if !allowed {
            assert_eq!(d.label(), "audit_would_deny");
        }
    }
}

#[test]
fn decision_names_the_rule_and_its_line() {
    let p = policy(SHOP);
    let d = decide(&p, &id(LEGACY), 8080, "GET", "/");
    let Decision::Deny {
        cause: DenyCause::Rule(rule),
    } = d
    else {
        panic!("{d:?}");
    };
    assert_eq!(rule.name(), "block-legacy");
    assert_eq!(rule.action(), Action::Deny);
    assert_eq!(rule.line(), Some(27));

    let d = decide(&p, &id(OTHER_NS), 8080, "GET", "/");
    assert_eq!(
        d,
        Decision::Deny {
            cause: DenyCause::NoRuleMatched
        }
    );
    assert_eq!(d.rule(), None);
}

#[test]
fn empty_policy_denies_everything() {
    let p = policy("rules: []");
    assert_eq!(p.mode(), Mode::Enforce);
    let d = decide(&p, &id(ORDERS), 8080, "GET", "/");
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(d.rule(), None);
}

#[test]
fn a_rule_without_criteria_matches_every_request_of_its_sources() {
    let p = policy("rules: [{name: all, action: allow, from: [spiffe://cluster.local/*]}]");
    for method in ["GET", "POST", "PURGE", "PROPFIND"] {
        let d = decide(&p, &id(NOT_K8S), 65535, method, "/x/y/");
        assert_eq!(d.rule_name(), Some("all"), "{method}");
    }
    assert_eq!(
        decide(&p, &id(PARTNER), 1, "GET", "/").verdict(),
        Verdict::Deny
    );
}

#[test]
fn prefix_of_root_matches_every_path() {
    let p = policy(r#"rules: [{name: r, action: allow, from: ["*"], paths: ["/*"]}]"#);
    for path in ["/", "/a", "/a/b/", "/.well-known/x"] {
        assert_eq!(
            decide(&p, &id(ORDERS), 1, "GET", path).verdict(),
            Verdict::Allow
        );
    }
}

#[test]
fn a_source_listed_in_several_forms_is_indexed_once_per_form() {
    let p = policy(
        r#"
rules:
  - name: dup
    action: deny
    from: [spiffe://cluster.local/ns/shop/sa/orders, spiffe://cluster.local/ns/shop/sa/orders,
           "spiffe://cluster.local/ns/shop/*", "spiffe://cluster.local/*", "*"]
    methods: [DELETE]
  - name: rest
    action: allow
    from: ["*"]
"#,
    );
    assert_eq!(
        decide(&p, &id(ORDERS), 1, "DELETE", "/").rule_name(),
        Some("dup")
    );
    assert_eq!(
        decide(&p, &id(ORDERS), 1, "GET", "/").rule_name(),
        Some("rest")
    );
}

#[test]
fn permit_exists_without_policy_only_by_explicit_call() {
    let _permit: Permit = Permit::without_policy();
}

#[test]
fn rule_accessors_expose_the_validated_criteria() {
    let p = policy(SHOP);
    let r = &p.rules()[0];
    assert_eq!(r.name(), "orders-read");
    assert_eq!(r.ports(), Some(&[8080][..]));
    let methods: Vec<_> = r.methods().unwrap().iter().map(Method::as_str).collect();
    assert_eq!(methods, ["GET", "HEAD"]);
    let paths: Vec<_> = r.paths().unwrap().iter().map(ToString::to_string).collect();
    assert_eq!(paths, ["/api/*", "/healthz"]);
    assert_eq!(r.sources()[0].to_string(), ORDERS);
    assert_eq!(
        p.rules()[1].sources()[0].to_string(),
        "spiffe://cluster.local/ns/shop/*"
    );
    assert_eq!(p.file_name(), "policy.yaml");
}
