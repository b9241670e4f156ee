//! The app hop's client against scripted apps on real sockets: each test
//! app reads the request bytes and answers with exactly the bytes given.

use super::*;
use crate::sidecar::proxy::dial::TcpDial;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One accepted connection of a scripted app.
struct AppSide {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl AppSide {
    /// Reads until `pat` and returns everything up to and including it.
    async fn read_until(&mut self, pat: &[u8]) -> String {
        loop {
            if let Some(at) = self.buf.windows(pat.len()).position(|w| w == pat) {
                let rest = self.buf.split_off(at + pat.len());
                let out = std::mem::replace(&mut self.buf, rest);
                return String::from_utf8(out).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.tcp.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "client closed; had {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn head(&mut self) -> String {
        self.read_until(b"\r\n\r\n").await
    }

    async fn send(&mut self, raw: &str) {
        self.tcp.write_all(raw.as_bytes()).await.unwrap();
    }

    /// Reads a request head and answers it with `raw`.
    async fn answer(&mut self, raw: &str) {
        self.head().await;
        self.send(raw).await;
    }
}

type AppClient = Http1Client<TcpDial>;

/// A client pool in front of an app at `addr`.
fn client(addr: std::net::SocketAddr) -> AppClient {
    let dial = TcpDial {
        addr,
        timeout: Duration::from_secs(2),
    };
    Http1Client::new(dial, 16, Duration::from_secs(4))
}

/// A listening app and the client pool in front of it.
async fn app() -> (TcpListener, AppClient) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = client(addr);
    (listener, pool)
}

async fn accept(listener: &TcpListener) -> AppSide {
    let (tcp, _) = listener.accept().await.unwrap();
    AppSide {
        tcp,
        buf: Vec::new(),
    }
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "app")
        .body(Empty::new())
        .unwrap()
}

/// A request body fed by the test, frame by frame.
struct Fed(mpsc::Receiver<Frame<Bytes>>);

impl Body for Fed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn fed(method: Method, headers: &[(&str, &str)]) -> (mpsc::Sender<Frame<Bytes>>, Request<Fed>) {
    let (tx, rx) = mpsc::channel(8);
    let mut req = Request::builder()
        .method(method)
        .uri("/up")
        .header("host", "app");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    (tx, req.body(Fed(rx)).unwrap())
}

async fn body_of<B>(
    resp: Response<ClientBody<B>>,
) -> Result<(Bytes, Option<HeaderMap>), ExchangeError>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// The error of a send that must fail.
async fn send_err<B>(pool: &AppClient, req: Request<B>) -> SendError
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    match pool.send(req).await {
        Ok(resp) => panic!("got {}", resp.status()),
        Err(e) => e,
    }
}

fn idle_count(pool: &AppClient) -> usize {
    pool.homes.get().len()
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_writes_the_request_as_given() {
    let (listener, pool) = app().await;
    let server = tokio::spawn(async move {
        let mut app = accept(&listener).await;
        for _ in 0..2 {
            assert_eq!(app.head().await, "GET /a?b=1 HTTP/1.1\r\nhost: app\r\n\r\n");
            app.send("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
                .await;
        }
        // A second connection would be accepted here; none must come.
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    });
    for _ in 0..2 {
        let resp = pool.send(get("/a?b=1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_of(resp).await.unwrap().0, "hi");
    }
    assert!(
        server.await.unwrap(),
        "the second request opened a connection"
    );
}

#[tokio::test]
async fn chunked_responses_carry_their_trailers_and_the_connection_is_reused() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n").await;
        app.answer("HTTP/1.1 204 No Content\r\n\r\n").await;
    });
    let resp = pool.send(get("/")).await.unwrap();
    let (body, trailers) = body_of(resp).await.unwrap();
    assert_eq!(body, "abcde");
    assert_eq!(trailers.unwrap()["x-sum"], "5");
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_end_stream());
}

#[tokio::test]
async fn a_close_delimited_or_connection_close_response_is_not_reused() {
    let (listener, pool) = app().await;
    let server = tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\n\r\nuntil close").await;
        drop(app);
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx")
            .await;
        let mut third = accept(&listener).await;
        third.head().await;
        third
            .send("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\ny")
            .await;
    });
    let (body, _) = body_of(pool.send(get("/")).await.unwrap()).await.unwrap();
    assert_eq!(body, "until close");
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(body_of(resp).await.unwrap().0, "x");
    assert_eq!(idle_count(&pool), 0, "a connection: close one was pooled");
    let (body, _) = body_of(pool.send(get("/")).await.unwrap()).await.unwrap();
    assert_eq!(body, "y");
    assert_eq!(idle_count(&pool), 0, "an HTTP/1.0 one was pooled");
    server.await.unwrap();
}

#[tokio::test]
async fn informational_responses_are_skipped_and_an_unasked_101_is_an_error() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        app.answer("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
            .await;
    });
    let resp = pool.send(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("link").is_none());
    drop(resp);
    let err = send_err(&pool, get("/")).await;
    assert!(
        matches!(err, SendError::Exchange(ExchangeError::UnaskedUpgrade)),
        "{err}"
    );
}

