//! Hostile and broken input at both listeners, over real sockets: request
//! smuggling attempts, malformed requests, a failing local app, and peers
//! that break the TLS handshake. Each must end in a clear refusal or a
//! closed connection, never in an ambiguous request reaching an app, and
//! the sidecar must keep serving afterwards.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER_HOST: &str = "server.default.svc.cluster.local";

/// An inbound sidecar in front of `app`, and a client with a good SVID.
struct Inbound {
    pki: Pki,
    sidecar: meshguard::sidecar::app::Running,
    client: Arc<rustls::ClientConfig>,
}

async fn inbound_for(app: SocketAddr) -> Inbound {
    let pki = Pki::new();
    let sidecar = start_inbound(&pki, "server", app).await;
    let cert = pki.svid(&id("default", "client"));
    let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
    Inbound {
        pki,
        sidecar,
        client,
    }
}

impl Inbound {
    fn addr(&self) -> SocketAddr {
        self.sidecar.inbound.unwrap()
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        tls_get(self.addr(), self.client.clone(), path, &[])
            .await
            .map(|(status, body)| (status.as_u16(), body))
    }

    async fn refused_handshakes(&self) -> f64 {
        let text = scrape(self.sidecar.admin).await;
        series(
            &text,
            "meshguard_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "refused")],
        )
        .unwrap_or(0.0)
    }

