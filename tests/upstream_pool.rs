//! The upstream connections of both sidecars (src/proxy/pool.rs, and the
//! HTTP/1.1 client to the app and to peers, src/proxy/h1client.rs), over
//! real sockets: reuse, apps that close idle connections, responses cut
//! short, apps that break HTTP, streamed uploads, and one multiplexed
//! HTTP/2 connection between the sidecars.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshguard::sidecar::tls::UpstreamProtocol;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "server.default.svc.cluster.local";

/// How the test app treats its connections.
#[derive(Clone, Copy)]
enum AppMode {
    /// Keep-alive, closing a connection idle for longer than this.
    KeepAlive { idle_close: Duration },
    /// `Connection: close` on every response.
    CloseEach,
    /// Keep-alive; `/big` streams 4 MiB slowly, anything else is short.
    BigBody,
}

/// An HTTP/1.1 app that counts the connections it accepts.
struct CountingApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections open right now.
    open: Arc<AtomicUsize>,
}

impl CountingApp {
    async fn start(mode: AppMode) -> CountingApp {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (count, now_open) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                now_open.fetch_add(1, Ordering::SeqCst);
                let now_open = now_open.clone();
                tokio::spawn(async move {
                    serve(tcp, mode).await;
                    now_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingApp {
            addr,
            accepted,
            open,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

type AppBody = http_body_util::Either<Full<Bytes>, Chunks>;

async fn serve(tcp: TcpStream, mode: AppMode) {
    let svc = service_fn(move |req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if req.uri().path() == "/count" {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let text = format!("got {} bytes", body.len());
            return Ok(Response::new(AppBody::Left(Full::new(Bytes::from(text)))));
        }
        let mut resp = if matches!(mode, AppMode::BigBody) && req.uri().path() == "/big" {
            Response::new(AppBody::Right(Chunks::new(64, 64 * 1024)))
        } else {
            let text = format!("ok {}", req.uri().path());
            Response::new(AppBody::Left(Full::new(Bytes::from(text))))
        };
        if matches!(mode, AppMode::CloseEach) {
            resp.headers_mut()
                .insert("connection", "close".parse().unwrap());
        }
        Ok::<_, Infallible>(resp)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    if let AppMode::KeepAlive { idle_close } = mode {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(idle_close);
    }
    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
}

/// A slow body: `left` chunks of `size` bytes, 1 ms apart.
struct Chunks {
    left: usize,
    size: usize,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Chunks {
    fn new(count: usize, size: usize) -> Chunks {
        Chunks {
            left: count,
            size,
            sleep: Box::pin(tokio::time::sleep(Duration::from_millis(1))),
        }
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.left -= 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(1);
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

/// An inbound sidecar in front of `app` and an outbound one routing HOST to it.
async fn pair(
    app: SocketAddr,
    protocol: UpstreamProtocol,
) -> (
    meshguard::sidecar::app::Running,
    meshguard::sidecar::app::Running,
) {
    pair_with_inbound_idle(app, protocol, None).await
}

/// As `pair`, with the inbound closing connections quiet for `idle_ms`.
async fn pair_with_inbound_idle(
    app: SocketAddr,
    protocol: UpstreamProtocol,
    idle_ms: Option<u64>,
) -> (
    meshguard::sidecar::app::Running,
    meshguard::sidecar::app::Running,
) {
    let pki = Pki::new();
    let mut server_cfg = inbound_config(pki.identity("server", &id("default", "server")), app);
    if let Some(ms) = idle_ms {
        server_cfg.limits.idle_timeout_ms = ms;
    }
    let server = meshguard::sidecar::app::start(&server_cfg).await.unwrap();
    let mut cfg = outbound_config(
        pki.identity("client", &id("default", "client")),
        HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    );
    cfg.outbound.as_mut().unwrap().protocol = protocol;
    let client = meshguard::sidecar::app::start(&cfg).await.unwrap();
    (server, client)
}

async fn outbound_handshakes(client: &meshguard::sidecar::app::Running) -> f64 {
    let text = scrape(client.admin).await;
    series(
        &text,
        "meshguard_tls_handshakes_total",
        &[("direction", "outbound"), ("result", "accepted")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn http1_hop_reuses_one_peer_connection_and_one_app_connection() {
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(30),
    })
    .await;
    let (_server, client) = pair(app.addr, UpstreamProtocol::Http1).await;
    for i in 0..20 {
        let (status, body) =
            http_get(client.outbound.unwrap(), HOST, &format!("/s/{i}"), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("ok /s/{i}"));
    }
    assert_eq!(
        app.accepted(),
        1,
        "sequential requests share one app connection"
    );
    assert_eq!(
        outbound_handshakes(&client).await,
        1.0,
        "and one mTLS connection"
    );
}

#[tokio::test]
async fn app_closing_its_connections_loses_no_request() {
    // An app that closes idle keep-alive connections quickly (like Node's
    // 5 s keep-alive timeout, shortened) and one that closes after every
    // response: every request still gets its answer.
    for mode in [
        AppMode::KeepAlive {
            idle_close: Duration::from_millis(40),
        },
        AppMode::CloseEach,
    ] {
        let app = CountingApp::start(mode).await;
        let (_server, client) = pair(app.addr, UpstreamProtocol::Http1).await;
        for i in 0..8 {
            let (status, body) =
                http_get(client.outbound.unwrap(), HOST, &format!("/c/{i}"), &[]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body, format!("ok /c/{i}"));
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        assert!(
            app.accepted() >= 8,
            "the app closed every connection: {}",
            app.accepted()
        );
    }
}

#[tokio::test]
async fn a_response_cut_short_does_not_leave_its_connection_in_the_pool() {
    let app = CountingApp::start(AppMode::BigBody).await;
    let (_server, client) = pair(app.addr, UpstreamProtocol::Http1).await;
    // Read the head and first bytes of a 4 MiB response, then hang up.
    let tcp = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/big")
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.body_mut().frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop((resp, sender));
    conn.abort();
    // The next requests must not land on the half-read connections.
    for i in 0..5 {
        let (status, body) =
            http_get(client.outbound.unwrap(), HOST, &format!("/n/{i}"), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("ok /n/{i}"));
    }
    assert!(app.accepted() >= 2, "a fresh app connection after the cut");
}

#[tokio::test]
async fn http2_hop_multiplexes_concurrent_requests_on_one_connection() {
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(30),
    })
    .await;
    let (_server, client) = pair(app.addr, UpstreamProtocol::Http2).await;
    let mut handles = Vec::new();
    for i in 0..50 {
        let addr = client.outbound.unwrap();
        handles.push(tokio::spawn(async move {
            http_get(addr, HOST, &format!("/m/{i}"), &[]).await
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("ok /m/{i}"));
    }
    assert_eq!(
        outbound_handshakes(&client).await,
        1.0,
        "one multiplexed mTLS connection"
    );
}

#[tokio::test]
async fn http2_hop_reconnects_after_the_peer_closes_the_connection() {
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(30),
    })
    .await;
    // The inbound sidecar closes connections quiet for 200 ms (GOAWAY).
    let (_server, client) =
        pair_with_inbound_idle(app.addr, UpstreamProtocol::Http2, Some(200)).await;
    for i in 0..3 {
        let (status, body) =
            http_get(client.outbound.unwrap(), HOST, &format!("/r/{i}"), &[]).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        outbound_handshakes(&client).await,
        3.0,
        "each request after an idle close opened a new connection"
    );
}

/// A request with a body is never sent twice, so it must not be sent on a
/// connection the peer already closed: the HTTP/1.1 hop checks an idle
/// mTLS connection before reusing it.
#[tokio::test]
async fn http1_hop_sends_no_request_on_a_connection_the_peer_closed() {
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(30),
    })
    .await;
    // The inbound sidecar closes connections quiet for 200 ms.
    let (_server, client) =
        pair_with_inbound_idle(app.addr, UpstreamProtocol::Http1, Some(200)).await;
    let tcp = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::post("/count")
            .header("host", HOST)
            .body(Full::new(Bytes::from(vec![b'p'; 1000 + i])))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "POST {i} after an idle close");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("got {} bytes", 1000 + i));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        outbound_handshakes(&client).await,
        3.0,
        "each request after an idle close opened a new connection"
    );
}

#[tokio::test]
async fn idle_app_connections_past_the_idle_timeout_are_closed_under_load() {
    // The app never closes idle connections itself (60 s), so only
    // meshguard's idle timeout for app connections (4 s) can close them.
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(60),
    })
    .await;
    let (_server, client) = pair(app.addr, UpstreamProtocol::Http2).await;
    let out = client.outbound.unwrap();
    // Three requests at once: three app connections.
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { http_get(out, HOST, "/slow", &[]).await }))
        .collect();
    for h in slow {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert_eq!(app.open(), 3);
    // Then one at a time for longer than the idle timeout: one connection
    // is enough, and the two left idle are closed.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(5_500);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(http_get(out, HOST, "/one", &[]).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.open(), 1, "idle app connections were closed");
    assert_eq!(app.accepted(), 3, "and the busy one kept");
}

#[tokio::test]
async fn a_streamed_upload_reaches_the_app_whole_over_both_hops() {
    let app = CountingApp::start(AppMode::KeepAlive {
        idle_close: Duration::from_secs(30),
    })
    .await;
    for protocol in [UpstreamProtocol::Http2, UpstreamProtocol::Http1] {
        let (_server, client) = pair(app.addr, protocol).await;
        let tcp = TcpStream::connect(client.outbound.unwrap()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..2 {
            // No length known in advance: the caller sends it chunked, and
            // so does the inbound to the app.
            let req = Request::post("/count")
                .header("host", HOST)
                .body(Chunks::new(64, 16 * 1024))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("got {} bytes", 64 * 16 * 1024));
        }
    }
    assert_eq!(app.accepted(), 2, "one app connection per pair, reused");
}

/// An app that answers the first request on each connection with the next
/// of `answers`, as raw bytes, and then closes.
async fn raw_app(answers: Vec<&'static str>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for answer in answers {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if tcp.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            tcp.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn an_app_that_breaks_http_gets_its_caller_a_502_and_the_next_request_a_fresh_connection() {
    let app = raw_app(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine",
    ])
    .await;
    let (_server, client) = pair(app, UpstreamProtocol::Http2).await;
    for _ in 0..3 {
        let (status, body) = http_get(client.outbound.unwrap(), HOST, "/", &[]).await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("invalid response"), "{body}");
    }
    let (status, body) = http_get(client.outbound.unwrap(), HOST, "/", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "fine");
}
