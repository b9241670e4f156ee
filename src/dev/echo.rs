//! `meshguard echo`: a tiny HTTP app for demos and tests that shows what
//! reached it, identity headers included.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::fmt::Write as _;
use tokio::net::TcpListener;

/// A tiny HTTP/1.1 app that answers every request with what it received:
/// method, target and headers (so a user can see exactly which identity
/// headers reached the app), then the request body.
pub async fn echo_app(listener: TcpListener, name: String) {
    let name: std::sync::Arc<str> = name.into();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(echo(req, &name).await) }
            });
            // HTTP/1.1 and h2c (prior knowledge) on the same port, as an
            // app may speak either; the answer names the version it saw.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

async fn echo(req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let mut out = String::new();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let version = req.version();
    let _ = writeln!(
        out,
        "app {name} received: {} {target} {version:?}",
        req.method()
    );
    for (k, v) in req.headers() {
        let _ = writeln!(out, "{k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !body.is_empty() {
        let _ = writeln!(out, "\n{}", String::from_utf8_lossy(&body));
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
