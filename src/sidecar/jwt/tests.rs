//! The token reader, the key set and the cache, without sockets.

use super::cache::TokenCache;
use super::keys::{KeySet, KeyUse};
use super::token::parse;
use super::{JwtError, Verified};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use std::sync::Arc;

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn token(header: serde_json::Value, claims: serde_json::Value) -> String {
    format!("{}.{}.c2ln", b64(&header), b64(&claims))
}

fn claims() -> serde_json::Value {
    json!({"iss": "i", "sub": "s", "aud": "a", "exp": 10, "scope": "x y", "groups": ["g1", "g2"],
           "realm_access": {"roles": ["admin"]}, "https://ex.com/roles": ["r"]})
}

#[test]
fn reader_refuses_before_any_key_is_used() {
    let ok = json!({"alg": "RS256", "kid": "k"});
    let cases: &[(String, JwtError)] = &[
        (
            token(json!({"alg": "none"}), claims()),
            JwtError::AlgorithmNotAllowed,
        ),
        (
            token(json!({"alg": "NONE"}), claims()),
            JwtError::AlgorithmNotAllowed,
        ),
        (
            token(json!({"alg": "XS999"}), claims()),
            JwtError::AlgorithmNotAllowed,
        ),
        (
            token(json!({"alg": "RS256", "crit": ["b64"]}), claims()),
            JwtError::Malformed("crit header extensions are not supported"),
        ),
        (
            format!("{}.{}", b64(&ok), b64(&claims())),
            JwtError::Malformed("not three dot-separated parts"),
        ),
        (
            format!("{}.{}.c2ln.x.y", b64(&ok), b64(&claims())),
            JwtError::Malformed("not three dot-separated parts"),
        ),
        (
            format!("{}.{}.", b64(&ok), b64(&claims())),
            JwtError::Malformed("empty signature"),
        ),
        (
            token(ok.clone(), json!({"sub": "s", "exp": 1})),
            JwtError::Malformed("iss missing or not a string"),
        ),
        (
            token(ok.clone(), json!({"iss": "i"})),
            JwtError::Malformed("exp missing"),
        ),
        (
            token(ok.clone(), json!({"iss": "i", "exp": "soon"})),
            JwtError::Malformed("exp not a number"),
        ),
        (
            token(ok.clone(), json!({"iss": "i", "exp": 1, "aud": 7})),
            JwtError::Malformed("aud not a string or array"),
        ),
        (
            "YWJj.b.c".into(),
            JwtError::Malformed("a part is not the expected JSON"),
        ),
        (
            "%%.b.c".into(),
            JwtError::Malformed("a part is not base64url"),
        ),
    ];
    for (t, want) in cases {
        assert_eq!(parse(t, 8192).unwrap_err(), *want, "{t}");
    }
    let big = token(
        ok.clone(),
        json!({"iss": "i", "exp": 1, "pad": "x".repeat(600)}),
    );
    assert_eq!(parse(&big, 512).unwrap_err(), JwtError::TooLarge);
}

#[test]
fn claims_are_read_once_and_looked_up_by_name_or_path() {
    let t = token(json!({"alg": "ES256", "kid": "k"}), claims());
    let u = parse(&t, 8192).unwrap();
    assert_eq!(u.kid.as_deref(), Some("k"));
    assert_eq!(&*u.claims.iss, "i");
    assert_eq!(u.claims.aud.len(), 1);
    assert_eq!(
        u.claims.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(u.claims.header_text("groups").as_deref(), Some("g1,g2"));
    assert_eq!(
        u.claims.header_text("realm_access.roles").as_deref(),
        Some("admin")
    );
    assert_eq!(
        u.claims.header_text("https://ex.com/roles").as_deref(),
        Some("r")
    );
    assert_eq!(
        u.claims.header_text("realm_access"),
        None,
        "objects are never header text"
    );
    assert_eq!(u.signing_input, t.rsplit_once('.').unwrap().0);
}

#[test]
fn key_sets_take_only_asymmetric_keys_for_their_use() {
    let rsa = json!({"kty": "RSA", "kid": "r", "n": "sXch", "e": "AQAB"});
    let oct = json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"});
    let svid = json!({"kty": "RSA", "kid": "s", "use": "jwt-svid", "n": "sXch", "e": "AQAB"});
    let set = KeySet::from_jwks(
        json!({"keys": [rsa, oct, svid]}).to_string().as_bytes(),
        KeyUse::Oidc,
    )
    .unwrap();
    assert_eq!(
        set.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["r"]
    );
    let set = KeySet::from_jwks(
        json!({"keys": [svid]}).to_string().as_bytes(),
        KeyUse::JwtSvid,
    )
    .unwrap();
    assert_eq!(set.keys.len(), 1);
    assert!(
        set.candidates(Some("s"), jsonwebtoken::Algorithm::HS256)
            .next()
            .is_none(),
        "an RSA key never verifies HS256"
    );
    assert!(
        KeySet::from_jwks(json!({"keys": [oct]}).to_string().as_bytes(), KeyUse::Oidc).is_err()
    );
    assert!(KeySet::from_secret(b"short").is_err());
}

#[test]
fn cache_is_bounded_and_entries_die_with_exp_and_keys() {
    let t = token(json!({"alg": "RS256"}), claims());
    let verified = Arc::new(Verified {
        provider: 0,
        claims: parse(&t, 8192).unwrap().claims,
    });
    let cache = TokenCache::new(64);
    for i in 0..10_000u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[0] = (i % 251) as u8;
        cache.insert(key, verified.clone(), 1, 100, 0);
    }
    assert!(cache.len() <= 64, "{}", cache.len());
    let key = [7u8; 32];
    cache.insert(key, verified.clone(), 1, 100, 0);
    assert!(cache.get(&key, 50, |_| Some(1)).is_some());
    assert!(cache.get(&key, 50, |_| Some(2)).is_none(), "keys replaced");
    cache.insert(key, verified.clone(), 1, 100, 0);
    assert!(cache.get(&key, 50, |_| None).is_none(), "no usable keys");
    cache.insert(key, verified, 1, 100, 0);
    assert!(cache.get(&key, 101, |_| Some(1)).is_none(), "expired");
}
