//! The formats against the providers' published examples, and against
//! signatures made by independent code (Python's hmac and `cryptography`,
//! in a child process) so that a wrong construction fails.

use super::replay::{key, ReplayStore, Seen};
use super::*;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::process::Command;
use std::sync::Arc;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn secrets(format: &Format, text: &str) -> SecretSet {
    SecretSet::parse(format, text, "test").unwrap()
}

fn check<'a>(format: &'a Format, secrets: &'a SecretSet, now: i64) -> Check<'a> {
    Check {
        format,
        secrets,
        tolerance: 300,
        now,
    }
}

/// Runs a Python snippet; its stdout, trimmed.
fn py(code: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", code])
        .output()
        .expect("python3 (see tests/README.md)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// GitHub's documented example (docs.github.com, "Validating webhook deliveries").
#[test]
fn github_published_example() {
    let f = Format::Github;
    let s = secrets(&f, "It's a Secret to Everybody\n");
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let h = headers(&[("x-hub-signature-256", sig)]);
    assert!(verify(&h, b"Hello, World!", &check(&f, &s, 0)).is_ok());
    assert_eq!(
        verify(&h, b"Hello, World?", &check(&f, &s, 0)),
        Err(Reject::BadSignature)
    );
    let wrong = secrets(&f, "another secret");
    assert_eq!(
        verify(&h, b"Hello, World!", &check(&f, &wrong, 0)),
        Err(Reject::BadSignature)
    );
    let twice = headers(&[("x-hub-signature-256", sig), ("x-hub-signature-256", sig)]);
    assert_eq!(
        verify(&twice, b"Hello, World!", &check(&f, &s, 0)),
        Err(Reject::DuplicateHeader)
    );
    assert_eq!(
        verify(&HeaderMap::new(), b"Hello, World!", &check(&f, &s, 0)),
        Err(Reject::MissingHeader)
    );
}

// The Standard Webhooks specification's example.
#[test]
fn standard_webhooks_published_example() {
    let f = Format::StandardWebhooks;
    let s = secrets(&f, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let h = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ]);
    let body = br#"{"test": 2432232314}"#;
    let v = verify(&h, body, &check(&f, &s, 1614265330)).unwrap();
    assert_eq!(v.id, "standard:msg_p5jXN8AQM9LWM0D4loKWxJek");
    assert_eq!(v.timestamp, Some(1614265330));
    assert_eq!(
        verify(&h, body, &check(&f, &s, 1614265330 + 301)),
        Err(Reject::Stale)
    );
    assert_eq!(
        verify(&h, body, &check(&f, &s, 1614265330 - 301)),
        Err(Reject::Future)
    );
    assert_eq!(
        verify(&h, br#"{"test": 2432232315}"#, &check(&f, &s, 1614265330)),
        Err(Reject::BadSignature)
    );
}

// Slack's documented example ("Verifying requests from Slack").
#[test]
fn slack_published_example() {
    let f = Format::Slack;
    let s = secrets(&f, "8f742231b10e8888abcd99yyyzzz85a5");
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let h = headers(&[
        ("x-slack-request-timestamp", "1531420618"),
        (
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ),
    ]);
    assert!(verify(&h, body.as_bytes(), &check(&f, &s, 1531420618)).is_ok());
    assert_eq!(
        verify(&h, body.as_bytes(), &check(&f, &s, 1531420618 + 3600)),
        Err(Reject::Stale)
    );
}

#[test]
fn stripe_signed_by_independent_code_with_rotation() {
    let f = Format::Stripe;
    let now = 1_700_000_000;
    let body = r#"{"id":"evt_1","type":"invoice.paid"}"#;
    let sig = |secret: &str| {
        py(&format!(
            "import hmac,hashlib;print(hmac.new(b'{secret}', b'{now}.' + b'{body}', hashlib.sha256).hexdigest())"
        ))
    };
    let (old, new) = (sig("whsec_old"), sig("whsec_new"));
    let both = secrets(&f, "whsec_new\nwhsec_old\n");
    let only_new = secrets(&f, "whsec_new\n");
    let header =
        |v1: &str| headers(&[("stripe-signature", &*format!("t={now},v1={v1},v0=ignored"))]);
    assert!(verify(&header(&old), body.as_bytes(), &check(&f, &both, now)).is_ok());
    assert!(verify(&header(&new), body.as_bytes(), &check(&f, &both, now)).is_ok());
    assert_eq!(
        verify(&header(&old), body.as_bytes(), &check(&f, &only_new, now)),
        Err(Reject::BadSignature)
    );
    // Stripe sends one v1 per secret during its own rotation.
    let two = headers(&[(
        "stripe-signature",
        &*format!("t={now},v1={},v1={new}", "00".repeat(32)),
    )]);
    assert!(verify(&two, body.as_bytes(), &check(&f, &only_new, now)).is_ok());
    assert_eq!(
        verify(
            &header(&new),
            body.as_bytes(),
            &check(&f, &only_new, now + 301)
        ),
        Err(Reject::Stale)
    );
    let no_t = headers(&[("stripe-signature", &*format!("v1={new}"))]);
    assert_eq!(
        verify(&no_t, body.as_bytes(), &check(&f, &only_new, now)),
        Err(Reject::MalformedHeader)
    );
}

#[test]
fn standard_webhooks_v1a_ed25519_signed_by_independent_code() {
    let f = Format::StandardWebhooks;
    let now = 1_700_000_000;
    let out = py(&format!(
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as K\n\
from cryptography.hazmat.primitives import serialization as s\nimport base64\n\
k=K.generate()\nsig=k.sign(b'msg_1.{now}.hello')\n\
pk=k.public_key().public_bytes(s.Encoding.Raw,s.PublicFormat.Raw)\n\
print(base64.b64encode(pk).decode(), base64.b64encode(sig).decode())"
    ));
    let (pk, sig) = out.split_once(' ').unwrap();
    let s = secrets(&f, &format!("whpk_{pk}"));
    let h = |body_sig: &str| {
        headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &*now.to_string()),
            ("webhook-signature", &*format!("v1,AAAA v1a,{body_sig}")),
        ])
    };
    assert!(verify(&h(sig), b"hello", &check(&f, &s, now)).is_ok());
    assert_eq!(
        verify(&h(sig), b"hellO", &check(&f, &s, now)),
        Err(Reject::BadSignature)
    );
}

