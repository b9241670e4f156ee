use super::super::{Config, ConfigError};
use super::DestinationProtocol;
use std::path::Path;

const HEAD: &str = "identity:\n  cert: c\n  key: k\n  bundle: b\n";

fn parse(body: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!("{HEAD}{body}"), "m.yaml", Path::new("/"))
}

/// (line, message) of a located error.
fn error_at(body: &str) -> (usize, String) {
    match parse(body).expect_err("must be refused") {
        ConfigError::At { line, message, .. } => (line, message),
        other => panic!("expected a located error, got {other}"),
    }
}

#[test]
fn tcp_ports_routes_and_destinations_parse() {
    let c = parse(
        "inbound:\n  listen: 0.0.0.0:15006\n  app: 127.0.0.1:8080\n  tcp_ports: [6379, 5432]\n\
         outbound:\n  tcp_routes:\n    - listen: 127.0.0.1:6379\n      peer: redis.shop:15006\n      \
         identity: spiffe://cluster.local/ns/shop/sa/redis\n      port: 6379\n  destinations:\n    \
         - cidr: 10.96.0.0/12\n      ports: [6379]\n      identity: spiffe://cluster.local/ns/shop/sa/redis\n      \
         protocol: tcp\n    - cidr: 10.0.0.0/8\n      identity: spiffe://cluster.local/ns/shop/sa/web\n",
    )
    .unwrap();
    assert_eq!(c.inbound.unwrap().tcp_ports, [6379, 5432]);
    let out = c.outbound.unwrap();
    assert_eq!(out.tcp_routes[0].port, 6379);
    assert_eq!(out.tcp_routes[0].peer, "redis.shop:15006");
    assert_eq!(out.destinations[0].protocol, DestinationProtocol::Tcp);
    assert_eq!(
        out.destinations[1].protocol,
        DestinationProtocol::Http,
        "the default"
    );
}

#[test]
fn bad_tcp_settings_are_refused_at_their_line() {
    let inbound = "inbound:\n  listen: 0.0.0.0:15006\n  app: 127.0.0.1:8080\n";
    let (line, message) = error_at(&format!("{inbound}  tcp_ports: [6379, 6379]\n"));
    assert_eq!(line, 8);
    assert_eq!(message, "inbound.tcp_ports: port 6379 is listed twice");
    let (line, message) = error_at(&format!("{inbound}  tcp_ports: [0]\n"));
    assert_eq!(
        (line, message.as_str()),
        (8, "inbound.tcp_ports: port 0 is not a port")
    );
    let (line, message) = error_at(&format!("{inbound}  tcp_ports: [70000]\n"));
    assert_eq!(line, 8, "{message}");

    let route = |peer: &str, id: &str, port: &str| {
        format!(
            "outbound:\n  tcp_routes:\n    - listen: 127.0.0.1:1\n      peer: {peer}\n      identity: {id}\n      port: {port}\n"
        )
    };
    let id = "spiffe://td/ns/a/sa/b";
    let (line, message) = error_at(&route("redis.shop", id, "6379"));
    assert_eq!(line, 8);
    assert_eq!(
        message,
        "outbound.tcp_routes[0]: peer \"redis.shop\" must be host:port"
    );
    let (_, message) = error_at(&route("r:1", id, "0"));
    assert_eq!(message, "outbound.tcp_routes[0]: port 0 is not a port");
    let (_, message) = error_at(&route("r:1", "spiffe://td", "1"));
    assert!(
        message.contains("names a trust domain, not a workload"),
        "{message}"
    );
    let (line, message) = error_at(
        "outbound:\n  tcp_routes:\n    - listen: 127.0.0.1:1\n      peer: r:1\n      identity: spiffe://td/ns/a/sa/b\n",
    );
    assert_eq!(line, 7, "{message}");
    assert!(message.contains("missing field `port`"), "{message}");
    let (_, message) = error_at(
        "outbound:\n  destinations:\n    - cidr: 10.0.0.0/8\n      identity: spiffe://td/ns/a/sa/b\n      protocol: udp\n",
    );
    assert!(message.contains("unknown variant `udp`"), "{message}");
}
