//! The JWT reader and claim matching on arbitrary input: never a panic; an
//! accepted token's signing input is its first two parts, `alg` is never
//! `none`, the size limit holds, and a policy `jwt:` block built from the
//! input's own claims matches them (with a value it cannot have, it does not).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::jwt::token::parse;
use meshguard::sidecar::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Raw input as a token, and the input as a token's claims JSON.
    check(text);
    let header = b64(br#"{"alg":"ES256","kid":"k"}"#);
    check(&format!("{header}.{}.c2ln", b64(data)));
});

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn check(token: &str) {
    let parsed = match parse(token, 8192) {
        Ok(p) => p,
        Err(e) => {
            let _ = (e.to_string(), e.label(), e.reason());
            return;
        }
    };
    assert!(token.len() <= 8192);
    assert_eq!(format!("{}.{}", parsed.signing_input, parsed.signature), token);
    assert_eq!(parsed.signing_input.matches('.').count(), 1);
    let c = &parsed.claims;
    let yaml_str = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut conditions = vec![format!("iss: {}", yaml_str(&c.iss))];
    if let Some(sub) = &c.sub {
        if !sub.ends_with('*') && !sub.is_empty() {
            conditions.push(format!("sub: {}", yaml_str(sub)));
        }
    }
    for name in ["tenant", "groups"] {
        if let Some(text) = c.header_text(name).filter(|t| !t.is_empty() && !t.contains(',') && !t.ends_with('*')) {
            conditions.push(format!("claims: {{{name}: {}}}", yaml_str(&text)));
            break;
        }
    }
    for cond in conditions {
        let rule = |jwt: &str| format!("rules:\n  - name: r\n    action: allow\n    from: [\"*\"]\n    jwt: {{provider: p, {jwt}}}\n");
        let Ok(policy) = Policy::from_yaml(&rule(&cond), "fuzz.yaml") else {
            continue;
        };
        let req = policy.rules()[0].jwt().expect("a jwt rule");
        assert!(req.claims_match(c), "{cond}");
        let never = rule("sub: \"\\u0000never\"");
        if let Ok(p) = Policy::from_yaml(&never, "fuzz.yaml") {
            assert!(!p.rules()[0].jwt().expect("a jwt rule").claims_match(c) || c.sub.as_deref() == Some("\u{0}never"));
        }
    }
}
