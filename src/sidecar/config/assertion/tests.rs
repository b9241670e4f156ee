use super::super::{Config, ConfigError};
use super::AssertionMode;
use std::path::Path;

const HEAD: &str =
    "identity:\n  cert: c\n  key: k\n  bundle: b\ninbound:\n  listen: 0.0.0.0:15006\n  app: 127.0.0.1:8080\n";

fn parse(body: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!("{HEAD}{body}"), "m.yaml", Path::new("/etc/mg"))
}

/// (line, message) of a located error.
fn error_at(body: &str) -> (usize, String) {
    match parse(body).expect_err("must be refused") {
        ConfigError::At { line, message, .. } => (line, message),
        other => panic!("expected a located error, got {other}"),
    }
}

#[test]
fn modes_parse_with_their_files_resolved() {
    let c = parse("assertion:\n  key_file: run/keys\n").unwrap();
    let a = c.assertion.unwrap();
    assert_eq!(a.mode, AssertionMode::Hmac, "the default");
    assert_eq!(a.key_file.unwrap(), Path::new("/etc/mg/run/keys"));
    for (text, mode) in [
        ("ed25519", AssertionMode::Ed25519),
        ("es256", AssertionMode::Es256),
    ] {
        let c = parse(&format!(
            "assertion:\n  mode: {text}\n  jwks_file: run/jwks.json\n"
        ))
        .unwrap();
        let a = c.assertion.unwrap();
        assert_eq!(a.mode, mode);
        assert!(a.key_file.is_none());
        assert_eq!(a.jwks_file.unwrap(), Path::new("/etc/mg/run/jwks.json"));
    }
    // The JWKS file is optional: the admin listener serves the keys too.
    parse("assertion:\n  mode: ed25519\n").unwrap();
}

#[test]
fn wrong_files_for_the_mode_are_refused_at_their_line() {
    let (line, message) = error_at("assertion:\n  mode: ed25519\n  key_file: /run/k\n");
    assert_eq!(line, 10, "{message}");
    assert!(message.contains("remove key_file"), "{message}");
    let (line, message) = error_at("assertion:\n  key_file: /run/k\n  jwks_file: /run/j\n");
    assert_eq!(line, 10, "{message}");
    assert!(
        message.contains("jwks_file is for mode ed25519 or es256"),
        "{message}"
    );
    let (line, message) = error_at("assertion:\n  mode: hmac\n");
    assert_eq!(line, 8, "{message}");
    assert!(message.contains("mode hmac needs key_file"), "{message}");
}

#[test]
fn an_unknown_mode_and_bad_times_are_refused_at_their_line() {
    let (line, message) = error_at("assertion:\n  mode: rsa\n");
    assert_eq!(line, 9, "{message}");
    assert!(
        message.contains("hmac") && message.contains("es256"),
        "{message}"
    );
    let (line, message) = error_at("assertion:\n  mode: es256\n  ttl_s: 60\n  grace_s: 30\n");
    assert_eq!(line, 11, "{message}");
    assert!(
        message.contains("grace_s must be at least ttl_s"),
        "{message}"
    );
    let (line, message) = error_at("assertion:\n  mode: es256\n  rotate_s: 5\n");
    assert_eq!(line, 10, "{message}");
    assert!(
        message.contains("rotate_s must be at least 60"),
        "{message}"
    );
}

#[test]
fn an_assertion_needs_an_inbound() {
    let text =
        "identity:\n  cert: c\n  key: k\n  bundle: b\noutbound:\n  listen: 127.0.0.1:15001\n  \
                routes: []\nassertion:\n  mode: ed25519\n";
    match Config::from_yaml(text, "m.yaml", Path::new("/")).expect_err("refused") {
        ConfigError::At { line, message, .. } => {
            assert_eq!(line, 8, "{message}");
            assert!(message.contains("needs `inbound`"), "{message}");
        }
        other => panic!("{other}"),
    }
}
