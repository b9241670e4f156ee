//! `ed25519` and `es256`: the JWKS published, and assertions checked by the
//! documented verifier (`examples/verify_assertion_jwks.py`, python
//! `cryptography`) and by aws-lc-rs from the JWK's coordinates alone.

use super::super::keys::SigningKey;
use super::*;
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
use base64::Engine;
use serde_json::Value;

const MODES: [AssertionMode; 2] = [AssertionMode::Ed25519, AssertionMode::Es256];

fn asym(mode: AssertionMode, dir: &Path) -> Arc<Assertion> {
    Assertion::start(&AssertionConfig {
        mode,
        jwks_file: Some(dir.join("jwks.json")),
        ..Default::default()
    })
    .unwrap()
}

fn jwks_verifier(h: &str, target: &str, jwks: &Path, now: i64) -> Result<String, String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/verify_assertion_jwks.py"
    );
    let out = Command::new("python3")
        .args([script, h, ID, "GET", target, jwks.to_str().unwrap()])
        .arg(now.to_string())
        .output()
        .expect("python3 with cryptography (see tests/README.md)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

fn read_jwks(file: &Path) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    doc["keys"].as_array().unwrap().clone()
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

/// Verifies with aws-lc-rs from the JWK only (not through our signer).
fn verify_with_jwk(jwk: &Value, h: &str, target: &str) -> bool {
    let parts: Vec<&str> = h.split('.').collect();
    let msg = format!(
        "meshguard-assertion-v1\n{}\n{}\n{}\n{}\n{ID}\nGET\n{target}",
        parts[1], parts[2], parts[3], parts[4]
    );
    let sig = B64.decode(parts[5]).unwrap();
    match jwk["alg"].as_str().unwrap() {
        "EdDSA" => UnparsedPublicKey::new(&ED25519, b64(&jwk["x"]))
            .verify(msg.as_bytes(), &sig)
            .is_ok(),
        "ES256" => {
            let point = [&[4u8][..], &b64(&jwk["x"]), &b64(&jwk["y"])].concat();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(msg.as_bytes(), &sig)
                .is_ok()
        }
        other => panic!("alg {other}"),
    }
}

#[test]
fn the_jwks_has_the_rfc_shape_and_no_private_member_and_the_file_is_0444() {
    use std::os::unix::fs::PermissionsExt;
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let a = asym(mode, dir.path());
        let file = dir.path().join("jwks.json");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444, "{mode:?}");
        let keys = read_jwks(&file);
        assert_eq!(keys.len(), 1);
        let k = keys[0].as_object().unwrap();
        let mut members: Vec<&str> = k.keys().map(String::as_str).collect();
        members.sort();
        let h = header(&a, ID, "GET", "/", 1_800_000_000);
        assert_eq!(
            k["kid"],
            h.split('.').nth(1).unwrap(),
            "the header names the kid"
        );
        assert_eq!(k["use"], "sig");
        match mode {
            AssertionMode::Ed25519 => {
                assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x"]);
                assert_eq!(
                    (&k["kty"], &k["crv"], &k["alg"]),
                    (&"OKP".into(), &"Ed25519".into(), &"EdDSA".into())
                );
                assert_eq!(b64(&k["x"]).len(), 32);
            }
            _ => {
                assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
                assert_eq!(
                    (&k["kty"], &k["crv"], &k["alg"]),
                    (&"EC".into(), &"P-256".into(), &"ES256".into())
                );
                assert_eq!((b64(&k["x"]).len(), b64(&k["y"]).len()), (32, 32));
            }
        }
        // What the admin listener serves is the file's document.
        assert_eq!(a.jwks().unwrap(), std::fs::read(&file).unwrap());
        // Nothing else was written: the private key never touches the disk.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["jwks.json"]);
    }
}

