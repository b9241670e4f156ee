//! Egress outside the mesh, end to end on loopback: a real sidecar with
//! `outbound.egress`, its resolver pointed at a DNS server the test runs
//! (`egress_support::Dns`), and real TLS servers with certificates from our
//! dev CA. The test servers live on 127.0.0.1, which the address guard
//! refuses by default: each positive case allows it with `allow_cidrs`,
//! and the same case without it shows the refusal.
//!
//! What the kernel adds under iptables capture (the original destination)
//! is given to `Egress::tls` / `Egress::passthrough` directly here; the
//! network-namespace test covers the capture itself.

mod egress_support;
mod support;

use egress_support::{Dns, Echo, Https};
use meshguard::sidecar::app::Running;
use meshguard::sidecar::config::Config;
use meshguard::sidecar::egress::Egress;
use meshguard::sidecar::metrics::Metrics;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{http_get, id, scrape, series, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAY: &str = "api.pay.test";

/// The test's world: a CA, a DNS server and a payment API on 127.0.0.1.
struct World {
    pki: Pki,
    dns: Dns,
    api: Https,
}

impl World {
    async fn new() -> World {
        let pki = Pki::new();
        let dns = Dns::start().await;
        let api = Https::start(&pki.ca, &[PAY, "*.partner.test"], "127.0.0.1:0").await;
        World { pki, dns, api }
    }

    fn ca_file(&self) -> String {
        self.pki.bundle_path().display().to_string()
    }

    /// A sidecar config: outbound listener, egress with `egress` (YAML
    /// lines at the egress level, indented 4), the test's resolver.
    fn config(&self, egress: &str) -> Config {
        let ident = self.pki.identity("client", &id("shop", "checkout"));
        let yaml = format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\n\
             outbound:\n  listen: 127.0.0.1:0\n  egress:\n    resolver: {}\n    listen: 127.0.0.1:0\n{egress}\
             admin:\n  listen: 127.0.0.1:0\n",
            ident.cert.display(),
            ident.key.display(),
            ident.bundle.display(),
            self.dns.addr,
        );
        Config::from_yaml(&yaml, "egress.yaml", Path::new("/")).unwrap()
    }

    /// Both modes for the payment API, and the partner wildcard (TLS).
    fn destinations(&self, allow: &str) -> String {
        let port = self.api.addr.port();
        format!(
            "    allow_cidrs: [{allow}]\n    destinations:\n      \
             - host: {PAY}\n        mode: originate\n        port: {port}\n        ca: {ca}\n      \
             - host: {PAY}\n        mode: tls\n        ports: [{port}]\n      \
             - host: \"*.partner.test\"\n        mode: tls\n        ports: [{port}]\n",
            ca = self.ca_file()
        )
    }

    async fn sidecar(&self, allow: &str) -> Running {
        let cfg = self.config(&self.destinations(allow));
        meshguard::sidecar::app::start(&cfg).await.unwrap()
    }

    /// A TLS client trusting the dev CA, with SNI `name`.
    async fn tls_get(&self, to: SocketAddr, name: &str) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.pki.ca.cert_pem().as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let server = ServerName::try_from(name.to_owned()).unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server, tcp);
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let req = format!("GET /tls HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out).await;
        Ok(out)
    }
}

