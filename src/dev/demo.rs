//! `meshguard demo`, the first-run experience: two workloads, each with
//! its sidecar and an echo app, talking mTLS on loopback.

use crate::dev::certs::{write_dev_certs, CertsError, DevCertsOptions};
use crate::dev::echo::echo_app;
use crate::sidecar::app::AppError;
use crate::sidecar::config::{QuickInbound, QuickOutbound, QuickStart, RouteConfig};
use crate::sidecar::identity::SpiffeId;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;

/// Why the demo stopped. Each wraps its cause unchanged: the message is
/// the cause's own.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bind(#[from] crate::sidecar::proxy::BindError),
    #[error(transparent)]
    Id(#[from] crate::sidecar::identity::SpiffeIdError),
    #[error(transparent)]
    Start(#[from] AppError),
    #[error(transparent)]
    Http(#[from] http::Error),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
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
pub async fn run_demo(cert_dir: &Path, ports: DemoPorts) -> Result<(), DemoError> {
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
        let app_listener = crate::sidecar::proxy::bind(ports.addr(off + 10)).await?;
        tokio::spawn(echo_app(app_listener, name.to_string()));
        let files = &certs.workloads[i];
        let config = QuickStart {
            cert: files.cert.clone(),
            key: files.key.clone(),
            bundle: files.bundle.clone(),
            inbound: Some(QuickInbound {
                listen: ports.addr(off + 6),
                app: ports.addr(off + 10),
                policy: None,
            }),
            outbound: Some(QuickOutbound {
                listen: Some(ports.addr(off + 1)),
                route: RouteConfig {
                    host: Some(format!("{other}.default.svc.cluster.local")),
                    listen: None,
                    peer: ports.addr(other_off + 6).to_string(),
                    identity: SpiffeId::from_k8s(td, "default", other)?,
                },
            }),
            admin: Some(ports.addr(*off)),
        }
        .into_config();
        running.push(crate::sidecar::app::start(&config).await?);
    }

    let outbound = ports.addr(1);
    println!(
        "\n--- client app -> client sidecar {outbound} -> mTLS -> server sidecar {} -> server app",
        ports.addr(106)
    );
    println!("    the client app sends, with two forged identity headers:\n");
    println!("GET /hello\nhost: server.default.svc.cluster.local");
    for (name, value) in FORGED {
        println!("{name}: {value}");
    }
    println!("\n    and the server app receives (the forged headers are gone; the sidecar set its own):\n");
    let answer = demo_request(outbound).await?;
    println!("{answer}");
    println!("--- try it yourself:");
    println!("    curl -H 'Host: server.default.svc.cluster.local' http://{outbound}/hello");
    println!("    curl -H 'Host: nowhere.example' http://{outbound}/   # undeclared: refused");
    println!("    curl http://{}/ready", ports.addr(0));
    println!("\nrunning; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("\ninterrupted; stopping both sidecars");
    for r in running {
        r.stop().await;
    }
    Ok(())
}

/// What a compromised client app might send to pass for `kube-system/admin`.
const FORGED: [(&str, &str); 2] = [
    (
        "x-forwarded-client-cert",
        "By=spiffe://cluster.local/ns/default/sa/server;URI=spiffe://cluster.local/ns/kube-system/sa/admin",
    ),
    (
        "x-meshguard-client-id",
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    ),
];

async fn demo_request(outbound: SocketAddr) -> Result<String, DemoError> {
    let tcp = tokio::net::TcpStream::connect(outbound).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get("/hello")
        .header("host", "server.default.svc.cluster.local")
        .header(FORGED[0].0, FORGED[0].1)
        .header(FORGED[1].0, FORGED[1].1)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(format!("HTTP {status}\n{}", String::from_utf8_lossy(&body)))
}
