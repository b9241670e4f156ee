//! Lint findings: rules that never decide, sources that never match.

use super::*;

const KNOWN: &[&str] = &["cluster.local"];

fn findings(yaml: &str) -> Vec<(Option<String>, Option<usize>, LintKind)> {
    lint(&policy(yaml), KNOWN)
        .into_iter()
        .map(|f| (f.rule, f.line, f.kind))
        .collect()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[test]
fn a_clean_policy_has_no_findings() {
    let yaml = r#"
rules:
  - {name: read, action: allow, from: ["spiffe://cluster.local/ns/shop/*"], methods: [GET]}
  - {name: write, action: allow, from: [spiffe://cluster.local/ns/shop/sa/a], methods: [POST]}
  - {name: no-admin, action: deny, from: ["*"], paths: ["/admin/*"]}
"#;
    assert_eq!(findings(yaml), []);
}

#[test]
fn allow_shadowed_by_a_later_deny_is_reported_at_its_line() {
    let yaml = r#"
rules:
  - name: read
    action: allow
    from: [spiffe://cluster.local/ns/shop/sa/a]
    ports: [8080]
    methods: [GET]
    paths: [/api/orders]
  - name: lockdown
    action: deny
    from: ["spiffe://cluster.local/ns/shop/*"]
    paths: ["/api/*"]
"#;
    assert_eq!(
        findings(yaml),
        [(
            some("read"),
            Some(3),
            LintKind::AllowShadowedByDeny {
                deny_rule: "lockdown".into()
            }
        )]
    );
}

#[test]
fn a_narrower_deny_does_not_shadow() {
    for deny in [
        r#"{name: d, action: deny, from: ["*"], ports: [8080]}"#,
        r#"{name: d, action: deny, from: ["*"], methods: [GET, POST]}"#,
        r#"{name: d, action: deny, from: ["*"], paths: ["/api/*"]}"#,
        r#"{name: d, action: deny, from: [spiffe://cluster.local/ns/shop/sa/a]}"#,
        r#"{name: d, action: deny, from: ["spiffe://cluster.local/ns/shop/*"]}"#,
    ] {
        let yaml = format!(
            "rules:\n  - {{name: a, action: allow, from: [\"spiffe://cluster.local/*\"], paths: [/x]}}\n  - {deny}\n"
        );
        let found = findings(&yaml);
        assert!(
            !found
                .iter()
                .any(|(_, _, k)| matches!(k, LintKind::AllowShadowedByDeny { .. })),
            "{deny}: {found:?}"
        );
    }
}

#[test]
fn every_source_must_be_covered_for_a_shadow() {
    let yaml = r#"
rules:
  - {name: a, action: allow, from: [spiffe://cluster.local/ns/shop/sa/a, spiffe://cluster.local/ns/web/sa/b]}
  - {name: d, action: deny, from: ["spiffe://cluster.local/ns/shop/*"]}
"#;
    assert_eq!(findings(yaml), []);
    let yaml = yaml.replace("ns/shop/*", "*");
    assert_eq!(
        findings(&yaml),
        [(
            some("a"),
            Some(3),
            LintKind::AllowShadowedByDeny {
                deny_rule: "d".into()
            }
        )]
    );
}

#[test]
fn a_rule_covered_by_an_earlier_one_of_the_same_action_is_reported() {
    let yaml = r#"
rules:
  - {name: wide, action: allow, from: ["*"], methods: [GET, HEAD], paths: ["/api/*"]}
  - {name: narrow, action: allow, from: [spiffe://cluster.local/ns/a/sa/b], methods: [GET], paths: [/api/x, "/api/y/*"]}
  - {name: deny-wide, action: deny, from: ["spiffe://cluster.local/*"], paths: ["/admin/*"]}
  - {name: deny-narrow, action: deny, from: ["spiffe://cluster.local/ns/a/*"], ports: [1], paths: ["/admin/x/*"]}
"#;
    assert_eq!(
        findings(yaml),
        [
            (
                some("narrow"),
                Some(4),
                LintKind::CoveredByEarlierRule {
                    earlier_rule: "wide".into()
                }
            ),
            (
                some("deny-narrow"),
                Some(6),
                LintKind::CoveredByEarlierRule {
                    earlier_rule: "deny-wide".into()
                }
            ),
        ]
    );
}

#[test]
fn a_later_wider_rule_does_not_make_an_earlier_one_redundant() {
    let yaml = r#"
rules:
  - {name: narrow, action: allow, from: [spiffe://cluster.local/ns/a/sa/b], methods: [GET]}
  - {name: wide, action: allow, from: ["*"]}
"#;
    assert_eq!(findings(yaml), []);
}

#[test]
fn a_list_of_all_methods_does_not_cover_extension_methods() {
    let yaml = r#"
rules:
  - {name: listed, action: deny, from: ["*"], methods: [GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH]}
  - {name: any, action: allow, from: ["*"]}
"#;
    assert_eq!(findings(yaml), []);
}

#[test]
fn sources_in_unknown_trust_domains_are_reported() {
    let yaml = r#"
rules:
  - name: partners
    action: allow
    from: ["spiffe://partner.org/*", spiffe://cluster.local/ns/a/sa/b, "spiffe://other.org/ns/x/*", "*"]
"#;
    let unknown = |source: &str, td: &str| {
        (
            some("partners"),
            Some(3),
            LintKind::UnknownTrustDomain {
                source: source.into(),
                trust_domain: td.into(),
            },
        )
    };
    assert_eq!(
        findings(yaml),
        [
            unknown("spiffe://partner.org/*", "partner.org"),
            unknown("spiffe://other.org/ns/x/*", "other.org"),
        ]
    );
    let p = policy(yaml);
    assert_eq!(lint(&p, &["cluster.local", "partner.org", "other.org"]), []);
}

#[test]
fn exact_deny_paths_are_flagged() {
    let yaml = r#"
rules:
  - {name: ok, action: allow, from: ["*"]}
  - {name: d, action: deny, from: ["*"], paths: [/admin, /dir/, "/sub/*"]}
"#;
    assert_eq!(
        findings(yaml),
        [(
            some("d"),
            Some(4),
            LintKind::ExactDenyPath {
                path: "/admin".into()
            }
        )]
    );
}

#[test]
fn a_policy_without_allow_rules_is_flagged() {
    assert_eq!(findings("rules: []"), [(None, None, LintKind::NoAllowRule)]);
    let yaml = "rules: [{name: d, action: deny, from: [\"*\"], paths: [\"/a/*\"]}]";
    assert_eq!(findings(yaml), [(None, None, LintKind::NoAllowRule)]);
}

#[test]
fn findings_read_well() {
    let yaml = "rules:\n  - {name: a, action: allow, from: [\"*\"], paths: [/x]}\n  - {name: d, action: deny, from: [\"*\"], paths: [\"/*\"]}\n";
    let found = lint(&policy(yaml), KNOWN);
    assert_eq!(
        found[0].to_string(),
        "line 2: rule \"a\": never allows anything: deny rule \"d\" matches every request it matches"
    );
    assert_eq!(
        LintFinding {
            rule: None,
            line: None,
            kind: LintKind::NoAllowRule
        }
        .to_string(),
        "the policy has no allow rule: every request is denied"
    );
}

#[test]
fn a_rule_needing_a_token_does_not_cover_one_without() {
    // `users-only` matches only requests with a token, so `any` still
    // decides the rest: no finding. The reverse order is a finding.
    let jwt_first = r#"
rules:
  - {name: users-only, action: allow, from: ["*"], paths: ["/api/*"], jwt: {provider: users}}
  - {name: any, action: allow, from: ["*"], paths: ["/api/orders"]}
"#;
    assert_eq!(findings(jwt_first), []);
    let plain_first = r#"
rules:
  - {name: any, action: allow, from: ["*"], paths: ["/api/*"]}
  - {name: users-only, action: allow, from: ["*"], paths: ["/api/orders"], jwt: {provider: users}}
"#;
    assert_eq!(
        findings(plain_first),
        [(
            some("users-only"),
            Some(4),
            LintKind::CoveredByEarlierRule {
                earlier_rule: "any".into()
            }
        )]
    );
}

#[test]
fn a_deny_needing_a_token_shadows_nothing_but_is_reported_when_tokenless_requests_pass() {
    let yaml = r#"
rules:
  - {name: orders, action: allow, from: ["*"], paths: ["/orders/*"]}
  - {name: banned, action: deny, from: ["*"], paths: ["/orders/*"], jwt: {provider: users, sub: [banned-*]}}
"#;
    assert_eq!(
        findings(yaml),
        [(
            some("banned"),
            Some(4),
            LintKind::DenyNeedsToken {
                provider: "users".into(),
                allow_rule: "orders".into()
            }
        )]
    );
    // The allow rule needs the same provider's token: a tokenless request
    // gets 401 from it, so the deny leaves no way around.
    let guarded = r#"
rules:
  - {name: orders, action: allow, from: ["*"], paths: ["/orders/*"], jwt: {provider: users}}
  - {name: banned, action: deny, from: ["*"], paths: ["/orders/*"], jwt: {provider: users, sub: [banned-*]}}
"#;
    assert_eq!(findings(guarded), []);
    // An allow rule elsewhere does not overlap.
    let apart = r#"
rules:
  - {name: health, action: allow, from: ["*"], paths: ["/healthz"]}
  - {name: banned, action: deny, from: ["*"], paths: ["/orders/*"], jwt: {provider: users, sub: [banned-*]}}
"#;
    assert_eq!(findings(apart), []);
}

#[test]
fn unknown_jwt_providers_are_reported_by_rule_and_line() {
    let p = policy(
        r#"
rules:
  - {name: a, action: allow, from: ["*"], jwt: {provider: users}}
  - {name: b, action: allow, from: ["*"], jwt: {provider: partners}}
"#,
    );
    let found: Vec<_> = lint_jwt_providers(&p, &["users"])
        .into_iter()
        .map(|f| (f.rule, f.line, f.kind))
        .collect();
    assert_eq!(
        found,
        [(
            some("b"),
            Some(4),
            LintKind::UnknownJwtProvider {
                provider: "partners".into()
            }
        )]
    );
    assert_eq!(lint_jwt_providers(&p, &["users", "partners"]), []);
}