#[test]
fn an_asymmetric_assertion_verifies_with_the_jwks_and_refuses_tampering() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let a = asym(mode, dir.path());
        let jwks = dir.path().join("jwks.json");
        let now = 1_800_000_000;
        let h = header(&a, ID, "GET", "/orders/7?x=1", now);
        let parts: Vec<&str> = h.split('.').collect();
        assert_eq!((parts.len(), parts[0]), (6, "v1"), "{h}");
        assert_eq!(B64.decode(parts[5]).unwrap().len(), 64, "{mode:?}");
        let jwk = &read_jwks(&jwks)[0];
        assert!(verify_with_jwk(jwk, &h, "/orders/7?x=1"), "{mode:?}");
        assert!(!verify_with_jwk(jwk, &h, "/orders/8?x=1"), "{mode:?}");
        let rid = jwks_verifier(&h, "/orders/7?x=1", &jwks, now + 1).unwrap();
        assert_eq!(rid, parts[4]);
        // Replayed on another path; a later expiry; one bit of the signature.
        assert_eq!(
            jwks_verifier(&h, "/admin", &jwks, now),
            Err("refused: bad signature".into())
        );
        let later = h.replacen(parts[3], &(now + 9999).to_string(), 1);
        assert_eq!(
            jwks_verifier(&later, "/orders/7?x=1", &jwks, now),
            Err("refused: bad signature".into())
        );
        let mut sig = B64.decode(parts[5]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}", parts[..5].join("."), B64.encode(&sig));
        assert_eq!(
            jwks_verifier(&flipped, "/orders/7?x=1", &jwks, now),
            Err("refused: bad signature".into())
        );
        assert_eq!(
            jwks_verifier(&h, "/orders/7?x=1", &jwks, now + 31),
            Err("refused: expired".into())
        );
        assert_eq!(
            jwks_verifier("", "/orders/7?x=1", &jwks, now),
            Err("refused: missing".into())
        );
    }
}

#[test]
fn a_key_not_in_the_jwks_is_refused_even_under_a_published_kid() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let ours = asym(mode, dir.path());
        let jwks = dir.path().join("jwks.json");
        let other = tempfile::tempdir().unwrap();
        let theirs = asym(mode, other.path());
        let now = 1_800_000_000;
        let h = header(&theirs, ID, "GET", "/", now);
        assert_eq!(
            jwks_verifier(&h, "/", &jwks, now),
            Err("refused: unknown key".into())
        );
        // Our kid, signed with another key of the same kind.
        let kid = ours.keys.load().current.kid.clone();
        let stranger = SigningKey::generate(mode).unwrap();
        let msg = format!(
            "meshguard-assertion-v1\n{kid}\n{now}\n{}\nr-1\n{ID}\nGET\n/",
            now + 30
        );
        let mut forged = format!("v1.{kid}.{now}.{}.r-1.", now + 30);
        stranger.sign_into(&[msg.as_bytes()], &mut forged).unwrap();
        assert_eq!(
            jwks_verifier(&forged, "/", &jwks, now),
            Err("refused: bad signature".into())
        );
        // The same bytes signed by our key pass: the forgery differs only in the key.
        let mut real = format!("v1.{kid}.{now}.{}.r-1.", now + 30);
        ours.keys
            .load()
            .current
            .sign_into(&[msg.as_bytes()], &mut real)
            .unwrap();
        jwks_verifier(&real, "/", &jwks, now).unwrap();
    }
}

#[test]
fn a_rotation_publishes_the_new_key_first_and_keeps_the_old_for_the_grace() {
    use std::os::unix::fs::PermissionsExt;
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let a = asym(mode, dir.path());
        let jwks = dir.path().join("jwks.json");
        let now = 1_800_000_000;
        let before = header(&a, ID, "GET", "/", now);
        let old_kid = a.rotate().unwrap();
        assert_eq!(before.split('.').nth(1), Some(old_kid.as_str()));
        let after = header(&a, ID, "GET", "/", now);
        let new_kid = after.split('.').nth(1).unwrap();
        assert_ne!(new_kid, old_kid);
        let kids: Vec<Value> = read_jwks(&jwks).iter().map(|k| k["kid"].clone()).collect();
        assert_eq!(
            kids,
            [Value::from(new_kid), Value::from(old_kid.clone())],
            "newest first"
        );
        assert_eq!(a.jwks().unwrap(), std::fs::read(&jwks).unwrap());
        // During the grace period both verify: no request in flight is lost.
        jwks_verifier(&before, "/", &jwks, now).unwrap();
        jwks_verifier(&after, "/", &jwks, now).unwrap();
        a.retire().unwrap();
        assert_eq!(read_jwks(&jwks).len(), 1);
        assert_eq!(
            jwks_verifier(&before, "/", &jwks, now),
            Err("refused: unknown key".into())
        );
        jwks_verifier(&after, "/", &jwks, now).unwrap();
        let mode_bits = std::fs::metadata(&jwks).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_bits, 0o444);
    }
}

#[test]
fn hmac_mode_publishes_no_jwks_and_asymmetric_mode_no_key_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(signer(dir.path()).jwks().is_none());
    let a = Assertion::start(&AssertionConfig {
        mode: AssertionMode::Ed25519,
        ..Default::default()
    })
    .unwrap();
    assert!(
        a.jwks().is_some(),
        "served at the admin listener without a file"
    );
    assert!(read_secret_free(&a));
}

/// No member of the served JWKS is private key material (`d`, `k`).
fn read_secret_free(a: &Assertion) -> bool {
    let doc: Value = serde_json::from_slice(&a.jwks().unwrap()).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("d").is_none() && k.get("k").is_none())
}
