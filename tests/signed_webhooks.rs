//! Webhook signatures and the identity assertion, end to end: the real
//! sidecar (in-process, tests/support), a real app that records bodies,
//! providers' signatures made by independent code (Python's hmac), and
//! assertions checked by the documented verifier
//! (examples/verify_assertion.py).

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshguard::sidecar::config::{AssertionConfig, OnReplay, WebhookRoute, WebhooksConfig};
use meshguard::sidecar::webhook::Format;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::*;

/// What is sent, the status and `result` label expected.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [u8], u16, &'a str);

type Got = Arc<Mutex<Vec<(String, Vec<(String, String)>, Bytes)>>>;

/// An app that records each request's target, headers and exact body,
/// and answers 500 while `failing` is above zero (counting it down).
async fn body_app(failing: Arc<AtomicUsize>) -> (SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            let failing = failing.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    let failing = failing.clone();
                    async move {
                        let target = req.uri().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        record.lock().unwrap().push((target, headers, body));
                        let fail = failing
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if fail {
                            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
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

fn py(code: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", code])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Python's HMAC-SHA256 of `msg` under `key`, hex.
fn hmac_hex(key: &str, msg: &[u8]) -> String {
    let hexmsg: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    py(&format!(
        "import hmac,hashlib;print(hmac.new({key:?}.encode(), bytes.fromhex('{hexmsg}'), hashlib.sha256).hexdigest())"
    ))
}

fn now() -> i64 {
    meshguard::sidecar::tls::unix_now()
}

fn route(name: &str, prefix: &str, format: Format, secret: &Path) -> WebhookRoute {
    WebhookRoute {
        name: name.into(),
        path_prefix: prefix.into(),
        host: None,
        port: None,
        format,
        secrets: vec![secret.to_path_buf()],
        tolerance_s: 300,
        on_replay: OnReplay::Reject,
        max_body_bytes: 4096,
    }
}

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    app: SocketAddr,
    got: Got,
    /// The app answers 500 to this many requests.
    failing: Arc<AtomicUsize>,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stripe"), "whsec_test\n").unwrap();
        std::fs::write(dir.path().join("github"), "gh-secret\n").unwrap();
        std::fs::write(dir.path().join("slack"), "slack-secret\n").unwrap();
        let failing = Arc::new(AtomicUsize::new(0));
        let (app, got) = body_app(failing.clone()).await;
        Setup {
            dir,
            pki: Pki::new(),
            app,
            got,
            failing,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, tls: bool) -> meshguard::sidecar::config::Config {
        let identity = self.pki.identity("billing", &id("default", "billing"));
        let mut config = inbound_config(identity, self.app);
        config.runtime.poll_interval_ms = 50;
        config.webhooks = Some(WebhooksConfig {
            listen: Some(any_port()),
            tls,
            replay_store: Some(self.path("replay.log")),
            max_replay_ids: 1000,
            routes: vec![
                route("stripe", "/stripe/", Format::Stripe, &self.path("stripe")),
                route("github", "/github/", Format::Github, &self.path("github")),
                route("slack", "/slack/", Format::Slack, &self.path("slack")),
            ],
        });
        config.assertion = Some(AssertionConfig {
            key_file: Some(self.path("assertion.keys")),
            ..Default::default()
        });
        config
    }

    async fn start(&self, tls: bool) -> meshguard::sidecar::app::Running {
        meshguard::sidecar::app::start(&self.config(tls))
            .await
            .unwrap()
    }
}

/// POSTs `body` to the webhook listener (TLS without a client
/// certificate, or plain); the status.
async fn post(
    addr: SocketAddr,
    tls: bool,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> u16 {
    let mut req = Request::post(path).header("host", "billing.example");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let resp = if tls {
        let tls = tls_connect_raw(tcp).await;
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    };
    resp.status().as_u16()
}

async fn tls_connect_raw(
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let client = tls_client(None, &[b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("billing.example").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap()
}

fn stripe_headers(body: &[u8], t: i64, secret: &str) -> Vec<(&'static str, String)> {
    let msg = [format!("{t}.").as_bytes(), body].concat();
    vec![(
        "stripe-signature",
        format!("t={t},v1={}", hmac_hex(secret, &msg)),
    )]
}

/// The documented verifier's verdict on an assertion.
fn verify_assertion(
    h: &str,
    caller: &str,
    method: &str,
    target: &str,
    keys: &Path,
) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_assertion.py");
    let out = Command::new("python3")
        .args([script, h, caller, method, target, keys.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test]
async fn each_format_is_verified_and_forwarded_byte_for_byte_with_an_assertion() {
    let s = Setup::new().await;
    let running = s.start(true).await;
    let addr = running.webhooks.unwrap();
    let t = now();
    // Stripe.
    let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    assert_eq!(
        post(
            addr,
            true,
            "/stripe/events",
            &stripe_headers(body, t, "whsec_test"),
            body
        )
        .await,
        200
    );
    // GitHub: no timestamp.
    let gh_body = b"{\"zen\":\"Keep it logically awesome.\"}\n";
    let gh = vec![(
        "x-hub-signature-256",
        format!("sha256={}", hmac_hex("gh-secret", gh_body)),
    )];
    assert_eq!(post(addr, true, "/github/hook", &gh, gh_body).await, 200);
    // Slack.
    let sl_body = b"token=x&command=%2Fdeploy";
    let msg = [format!("v0:{t}:").as_bytes(), sl_body].concat();
    let sl = vec![
        ("x-slack-request-timestamp", t.to_string()),
        (
            "x-slack-signature",
            format!("v0={}", hmac_hex("slack-secret", &msg)),
        ),
    ];
    assert_eq!(post(addr, true, "/slack/cmd", &sl, sl_body).await, 200);

    let got = s.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let keys = s.path("assertion.keys");
    for ((target, headers, received), (route, sent)) in got.iter().zip([
        ("stripe", &body[..]),
        ("github", &gh_body[..]),
        ("slack", &sl_body[..]),
    ]) {
        assert_eq!(&received[..], sent, "byte for byte");
        assert_eq!(header(headers, "x-meshguard-webhook-route"), Some(route));
        let assertion = header(headers, "x-meshguard-assertion").expect("assertion");
        verify_assertion(
            assertion,
            &format!("webhook:{route}"),
            "POST",
            target,
            &keys,
        )
        .unwrap();
        // Bound to its path: replayed elsewhere it is refused.
        assert!(verify_assertion(
            assertion,
            &format!("webhook:{route}"),
            "POST",
            "/other",
            &keys
        )
        .is_err());
    }
    let m = scrape(running.admin).await;
    assert_eq!(
        series(
            &m,
            "meshguard_webhook_requests_total",
            &[("route", "stripe"), ("result", "accepted")]
        ),
        Some(1.0)
    );
    running.stop().await;
}

#[tokio::test]
async fn forged_stale_future_tampered_missing_oversized_and_undeclared_are_refused() {
    let s = Setup::new().await;
    let running = s.start(true).await;
    let addr = running.webhooks.unwrap();
    let t = now();
    let body = br#"{"id":"evt_2"}"#;
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            stripe_headers(body, t, "whsec_other"),
            body,
            401,
            "bad_signature",
        ),
        (
            "stale",
            stripe_headers(body, t - 400, "whsec_test"),
            body,
            401,
            "stale",
        ),
        (
            "future",
            stripe_headers(body, t + 400, "whsec_test"),
            body,
            401,
            "future",
        ),
        (
            "body altered",
            stripe_headers(body, t, "whsec_test"),
            br#"{"id":"evt_3"}"#,
            401,
            "bad_signature",
        ),
        ("missing", vec![], body, 401, "missing_header"),
        (
            "malformed",
            vec![("stripe-signature", "v1=zz".into())],
            body,
            401,
            "malformed_header",
        ),
    ];
    for (what, headers, sent, status, reason) in &cases {
        assert_eq!(
            post(addr, true, "/stripe/e", headers, sent).await,
            *status,
            "{what}"
        );
        let m = scrape(running.admin).await;
        let n = series(
            &m,
            "meshguard_webhook_requests_total",
            &[("route", "stripe"), ("result", reason)],
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{what}: counted as {reason}");
    }
    let mut dup = stripe_headers(body, t, "whsec_test");
    dup.push(dup[0].clone());
    assert_eq!(
        post(addr, true, "/stripe/e", &dup, body).await,
        401,
        "duplicate header"
    );
    let big = vec![b'x'; 4097];
    assert_eq!(
        post(
            addr,
            true,
            "/stripe/e",
            &stripe_headers(&big, t, "whsec_test"),
            &big
        )
        .await,
        413
    );
    // Undeclared path on the no-client-cert listener.
    assert_eq!(
        post(
            addr,
            true,
            "/admin",
            &stripe_headers(body, t, "whsec_test"),
            body
        )
        .await,
        404
    );
    assert!(s.got.lock().unwrap().is_empty(), "nothing reached the app");
    // The mesh inbound still wants a client certificate.
    let inbound = running.inbound.unwrap();
    assert!(
        tls_get(inbound, tls_client(None, &[b"http/1.1"]), "/stripe/e", &[])
            .await
            .is_err()
    );
    running.stop().await;
}

#[tokio::test]
async fn a_replay_is_refused_also_after_a_restart() {
    let s = Setup::new().await;
    let body = br#"{"id":"evt_replay"}"#;
    let headers = stripe_headers(body, now(), "whsec_test");
    let running = s.start(false).await;
    let addr = running.webhooks.unwrap();
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 200);
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 409);
    running.stop().await;
    let running = s.start(false).await;
    let addr = running.webhooks.unwrap();
    assert_eq!(
        post(addr, false, "/stripe/e", &headers, body).await,
        409,
        "after restart"
    );
    assert_eq!(s.got.lock().unwrap().len(), 1);
    let m = scrape(running.admin).await;
    assert_eq!(
        series(
            &m,
            "meshguard_webhook_requests_total",
            &[("route", "stripe"), ("result", "replay")]
        ),
        Some(1.0)
    );
    running.stop().await;
}

#[tokio::test]
async fn a_rotation_accepts_both_secrets_then_only_the_new_one() {
    let s = Setup::new().await;
    std::fs::write(s.path("stripe"), "whsec_new\nwhsec_test\n").unwrap();
    let running = s.start(true).await;
    let addr = running.webhooks.unwrap();
    let t = now();
    let (b1, b2, b3) = (b"{\"n\":1}", b"{\"n\":2}", b"{\"n\":3}");
    assert_eq!(
        post(
            addr,
            true,
            "/stripe/e",
            &stripe_headers(b1, t, "whsec_test"),
            b1
        )
        .await,
        200
    );
    assert_eq!(
        post(
            addr,
            true,
            "/stripe/e",
            &stripe_headers(b2, t, "whsec_new"),
            b2
        )
        .await,
        200
    );
    std::fs::write(s.path("stripe"), "whsec_new\n").unwrap();
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let m = scrape(running.admin).await;
        if series(
            &m,
            "meshguard_reloads_total",
            &[("kind", "webhook_secrets"), ("result", "success")],
        )
        .is_some()
        {
            refused = post(
                addr,
                true,
                "/stripe/e",
                &stripe_headers(b3, t, "whsec_test"),
                b3,
            )
            .await
                == 401;
            break;
        }
    }
    assert!(refused, "the old secret is refused once the file drops it");
    assert_eq!(
        post(
            addr,
            true,
            "/stripe/e",
            &stripe_headers(b3, t, "whsec_new"),
            b3
        )
        .await,
        200
    );
    running.stop().await;
}

#[tokio::test]
async fn mesh_requests_carry_an_assertion_the_app_verifies_and_callers_cannot_forge() {
    let s = Setup::new().await;
    let app = RecordingApp::start().await;
    let identity = s.pki.identity("orders", &id("default", "orders"));
    let mut config = inbound_config(identity, app.addr);
    config.assertion = s.config(true).assertion;
    let running = meshguard::sidecar::app::start(&config).await.unwrap();
    let client = s.pki.svid(&id("default", "checkout"));
    let tls = tls_client(Some((&client.cert_pem, &client.key_pem)), &[b"http/1.1"]);
    let forged = "v1.abc.1.9999999999.r.AAAA";
    let (status, _) = tls_get(
        running.inbound.unwrap(),
        tls,
        "/orders/7?x=1",
        &[("x-meshguard-assertion", forged)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let seen = app.last();
    let assertion = seen.header("x-meshguard-assertion");
    assert_eq!(assertion.len(), 1);
    assert_ne!(assertion[0], forged, "the caller's header was replaced");
    let caller = seen.header("x-meshguard-client-id")[0];
    assert_eq!(caller, id("default", "checkout").as_str());
    let keys = s.path("assertion.keys");
    verify_assertion(assertion[0], caller, "GET", &seen.target, &keys).unwrap();
    assert!(verify_assertion(forged, caller, "GET", &seen.target, &keys).is_err());
    assert!(verify_assertion(assertion[0], caller, "DELETE", &seen.target, &keys).is_err());
    running.stop().await;
}

#[tokio::test]
async fn an_event_the_app_failed_on_is_delivered_on_retry_and_only_once_committed_a_replay() {
    let s = Setup::new().await;
    let body = br#"{"id":"evt_retry"}"#;
    let headers = stripe_headers(body, now(), "whsec_test");
    // The app is unreachable: 502, nothing kept, also across a restart.
    let mut dead = s.config(false);
    dead.inbound.as_mut().unwrap().app = closed_port().await;
    let running = meshguard::sidecar::app::start(&dead).await.unwrap();
    let addr = running.webhooks.unwrap();
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 502);
    running.stop().await;
    // The app answers 500 to the first delivery: the identical retry is
    // delivered; after its 200, the next is a replay.
    s.failing.store(1, Ordering::SeqCst);
    let running = s.start(false).await;
    let addr = running.webhooks.unwrap();
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 500);
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 200);
    assert_eq!(post(addr, false, "/stripe/e", &headers, body).await, 409);
    let m = scrape(running.admin).await;
    for (result, n) in [("app_error", 1.0), ("accepted", 1.0), ("replay", 1.0)] {
        let got = series(
            &m,
            "meshguard_webhook_requests_total",
            &[("route", "stripe"), ("result", result)],
        );
        assert_eq!(got, Some(n), "{result}");
    }
    running.stop().await;
    let running = s.start(false).await;
    let addr = running.webhooks.unwrap();
    assert_eq!(
        post(addr, false, "/stripe/e", &headers, body).await,
        409,
        "committed, so refused after a restart"
    );
    running.stop().await;
    let got = s.got.lock().unwrap();
    assert_eq!(
        got.len(),
        2,
        "the failed delivery and its retry reached the app"
    );
    assert!(got.iter().all(|(_, _, b)| &b[..] == body));
}

/// A loopback address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    l.local_addr().unwrap()
}