fn decisions(metrics: &str, host: &str, decision: &str, reason: &str) -> f64 {
    let labels = [("host", host), ("decision", decision), ("reason", reason)];
    series(metrics, "meshguard_egress_decisions_total", &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn an_app_calls_the_payment_api_over_tls_meshguard_originates() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    let sidecar = w.sidecar("127.0.0.1/32").await;
    let out = sidecar.outbound.unwrap();
    let (status, body) = http_get(out, PAY, "/v1/charges?amount=5", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "paid"));
    let hit = &w.api.hits()[0];
    assert_eq!(hit.sni.as_deref(), Some(PAY), "SNI is the declared host");
    let port = w.api.addr.port();
    assert_eq!(hit.host.as_deref(), Some(format!("{PAY}:{port}").as_str()));
    assert_eq!(hit.target, "/v1/charges?amount=5");
    // A Host that differs from the target's authority cannot reach
    // another name inside the tunnel: the authority wins, and it is the SNI.
    let (status, _) = http_get(out, "evil.test", &format!("http://{PAY}/x"), &[]).await;
    assert_eq!(status, 200);
    let hit = w.api.hits().pop().unwrap();
    assert_eq!(hit.sni.as_deref(), Some(PAY));
    assert_eq!(hit.host.as_deref(), Some(format!("{PAY}:{port}").as_str()));
    // A redirect is handed back, never followed.
    let (status, _) = http_get(out, PAY, "/redirect", &[]).await;
    assert_eq!(status, 302);
    assert_eq!(w.api.hits().len(), 3);
    // Undeclared: 403, nothing leaves.
    let (status, body) = http_get(out, "exfil.test", "/upload", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(w.api.hits().len(), 3);
    let m = scrape(sidecar.admin).await;
    assert_eq!(decisions(&m, PAY, "allow", "allowed"), 3.0, "{m}");
    assert_eq!(decisions(&m, "other", "deny", "undeclared"), 1.0, "{m}");
    // Originated requests are requests like any other, peer `egress`.
    let requests = [
        ("peer", "egress"),
        ("decision", "allow"),
        ("status_class", "2xx"),
    ];
    let ok = series(&m, "meshguard_requests_total", &requests);
    assert_eq!(ok, Some(2.0), "{m}");
    sidecar.stop().await;
}

#[tokio::test]
async fn the_server_is_verified_against_the_declared_ca() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    let other = Pki::for_domain("elsewhere.test");
    let port = w.api.addr.port();
    let cfg = w.config(&format!(
        "    allow_cidrs: [127.0.0.1/32]\n    destinations:\n      \
         - host: {PAY}\n        mode: originate\n        port: {port}\n        ca: {}\n",
        other.bundle_path().display()
    ));
    let sidecar = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let (status, body) = http_get(sidecar.outbound.unwrap(), PAY, "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("certificate"), "{body}");
    assert!(w.api.hits().is_empty());
    sidecar.stop().await;
}

#[tokio::test]
async fn loopback_test_servers_are_refused_without_allow_cidrs() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    w.dns.set("x.partner.test", &["127.0.0.1"]);
    let sidecar = w.sidecar("").await;
    let (status, body) = http_get(sidecar.outbound.unwrap(), PAY, "/", &[]).await;
    assert_eq!(status, 403);
    assert!(body.contains("127.0.0.1 is a loopback address"), "{body}");
    let tls = w.tls_get(sidecar.egress.unwrap(), "x.partner.test").await;
    assert!(tls.is_err(), "{tls:?}");
    assert!(w.api.hits().is_empty());
    let m = scrape(sidecar.admin).await;
    assert_eq!(decisions(&m, PAY, "deny", "loopback"), 1.0, "{m}");
    assert_eq!(
        decisions(&m, "*.partner.test", "deny", "loopback"),
        1.0,
        "{m}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn allowed_names_that_resolve_inside_are_refused_by_address() {
    let w = World::new().await;
    // Allowed names, internal answers: private, metadata (in three
    // forms), an IPv4-mapped loopback, a unique-local address.
    let cases = [
        ("a.partner.test", "10.0.0.7", "a private address"),
        (
            "b.partner.test",
            "169.254.169.254",
            "a cloud metadata address",
        ),
        (
            "c.partner.test",
            "::ffff:169.254.169.254",
            "a cloud metadata address",
        ),
        (
            "d.partner.test",
            "64:ff9b::a9fe:a9fe",
            "a cloud metadata address",
        ),
        (
            "e.partner.test",
            "fd00:ec2::254",
            "a cloud metadata address",
        ),
        ("f.partner.test", "::ffff:127.0.0.2", "a loopback address"),
        ("g.partner.test", "fd12::1", "a unique-local address"),
    ];
    for (name, addr, _) in cases {
        w.dns.set(name, &[addr]);
    }
    // 127.0.0.1 is allowed (where the API is); none of the above is.
    let sidecar = w.sidecar("127.0.0.1/32").await;
    let listener = sidecar.egress.unwrap();
    for (name, _, _) in cases {
        let got = w.tls_get(listener, name).await;
        assert!(got.is_err(), "{name}: {got:?}");
    }
    assert!(w.api.hits().is_empty());
    let m = scrape(sidecar.admin).await;
    let host = "*.partner.test";
    assert_eq!(decisions(&m, host, "deny", "private"), 1.0, "{m}");
    assert_eq!(decisions(&m, host, "deny", "metadata"), 4.0, "{m}");
    assert_eq!(decisions(&m, host, "deny", "loopback"), 1.0, "{m}");
    assert_eq!(decisions(&m, host, "deny", "unique_local"), 1.0, "{m}");
    // The IPv4-mapped form of an allowed address is that address.
    w.dns.set("h.partner.test", &["::ffff:127.0.0.1"]);
    let got = w.tls_get(listener, "h.partner.test").await.unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(w.api.hits()[0].sni.as_deref(), Some("h.partner.test"));
    sidecar.stop().await;
}

#[tokio::test]
async fn a_name_that_rebinds_is_checked_on_every_answer_and_asked_once_per_connection() {
    let w = World::new().await;
    w.dns.rebind(PAY, &[&["127.0.0.1"], &["169.254.169.254"]]);
    let sidecar = w.sidecar("127.0.0.1/32").await;
    let out = sidecar.outbound.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(http_get(out, PAY, "/", &[]).await.0.as_u16());
    }
    // The answer each request's one lookup got decides it: the internal
    // answer is never connected to, the public one always is.
    assert_eq!(statuses, [200, 403, 200, 403, 200, 403]);
    assert_eq!(w.api.hits().len(), 3);
    assert_eq!(w.dns.a_queries(PAY), 6, "one resolution per request");
    sidecar.stop().await;
}

