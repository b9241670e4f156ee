//! `jwt:` requirements: parsing, and the pure matching as a table.

use crate::sidecar::jwt::token::parse;
use crate::sidecar::policy::{Policy, Request, Standing, TokenState, Tokens};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

struct One(Option<crate::sidecar::jwt::Claims>, bool);

impl Tokens for One {
    fn state(&self, provider: &str) -> TokenState<'_> {
        match (&self.0, self.1, provider) {
            (_, _, p) if p != "users" => TokenState::Missing,
            (Some(c), _, _) => TokenState::Valid(c),
            (None, true, _) => TokenState::Invalid,
            (None, false, _) => TokenState::Missing,
        }
    }
}

fn claims(v: serde_json::Value) -> crate::sidecar::jwt::Claims {
    let t = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(v.to_string())
    );
    parse(&t, 8192).unwrap().claims
}

fn policy(jwt: &str) -> Policy {
    let text =
        format!("rules:\n  - name: r\n    action: allow\n    from: [\"*\"]\n    jwt: {jwt}\n");
    Policy::from_yaml(&text, "p.yaml").unwrap()
}

#[test]
fn requirement_table() {
    let alice = json!({"iss": "https://id", "sub": "user-alice", "aud": ["orders", "web"], "exp": 1,
                       "scope": "orders.read orders.write", "tenant": "acme", "groups": ["ops"],
                       "verified": true, "level": 3, "org": {"id": "o1"}});
    let table: &[(&str, bool)] = &[
        ("{provider: users}", true),
        ("{provider: users, sub: user-alice}", true),
        ("{provider: users, sub: [\"user-*\"]}", true),
        ("{provider: users, sub: [bob, carol]}", false),
        ("{provider: users, iss: \"https://id\"}", true),
        ("{provider: users, iss: \"https://other\"}", false),
        ("{provider: users, aud: web}", true),
        ("{provider: users, aud: [payments]}", false),
        (
            "{provider: users, scopes: [orders.read, orders.write]}",
            true,
        ),
        ("{provider: users, scopes: [orders.read, admin]}", false),
        ("{provider: users, claims: {tenant: acme}}", true),
        ("{provider: users, claims: {tenant: [globex, acme]}}", true),
        ("{provider: users, claims: {tenant: globex}}", false),
        ("{provider: users, claims: {groups: ops}}", true),
        ("{provider: users, claims: {groups: [admins]}}", false),
        (
            "{provider: users, claims: {verified: true, level: 3}}",
            true,
        ),
        ("{provider: users, claims: {verified: false}}", false),
        ("{provider: users, claims: {org.id: o1}}", true),
        ("{provider: users, claims: {org: o1}}", false),
        ("{provider: users, claims: {missing: x}}", false),
    ];
    let c = claims(alice);
    for (jwt, want) in table {
        let p = policy(jwt);
        let req = p.rules()[0].jwt().unwrap();
        assert_eq!(req.claims_match(&c), *want, "{jwt}");
    }
}

#[test]
fn a_jwt_rule_matches_only_with_a_valid_token() {
    let p = policy("{provider: users, sub: alice}");
    let peer = crate::sidecar::identity::SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
    let req = Request {
        peer: &peer,
        port: 1,
        method: &http::Method::GET,
        path: "/",
    };
    let ok = One(
        Some(claims(json!({"iss": "i", "sub": "alice", "exp": 1}))),
        false,
    );
    let other = One(
        Some(claims(json!({"iss": "i", "sub": "bob", "exp": 1}))),
        false,
    );
    let rule = p.rules()[0].jwt().unwrap();
    assert_eq!(rule.standing(&ok), Standing::Met);
    assert_eq!(rule.standing(&other), Standing::ClaimsRefused);
    assert_eq!(rule.standing(&One(None, true)), Standing::Unauthenticated);
    assert_eq!(rule.standing(&One(None, false)), Standing::Unauthenticated);
    assert!(p.evaluate_with(&req, &ok).permit().is_some());
    assert!(
        p.evaluate(&req).permit().is_none(),
        "no tokens: the rule never matches"
    );
    assert!(p.evaluate_with(&req, &other).permit().is_none());
    assert!(
        p.token_challenge(&req, &other).is_none(),
        "valid token, claims refused: 403"
    );
    assert!(
        p.token_challenge(&req, &One(None, false)).is_some(),
        "no token: 401"
    );
    assert!(p.check_jwt_providers(&["users".into()]).is_ok());
    let e = p.check_jwt_providers(&[]).unwrap_err().to_string();
    assert!(
        e.contains("p.yaml:2") && e.contains("not a provider"),
        "{e}"
    );
}

#[test]
fn bad_jwt_blocks_are_refused_at_their_line() {
    for bad in [
        "{sub: x}",
        "{provider: users, scope: [a]}",
        "{provider: users, claims: {a: []}}",
        "{provider: users, claims: {a: {b: c}}}",
    ] {
        let text =
            format!("rules:\n  - name: r\n    action: allow\n    from: [\"*\"]\n    jwt: {bad}\n");
        let e = Policy::from_yaml(&text, "p.yaml").unwrap_err();
        assert_eq!(e.line(), Some(5), "{bad}: {e}");
    }
}
