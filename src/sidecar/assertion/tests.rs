//! The assertion checked by the documented verifier
//! (`examples/verify_assertion.py`), independent code in a child process.

use super::*;
use http::HeaderMap;
use std::process::Command;

fn signer(dir: &std::path::Path) -> Arc<Assertion> {
    let cfg = AssertionConfig {
        key_file: Some(dir.join("keys")),
        ..Default::default()
    };
    Assertion::start(&cfg).unwrap()
}

fn header(a: &Assertion, caller: &str, method: &str, target: &str, now: i64) -> String {
    let mut h = HeaderMap::new();
    a.stamp(&mut h, caller, method, target, now);
    h[ASSERTION_HEADER].to_str().unwrap().to_owned()
}

/// The documented verifier's verdict: Ok(rid) or Err(reason).
fn python(
    h: &str,
    caller: &str,
    method: &str,
    target: &str,
    file: &Path,
    now: i64,
) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_assertion.py");
    let out = Command::new("python3")
        .args([
            script,
            h,
            caller,
            method,
            target,
            file.to_str().unwrap(),
            &now.to_string(),
        ])
        .output()
        .expect("python3 (see tests/README.md)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

use std::path::Path;

mod asymmetric;

const ID: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

#[test]
fn verifier_accepts_ours_and_refuses_tampering_expiry_and_other_paths() {
    let dir = tempfile::tempdir().unwrap();
    let a = signer(dir.path());
    let file = dir.path().join("keys");
    let now = 1_800_000_000;
    let h = header(&a, ID, "POST", "/orders?x=1", now);
    let rid = python(&h, ID, "POST", "/orders?x=1", &file, now + 1).unwrap();
    assert!(h.contains(&rid), "{rid} in {h}");
    // Replayed on another path, method or caller.
    assert!(python(&h, ID, "POST", "/admin", &file, now).is_err());
    assert!(python(&h, ID, "GET", "/orders?x=1", &file, now).is_err());
    let other = "spiffe://cluster.local/ns/shop/sa/mallory";
    assert!(python(&h, other, "POST", "/orders?x=1", &file, now).is_err());
    // Expired.
    assert_eq!(
        python(&h, ID, "POST", "/orders?x=1", &file, now + 31),
        Err("refused: expired".into())
    );
    // A changed field (a later expiry) breaks the MAC.
    let mut parts: Vec<String> = h.split('.').map(str::to_owned).collect();
    parts[3] = (now + 9999).to_string();
    let forged = parts.join(".");
    assert_eq!(
        python(&forged, ID, "POST", "/orders?x=1", &file, now),
        Err("refused: bad mac".into())
    );
    // Each request gets its own id.
    let h2 = header(&a, ID, "POST", "/orders?x=1", now);
    assert_ne!(h.split('.').nth(4), h2.split('.').nth(4));
}

#[test]
fn key_file_is_0400_and_rotation_keeps_the_previous_key_for_the_grace() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = signer(dir.path());
    let file = dir.path().join("keys");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let now = 1_800_000_000;
    let before = header(&a, ID, "GET", "/", now);
    a.rotate().unwrap();
    let after = header(&a, ID, "GET", "/", now);
    assert_ne!(before.split('.').nth(1), after.split('.').nth(1), "new kid");
    // In the grace period both verify: no request in flight is lost.
    python(&before, ID, "GET", "/", &file, now).unwrap();
    python(&after, ID, "GET", "/", &file, now).unwrap();
    a.retire().unwrap();
    assert_eq!(
        python(&before, ID, "GET", "/", &file, now),
        Err("refused: unknown key".into())
    );
    python(&after, ID, "GET", "/", &file, now).unwrap();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
}

#[test]
fn an_assertion_made_without_the_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ours = signer(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let theirs = signer(other_dir.path());
    let now = 1_800_000_000;
    let h = header(&theirs, ID, "GET", "/", now);
    assert!(python(&h, ID, "GET", "/", &dir.path().join("keys"), now).is_err());
}

#[test]
fn key_file_access_sets_the_mode_and_rotation_keeps_it() {
    use crate::sidecar::config::KeyFileAccess;
    use std::os::unix::fs::PermissionsExt;
    for (access, want) in [(KeyFileAccess::Group, 0o440), (KeyFileAccess::All, 0o444)] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        let a = Assertion::start(&AssertionConfig {
            key_file: Some(file.clone()),
            key_file_access: access,
            ..Default::default()
        })
        .unwrap();
        let mode = || std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), want, "{access:?}");
        a.rotate().unwrap();
        assert_eq!(mode(), want, "{access:?} after a rotation");
    }
}
