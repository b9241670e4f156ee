//! Connection-level decisions (opaque TCP) and the load-time refusal of
//! HTTP conditions on TCP ports.

use super::*;

const TCP: &str = r#"
rules:
  - name: cache
    action: allow
    from: ["spiffe://cluster.local/ns/shop/*"]
    ports: [6379]
  - name: no-legacy
    action: deny
    from: [spiffe://cluster.local/ns/shop/sa/legacy]
  - name: web-api
    action: allow
    from: ["*"]
    ports: [8080]
    paths: ["/api/*"]
  - name: web-no-admin
    action: deny
    from: ["*"]
    ports: [8080]
    paths: ["/admin/*"]
"#;

fn decide<'p>(p: &'p Policy, peer: &SpiffeId, port: u16) -> Decision<'p> {
    p.evaluate_connection(&Connection { peer, port })
}

#[test]
fn a_connection_is_decided_on_source_and_port_only() {
    let p = policy(TCP);
    let cart = id("spiffe://cluster.local/ns/shop/sa/cart");
    let legacy = id("spiffe://cluster.local/ns/shop/sa/legacy");
    let other = id("spiffe://cluster.local/ns/other/sa/x");
    let d = decide(&p, &cart, 6379);
    assert_eq!((d.label(), d.rule_name()), ("allow", Some("cache")));
    let d = decide(&p, &legacy, 6379);
    assert_eq!((d.label(), d.rule_name()), ("deny", Some("no-legacy")));
    let d = decide(&p, &other, 6379);
    assert_eq!((d.label(), d.rule_name()), ("deny", None));
    let d = decide(&p, &cart, 5432);
    assert_eq!((d.label(), d.rule_name()), ("deny", None));
}

#[test]
fn http_rules_fail_closed_if_a_connection_ever_meets_them() {
    // Port 8080 is not a TCP port of this policy's workload, so the load
    // check lets these rules be; a connection there is still never
    // allowed by a path rule, and a path deny rule denies it whole.
    let p = policy(TCP);
    let cart = id("spiffe://cluster.local/ns/shop/sa/cart");
    let d = decide(&p, &cart, 8080);
    assert_eq!((d.label(), d.rule_name()), ("deny", Some("web-no-admin")));
    let allow_only = policy(
        "rules:\n  - name: web-api\n    action: allow\n    from: [\"*\"]\n    ports: [8080]\n    methods: [GET]\n",
    );
    let d = decide(&allow_only, &cart, 8080);
    assert_eq!((d.label(), d.rule_name()), ("deny", None));
}

#[test]
fn audit_mode_lets_a_would_deny_connection_pass() {
    let p = policy("mode: audit\nrules: []\n");
    let d = decide(&p, &id("spiffe://cluster.local/ns/a/sa/b"), 6379);
    assert_eq!(d.label(), "audit_would_deny");
    assert!(d.permit().is_some());
}

#[test]
fn http_conditions_that_reach_a_tcp_port_are_refused_at_the_rule_line() {
    let p = policy(TCP);
    p.check_tcp_ports(&[6379]).unwrap();
    p.check_tcp_ports(&[]).unwrap();
    let err = p.check_tcp_ports(&[6379, 8080]).unwrap_err();
    assert_eq!(err.line(), Some(10), "{err}");
    assert_eq!(
        err.to_string(),
        "policy.yaml:10: rules[2] \"web-api\" has paths but lists TCP port 8080 \
         (inbound.tcp_ports): opaque TCP has no method or path; give the rule `ports` \
         without the TCP ports, or drop its paths"
    );
    let any_port = policy("rules:\n  - name: reads\n    action: allow\n    from: [\"*\"]\n    methods: [GET]\n    paths: [/x]\n");
    let err = any_port.check_tcp_ports(&[5432]).unwrap_err().to_string();
    assert!(
        err.starts_with("policy.yaml:2: rules[0] \"reads\" has methods and paths but has no `ports`, so it applies to every port, TCP port 5432 included"),
        "{err}"
    );
}
