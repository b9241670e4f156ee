use super::*;
use crate::sidecar::config::{Config, ConfigError};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, "test.yaml", Path::new("/base"))
}

const REST: &str = "inbound:\n  listen: 127.0.0.1:15006\n  app: 127.0.0.1:8080\n";

fn refused_at(identity: &str) -> (usize, String) {
    match parse(&format!("{identity}{REST}")).expect_err("must be refused") {
        ConfigError::At { line, message, .. } => (line, message),
        other => panic!("expected a located error, got {other}"),
    }
}

#[test]
fn workload_api_alone_is_an_identity() {
    let c = parse(&format!(
        "identity:\n  workload_api:\n    socket: unix:///run/spire/agent.sock\n    hint: internal\n{REST}"
    ))
    .unwrap();
    let api = c.identity.workload_api.as_ref().unwrap();
    assert_eq!(api.hint.as_deref(), Some("internal"));
    assert_eq!(
        api.socket_path(None).unwrap(),
        PathBuf::from("/run/spire/agent.sock")
    );
    // The files are not given, and /config does not pretend they are.
    let json = serde_json::to_string(&c.identity).unwrap();
    assert!(!json.contains("\"cert\""), "{json}");
    assert!(json.contains("agent.sock"), "{json}");
}

#[test]
fn files_and_workload_api_together_are_refused_at_the_workload_api_line() {
    let (line, msg) = refused_at(
        "identity:\n  cert: a\n  key: b\n  bundle: c\n  workload_api:\n    socket: unix:///s\n",
    );
    assert_eq!(line, 5);
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn no_identity_source_is_refused() {
    let (line, msg) = refused_at("identity: {}\n");
    assert_eq!(line, 1);
    assert!(msg.contains("workload_api"), "{msg}");
}

#[test]
fn a_missing_file_of_the_three_is_named() {
    let (_, msg) = refused_at("identity:\n  cert: a\n  bundle: c\n");
    assert!(msg.contains("identity.key is missing"), "{msg}");
}

#[test]
fn federated_bundle_files_do_not_mix_with_the_stream() {
    let (line, msg) = refused_at(
        "identity:\n  workload_api:\n    socket: unix:///s\n  federated_bundles:\n    other.org: o.pem\n",
    );
    assert_eq!(line, 4);
    assert!(msg.contains("streams federated bundles"), "{msg}");
}

#[test]
fn a_bad_socket_is_refused_with_its_line() {
    let (line, msg) = refused_at("identity:\n  workload_api:\n    socket: tcp://127.0.0.1:8081\n");
    assert_eq!(line, 2);
    assert!(msg.contains("TCP endpoints are not supported"), "{msg}");
}

#[test]
fn the_socket_comes_from_the_environment_when_the_file_gives_none() {
    let api = WorkloadApiConfig::default();
    assert_eq!(
        api.socket_path(Some("unix:///spiffe-workload-api/spire-agent.sock"))
            .unwrap(),
        PathBuf::from("/spiffe-workload-api/spire-agent.sock")
    );
    let err = api.socket_path(None).unwrap_err();
    assert!(err.contains(ENDPOINT_ENV), "{err}");
    let err = api.socket_path(Some("/no/scheme")).unwrap_err();
    assert!(
        err.contains(ENDPOINT_ENV) && err.contains("unix:///"),
        "{err}"
    );
    // The file wins over the environment.
    let api = WorkloadApiConfig {
        socket: Some("unix:/from/file".into()),
        hint: None,
    };
    assert_eq!(
        api.socket_path(Some("unix:///from/env")).unwrap(),
        PathBuf::from("/from/file")
    );
}

#[test]
fn unix_uris_follow_the_workload_endpoint_standard() {
    assert_eq!(
        parse_unix_uri("unix:///a/b.sock").unwrap(),
        PathBuf::from("/a/b.sock")
    );
    assert_eq!(
        parse_unix_uri("unix:/a/b.sock").unwrap(),
        PathBuf::from("/a/b.sock")
    );
    for bad in [
        "unix://host/a.sock",
        "unix:relative.sock",
        "unix:///",
        "unix:///dir/",
        "unix:///a.sock?x=1",
        "unix:///a.sock#f",
        "/a.sock",
        "tcp://1.2.3.4:5",
        "",
    ] {
        assert!(parse_unix_uri(bad).is_err(), "{bad:?} must be refused");
    }
}
