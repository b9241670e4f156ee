//! Resource limits over real sockets: 431 for oversized or too many
//! headers (but generous defaults), slowloris and silent-handshake
//! timeouts, an idle timeout that never cuts a stream still moving data,
//! the connection cap, and streamed bodies.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn server(
    limits: impl FnOnce(&mut meshguard::sidecar::config::LimitsConfig),
) -> (Pki, RecordingApp, meshguard::sidecar::app::Running) {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut cfg = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    limits(&mut cfg.limits);
    let running = meshguard::sidecar::app::start(&cfg).await.unwrap();
    (pki, app, running)
}

fn client(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    let c = pki.svid(&id("default", "client"));
    tls_client(Some((&c.cert_pem, &c.key_pem)), &[b"http/1.1"])
}

fn request_with_headers(n: usize, value_len: usize) -> String {
    let mut req = String::from("GET /h HTTP/1.1\r\nHost: s\r\nConnection: close\r\n");
    for i in 0..n {
        req.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(value_len)));
    }
    req.push_str("\r\n");
    req
}

#[tokio::test]
async fn header_limits_are_generous_and_refusals_are_431() {
    let (pki, app, s) = server(|_| {}).await;
    let addr = s.inbound.unwrap();
    // 40 KiB of headers, as real apps send (cookies, JWTs): accepted.
    let ok = tls_raw(addr, client(&pki), &request_with_headers(40, 1000)).await;
    assert_eq!(status_of(&ok), 200, "{}", &ok[..ok.len().min(200)]);
    // 95 headers: accepted.
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(95, 10)).await),
        200
    );
    assert_eq!(app.count(), 2);
    // Over 64 KiB: 431, and the app sees nothing.
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(70, 1000)).await),
        431
    );
    // Over 100 headers: 431.
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(150, 10)).await),
        431
    );
    assert_eq!(app.count(), 2);
    // Still serving.
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(1, 1)).await),
        200
    );
}

#[tokio::test]
async fn header_limits_are_configurable() {
    let (pki, _app, s) = server(|l| {
        l.max_header_bytes = 4096;
        l.max_headers = 10;
    })
    .await;
    let addr = s.inbound.unwrap();
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(5, 1000)).await),
        431
    );
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(20, 1)).await),
        431
    );
    assert_eq!(
        status_of(&tls_raw(addr, client(&pki), &request_with_headers(5, 10)).await),
        200
    );
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_read_timeout() {
    let (pki, app, s) = server(|l| l.header_read_timeout_ms = 500).await;
    let mut tls = tls_connect(s.inbound.unwrap(), client(&pki)).await;
    let start = Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: s\r\n")
        .await
        .unwrap();
    // Dribble a header byte every 100 ms, never finishing.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tls.write_all(b"x").await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), tls.read(&mut buf)).await
            {
                if n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408") {
                    return;
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slowloris connection kept open");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let (_pki, _app, s) = server(|l| l.handshake_timeout_ms = 300).await;
    let mut tcp = tokio::net::TcpStream::connect(s.inbound.unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(250));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = scrape(s.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_tls_handshakes_total",
            &[("result", "refused"), ("reason", "timeout")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn idle_connections_close_but_moving_streams_do_not() {
    // A streaming app: 12 chunks, one every 100 ms.
    let app_listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let app_addr = app_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = app_listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Chunks {
                        sent: 0,
                        sleep: None,
                    }))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let pki = Pki::new();
    let mut cfg = inbound_config(pki.identity("server", &id("default", "server")), app_addr);
    cfg.limits.idle_timeout_ms = 300;
    cfg.limits.header_read_timeout_ms = 0;
    let s = meshguard::sidecar::app::start(&cfg).await.unwrap();

    // The stream takes 1.2 s, four idle timeouts, and arrives whole.
    let start = Instant::now();
    let (status, body) = tls_get(s.inbound.unwrap(), client(&pki), "/stream", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.matches("chunk").count(), 12, "{body}");
    assert!(start.elapsed() >= Duration::from_millis(1100));

    // An idle keep-alive connection is closed after the idle timeout.
    let mut tls = tls_connect(s.inbound.unwrap(), client(&pki)).await;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("idle connection not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

/// A response body of 12 chunks, one every 100 ms.
struct Chunks {
    sent: usize,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        if self.sent == 12 {
            return Poll::Ready(None);
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.sleep = None;
                self.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                    "chunk {}\n",
                    self.sent
                ))))))
            }
        }
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let (pki, _app, s) = server(|l| l.max_connections = 2).await;
    let addr = s.inbound.unwrap();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.push(
            tokio_rustls::TlsConnector::from(client(&pki))
                .connect(
                    rustls_pki_types::ServerName::try_from("s.test").unwrap(),
                    tcp,
                )
                .await
                .unwrap(),
        );
    }
    // The third is accepted by the kernel and closed at once by meshguard.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(kept);
    // Capacity comes back once the others close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok((status, _)) = tls_get(addr, client(&pki), "/again", &[]).await {
            assert_eq!(status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "capacity never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn large_bodies_stream_through_both_sidecars() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = start_inbound(&pki, "server", app.addr).await;
    let client = start_outbound(&pki, "server", &server).await;
    let tcp = tokio::net::TcpStream::connect(client.outbound.unwrap())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = vec![b'x'; 32 * 1024 * 1024];
    let req = http::Request::post("/upload")
        .header("host", "server")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, Bytes::from("app ok, 33554432 body bytes"));
}