#[tokio::test]
async fn an_idle_connection_the_app_closed_is_not_used() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        drop(app);
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
            .await;
    });
    drop(pool.send(get("/")).await.unwrap());
    assert_eq!(idle_count(&pool), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A POST is not retried, so only noticing the close before sending saves it.
    let post = Request::post("/")
        .header("host", "app")
        .body(Empty::<Bytes>::new());
    let (body, _) = body_of(pool.send(post.unwrap()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(body, "new");
}

/// No request has to come for an idle connection that ended to be closed:
/// the pool's reaper notices within a second or so.
#[tokio::test]
async fn an_idle_connection_the_app_closed_is_closed_without_another_request() {
    let (listener, pool) = app().await;
    let app_side = tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        app
    });
    drop(pool.send(get("/")).await.unwrap());
    assert_eq!(idle_count(&pool), 1);
    drop(app_side.await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while idle_count(&pool) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection is still kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reused_connection_lost_before_any_response_is_retried_only_when_safe() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        // Takes the next request and closes without answering, twice.
        app.head().await;
        drop(app);
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nretry")
            .await;
        app.head().await;
        drop(app);
    });
    drop(pool.send(get("/")).await.unwrap());
    let (body, _) = body_of(pool.send(get("/")).await.unwrap()).await.unwrap();
    assert_eq!(body, "retry", "the GET was not retried on a new connection");
    let post = Request::post("/")
        .header("host", "app")
        .body(Empty::<Bytes>::new());
    let err = send_err(&pool, post.unwrap()).await;
    assert!(
        matches!(err, SendError::Exchange(ExchangeError::Closed)),
        "{err}"
    );
}

#[tokio::test]
async fn a_streamed_body_is_chunked_with_its_announced_trailers() {
    let (listener, pool) = app().await;
    let server = tokio::spawn(async move {
        let mut app = accept(&listener).await;
        let head = app.head().await;
        let body = app.read_until(b"0\r\n").await;
        let trailers = app.read_until(b"\r\n\r\n").await;
        app.send("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, body, trailers)
    });
    let (tx, req) = fed(Method::POST, &[("trailer", "x-sum")]);
    let send = tokio::spawn(async move {
        let resp = pool.send(req).await.unwrap();
        (resp.status(), idle_count(&pool))
    });
    tx.send(Frame::data(Bytes::from_static(b"hello ")))
        .await
        .unwrap();
    tx.send(Frame::data(Bytes::new())).await.unwrap();
    tx.send(Frame::data(Bytes::from_static(b"world")))
        .await
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "11".parse().unwrap());
    trailers.insert("x-secret", "no".parse().unwrap());
    tx.send(Frame::trailers(trailers)).await.unwrap();
    let (head, body, trailers) = server.await.unwrap();
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(body, "6\r\nhello \r\n5\r\nworld\r\n0\r\n");
    assert_eq!(trailers, "x-sum: 11\r\n\r\n");
    let (status, idle) = send.await.unwrap();
    assert_eq!((status, idle), (StatusCode::OK, 1));
}

#[tokio::test]
async fn an_early_answer_is_returned_while_the_body_still_comes_and_the_connection_closes() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (tx, req) = fed(Method::PUT, &[("content-length", "100")]);
    tx.send(Frame::data(Bytes::from_static(b"part")))
        .await
        .unwrap();
    let resp = pool.send(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(body_of(resp).await.unwrap().0, "big!");
    assert_eq!(
        idle_count(&pool),
        0,
        "a half-sent request's connection was pooled"
    );
    drop(tx);
}

#[tokio::test]
async fn the_rest_of_the_body_still_goes_out_after_an_early_answer_and_the_connection_is_reused() {
    let (listener, pool) = app().await;
    let server = tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await;
        let rest = app.read_until(b"later").await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        rest
    });
    let (tx, req) = fed(Method::PUT, &[("content-length", "10")]);
    tx.send(Frame::data(Bytes::from_static(b"first")))
        .await
        .unwrap();
    let resp = pool.send(req).await.unwrap();
    assert_eq!(resp.status(), 202);
    tx.send(Frame::data(Bytes::from_static(b"later")))
        .await
        .unwrap();
    drop(tx);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        idle_count(&pool),
        1,
        "the drained connection was not pooled"
    );
    assert_eq!(pool.send(get("/")).await.unwrap().status(), 200);
    assert_eq!(server.await.unwrap(), "firstlater");
}

#[tokio::test]
async fn bodies_that_break_their_framing_are_errors() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        app.answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
            .await;
        drop(app);
        let mut app = accept(&listener).await;
        app.head().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let resp = pool.send(get("/")).await.unwrap();
    assert!(matches!(body_of(resp).await, Err(ExchangeError::Closed)));
    assert_eq!(idle_count(&pool), 0);
    let req = Request::post("/")
        .header("host", "app")
        .header("content-length", "10")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let err = send_err(&pool, req).await;
    assert!(
        matches!(err, SendError::Exchange(ExchangeError::BodyLength)),
        "{err}"
    );
}

#[tokio::test]
async fn head_responses_have_no_body_whatever_their_length_says() {
    let (listener, pool) = app().await;
    tokio::spawn(async move {
        let mut app = accept(&listener).await;
        for _ in 0..2 {
            app.answer("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
        }
    });
    for _ in 0..2 {
        let req = Request::head("/")
            .header("host", "app")
            .body(Empty::<Bytes>::new());
        let resp = pool.send(req.unwrap()).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "1000");
        assert!(resp.body().is_end_stream());
    }
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = client(addr);
    assert!(matches!(
        pool.send(get("/")).await,
        Err(SendError::Connect(_))
    ));
}