    /// Waits (up to 5 s) for the refused-handshake count to exceed `before`.
    async fn wait_refused_above(&self, before: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.refused_handshakes().await;
            if now > before || Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// App → outbound sidecar → mTLS → inbound sidecar → recording app.
struct Pair {
    _pki: Pki,
    app: RecordingApp,
    _server: meshguard::sidecar::app::Running,
    client: meshguard::sidecar::app::Running,
}

async fn pair() -> Pair {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = start_inbound(&pki, "server", app.addr).await;
    let client = start_outbound(&pki, SERVER_HOST, &server).await;
    Pair {
        _pki: pki,
        app,
        _server: server,
        client,
    }
}

/// Sends raw bytes over plain TCP and reads until the peer closes (or 10 s).
async fn tcp_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests no conforming HTTP/1.1 parser may act on. Each must get a 400
/// or a closed connection, and nothing may reach an app.
fn malformed_requests(host: &str) -> Vec<(&'static str, String)> {
    let h = format!("Host: {host}\r\n");
    vec![
        (
            "duplicate Content-Length with different values",
            format!("POST /a HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "Content-Length as a list of different values",
            format!("POST /a HTTP/1.1\r\n{h}Content-Length: 5, 6\r\n\r\nhello!"),
        ),
        (
            "Content-Length with a sign",
            format!("POST /a HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
        ),
        (
            "Content-Length in hex",
            format!("POST /a HTTP/1.1\r\n{h}Content-Length: 0x5\r\n\r\nhello"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ),
        (
            "unknown Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding in an HTTP/1.0 request",
            format!("POST /a HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "obsolete line folding",
            format!("GET /a HTTP/1.1\r\n{h}X-Folded: one\r\n two\r\n\r\n"),
        ),
        (
            "obsolete line folding of Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "whitespace between header name and colon",
            format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "space inside a header name",
            format!("GET /a HTTP/1.1\r\n{h}X Forwarded: x\r\n\r\n"),
        ),
        (
            "control character in a header name",
            format!("GET /a HTTP/1.1\r\n{h}X-\u{1}Evil: x\r\n\r\n"),
        ),
        (
            "NUL in a header value",
            format!("GET /a HTTP/1.1\r\n{h}X-Evil: a\0b\r\n\r\n"),
        ),
        (
            "header line without a colon",
            format!("GET /a HTTP/1.1\r\n{h}NoColonHere\r\n\r\n"),
        ),
        ("request line garbage", format!("GARBAGE\r\n{h}\r\n")),
        (
            "request line with two spaces",
            format!("GET  /a HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "request line without a target",
            format!("GET HTTP/1.1\r\n{h}\r\n"),
        ),
        (
            "unknown HTTP version",
            format!("GET /a HTTP/9.9\r\n{h}\r\n"),
        ),
        (
            "binary junk",
            "\u{0}\u{1}\u{2}\u{3}\r\n\r\n".to_string(),
        ),
    ]
}

/// A 400 or nothing at all (connection closed); never a forwarded answer.
fn assert_refused(case: &str, response: &str) {
    let status = status_of(response);
    assert!(
        response.is_empty() || status == 400,
        "{case}: expected 400 or a closed connection, got {response:?}"
    );
    assert!(!response.contains("app ok"), "{case}: reached the app");
}

#[tokio::test]
async fn inbound_refuses_malformed_and_ambiguous_requests() {
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let cases = malformed_requests("server.test");
    for (case, raw) in &cases {
        let response = tls_raw(s.addr(), s.client.clone(), raw).await;
        assert_refused(case, &response);
    }
    assert_eq!(app.count(), 0, "no malformed request may reach the app");
    assert_eq!(
        s.get("/still-serving").await,
        Ok((200, "app ok, 0 body bytes".into()))
    );
    assert_eq!(app.count(), 1);
    drop(s.pki);
}

#[tokio::test]
async fn outbound_refuses_malformed_and_ambiguous_requests() {
    let p = pair().await;
    let addr = p.client.outbound.unwrap();
    for (case, raw) in &malformed_requests(SERVER_HOST) {
        let response = tcp_raw(addr, raw.as_bytes()).await;
        assert_refused(case, &response);
    }
    assert_eq!(
        p.app.count(),
        0,
        "no malformed request may reach the peer's app"
    );
    let (status, _) = http_get(addr, SERVER_HOST, "/still-serving", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(p.app.count(), 1);
}

/// Content-Length and Transfer-Encoding together (CL.TE / TE.CL): the
/// message is framed by Transfer-Encoding alone, the connection is not
/// reused, and the "smuggled" request behind the body never exists.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_ambiguously() {
    let smuggle = |h: &str| {
        vec![
            format!(
                "POST /a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
            ),
            format!(
                "POST /a HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
            ),
            format!(
                "POST /a HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
            ),
        ]
    };
    let check = |case: &str, response: &str, seen: Vec<Seen>| {
        let status = status_of(response);
        assert!(
            response.is_empty() || status == 400 || status == 200,
            "{case}: {response:?}"
        );
        assert!(
            seen.len() <= 1,
            "{case}: the app saw {} requests",
            seen.len()
        );
        for req in &seen {
            assert_eq!(req.target, "/a", "{case}: the smuggled request got through");
            assert!(
                req.header("content-length").is_empty()
                    || req.header("transfer-encoding").is_empty(),
                "{case}: forwarded with both framings: {:?}",
                req.headers
            );
        }
        assert!(
            !response.contains("/smuggled") && response.matches("HTTP/1.1 ").count() <= 1,
            "{case}: a second response came back: {response:?}"
        );
    };

    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    for (i, raw) in smuggle("server.test").iter().enumerate() {
        let before = app.count();
        let response = tls_raw(s.addr(), s.client.clone(), raw).await;
        let seen = app.seen.lock().unwrap()[before..].to_vec();
        check(&format!("inbound #{i}"), &response, seen);
    }

    let p = pair().await;
    for (i, raw) in smuggle(SERVER_HOST).iter().enumerate() {
        let before = p.app.count();
        let response = tcp_raw(p.client.outbound.unwrap(), raw.as_bytes()).await;
        let seen = p.app.seen.lock().unwrap()[before..].to_vec();
        check(&format!("outbound #{i}"), &response, seen);
    }
}

/// Identical duplicate Content-Length values are one length (RFC 9110
/// §8.6); the app gets the request once, with one Content-Length.
#[tokio::test]
async fn identical_duplicate_content_length_is_forwarded_once_with_one_length() {
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let raw = "POST /a HTTP/1.1\r\nHost: server.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let response = tls_raw(s.addr(), s.client.clone(), raw).await;
    let status = status_of(&response);
    assert!(status == 200 || status == 400, "{response:?}");
    if status == 200 {
        assert!(response.contains("app ok, 5 body bytes"), "{response:?}");
        assert_eq!(app.last().header("content-length"), vec!["5"]);
    }
}

/// An absolute-form target naming an undeclared host is routed by that
/// host (RFC 9112 §3.2.2), whatever the Host header says: refused.
#[tokio::test]
async fn outbound_absolute_form_for_an_undeclared_host_is_refused() {
    let p = pair().await;
    let addr = p.client.outbound.unwrap();
    let raw = format!(
        "GET http://evil.example/steal HTTP/1.1\r\nHost: {SERVER_HOST}\r\nConnection: close\r\n\r\n"
    );
    let response = tcp_raw(addr, raw.as_bytes()).await;
    let status = status_of(&response);
    assert!(status == 403 || status == 400, "{response:?}");
    assert_eq!(p.app.count(), 0);

    let raw = "GET http://evil.example/steal HTTP/1.1\r\nConnection: close\r\n\r\n";
    let status = status_of(&tcp_raw(addr, raw.as_bytes()).await);
    assert!(status == 403 || status == 400, "{status}");
    assert_eq!(p.app.count(), 0);
}

/// An absolute-form target for a declared host with a Host header naming
/// another: the request goes to the declared peer, and the peer's app must
/// see one Host, the one the request was routed by (RFC 9112 §3.2.2: a
/// proxy ignores the received Host and uses the target's authority), or
/// the request must be refused.
#[tokio::test]
async fn outbound_absolute_form_with_a_conflicting_host_is_not_forwarded_ambiguously() {
    let p = pair().await;
    let addr = p.client.outbound.unwrap();
    let raw = format!(
        "GET http://{SERVER_HOST}/x HTTP/1.1\r\nHost: admin.internal.example\r\nConnection: close\r\n\r\n"
    );
    let response = tcp_raw(addr, raw.as_bytes()).await;
    let status = status_of(&response);
    assert!(status == 200 || status == 400, "{response:?}");
    if status == 200 {
        assert_eq!(p.app.last().header("host"), vec![SERVER_HOST]);
    }
}

/// Two Host headers (RFC 9112 §3.2: a server MUST answer 400) would let the
/// sidecar route by one while the app reads the other.
#[tokio::test]
async fn outbound_refuses_two_host_headers() {
    let p = pair().await;
    let raw = format!(
        "GET /x HTTP/1.1\r\nHost: {SERVER_HOST}\r\nHost: admin.internal.example\r\nConnection: close\r\n\r\n"
    );
    let response = tcp_raw(p.client.outbound.unwrap(), raw.as_bytes()).await;
    if p.app.count() > 0 {
        panic!("forwarded with Host {:?}", p.app.last().header("host"));
    }
    assert_refused("outbound, two Host headers", &response);
}

#[tokio::test]
async fn inbound_refuses_two_host_headers() {
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let raw = "GET /x HTTP/1.1\r\nHost: server.test\r\nHost: admin.internal.example\r\nConnection: close\r\n\r\n";
    let response = tls_raw(s.addr(), s.client.clone(), raw).await;
    if app.count() > 0 {
        panic!("forwarded with Host {:?}", app.last().header("host"));
    }
    assert_refused("inbound, two Host headers", &response);
}

/// HTTP/2 from a peer with a Host header that disagrees with :authority.
/// Forwarded as HTTP/1.1, the app's Host must come from :authority (RFC
/// 9113 §8.3.1), or the request must be refused as malformed.
#[tokio::test]
async fn inbound_http2_host_must_agree_with_authority() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let cert = s.pki.svid(&id("default", "client"));
    let h2 = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"h2"]);
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("server.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(h2)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://server.test/x")
        .header("host", "admin.internal.example")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let status = sender.send_request(req).await.unwrap().status();
    assert!(status == 200 || status == 400, "{status}");
    if status == 200 {
        assert_eq!(app.last().header("host"), vec!["server.test"]);
    }
}

// ------------------------------------------------------------- app faults

/// A local app that misbehaves on request, by path:
/// - `/slow`: answers after 1.5 s, then sends its body in three chunks
///   0.8 s apart;
/// - `/reset-mid-body`: sends the head and part of the body, then resets;
/// - `/reset-before-response`: resets without answering;
/// - `/close-before-response`: closes cleanly without answering;
/// - anything else: `200 ok`.
async fn faulty_app() -> SocketAddr {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_faulty(tcp));
        }
    });
    addr
}