#[test]
fn generic_hmac_sha512_base64_signed_by_independent_code() {
    let g = Generic {
        header: "x-signature".into(),
        algorithm: Algorithm::Sha512,
        encoding: Encoding::Base64,
        prefix: "sha512=".into(),
        timestamp_header: Some("x-timestamp".into()),
        id_header: Some("x-id".into()),
        signed: Signed::IdTimestampBody,
    };
    let f = Format::Generic(g);
    let now = 1_700_000_000;
    let sig = py(&format!(
        "import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b'k3y', b'ev9.{now}.data', hashlib.sha512).digest()).decode())"
    ));
    let s = secrets(&f, "k3y");
    let h = |id: &str| {
        headers(&[
            ("x-signature", &*format!("sha512={sig}")),
            ("x-timestamp", &*now.to_string()),
            ("x-id", id),
        ])
    };
    assert_eq!(
        verify(&h("ev9"), b"data", &check(&f, &s, now)).unwrap().id,
        "generic:id:ev9"
    );
    // The id is signed: changing it (to slip past replay protection) fails.
    assert_eq!(
        verify(&h("ev10"), b"data", &check(&f, &s, now)),
        Err(Reject::BadSignature)
    );
}

#[test]
fn secrets_are_never_printed() {
    let s = secrets(&Format::Github, "hunter2-secret");
    assert!(!format!("{s:?}").contains("hunter2"));
}

