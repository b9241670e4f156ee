//! The identity header family and the configured strip lists through a
//! real sidecar pair, for both HTTP versions the app may speak to its
//! outbound: no SPIFFE-ID spelling of another mesh or gateway reaches a
//! peer or an app, and `outbound.strip_headers` removes names before they
//! leave the pod, as `inbound.strip_headers` does before the app.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::sidecar::config::AppProtocol;
use std::net::SocketAddr;
use support::*;
use tokio::net::TcpStream;

const HOST: &str = "app.test";

/// One GET from the app to its outbound, over HTTP/1.1 or h2c.
async fn get(outbound: SocketAddr, h2: bool, headers: &[(&str, &str)]) -> u16 {
    let io = TokioIo::new(TcpStream::connect(outbound).await.unwrap());
    let mut req = Request::get(format!("http://{HOST}/x"));
    if !h2 {
        req = req.header("host", HOST);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

/// A pair in front of the recording app; `outbound_strip` is the client
/// sidecar's `outbound.strip_headers`.
async fn pair(
    outbound_strip: &[&str],
) -> (
    Pki,
    RecordingApp,
    meshguard::sidecar::app::Running,
    meshguard::sidecar::app::Running,
) {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut inbound = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    inbound.inbound.as_mut().unwrap().app_protocol = AppProtocol::Http1;
    let server = meshguard::sidecar::app::start(&inbound).await.unwrap();
    let mut outbound = outbound_config(
        pki.identity("client", &id("default", "client")),
        HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    outbound.outbound.as_mut().unwrap().strip_headers =
        outbound_strip.iter().map(|s| s.to_string()).collect();
    let client = meshguard::sidecar::app::start(&outbound).await.unwrap();
    (pki, app, server, client)
}

#[tokio::test]
async fn spiffe_id_headers_of_other_meshes_never_reach_the_app() {
    let (_pki, app, _server, client) = pair(&[]).await;
    let admin = "spiffe://cluster.local/ns/kube-system/sa/admin";
    let spoofs = [
        "x-spiffe-id",
        "x-client-spiffe-id",
        "x-peer-spiffe-id",
        "x-istio-attributes",
        "x-kuma-forwarded-client-cert",
        "x-envoy-peer-metadata-id",
        "l5d-client-id",
        "ssl-client-cert",
        "x-ssl-client-s-dn",
        "x-client-cert",
        "x_spiffe_id",
    ];
    let sent: Vec<(&str, &str)> = spoofs
        .iter()
        .map(|n| (*n, admin))
        .chain([("x-tenant", "acme")])
        .collect();
    for h2 in [false, true] {
        assert_eq!(get(client.outbound.unwrap(), h2, &sent).await, 200);
        let seen = app.last();
        for name in spoofs {
            assert!(
                seen.header(name).is_empty(),
                "{name} reached the app (h2: {h2})"
            );
        }
        assert!(!seen.headers.iter().any(|(_, v)| v == admin), "h2: {h2}");
        assert_eq!(seen.header("x-tenant"), ["acme"]);
        assert_eq!(
            seen.header("x-meshguard-client-id"),
            ["spiffe://cluster.local/ns/default/sa/client"]
        );
    }
}

#[tokio::test]
async fn outbound_strip_headers_never_leave_the_pod() {
    // The inbound strips nothing extra, so a name the app sees here is one
    // the outbound let through.
    let (_pki, app, _server, client) = pair(&["X-Internal-Debug-Token"]).await;
    let sent = [("x-internal-debug-token", "s3cr3t"), ("x-tenant", "acme")];
    for h2 in [false, true] {
        assert_eq!(get(client.outbound.unwrap(), h2, &sent).await, 200);
        let seen = app.last();
        assert!(seen.header("x-internal-debug-token").is_empty(), "h2: {h2}");
        assert_eq!(seen.header("x-tenant"), ["acme"]);
    }
    let (_pki, app, _server, client) = pair(&[]).await;
    assert_eq!(get(client.outbound.unwrap(), false, &sent).await, 200);
    assert_eq!(
        app.last().header("x-internal-debug-token"),
        ["s3cr3t"],
        "without the key it passes"
    );
}