async fn serve_faulty(mut tcp: TcpStream) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                for chunk in ["first,", "second,", "third"] {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                    if tcp.write_all(frame.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = tcp.write_all(b"0\r\n\r\n").await;
            }
            "/reset-mid-body" => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial body")
                    .await;
                let _ = tcp.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tcp.set_zero_linger();
                return;
            }
            "/reset-before-response" => {
                let _ = tcp.set_zero_linger();
                return;
            }
            "/close-before-response" => {
                let _ = tcp.shutdown().await;
                return;
            }
            _ => {
                if tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn app_down_is_503_and_the_sidecar_keeps_serving() {
    let closed = {
        let l = TcpListener::bind(any_port()).await.unwrap();
        l.local_addr().unwrap()
    };
    let s = inbound_for(closed).await;
    for _ in 0..3 {
        let (status, body) = s.get("/x").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.starts_with("meshguard: "), "{body}");
    }
    // The app comes up on that port: the next request goes through.
    let app = TcpListener::bind(closed).await.unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = app.accept().await {
            tokio::spawn(serve_faulty(tcp));
        }
    });
    assert_eq!(s.get("/x").await, Ok((200, "ok".into())));
}

#[tokio::test]
async fn slow_app_response_arrives_whole() {
    let s = inbound_for(faulty_app().await).await;
    let start = Instant::now();
    let result = s.get("/slow").await;
    assert_eq!(result, Ok((200, "first,second,third".into())));
    assert!(start.elapsed() >= Duration::from_millis(3500));
}

