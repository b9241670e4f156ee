//! Criterion: the cost of signed claims (issue 16).
//!
//! - `assertion_stamp/{hmac,ed25519,es256}`: one identity assertion (the
//!   signature over the caller, method, target, times and request id, plus
//!   the header value) in each `assertion.mode`, which the inbound adds to
//!   every request it forwards;
//! - `webhook_verify/stripe/<size>`: a Stripe signature check (HMAC-SHA256
//!   of `t.body`) at 1 KiB and 1 MiB bodies;
//! - `webhook_verify/standard_v1a/1KiB`: an Ed25519 (Standard Webhooks
//!   v1a) check.
//!
//! `cargo bench --bench signed_claims -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use aws_lc_rs::{hmac, rand::SystemRandom};
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use meshguard::sidecar::assertion::Assertion;
use meshguard::sidecar::config::{AssertionConfig, AssertionMode};
use meshguard::sidecar::webhook::{verify, Check, Format, SecretSet};

fn assertion(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let caller = "spiffe://cluster.local/ns/shop/sa/checkout";
    let mut group = c.benchmark_group("assertion_stamp");
    for mode in [
        AssertionMode::Hmac,
        AssertionMode::Ed25519,
        AssertionMode::Es256,
    ] {
        let (key_file, jwks_file) = match mode {
            AssertionMode::Hmac => (Some(dir.path().join("keys")), None),
            _ => (
                None,
                Some(dir.path().join(format!("{}.jwks", mode.as_str()))),
            ),
        };
        let a = Assertion::start(&AssertionConfig {
            mode,
            key_file,
            jwks_file,
            ..Default::default()
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        group.bench_function(mode.as_str(), |b| {
            b.iter(|| {
                a.stamp(
                    black_box(&mut headers),
                    caller,
                    "POST",
                    "/api/v1/orders/1234?expand=items",
                    1_800_000_000,
                )
            })
        });
    }
    group.finish();
}

fn stripe(c: &mut Criterion) {
    let now = 1_800_000_000;
    let format = Format::Stripe;
    let secrets = SecretSet::parse(&format, "whsec_bench", "bench").unwrap();
    let mut group = c.benchmark_group("webhook_verify");
    for (label, size) in [("1KiB", 1024), ("1MiB", 1024 * 1024)] {
        let body = vec![b'a'; size];
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"whsec_bench");
        let tag = hmac::sign(&key, &[format!("{now}.").as_bytes(), &body].concat());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("t={now},v1={hex}")).unwrap();
        headers.insert("stripe-signature", value);
        let check = Check {
            format: &format,
            secrets: &secrets,
            tolerance: 300,
            now,
        };
        group.bench_function(format!("stripe/{label}"), |b| {
            b.iter(|| verify(black_box(&headers), black_box(&body), &check).unwrap())
        });
    }
    group.finish();
}

fn ed25519(c: &mut Criterion) {
    let now = 1_800_000_000;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let format = Format::StandardWebhooks;
    let text = format!("whpk_{}", b64.encode(pair.public_key().as_ref()));
    let secrets = SecretSet::parse(&format, &text, "bench").unwrap();
    let body = vec![b'a'; 1024];
    let sig = pair.sign(&[format!("msg_1.{now}.").as_bytes(), &body].concat());
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
    headers.insert(
        "webhook-timestamp",
        HeaderValue::from_str(&now.to_string()).unwrap(),
    );
    let value = format!("v1a,{}", b64.encode(sig.as_ref()));
    headers.insert("webhook-signature", HeaderValue::from_str(&value).unwrap());
    let check = Check {
        format: &format,
        secrets: &secrets,
        tolerance: 300,
        now,
    };
    c.bench_function("webhook_verify/standard_v1a/1KiB", |b| {
        b.iter(|| verify(black_box(&headers), black_box(&body), &check).unwrap())
    });
}

criterion_group!(signed_claims, assertion, stripe, ed25519);
criterion_main!(signed_claims);
