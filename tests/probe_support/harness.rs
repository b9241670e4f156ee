//! Starting the forwarder and calling it as kubelet does.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use meshguard::kube::contract::parse_app_probes;
use meshguard::kube::probe::serve_probes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub struct Forwarder {
    pub addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<()>,
}

/// Starts the forwarder with `probes` (a JSON object, as in the annotation).
pub async fn forwarder(probes: Value) -> Forwarder {
    let probes = parse_app_probes(&probes.to_string()).unwrap();
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve_probes(listener, Arc::new(probes), rx));
    Forwarder { addr, stop, task }
}

pub fn http_probe(port: u16, scheme: &str, path: &str, headers: Value) -> Value {
    json!({
        "original": {"httpGet": {"path": path, "port": port, "scheme": scheme}},
        "forward": {"type": "http", "port": port, "scheme": scheme, "path": path,
                    "headers": headers, "timeoutSeconds": 1},
    })
}

pub fn tcp_probe(port: u16) -> Value {
    json!({
        "original": {"tcpSocket": {"port": port}},
        "forward": {"type": "tcp", "port": port, "timeoutSeconds": 1},
    })
}

pub fn grpc_probe(port: u16, service: Option<&str>) -> Value {
    json!({
        "original": {"grpc": {"port": port}},
        "forward": {"type": "grpc", "port": port, "service": service, "timeoutSeconds": 2},
    })
}

/// One HTTP/1.1 request; returns status and body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "pod-ip:15020");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn probe(f: &Forwarder, key: &str) -> (u16, String) {
    call(f.addr, "GET", &format!("/app-probe/{key}"), &[]).await
}

/// A port where nothing listens (just closed).
pub async fn closed_port() -> u16 {
    TcpListener::bind(local())
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
