//! The first-run experience: a built-in echo app, and `meshguard demo`,
//! which runs two workloads, each with its sidecar, talking mTLS on loopback.

use crate::dev::certs::{write_dev_certs, DevCertsOptions};
use crate::sidecar::config::{
    AdminConfig, Config, IdentityConfig, InboundConfig, OutboundConfig, RouteConfig, RuntimeConfig,
};
use crate::sidecar::identity::SpiffeId;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
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
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let mut out = String::new();
    let _ = writeln!(out, "app {name} received: {} {}", req.method(), req.uri());
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

/// Loopback ports the demo uses, from `base` upwards.
pub struct DemoPorts {
    pub base: u16,
}

impl DemoPorts {
    fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run_demo(cert_dir: &Path, ports: DemoPorts) -> anyhow::Result<()> {
    let td = "cluster.local";
    let workloads = ["default/client".to_owned(), "default/server".to_owned()];
    let certs = write_dev_certs(&DevCertsOptions {
        out_dir: cert_dir,
        trust_domain: td,
        workloads: &workloads,
        ttl: time::Duration::hours(24),
        ca_ttl: time::Duration::days(365),
        force: false,
    })?;
    println!(
        "dev certificates in {} (CA {})",
        cert_dir.display(),
        if certs.ca_reused { "reused" } else { "created" }
    );

    // client: app :+10, sidecar inbound :+6, outbound :+1, admin :+0
    // server: app :+110, sidecar inbound :+106, outbound :+101, admin :+100
    let sides = [
        ("client", 0u16, "server", 100u16),
        ("server", 100, "client", 0),
    ];
    let mut running = Vec::new();
    for (i, (name, off, other, other_off)) in sides.iter().enumerate() {
        let app_listener = TcpListener::bind(ports.addr(off + 10)).await?;
        tokio::spawn(echo_app(app_listener, name.to_string()));
        let files = &certs.workloads[i];
        let config = Config {
            identity: IdentityConfig {
                cert: files.cert.clone(),
                key: files.key.clone(),
                bundle: files.bundle.clone(),
                federated_bundles: Default::default(),
            },
            inbound: Some(InboundConfig {
                listen: ports.addr(off + 6),
                app: ports.addr(off + 10),
                policy: None,
                strip_headers: Vec::new(),
            }),
            outbound: Some(OutboundConfig {
                listen: Some(ports.addr(off + 1)),
                protocol: Default::default(),
                max_idle_per_peer: None,
                destinations: Vec::new(),
                undeclared: Default::default(),
                routes: vec![RouteConfig {
                    host: Some(format!("{other}.default.svc.cluster.local")),
                    listen: None,
                    peer: ports.addr(other_off + 6).to_string(),
                    identity: SpiffeId::from_k8s(td, "default", other)?,
                }],
            }),
            admin: AdminConfig {
                listen: ports.addr(*off),
            },
            runtime: RuntimeConfig::default(),
            limits: Default::default(),
            shutdown: Default::default(),
        };
        running.push(crate::sidecar::app::start(&config).await?);
    }

    let outbound = ports.addr(1);
    println!(
        "\n--- client app -> client sidecar {outbound} -> mTLS -> server sidecar {} -> server app",
        ports.addr(106)
    );
    println!("    (the request carries a forged x-forwarded-client-cert and x-meshguard-client-id; watch them disappear)\n");
    let answer = demo_request(outbound).await?;
    println!("{answer}");
    println!("--- try it yourself:");
    println!("    curl -H 'Host: server.default.svc.cluster.local' http://{outbound}/hello");
    println!("    curl -H 'Host: nowhere.example' http://{outbound}/   # undeclared: refused");
    println!("    curl http://{}/ready", ports.addr(0));
    println!("\nrunning; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    for r in running {
        r.stop().await;
    }
    Ok(())
}

async fn demo_request(outbound: SocketAddr) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(outbound).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get("/hello")
        .header("host", "server.default.svc.cluster.local")
        .header("x-forwarded-client-cert", "By=spiffe://cluster.local/ns/default/sa/server;URI=spiffe://cluster.local/ns/kube-system/sa/admin")
        .header("x-meshguard-client-id", "spiffe://cluster.local/ns/kube-system/sa/admin")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(format!("HTTP {status}\n{}", String::from_utf8_lossy(&body)))
}
