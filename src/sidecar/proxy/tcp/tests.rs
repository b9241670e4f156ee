use super::*;

#[test]
fn alpn_token_names_the_port_in_canonical_decimal() {
    assert_eq!(alpn(6379), b"meshguard-tcp/6379".to_vec());
    assert_eq!(port_of_alpn(b"meshguard-tcp/6379"), Some(6379));
    assert_eq!(port_of_alpn(b"meshguard-tcp/65535"), Some(65535));
    for bad in [
        &b"meshguard-tcp/"[..],
        b"meshguard-tcp/0",
        b"meshguard-tcp/06379",
        b"meshguard-tcp/+6379",
        b"meshguard-tcp/65536",
        b"meshguard-tcp/63 79",
        b"meshguard-tcp/6379/",
        b"h2",
        b"MESHGUARD-TCP/6379",
    ] {
        assert_eq!(port_of_alpn(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    assert!(is_tcp(Some(b"meshguard-tcp/1")));
    assert!(!is_tcp(Some(b"h2")));
    assert!(!is_tcp(None));
}

#[test]
fn drain_grace_leaves_a_fifth_of_the_deadline_for_the_close() {
    let yaml = "identity:\n  cert: c\n  key: k\n  bundle: b\ninbound:\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\nshutdown:\n  drain_delay_ms: 5000\n  deadline_ms: 25000\n";
    let config = Config::from_yaml(yaml, "m.yaml", std::path::Path::new("/")).unwrap();
    let settings = TcpSettings::new(&config);
    assert_eq!(settings.drain_grace, Duration::from_secs(16));
    assert_eq!(settings.idle_timeout, Some(Duration::from_secs(300)));
}
