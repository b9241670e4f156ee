//! Signature-verified routes on the mesh inbound, end to end through two
//! real sidecars: an ingress (a mesh peer, `default/client`) forwards a
//! provider's webhook over mTLS to `billing`'s sidecar (`default/server`),
//! which must check the provider's signature as `webhooks.listen` does.
//! Signatures are made by independent code (Python's hmac); the app is a
//! real HTTP/1.1 + h2c server recording what reaches it.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::sidecar::config::{OnReplay, WebhookRoute, WebhooksConfig};
use meshguard::sidecar::webhook::Format;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use support::*;

/// What reached the app: target, headers, exact body.
type Got = Arc<Mutex<Vec<(String, Vec<(String, String)>, Bytes)>>>;

/// An app serving HTTP/1.1 and h2c that records every request.
async fn app() -> (SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let target = req.uri().path().to_owned();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        record.lock().unwrap().push((target, headers, body));
                        let ok = Full::new(Bytes::from_static(b"ok"));
                        Ok::<_, std::convert::Infallible>(http::Response::new(ok))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// GitHub's `X-Hub-Signature-256` of `body` under `key`, by Python's hmac.
fn github_signature(key: &str, body: &[u8]) -> String {
    let hexbody: String = body.iter().map(|b| format!("{b:02x}")).collect();
    let code = format!(
        "import hmac,hashlib;print(hmac.new({key:?}.encode(), bytes.fromhex('{hexbody}'), hashlib.sha256).hexdigest())"
    );
    let out = Command::new("python3")
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256={}", String::from_utf8(out.stdout).unwrap().trim())
}

/// POSTs `body` from the ingress's app to its sidecar's outbound (HTTP/1.1
/// or h2c with prior knowledge), for `billing.mesh`; the status.
async fn post(outbound: SocketAddr, h2: bool, path: &str, sig: Option<&str>, body: &[u8]) -> u16 {
    let mut req = match h2 {
        true => Request::post(format!("http://billing.mesh{path}")),
        false => Request::post(path).header("host", "billing.mesh"),
    };
    if let Some(sig) = sig {
        req = req.header("x-hub-signature-256", sig);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let io = TokioIo::new(tokio::net::TcpStream::connect(outbound).await.unwrap());
    let resp = if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    };
    resp.status().as_u16()
}

#[tokio::test]
async fn a_peer_forwarded_webhook_needs_the_providers_signature_over_http1_and_http2() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("github");
    std::fs::write(&secret, "gh-secret\n").unwrap();
    let (app_addr, got) = app().await;
    let identity = pki.identity("server", &id("default", "server"));
    let mut config = inbound_config(identity, app_addr);
    config.webhooks = Some(WebhooksConfig {
        listen: None,
        tls: true,
        replay_store: Some(dir.path().join("replay.log")),
        max_replay_ids: 1000,
        routes: vec![WebhookRoute {
            name: "github".into(),
            path_prefix: "/hooks/github".into(),
            host: Some("billing.mesh".into()),
            port: None,
            format: Format::Github,
            secrets: vec![secret],
            tolerance_s: 300,
            on_replay: OnReplay::Reject,
            max_body_bytes: 1024,
        }],
    });
    let server = meshguard::sidecar::app::start(&config).await.unwrap();
    assert!(server.webhooks.is_none(), "no listener of its own");
    let ingress = start_outbound(&pki, "billing.mesh", &server).await;
    let out = ingress.outbound.unwrap();

    let mut delivered = Vec::new();
    for h2 in [false, true] {
        let body = format!("{{\"action\":\"opened\",\"h2\":{h2}}}\n").into_bytes();
        let good = github_signature("gh-secret", &body);
        let forged = github_signature("not-the-secret", &body);
        let what = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        assert_eq!(
            post(out, h2, "/hooks/github/push", Some(&forged), &body).await,
            401,
            "{what} forged"
        );
        assert_eq!(
            post(out, h2, "/hooks/github/push", None, &body).await,
            401,
            "{what} unsigned"
        );
        let mut altered = body.clone();
        altered[0] = b' ';
        assert_eq!(
            post(out, h2, "/hooks/github/push", Some(&good), &altered).await,
            401,
            "{what} altered"
        );
        let big = vec![b'x'; 1025];
        let big_sig = github_signature("gh-secret", &big);
        assert_eq!(
            post(out, h2, "/hooks/github/push", Some(&big_sig), &big).await,
            413,
            "{what} over the bound"
        );
        assert!(
            got.lock().unwrap().is_empty(),
            "{what}: nothing refused reached the app"
        );
        assert_eq!(
            post(out, h2, "/hooks/github/push", Some(&good), &body).await,
            200,
            "{what} good"
        );
        assert_eq!(
            post(out, h2, "/hooks/github/push", Some(&good), &body).await,
            409,
            "{what} replay"
        );
        delivered.push(body);
        let (target, headers, received) = got.lock().unwrap().pop().expect("delivered");
        assert_eq!(target, "/hooks/github/push");
        assert_eq!(
            &received[..],
            delivered.last().unwrap().as_slice(),
            "{what}: byte for byte"
        );
        assert_eq!(
            header(&headers, "x-meshguard-webhook-route"),
            Some("github")
        );
        assert_eq!(
            header(&headers, "x-meshguard-client-id"),
            Some(id("default", "client").as_str()),
            "{what}: the ingress's identity is passed on too"
        );
    }
    // Elsewhere the mesh inbound serves as before, with no route header
    // (a caller's copy is stripped).
    let plain = b"not a webhook";
    assert_eq!(post(out, false, "/orders", None, plain).await, 200);
    let (target, headers, received) = got.lock().unwrap().pop().unwrap();
    assert_eq!((target.as_str(), &received[..]), ("/orders", &plain[..]));
    assert_eq!(header(&headers, "x-meshguard-webhook-route"), None);

    let m = scrape(server.admin).await;
    let count = |result: &str| {
        series(
            &m,
            "meshguard_webhook_requests_total",
            &[("route", "github"), ("result", result)],
        )
    };
    assert_eq!(
        count("bad_signature"),
        Some(4.0),
        "forged and altered, both versions"
    );
    assert_eq!(count("missing_header"), Some(2.0));
    assert_eq!(count("body_too_large"), Some(2.0));
    assert_eq!(count("replay"), Some(2.0));
    assert_eq!(count("accepted"), Some(2.0));
    ingress.stop().await;
    server.stop().await;
}
