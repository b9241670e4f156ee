use super::*;

const GOOD: &str = r#"
identity:
  cert: certs/tls.crt
  key: certs/tls.key
  bundle: /etc/bundle.pem
inbound:
  listen: 0.0.0.0:15006
  app: 127.0.0.1:8080
outbound:
  listen: 127.0.0.1:15001
  routes:
    - host: server.default.svc.cluster.local
      peer: 127.0.0.1:16006
      identity: spiffe://cluster.local/ns/default/sa/server
    - listen: 127.0.0.1:15002
      peer: db.local:5432
      identity: spiffe://cluster.local/ns/db/sa/postgres
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, "test.yaml", Path::new("/base"))
}

fn error_at(text: &str) -> (usize, String) {
    match parse(text).expect_err("must be refused") {
        ConfigError::At {
            line,
            message,
            file,
            ..
        } => {
            assert_eq!(file, "test.yaml");
            (line, message)
        }
        other => panic!("expected a located error, got {other}"),
    }
}

#[test]
fn parses_a_full_config_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.identity.cert, Path::new("/base/certs/tls.crt"));
    assert_eq!(
        c.identity.bundle,
        Path::new("/etc/bundle.pem"),
        "absolute paths stay"
    );
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_ADDR);
    assert_eq!(c.runtime.workers, 1);
    let out = c.outbound.unwrap();
    assert_eq!(out.protocol, UpstreamProtocol::Http2, "the default");
    assert_eq!(out.routes.len(), 2);
    assert_eq!(
        out.routes[1].identity.as_str(),
        "spiffe://cluster.local/ns/db/sa/postgres"
    );
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let text = GOOD.replace("  app: 127.0.0.1:8080", "  app: 127.0.0.1:8080\n  aap: 1");
    let (line, msg) = error_at(&text);
    assert_eq!(line, 9);
    assert!(msg.contains("unknown field `aap`"), "{msg}");
}

#[test]
fn invalid_spiffe_id_is_refused_with_its_line() {
    let text = GOOD.replace(
        "spiffe://cluster.local/ns/default/sa/server",
        "spiffe://Cluster.local/ns/default/sa/server",
    );
    let (line, msg) = error_at(&text);
    assert_eq!(line, 14);
    assert!(msg.contains("invalid SPIFFE ID"), "{msg}");
}

#[test]
fn bad_address_is_refused_with_its_line() {
    let (line, msg) = error_at(&GOOD.replace("0.0.0.0:15006", "0.0.0.0:notaport"));
    assert_eq!(line, 7);
    assert!(msg.contains("invalid socket address"), "{msg}");
}

#[test]
fn missing_identity_is_refused() {
    let err = parse("inbound:\n  listen: 0.0.0.0:1\n  app: 127.0.0.1:2\n").unwrap_err();
    assert!(
        err.to_string().contains("missing field `identity`"),
        "{err}"
    );
}

#[test]
fn duplicate_route_host_points_at_the_second() {
    let text = GOOD.replace(
        "    - listen: 127.0.0.1:15002",
        "    - host: server.default.svc.cluster.local",
    );
    let (line, msg) = error_at(&text);
    assert_eq!(line, 15);
    assert!(msg.contains("declared twice"), "{msg}");
}

#[test]
fn route_needs_exactly_one_of_host_and_listen() {
    let text = GOOD.replace(
        "    - listen: 127.0.0.1:15002\n",
        "    - host: x\n      listen: 127.0.0.1:15002\n",
    );
    let (_, msg) = error_at(&text);
    assert!(msg.contains("either `host` or `listen`"), "{msg}");
    let text = GOOD.replace("    - listen: 127.0.0.1:15002\n", "    -\n");
    let (_, msg) = error_at(&text);
    assert!(msg.contains("give `host`"), "{msg}");
}

#[test]
fn route_peer_must_have_a_port() {
    let (_, msg) = error_at(&GOOD.replace("db.local:5432", "db.local"));
    assert!(msg.contains("must be host:port"), "{msg}");
}

#[test]
fn route_identity_must_name_a_workload() {
    let (_, msg) = error_at(&GOOD.replace(
        "spiffe://cluster.local/ns/db/sa/postgres",
        "spiffe://cluster.local",
    ));
    assert!(msg.contains("names a trust domain"), "{msg}");
}

#[test]
fn zero_workers_refused() {
    let (line, msg) = error_at(&format!("{GOOD}runtime:\n  workers: 0\n"));
    assert_eq!(line, 19, "{msg}");
}

#[test]
fn nothing_to_do_is_refused() {
    let err = parse("identity:\n  cert: a\n  key: b\n  bundle: c\n").unwrap_err();
    assert!(err.to_string().contains("nothing to do"), "{err}");
}

#[test]
fn shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/meshguard.example.yaml");
    let c = Config::load(&path).unwrap();
    assert!(c
        .identity
        .cert
        .ends_with("certs-dev/default/server/tls.crt"));
    assert_eq!(c.outbound.unwrap().routes.len(), 1);
}