#[tokio::test]
async fn app_reset_mid_response_closes_the_connection_and_the_sidecar_keeps_serving() {
    let s = inbound_for(faulty_app().await).await;
    let result = s.get("/reset-mid-body").await;
    match &result {
        // The head was already on its way: the only honest signal left is
        // to cut the connection, so the caller never takes a truncated body
        // for a whole one.
        Err(_) => {}
        Ok((502, _)) => {}
        Ok(other) => panic!("a truncated body was passed off as complete: {other:?}"),
    }
    assert_eq!(s.get("/ok").await, Ok((200, "ok".into())));
}

#[tokio::test]
async fn app_failing_before_responding_is_502_and_the_sidecar_keeps_serving() {
    let s = inbound_for(faulty_app().await).await;
    for path in ["/reset-before-response", "/close-before-response"] {
        let (status, body) = s.get(path).await.unwrap();
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.starts_with("meshguard: "), "{path}: {body}");
    }
    assert_eq!(s.get("/ok").await, Ok((200, "ok".into())));
}

// ------------------------------------------------------------ peer faults

/// The first flight of a real TLS 1.3 client (its ClientHello).
fn client_hello(client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::try_from("server.test").unwrap();
    let mut conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[tokio::test]
async fn peer_resetting_mid_handshake_is_counted_and_the_sidecar_keeps_serving() {
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let hello = client_hello(&s.client);
    for cut in [0, 5, hello.len() / 2, hello.len()] {
        let before = s.refused_handshakes().await;
        let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
        tcp.write_all(&hello[..cut]).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tcp.set_zero_linger().unwrap();
        drop(tcp);
        let after = s.wait_refused_above(before).await;
        assert_eq!(
            after,
            before + 1.0,
            "reset after {cut} bytes of ClientHello"
        );
    }
    assert_eq!(app.count(), 0);
    assert_eq!(s.get("/ok").await, Ok((200, "app ok, 0 body bytes".into())));
}

#[tokio::test]
async fn peer_sending_garbage_instead_of_tls_is_refused_counted_and_harmless() {
    let app = RecordingApp::start().await;
    let s = inbound_for(app.addr).await;
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: server.test\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"\x17\x03\x03\x00\x10application-data",
        &[0u8; 64],
    ];
    for junk in garbage {
        let before = s.refused_handshakes().await;
        let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "{junk:?}: the connection was left open for {:?}",
            start.elapsed()
        );
        assert!(
            !String::from_utf8_lossy(&out).contains("HTTP/"),
            "{junk:?}: got an HTTP answer"
        );
        let after = s.wait_refused_above(before).await;
        assert_eq!(after, before + 1.0, "{junk:?}");
    }
    let text = scrape(s.sidecar.admin).await;
    assert!(
        series(
            &text,
            "meshguard_tls_handshakes_total",
            &[
                ("direction", "inbound"),
                ("result", "refused"),
                ("reason", "not_tls")
            ],
        )
        .unwrap_or(0.0)
            >= 1.0,
        "plain HTTP is counted as not_tls:\n{text}"
    );
    assert_eq!(app.count(), 0);
    assert_eq!(s.get("/ok").await, Ok((200, "app ok, 0 body bytes".into())));
}
