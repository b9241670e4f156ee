//! Criterion: the authenticate step (`jwt::Authenticator::authenticate`) on
//! one request's headers, for a repeated token (answered from the cache: a
//! SHA-256 and a map lookup) and for fresh ES256 and RS256 tokens (parse,
//! key lookup, signature, claims). Keys are made here; tokens are signed
//! before the measurement, so signing is not counted.
//!
//! `cargo bench --bench jwt -- --warm-up-time 1 --measurement-time 3`

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use meshguard::sidecar::config::JwtConfig;
use meshguard::sidecar::jwt::Authenticator;
use serde_json::json;
use std::hint::black_box;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn input(alg: &str, kid: &str, jti: usize) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let claims = json!({"iss": "https://id.example.com", "sub": "alice", "aud": "orders",
                        "exp": now() + 3600, "iat": now(), "scope": "orders.read", "jti": jti});
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let n_e = RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let p = ec.public_key().as_ref();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "r", "n": b64(&n_e.n), "e": b64(&n_e.e)},
        {"kty": "EC", "crv": "P-256", "kid": "e", "x": b64(&p[1..33]), "y": b64(&p[33..65])},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let cfg = |entries: usize| -> JwtConfig {
        serde_norway::from_str(&format!(
            "cache_entries: {entries}\nproviders:\n  - name: users\n    issuers: [\"https://id.example.com\"]\n    audiences: [orders]\n    jwks: {{file: \"{}\"}}\n",
            file.display()
        ))
        .unwrap()
    };
    let sign_rsa = |jti| {
        let i = input("RS256", "r", jti);
        let mut sig = vec![0; rsa.public_modulus_len()];
        rsa.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            i.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{i}.{}", b64(&sig))
    };
    let sign_ec = |jti| {
        let i = input("ES256", "e", jti);
        let sig = ec.sign(&SystemRandom::new(), i.as_bytes()).unwrap();
        format!("{i}.{}", b64(sig.as_ref()))
    };
    let t = now();
    let cached = Authenticator::load(&cfg(10_000), &prometheus::Registry::new(), "td").unwrap();
    let repeated = headers(&sign_rsa(0));
    assert!(cached.authenticate(&repeated, t).verified().is_some());
    c.bench_function("jwt_check/cached", |b| {
        b.iter(|| black_box(cached.authenticate(black_box(&repeated), t)))
    });
    // One cache entry and many tokens: every check is a fresh verification.
    for (name, tokens) in [
        (
            "jwt_check/fresh_es256",
            (0..512).map(sign_ec).collect::<Vec<_>>(),
        ),
        (
            "jwt_check/fresh_rs256",
            (0..512).map(sign_rsa).collect::<Vec<_>>(),
        ),
    ] {
        let fresh = Authenticator::load(&cfg(1), &prometheus::Registry::new(), "td").unwrap();
        let maps: Vec<HeaderMap> = tokens.iter().map(|t| headers(t)).collect();
        assert!(fresh.authenticate(&maps[0], t).verified().is_some());
        let mut i = 0;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % maps.len();
                black_box(fresh.authenticate(&maps[i], t))
            })
        });
    }
}

criterion_group!(jwt, bench);
criterion_main!(jwt);