fn quick_start() -> QuickStart {
    QuickStart {
        cert: "tls.crt".into(),
        key: "tls.key".into(),
        bundle: "ca.crt".into(),
        inbound: Some(QuickInbound {
            listen: "127.0.0.1:15006".parse().unwrap(),
            app: "127.0.0.1:8080".parse().unwrap(),
            policy: None,
        }),
        outbound: Some(QuickOutbound {
            listen: None,
            route: RouteConfig {
                host: None,
                listen: Some("127.0.0.1:15001".parse().unwrap()),
                peer: "127.0.0.1:16006".into(),
                identity: "spiffe://cluster.local/ns/default/sa/server"
                    .parse()
                    .unwrap(),
            },
        }),
        admin: None,
    }
}

#[test]
fn quick_start_builds_a_valid_single_route_config() {
    let c = quick_start().validated().unwrap();
    assert_eq!(c.identity.cert, PathBuf::from("tls.crt"));
    assert_eq!(c.inbound.unwrap().app.port(), 8080);
    let out = c.outbound.unwrap();
    assert_eq!(out.listen, None);
    assert_eq!(out.routes.len(), 1);
    assert_eq!(out.routes[0].listen.unwrap().port(), 15001);
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_ADDR);
    assert_eq!(c.runtime.workers, RuntimeConfig::default().workers);
}

#[test]
fn quick_start_refuses_a_host_route_without_an_outbound_listener() {
    let mut q = quick_start();
    let route = &mut q.outbound.as_mut().unwrap().route;
    route.listen = None;
    route.host = Some("server.default.svc.cluster.local".into());
    let err = q.validated().unwrap_err().to_string();
    assert!(err.contains("needs outbound.listen"), "{err}");
}

#[test]
fn quick_start_with_neither_side_is_refused() {
    let mut q = quick_start();
    q.inbound = None;
    q.outbound = None;
    let err = q.validated().unwrap_err().to_string();
    assert!(err.starts_with("nothing to do"), "{err}");
}

#[test]
fn inbound_strip_headers_are_header_names() {
    let with = |names: &str| {
        GOOD.replace(
            "  app: 127.0.0.1:8080\n",
            &format!("  app: 127.0.0.1:8080\n  strip_headers: {names}\n"),
        )
    };
    let c = parse(&with("[X-Vendor-User, x-tenant]")).unwrap();
    assert_eq!(
        c.inbound.unwrap().strip_headers,
        ["X-Vendor-User", "x-tenant"]
    );
    let (line, msg) = error_at(&with(r#"["bad header"]"#));
    assert_eq!(line, 9, "{msg}");
    assert!(
        msg.contains("\"bad header\" is not an HTTP header name"),
        "{msg}"
    );
    let (_, msg) = error_at(&with("[Content-Length]"));
    assert!(msg.contains("cannot be removed"), "{msg}");
    assert!(parse(GOOD)
        .unwrap()
        .inbound
        .unwrap()
        .strip_headers
        .is_empty());
}

#[test]
fn outbound_strip_headers_are_header_names_too() {
    let with = |names: &str| {
        GOOD.replace(
            "  listen: 127.0.0.1:15001\n",
            &format!("  listen: 127.0.0.1:15001\n  strip_headers: {names}\n"),
        )
    };
    let c = parse(&with("[X-Debug-Token]")).unwrap();
    assert_eq!(c.outbound.unwrap().strip_headers, ["X-Debug-Token"]);
    let (line, msg) = error_at(&with(r#"["bad header"]"#));
    assert_eq!(line, 11, "{msg}");
    assert!(
        msg.starts_with("outbound.strip_headers: \"bad header\""),
        "{msg}"
    );
    let (_, msg) = error_at(&with("[Host]"));
    assert!(msg.contains("cannot be removed"), "{msg}");
}

#[test]
fn an_unknown_app_protocol_is_refused_with_its_line() {
    let text = GOOD.replace(
        "  app: 127.0.0.1:8080",
        "  app: 127.0.0.1:8080\n  app_protocol: http3",
    );
    let (line, msg) = error_at(&text);
    assert_eq!(line, 9, "{msg}");
    assert!(msg.contains("http3"), "{msg}");
    for known in ["auto", "http1", "http2"] {
        let text = GOOD.replace(
            "  app: 127.0.0.1:8080",
            &format!("  app: 127.0.0.1:8080\n  app_protocol: {known}"),
        );
        assert!(parse(&text).is_ok(), "{known} must be accepted");
    }
}

#[test]
fn outbound_default_is_an_empty_outbound_section() {
    let c = parse("identity: {cert: c, key: k, bundle: b}\noutbound: {listen: 127.0.0.1:15001}\n")
        .unwrap();
    let parsed = serde_json::to_value(c.outbound.unwrap()).unwrap();
    let default = serde_json::to_value(OutboundConfig {
        listen: Some("127.0.0.1:15001".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(parsed, default);
    assert_eq!(default["h2_connections_per_peer"], 1);
}
