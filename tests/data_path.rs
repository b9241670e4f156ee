//! The whole path over real loopback sockets: app -> outbound sidecar ->
//! mTLS -> inbound sidecar -> app, and every refusal along the way.

mod support;

use meshguard::sidecar::config::{OutboundConfig, RouteConfig};
use meshguard::sidecar::tls::UpstreamProtocol;
use support::*;

const SERVER_HOST: &str = "server.default.svc.cluster.local";

struct Pair {
    pki: Pki,
    app: RecordingApp,
    server: meshguard::sidecar::app::Running,
    client: meshguard::sidecar::app::Running,
}

async fn pair(protocol: UpstreamProtocol) -> Pair {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = start_inbound(&pki, "server", app.addr).await;
    let mut cfg = outbound_config(
        pki.identity("client", &id("default", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    cfg.outbound.as_mut().unwrap().protocol = protocol;
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    Pair {
        pki,
        app,
        server,
        client,
    }
}

#[tokio::test]
async fn request_crosses_two_sidecars_over_http1() {
    let p = pair(UpstreamProtocol::Http1).await;
    for i in 0..5 {
        let (status, body) = http_get(
            p.client.outbound.unwrap(),
            SERVER_HOST,
            &format!("/r/{i}"),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "app ok, 0 body bytes");
    }
    assert_eq!(p.app.count(), 5);
    let seen = p.app.last();
    assert_eq!(seen.target, "/r/4");
    assert_eq!(seen.header("host"), vec![SERVER_HOST]);
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
}

#[tokio::test]
async fn request_crosses_two_sidecars_over_http2() {
    let p = pair(UpstreamProtocol::Http2).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        let addr = p.client.outbound.unwrap();
        handles.push(tokio::spawn(async move {
            http_get(addr, SERVER_HOST, &format!("/c/{i}"), &[]).await
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert_eq!(p.app.count(), 10);
    assert_eq!(p.app.last().header("host"), vec![SERVER_HOST]);
}

#[tokio::test]
async fn host_matching_ignores_case_and_port() {
    let p = pair(UpstreamProtocol::Http1).await;
    let (status, _) = http_get(
        p.client.outbound.unwrap(),
        "Server.Default.Svc.Cluster.Local:8080",
        "/",
        &[],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn app_cannot_send_identity_headers_through_outbound() {
    let p = pair(UpstreamProtocol::Http1).await;
    let forged = [
        (
            "x-meshguard-client-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        ),
        ("x-forwarded-client-cert", "URI=spiffe://evil"),
    ];
    let (status, _) = http_get(p.client.outbound.unwrap(), SERVER_HOST, "/", &forged).await;
    assert_eq!(status, 200);
    let seen = p.app.last();
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
    assert!(seen.header("x-forwarded-client-cert")[0]
        .ends_with("URI=spiffe://cluster.local/ns/default/sa/client"));
}

#[tokio::test]
async fn undeclared_destination_is_refused_and_nothing_leaves() {
    let p = pair(UpstreamProtocol::Http1).await;
    let (status, body) = http_get(
        p.client.outbound.unwrap(),
        "payments.default.svc.cluster.local",
        "/",
        &[],
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("not declared"), "{body}");
    assert_eq!(p.app.count(), 0);
}

#[tokio::test]
async fn request_without_host_is_refused_and_nothing_leaves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pair(UpstreamProtocol::Http2).await;
    let mut tcp = tokio::net::TcpStream::connect(p.client.outbound.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(raw.contains("no Host"), "{raw}");
    assert_eq!(p.app.count(), 0);
}

#[tokio::test]
async fn peer_with_wrong_identity_is_refused_with_502() {
    let p = pair(UpstreamProtocol::Http1).await;
    // Same CA, valid chain, but the route expects someone else.
    let cfg = outbound_config(
        p.pki.identity("client2", &id("default", "client")),
        SERVER_HOST,
        p.server.inbound.unwrap(),
        id("default", "payments"),
    );
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, body) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &[]).await;
    assert_eq!(status, 502);
    assert!(body.contains("wrong identity"), "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/payments"),
        "{body}"
    );
    assert_eq!(p.app.count(), 0);
}

#[tokio::test]
async fn peer_from_a_foreign_ca_is_refused_with_502() {
    let p = pair(UpstreamProtocol::Http1).await;
    // A server with the right name but a CA we do not trust.
    let rogue_pki = Pki::new();
    let rogue_app = RecordingApp::start().await;
    let rogue = meshguard::sidecar::app::start(&inbound_config(
        rogue_pki.identity("server", &id("default", "server")),
        rogue_app.addr,
    ))
    .await
    .unwrap();
    let cfg = outbound_config(
        p.pki.identity("client2", &id("default", "client")),
        SERVER_HOST,
        rogue.inbound.unwrap(),
        id("default", "server"),
    );
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, body) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &[]).await;
    assert_eq!(status, 502);
    assert!(body.contains("unknown CA"), "{body}");
    assert_eq!(rogue_app.count(), 0);
}

#[tokio::test]
async fn unreachable_peer_is_502_and_local_app_down_is_503() {
    let p = pair(UpstreamProtocol::Http1).await;
    // Peer: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = outbound_config(
        p.pki.identity("client2", &id("default", "client")),
        SERVER_HOST,
        closed,
        id("default", "server"),
    );
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, body) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &[]).await;
    assert_eq!(status, 502);
    assert!(body.contains("unreachable"), "{body}");

    // Local app: the server sidecar forwards to a closed port.
    let server = meshguard::sidecar::app::start(&inbound_config(
        p.pki.identity("server2", &id("default", "server")),
        closed,
    ))
    .await
    .unwrap();
    let cfg = outbound_config(
        p.pki.identity("client3", &id("default", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, body) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("local app unavailable"), "{body}");
}

#[tokio::test]
async fn listener_bound_route_sends_everything_to_its_peer() {
    let p = pair(UpstreamProtocol::Http1).await;
    let mut cfg = outbound_config(
        p.pki.identity("client2", &id("default", "client")),
        "unused",
        p.server.inbound.unwrap(),
        id("default", "server"),
    );
    cfg.outbound = Some(OutboundConfig {
        listen: None,
        protocol: UpstreamProtocol::Http1,
        routes: vec![RouteConfig {
            host: None,
            listen: Some(any_port()),
            peer: p.server.inbound.unwrap().to_string(),
            identity: id("default", "server"),
        }],
        ..Default::default()
    });
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, _) = http_get(
        client.route_listeners[0],
        "anything.example",
        "/via-listener",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(p.app.last().target, "/via-listener");
}

#[tokio::test]
async fn readiness_is_green_once_started() {
    let p = pair(UpstreamProtocol::Http1).await;
    let (status, body) = http_get(p.client.admin, "admin", "/ready", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ready\n"));
    let (status, body) = http_get(p.client.admin, "admin", "/config", &[]).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{body}"
    );
    assert!(!body.contains("PRIVATE KEY"));
}

/// Header names with `_`, which CGI/WSGI/PHP-style apps read as the `-`
/// spelling, never cross by default; an operator can keep them on both sides.
#[tokio::test]
async fn underscored_headers_are_dropped_unless_both_sides_keep_them() {
    let sent = [
        (
            "x_meshguard_client_id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        ),
        ("x_forwarded_client_cert", "URI=spiffe://evil"),
        ("x_tenant", "acme"),
    ];
    let p = pair(UpstreamProtocol::Http2).await;
    let (status, _) = http_get(p.client.outbound.unwrap(), SERVER_HOST, "/", &sent).await;
    assert_eq!(status, 200);
    let seen = p.app.last();
    for (name, _) in sent {
        assert!(seen.header(name).is_empty(), "{name} reached the app");
    }

    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut inbound = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    inbound.inbound.as_mut().unwrap().keep_underscore_headers = true;
    let server = meshguard::sidecar::app::start(&inbound).await.unwrap();
    let mut outbound = outbound_config(
        pki.identity("client", &id("default", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    outbound.outbound.as_mut().unwrap().keep_underscore_headers = true;
    let client = meshguard::sidecar::app::start(&outbound).await.unwrap();
    let (status, _) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &sent).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.header("x_tenant"), vec!["acme"]);
    // Kept means kept: the identity meshguard set is still the only one
    // under its own name.
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
}

/// `inbound.strip_headers` reaches the running inbound: a vendor identity
/// header the operator names is removed before the app, others pass.
#[tokio::test]
async fn configured_strip_headers_never_reach_the_app() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut inbound = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    inbound.inbound.as_mut().unwrap().strip_headers = vec!["X-Vendor-User".into()];
    let server = meshguard::sidecar::app::start(&inbound).await.unwrap();
    let client = start_outbound(&pki, SERVER_HOST, &server).await;
    let sent = [("x-vendor-user", "admin"), ("x-tenant", "acme")];
    let (status, _) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &sent).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert!(
        seen.header("x-vendor-user").is_empty(),
        "x-vendor-user reached the app"
    );
    assert_eq!(seen.header("x-tenant"), vec!["acme"]);
}

/// `outbound.h2_connections_per_peer`: requests take the peer's HTTP/2
/// connections in turn, so N connections are opened, and kept (a second
/// round opens no more).
#[tokio::test]
async fn requests_take_several_http2_connections_to_a_peer_in_turn() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = start_inbound(&pki, "server", app.addr).await;
    let mut cfg = outbound_config(
        pki.identity("client", &id("default", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    let out = cfg.outbound.as_mut().unwrap();
    out.protocol = UpstreamProtocol::Http2;
    out.h2_connections_per_peer = 3;
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let accepted = || async {
        let text = scrape(server.admin).await;
        series(
            &text,
            "meshguard_connections_total",
            &[("direction", "inbound")],
        )
        .unwrap_or(0.0)
    };
    for round in 0..2 {
        for i in 0..6 {
            let path = format!("/r{round}-{i}");
            let (status, _) = http_get(client.outbound.unwrap(), SERVER_HOST, &path, &[]).await;
            assert_eq!(status, 200);
            assert_eq!(app.last().target, path);
        }
        assert_eq!(accepted().await, 3.0, "round {round}");
    }
    assert_eq!(app.count(), 12);
}

#[test]
fn h2_connections_per_peer_is_bounded() {
    for bad in ["0", "65"] {
        let yaml = format!(
            "identity: {{cert: c.pem, key: k.pem, bundle: b.pem}}\noutbound:\n  listen: 127.0.0.1:0\n  h2_connections_per_peer: {bad}\n"
        );
        let err = meshguard::sidecar::config::Config::from_yaml(
            &yaml,
            "m.yaml",
            std::path::Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("m.yaml:4") && err.contains("between 1 and 64"),
            "{err}"
        );
    }
}
