//! Shutdown as Kubernetes needs it: on SIGTERM readiness goes false while
//! both directions keep serving for the drain delay, then connections close
//! gracefully, and no request that was accepted is lost.

mod support;

use meshguard::sidecar::tls::UpstreamProtocol;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const HOST: &str = "server.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_steady_traffic_loses_no_accepted_request_over_http2() {
    drain_under_steady_traffic(UpstreamProtocol::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_steady_traffic_loses_no_accepted_request_over_http1() {
    drain_under_steady_traffic(UpstreamProtocol::Http1).await;
}

/// Four clients call through a pair while the server side drains: HTTP/1.1
/// hops get `Connection: close` then close when quiet, HTTP/2 hops GOAWAY.
async fn drain_under_steady_traffic(protocol: UpstreamProtocol) {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut cfg = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    cfg.shutdown.drain_delay_ms = 600;
    cfg.shutdown.deadline_ms = 5_000;
    let server = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (server_admin, server_in) = (server.admin, server.inbound.unwrap());
    let mut client_cfg = outbound_config(
        pki.identity("client", &id("default", "client")),
        HOST,
        server_in,
        id("default", "server"),
    );
    client_cfg.outbound.as_mut().unwrap().protocol = protocol;
    let client = meshguard::sidecar::app::start(&client_cfg).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused, lost) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut load = Vec::new();
    for w in 0..4 {
        let (stop, ok, refused, lost, addr) = (
            stop.clone(),
            ok.clone(),
            refused.clone(),
            lost.clone(),
            client.outbound.unwrap(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (status, body) = http_get(addr, HOST, &format!("/w{w}/{i}"), &[]).await;
                match status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    // The server's listener is closed: nothing was accepted.
                    502 if body.contains("unreachable") => refused.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        eprintln!("lost: {status} {body}");
                        lost.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_drain = ok.load(Ordering::Relaxed);
    let drain = tokio::spawn(server.drain());
    // Readiness goes false at once, while requests keep succeeding.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = http_get(server_admin, "a", "/ready", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"));
    let during = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ok.load(Ordering::Relaxed) > during,
        "requests must keep succeeding during the drain delay"
    );
    let started = Instant::now();
    drain.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(before_drain > 0);
    assert_eq!(
        lost.load(Ordering::Relaxed),
        0,
        "accepted requests were lost"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "after the drain the server must be gone"
    );
    assert_eq!(app.count(), ok.load(Ordering::Relaxed));
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    // A slow app: answers after 1.5 s.
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from("slow ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let pki = Pki::new();
    let ident = pki.identity("server", &id("default", "server"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = pki.dir.path().join("server.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\ninbound:\n  listen: 127.0.0.1:{port}\n  app: {app_addr}\nadmin:\n  listen: 127.0.0.1:{admin}\nshutdown:\n  drain_delay_ms: 100\n  deadline_ms: 10000\n",
            ident.cert.display(),
            ident.key.display(),
            ident.bundle.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("MESHGUARD_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get_opt(admin).await != Some(200) {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = pki.svid(&id("default", "client"));
    let request = tokio::spawn(tls_get(
        inbound,
        tls_client(Some((&c.cert_pem, &c.key_pem)), &[b"http/1.1"]),
        "/slow",
        &[],
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(child.id());
    let (status, body) = request
        .await
        .unwrap()
        .expect("the request in flight must complete");
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow ok"));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

async fn http_get_opt(admin: u16) -> Option<u16> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().ok()?;
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, "a", "/ready", &[]).await.0.as_u16())
}