#[tokio::test]
async fn tls_is_passed_through_by_sni_and_undeclared_or_missing_names_are_closed() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    w.dns.set("eu.partner.test", &["127.0.0.1"]);
    w.dns.set("other.test", &["127.0.0.1"]);
    let sidecar = w.sidecar("127.0.0.1/32").await;
    let listener = sidecar.egress.unwrap();
    // The app's own TLS, end to end: it verifies the API's certificate.
    let got = w.tls_get(listener, PAY).await.unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("paid"),
        "{got}"
    );
    let got = w.tls_get(listener, "eu.partner.test").await.unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let sni: Vec<_> = w.api.hits().into_iter().map(|h| h.sni.unwrap()).collect();
    assert_eq!(sni, [PAY, "eu.partner.test"]);
    // An undeclared name, and no name at all (an IP address sends no SNI).
    assert!(w.tls_get(listener, "other.test").await.is_err());
    assert!(w.tls_get(listener, "127.0.0.1").await.is_err());
    assert_eq!(w.api.hits().len(), 2);
    let m = scrape(sidecar.admin).await;
    assert_eq!(decisions(&m, "other", "deny", "undeclared"), 1.0, "{m}");
    assert_eq!(decisions(&m, "other", "deny", "no_sni"), 1.0, "{m}");
    sidecar.stop().await;
}

/// An Egress of its own with the world's destinations, and a listener whose
/// accepted connections are handed to it as captured ones would be.
async fn captured(w: &World, allow: &str) -> (Arc<Egress>, TcpListener, Arc<Metrics>) {
    let cfg = w.config(&w.destinations(allow));
    let out = cfg.outbound.unwrap();
    let metrics = Arc::new(Metrics::new(Vec::new()).unwrap());
    let egress = Egress::new(&out.egress, &cfg.limits, false, metrics.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (egress, listener, metrics)
}

#[tokio::test]
async fn under_capture_an_sni_that_lies_about_the_address_is_refused() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    // Another server the app would like to reach: another loopback
    // address, the declared port.
    let bind = format!("127.0.0.2:{}", w.api.addr.port());
    let hidden = Https::start(&w.pki.ca, &[PAY], &bind).await;
    let (egress, listener, metrics) = captured(&w, "127.0.0.0/8").await;
    let at = listener.local_addr().unwrap();
    let serve = |dialled: SocketAddr| {
        let (egress, listener) = (egress.clone(), &listener);
        async move {
            let (app, _) = listener.accept().await.unwrap();
            egress.tls(app, Some(dialled)).await;
        }
    };
    // Dialled where the name resolves: through.
    let (got, ()) = tokio::join!(w.tls_get(at, PAY), serve(w.api.addr));
    assert!(got.unwrap().starts_with("HTTP/1.1 200"));
    // The same SNI while dialling the other address: refused.
    let (got, ()) = tokio::join!(w.tls_get(at, PAY), serve(hidden.addr));
    assert!(got.is_err());
    assert!(hidden.hits().is_empty());
    // Declared name on an undeclared port: refused.
    let wrong_port = SocketAddr::new(w.api.addr.ip(), 1);
    let (got, ()) = tokio::join!(w.tls_get(at, PAY), serve(wrong_port));
    assert!(got.is_err());
    assert_eq!(w.api.hits().len(), 1);
    let m = metrics.render();
    assert_eq!(decisions(&m, PAY, "deny", "address_mismatch"), 1.0, "{m}");
    assert_eq!(decisions(&m, PAY, "deny", "undeclared_port"), 1.0, "{m}");
}

