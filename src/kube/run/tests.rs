use super::*;

fn config() -> Config {
    let yaml = "identity:\n  cert: c\n  key: k\n  bundle: b\ninbound:\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\n  tcp_ports: [5432]\n";
    Config::from_yaml(yaml, "m.yaml", std::path::Path::new("/")).unwrap()
}

fn ports(config: &Config) -> Vec<u16> {
    config.inbound.as_ref().unwrap().tcp_ports.clone()
}

#[test]
fn tcp_ports_from_the_environment_join_the_configured_ones_once() {
    let mut c = config();
    add_inbound_tcp_ports(&mut c, "6379, 5432,11211").unwrap();
    assert_eq!(ports(&c), [5432, 6379, 11211]);
    add_inbound_tcp_ports(&mut c, "").unwrap();
    assert_eq!(ports(&c), [5432, 6379, 11211]);
}

#[test]
fn a_value_that_is_not_a_port_refuses_to_start_naming_it() {
    for bad in ["0", "70000", "6379,,1", "redis", "+80", "6379;80"] {
        let mut c = config();
        let err = add_inbound_tcp_ports(&mut c, bad).unwrap_err().to_string();
        assert!(err.starts_with("MESHGUARD_INBOUND_TCP_PORTS: "), "{err}");
        assert!(err.contains("is not a port"), "{bad}: {err}");
        assert_eq!(ports(&c), [5432], "nothing is added from a bad value");
    }
}

#[test]
fn tcp_ports_without_an_inbound_are_refused() {
    let yaml = "identity:\n  cert: c\n  key: k\n  bundle: b\noutbound:\n  listen: 127.0.0.1:1\n";
    let mut c = Config::from_yaml(yaml, "m.yaml", std::path::Path::new("/")).unwrap();
    let err = add_inbound_tcp_ports(&mut c, "6379").unwrap_err();
    assert!(matches!(err, TcpPortsError::NoInbound), "{err}");
}

#[test]
fn the_assertion_mode_from_the_environment_writes_to_the_shared_volume() {
    let mut c = config();
    add_assertion(&mut c, "hmac").unwrap();
    let a = c.assertion.as_ref().unwrap();
    assert_eq!(a.mode, AssertionMode::Hmac);
    assert_eq!(
        a.key_file.as_deref(),
        Some(std::path::Path::new("/var/run/meshguard/assertion/key"))
    );
    assert_eq!(a.key_file_access, KeyFileAccess::All);
    assert!(a.jwks_file.is_none());
    for (value, mode) in [
        ("ed25519", AssertionMode::Ed25519),
        ("es256", AssertionMode::Es256),
    ] {
        let mut c = config();
        add_assertion(&mut c, value).unwrap();
        let a = c.assertion.as_ref().unwrap();
        assert_eq!(a.mode, mode);
        assert!(a.key_file.is_none(), "an asymmetric key stays in memory");
        assert_eq!(
            a.jwks_file.as_deref(),
            Some(std::path::Path::new(
                "/var/run/meshguard/assertion/jwks.json"
            ))
        );
    }
}

#[test]
fn a_bad_or_conflicting_assertion_mode_refuses_to_start() {
    let mut c = config();
    let err = add_assertion(&mut c, "rsa").unwrap_err().to_string();
    assert!(err.starts_with("MESHGUARD_ASSERTION: \"rsa\""), "{err}");
    assert!(c.assertion.is_none());
    add_assertion(&mut c, "hmac").unwrap();
    assert!(matches!(
        add_assertion(&mut c, "hmac"),
        Err(AssertionEnvError::Twice)
    ));
    let yaml = "identity:\n  cert: c\n  key: k\n  bundle: b\noutbound:\n  listen: 127.0.0.1:1\n";
    let mut c = Config::from_yaml(yaml, "m.yaml", std::path::Path::new("/")).unwrap();
    assert!(matches!(
        add_assertion(&mut c, "hmac"),
        Err(AssertionEnvError::NoInbound)
    ));
}
