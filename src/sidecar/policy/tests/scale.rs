//! A large policy: the index must give the same answers as a plain scan.

use std::fmt::Write as _;

use super::*;

const RULES: usize = 10_000;

/// 10,000 rules mixing every kind of source, port, method and path.
fn big_policy_yaml() -> String {
    let mut yaml = String::from("rules:\n");
    for i in 0..RULES {
        let ns = i % 50;
        let (action, from) = match i % 10 {
            0 => ("deny", format!("spiffe://cluster.local/ns/ns{ns}/sa/sa{i}")),
            1 => ("allow", format!("\"spiffe://cluster.local/ns/ns{ns}/*\"")),
            2 if i % 1000 == 2 => ("deny", "\"*\"".to_owned()),
            3 => ("allow", format!("\"spiffe://td{}.org/*\"", i % 7)),
            _ => (
                "allow",
                format!("spiffe://cluster.local/ns/ns{ns}/sa/sa{i}"),
            ),
        };
        let _ = writeln!(
            yaml,
            "  - name: r{i}\n    action: {action}\n    from: [{from}]"
        );
        if i % 3 == 0 {
            let _ = writeln!(yaml, "    ports: [{}]", 8000 + i % 4);
        }
        if i % 4 == 0 {
            yaml.push_str("    methods: [GET, HEAD]\n");
        }
        if i % 5 != 4 {
            let _ = writeln!(yaml, "    paths: [\"/svc{}/*\", /exact{}]", i % 97, i % 13);
        }
    }
    yaml
}

/// The semantics stated plainly: every rule, in order, deny first.
fn reference<'p>(p: &'p Policy, req: &Request<'_>) -> (Verdict, Option<&'p str>) {
    let peer = Source::Id(req.peer.clone());
    let matching = |deny: bool| {
        p.rules().iter().find(|r| {
            r.action().is_deny() == deny
                && r.sources().iter().any(|s| s.covers(&peer))
                && r.ports().is_none_or(|ports| ports.contains(&req.port))
                && r.methods().is_none_or(|m| m.contains(req.method))
                && r.paths()
                    .is_none_or(|paths| paths.iter().any(|x| x.matches(req.path)))
        })
    };
    match (matching(true), matching(false)) {
        (Some(d), _) => (Verdict::Deny, Some(d.name())),
        (None, Some(a)) => (Verdict::Allow, Some(a.name())),
        (None, None) => (Verdict::Deny, None),
    }
}

#[test]
fn ten_thousand_rules_agree_with_a_plain_scan() {
    let yaml = big_policy_yaml();
    let p = policy(&yaml);
    assert_eq!(p.rules().len(), RULES);
    let last = yaml
        .lines()
        .position(|l| l == "  - name: r9999")
        .map(|i| i + 1);
    assert_eq!(p.rules()[RULES - 1].line(), last);

    let methods = [
        Method::GET,
        Method::POST,
        Method::from_bytes(b"PURGE").unwrap(),
    ];
    let mut seen = [0usize; 2];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1_500 {
        // xorshift: repeatable, and no dependency for a few random numbers.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % RULES as u64) as usize;
        let peer = match x % 5 {
            0 => id(&format!("spiffe://td{}.org/w", x % 9)),
            1 => id(&format!("spiffe://cluster.local/ns/ns{}/sa/new", i % 60)),
            _ => id(&format!("spiffe://cluster.local/ns/ns{}/sa/sa{i}", i % 50)),
        };
        let path = match (x >> 8) % 4 {
            0 => format!("/svc{}/x", i % 97),
            1 => format!("/exact{}", i % 13),
            2 => format!("/svc{}", (x >> 16) % 97),
            _ => "/other".to_owned(),
        };
        let req = Request {
            peer: &peer,
            port: 8000 + ((x >> 20) % 5) as u16,
            method: &methods[((x >> 24) % 3) as usize],
            path: &path,
        };
        let d = p.evaluate(&req);
        assert_eq!((d.verdict(), d.rule_name()), reference(&p, &req), "{req:?}");
        seen[usize::from(d.verdict() == Verdict::Allow)] += 1;
    }
    // Both outcomes are exercised, not just one.
    assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
}

#[test]
fn ten_thousand_rules_lint_without_a_quadratic_blowup() {
    let p = policy(&big_policy_yaml());
    let found = lint(&p, &["cluster.local"]);
    // td0.org..td6.org are unknown: one finding per such rule.
    let unknown = found
        .iter()
        .filter(|f| matches!(f.kind, LintKind::UnknownTrustDomain { .. }))
        .count();
    assert_eq!(unknown, RULES / 10);
}