#[tokio::test]
async fn passthrough_is_guarded_by_address() {
    let w = World::new().await;
    let echo = Echo::start("127.0.0.1").await;
    for (allow, reaches) in [("", false), ("127.0.0.1/32", true)] {
        let (egress, listener, metrics) = captured(&w, allow).await;
        let at = listener.local_addr().unwrap();
        let handed = async {
            let (app, _) = listener.accept().await.unwrap();
            egress.passthrough(app, echo.addr).await;
        };
        let app = async {
            let mut tcp = TcpStream::connect(at).await.unwrap();
            tcp.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
            drop(tcp);
            matches!(n, Ok(Ok(4))) && &buf == b"ping"
        };
        let (echoed, ()) = tokio::join!(app, handed);
        assert_eq!(echoed, reaches, "allow_cidrs [{allow}]");
        let m = metrics.render();
        let (decision, reason) = if reaches {
            ("allow", "allowed")
        } else {
            ("deny", "loopback")
        };
        assert_eq!(decisions(&m, "other", decision, reason), 1.0, "{m}");
    }
    assert_eq!(echo.accepted(), 1, "refused: nothing was opened to it");
    // Metadata, whatever is allowed (a range covering it is refused in config).
    let (egress, listener, _) = captured(&w, "127.0.0.1/32").await;
    let at = listener.local_addr().unwrap();
    let (tcp, accepted) = tokio::join!(TcpStream::connect(at), listener.accept());
    let (_app, (handed, _)) = (tcp.unwrap(), accepted.unwrap());
    let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
    tokio::time::timeout(Duration::from_secs(2), egress.passthrough(handed, metadata))
        .await
        .expect("refused at once, no connect attempt");
}

#[tokio::test]
async fn egress_check_explains_the_decision() {
    let w = World::new().await;
    w.dns.set(PAY, &["127.0.0.1"]);
    w.dns.set("a.partner.test", &["169.254.169.254"]);
    let port = w.api.addr.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ident = w.pki.identity("client", &id("shop", "checkout"));
    let file = dir.path().join("sidecar.yaml");
    let yaml = format!(
        "identity:\n  cert: {}\n  key: {}\n  bundle: {}\noutbound:\n  listen: 127.0.0.1:0\n  egress:\n    resolver: {}\n{}",
        ident.cert.display(),
        ident.key.display(),
        ident.bundle.display(),
        w.dns.addr,
        w.destinations("127.0.0.1/32"),
    );
    std::fs::write(&file, yaml).unwrap();
    let check = |host: &str, port: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshguard"));
        cmd.args(["egress", "check", "--config"]).arg(&file);
        cmd.args(["--host", host, "--port", port]);
        async move {
            let out = cmd.output().await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.code().unwrap(), text)
        }
    };
    let (code, text) = check(PAY, &port).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("allow:"), "{text}");
    assert!(
        text.contains("destinations[1]") && text.contains("127.0.0.1"),
        "{text}"
    );
    let (code, text) = check("a.partner.test", &port).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("169.254.169.254 is a cloud metadata address"),
        "{text}"
    );
    let (code, text) = check("evil.test", &port).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not declared"), "{text}");
    let (code, text) = check("::ffff:169.254.169.254", "80").await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("carries 169.254.169.254"), "{text}");
    let (code, text) = check("not a host", "80").await;
    assert_eq!(code, 2, "{text}");
}
