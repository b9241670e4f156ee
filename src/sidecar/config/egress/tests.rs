use super::super::{Config, ConfigError};
use super::EgressMode;
use std::path::Path;

const HEAD: &str = "identity:\n  cert: c\n  key: k\n  bundle: b\noutbound:\n  egress:\n";

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
fn destinations_and_guard_settings_parse() {
    let c = parse(
        "    resolver: 127.0.0.1:5353\n    allow_cidrs: [10.20.0.0/16, 169.254.169.254/32]\n    \
         own_addresses: [203.0.114.7]\n    destinations:\n      \
         - host: api.payments.example\n        mode: originate\n        ca: pay-ca.pem\n      \
         - host: \"*.partner.example\"\n        mode: tls\n        ports: [443, 8443]\n      \
         - host: api.payments.example\n        mode: tls\n",
    )
    .unwrap();
    let e = c.outbound.unwrap().egress;
    assert_eq!(e.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(e.allow_cidrs.len(), 2);
    assert_eq!(e.destinations[0].mode, EgressMode::Originate);
    assert_eq!(e.destinations[0].upstream_port(), 443);
    assert_eq!(
        e.destinations[0].ca.as_deref(),
        Some(Path::new("/etc/mg/pay-ca.pem")),
        "relative to the config file"
    );
    assert_eq!(e.destinations[1].tls_ports(), [443, 8443]);
    assert_eq!(e.destinations[2].tls_ports(), [443], "the default");
}

#[test]
fn bad_destinations_are_refused_at_their_line() {
    let d = "    destinations:\n      - host: ";
    let cases: &[(&str, usize, &str)] = &[
        ("10.0.0.1\n        mode: tls\n", 8, "no IP address"),
        ("api.example:443\n        mode: tls\n", 8, "no port"),
        ("API.example\n        mode: tls\n", 8, "lowercase"),
        ("\"*.com\"\n        mode: tls\n", 8, "top-level domain"),
        (
            "\"*.a.example\"\n        mode: originate\n",
            8,
            "one host name",
        ),
        (
            "a.example\n        mode: tls\n        ca: x.pem\n",
            8,
            "belong to mode originate",
        ),
        (
            "a.example\n        mode: tls\n        ports: []\n",
            8,
            "at least one",
        ),
        (
            "a.example\n        mode: originate\n        ports: [443]\n",
            8,
            "belongs to mode tls",
        ),
        (
            "a.example\n        mode: tls\n      - host: a.example\n        mode: tls\n",
            10,
            "declared twice",
        ),
    ];
    for (body, line, text) in cases {
        let (at, message) = error_at(&format!("{d}{body}"));
        assert!(message.contains(text), "{body:?}: {message}");
        assert_eq!(at, *line, "{body:?}: {message}");
    }
    let (_, message) = error_at(&format!("{d}a.example\n        mode: sometimes\n"));
    assert!(message.contains("unknown variant"), "{message}");
}

#[test]
fn an_allowed_range_may_not_cover_metadata() {
    let (line, message) = error_at("    allow_cidrs: [10.0.0.0/8, 169.254.0.0/16]\n");
    assert_eq!(line, 7);
    assert!(message.contains("169.254.169.254"), "{message}");
    let (_, message) = error_at("    allow_cidrs: [\"::/0\"]\n");
    assert!(message.contains("fd00:ec2::254"), "{message}");
    assert!(parse("    allow_cidrs: [169.254.169.254/32, 127.0.0.1/32]\n").is_ok());
}

#[test]
fn the_config_view_loads_back_to_the_same_config() {
    let c = parse(
        "    resolver: \"[::1]:53\"\n    allow_cidrs: [10.20.0.0/16]\n    listen: 127.0.0.1:15443\n    \
         destinations:\n      - host: \"*.partner.example\"\n        mode: tls\n      \
         - host: api.payments.example\n        mode: originate\n        port: 8443\n        ca: ca.pem\n",
    )
    .unwrap();
    let yaml = serde_norway::to_string(&c).unwrap();
    let again = Config::from_yaml(&yaml, "again.yaml", Path::new("/elsewhere")).unwrap();
    assert_eq!(serde_norway::to_string(&again).unwrap(), yaml);
}