/// Reserves and commits `key`; whether it was new.
fn deliver(store: &Arc<ReplayStore>, key: [u8; 32], expiry: i64, now: i64) -> Result<bool, String> {
    match store.reserve(key, expiry, now).map_err(|e| e.to_string())? {
        Seen::New(r) => r.commit().map(|()| true).map_err(|e| e.to_string()),
        Seen::Replay => Ok(false),
        Seen::InFlight => Err("in flight".into()),
    }
}

#[test]
fn replay_store_survives_a_reopen_and_forgets_expired_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.log");
    let now = 1_000;
    let store = Arc::new(ReplayStore::open(Some(&path), 10, now).unwrap());
    let (a, b) = (key("r", "a"), key("r", "b"));
    assert_eq!(deliver(&store, a, now + 300, now), Ok(true));
    assert_eq!(deliver(&store, a, now + 300, now), Ok(false));
    assert_eq!(deliver(&store, b, now + 10, now), Ok(true));
    assert_ne!(key("r", "a"), key("s", "a"), "routes do not share ids");
    drop(store);
    // A torn last line (a crash mid-write) is ignored.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"99999 abc")
        .unwrap();
    let store = Arc::new(ReplayStore::open(Some(&path), 10, now + 20).unwrap());
    assert_eq!(deliver(&store, a, now + 300, now + 20), Ok(false));
    assert_eq!(
        deliver(&store, b, now + 320, now + 20),
        Ok(true),
        "b expired"
    );
    assert_eq!(store.len(), 2);
}

#[test]
fn a_full_replay_store_refuses_rather_than_forgets() {
    let store = Arc::new(ReplayStore::open(None, 2, 0).unwrap());
    deliver(&store, key("r", "1"), 100, 0).unwrap();
    // A reservation takes room too.
    let Seen::New(held) = store.reserve(key("r", "2"), 100, 0).unwrap() else {
        panic!("new");
    };
    assert!(store.reserve(key("r", "3"), 100, 0).is_err());
    assert_eq!(deliver(&store, key("r", "1"), 100, 0), Ok(false));
    drop(held);
    assert_eq!(deliver(&store, key("r", "3"), 100, 0), Ok(true));
    // Once expired, room again.
    assert_eq!(deliver(&store, key("r", "4"), 300, 101), Ok(true));
}

#[test]
fn an_in_flight_key_refuses_a_duplicate_and_a_forgotten_one_stays_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.log");
    let store = Arc::new(ReplayStore::open(Some(&path), 10, 0).unwrap());
    let (a, b) = (key("r", "a"), key("r", "b"));
    let Seen::New(first) = store.reserve(a, 100, 0).unwrap() else {
        panic!("new");
    };
    assert_eq!(store.reserve(a, 100, 0).unwrap(), Seen::InFlight);
    assert_eq!(store.in_flight(), 1);
    // The app failed: forgotten, and the retry is a first delivery.
    drop(first);
    assert_eq!(store.in_flight(), 0);
    let Seen::New(retry) = store.reserve(a, 100, 0).unwrap() else {
        panic!("the retry is new");
    };
    // Committed b, reserved a: a crash (the store dropped without
    // settling a) keeps b and forgets a.
    deliver(&store, b, 100, 0).unwrap();
    std::mem::forget(retry);
    drop(store);
    let store = Arc::new(ReplayStore::open(Some(&path), 10, 1).unwrap());
    assert_eq!(deliver(&store, b, 100, 1), Ok(false), "committed survives");
    assert_eq!(
        deliver(&store, a, 100, 1),
        Ok(true),
        "uncommitted does not come back"
    );
    drop(store);
    let store = Arc::new(ReplayStore::open(Some(&path), 10, 2).unwrap());
    assert_eq!(
        deliver(&store, a, 100, 2),
        Ok(false),
        "then committed, it survives"
    );
}
