//! Certificate and trust-bundle lifecycle over real sockets: rotation under
//! load, the ways files are really rewritten (kubelet symlink swap,
//! spiffe-helper one-file-after-another), refused replacements, root
//! removal, and connections that outlive their peer's proof.

mod support;

use meshguard::dev::certs::{DevCa, Issued, LeafSpec};
use meshguard::sidecar::config::{Config, IdentityConfig};
use meshguard::sidecar::tls::UpstreamProtocol;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use time::OffsetDateTime;

const SERVER_HOST: &str = "server.default.svc.cluster.local";
const POLL_MS: u64 = 20;

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes via a temporary file and rename (what most writers do).
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A kubelet-style projected volume: files are symlinks into `..data`,
/// itself a symlink to a timestamped directory, swapped atomically.
struct KubeletDir {
    dir: PathBuf,
    generation: usize,
}

impl KubeletDir {
    fn new(dir: &Path, files: &[(&str, &str)]) -> KubeletDir {
        std::fs::create_dir_all(dir).unwrap();
        let mut k = KubeletDir {
            dir: dir.to_owned(),
            generation: 0,
        };
        k.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        k
    }

    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let gen_dir = self
            .dir
            .join(format!("..2026_11_23_{:04}", self.generation));
        std::fs::create_dir(&gen_dir).unwrap();
        for (name, contents) in files {
            std::fs::write(gen_dir.join(name), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(gen_dir.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.generation > 1 {
            let _ = std::fs::remove_dir_all(
                self.dir
                    .join(format!("..2026_11_23_{:04}", self.generation - 1)),
            );
        }
    }

    fn identity(&self) -> IdentityConfig {
        IdentityConfig {
            cert: self.dir.join("tls.crt"),
            key: self.dir.join("tls.key"),
            bundle: self.dir.join("ca.crt"),
            federated_bundles: Default::default(),
            workload_api: None,
        }
    }
}

fn fast(mut cfg: Config) -> Config {
    cfg.runtime.poll_interval_ms = POLL_MS;
    cfg
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn presents(running: &meshguard::sidecar::app::Running, der: &[u8]) -> bool {
    running.store.svid().key.cert[0].as_ref() == der
}

/// The certificate a fresh TLS handshake to `addr` is shown.
async fn presented_cert(addr: std::net::SocketAddr, client: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tls = tls_connect(addr, client).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn svid(pki: &Pki, ns: &str, sa: &str) -> Issued {
    pki.svid(&id(ns, sa))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rotations_under_load_lose_no_request() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let ca_pem = pki.ca.cert_pem().to_owned();
    let first_server = svid(&pki, "default", "server");
    let mut server_dir = KubeletDir::new(
        &pki.dir.path().join("server"),
        &[
            ("tls.crt", &first_server.cert_pem),
            ("tls.key", &first_server.key_pem),
            ("ca.crt", &ca_pem),
        ],
    );
    let server =
        meshguard::sidecar::app::start(&fast(inbound_config(server_dir.identity(), app.addr)))
            .await
            .unwrap();

    // The client's files are rewritten in place, one after the other, as
    // spiffe-helper does. Two client sidecars watch them: one pooled (the
    // load), one that opens a new connection per request (the witness).
    let client_files = pki.identity("client", &id("default", "client"));
    let pooled = meshguard::sidecar::app::start(&fast(outbound_config(
        client_files.clone(),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    )))
    .await
    .unwrap();
    let mut witness_cfg = fast(outbound_config(
        client_files.clone(),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    ));
    witness_cfg.outbound.as_mut().unwrap().max_idle_per_peer = Some(0);
    let witness = meshguard::sidecar::app::start(&witness_cfg).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failed, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            pooled.outbound.unwrap(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (status, body) =
                    http_get(addr, SERVER_HOST, &format!("/load/{worker}/{i}"), &[]).await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("load request failed: {status} {body}");
                }
            }
        }));
    }

    let probe = tls_client(
        Some((&first_server.cert_pem, &first_server.key_pem)),
        &[b"http/1.1"],
    );
    for round in 0..100 {
        let new_server = svid(&pki, "default", "server");
        server_dir.swap(&[
            ("tls.crt", &new_server.cert_pem),
            ("tls.key", &new_server.key_pem),
            ("ca.crt", &ca_pem),
        ]);
        let new_client = svid(&pki, "default", "client");
        write_atomic(&client_files.cert, &new_client.cert_pem);
        write_atomic(&client_files.key, &new_client.key_pem);

        let (server_der, client_der) = (der_of(&new_server.cert_pem), der_of(&new_client.cert_pem));
        wait_until(
            "every sidecar loaded the new SVIDs",
            Duration::from_secs(10),
            || {
                presents(&server, &server_der)
                    && presents(&pooled, &client_der)
                    && presents(&witness, &client_der)
            },
        )
        .await;
        // A new handshake to the server is shown the newest server cert...
        assert_eq!(
            presented_cert(server.inbound.unwrap(), probe.clone()).await,
            server_der,
            "round {round}: server"
        );
        // ...and a new handshake from the client presents the newest client cert.
        let (status, _) = http_get(
            witness.outbound.unwrap(),
            SERVER_HOST,
            &format!("/witness/{round}"),
            &[],
        )
        .await;
        assert_eq!(status, 200);
        let last = app
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.target == format!("/witness/{round}"))
            .cloned()
            .unwrap();
        let hash = hex(&meshguard::sidecar::tls::sha256(&client_der));
        assert!(
            last.header("x-forwarded-client-cert")[0].contains(&format!("Hash={hash}")),
            "round {round}: client"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "load loop made {} requests",
        ok.load(Ordering::Relaxed)
    );
    let text = scrape(server.admin).await;
    assert!(
        series(
            &text,
            "meshguard_reloads_total",
            &[("kind", "svid"), ("result", "success")]
        )
        .unwrap()
            >= 100.0
    );
    let expiry = series(
        &text,
        "meshguard_certificate_expiry_timestamp_seconds",
        &[("kind", "svid")],
    )
    .unwrap();
    assert_eq!(
        expiry as i64,
        server.store.svid().not_after,
        "expiry gauge follows the newest SVID"
    );
}

struct Single {
    pki: Pki,
    files: IdentityConfig,
    running: meshguard::sidecar::app::Running,
    first_der: Vec<u8>,
}

async fn single() -> Single {
    let pki = Pki::new();
    let files = pki.identity("server", &id("default", "server"));
    let first_der = der_of(&read(&files.cert));
    let running = meshguard::sidecar::app::start(&fast(inbound_config(files.clone(), any_port())))
        .await
        .unwrap();
    Single {
        pki,
        files,
        running,
        first_der,
    }
}

async fn reload_failures(s: &Single, kind: &str) -> f64 {
    series(
        &scrape(s.running.admin).await,
        "meshguard_reloads_total",
        &[("kind", kind), ("result", "failure")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn non_atomic_write_waits_for_the_matching_key() {
    let s = single().await;
    let next = svid(&s.pki, "default", "server");
    write_atomic(&s.files.cert, &next.cert_pem);
    // Cert without its key: refused, old SVID kept.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reload_failures(&s, "svid").await < 1.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(presents(&s.running, &s.first_der));
    // The key arrives: now they match and the new SVID is loaded.
    write_atomic(&s.files.key, &next.key_pem);
    let next_der = der_of(&next.cert_pem);
    wait_until("new SVID loaded", Duration::from_secs(5), || {
        presents(&s.running, &next_der)
    })
    .await;
}

#[tokio::test]
async fn a_mismatched_key_and_cert_are_kept_out() {
    let s = single().await;
    let a = svid(&s.pki, "default", "server");
    let b = svid(&s.pki, "default", "server");
    write_atomic(&s.files.cert, &a.cert_pem);
    write_atomic(&s.files.key, &b.key_pem);
    tokio::time::sleep(Duration::from_millis(POLL_MS * 10)).await;
    assert!(
        presents(&s.running, &s.first_der),
        "mismatched pair must never be loaded"
    );
    assert!(reload_failures(&s, "svid").await >= 1.0);
    assert_eq!(
        http_get(s.running.admin, "a", "/ready", &[]).await.0,
        200,
        "old SVID still valid: still ready"
    );
}

#[tokio::test]
async fn expired_and_foreign_replacements_are_refused() {
    let s = single().await;
    let now = OffsetDateTime::now_utc();
    let mut spec = LeafSpec::svid(
        "spiffe://cluster.local/ns/default/sa/server",
        time::Duration::hours(1),
    );
    spec.not_before = now - time::Duration::hours(2);
    spec.not_after = now - time::Duration::hours(1);
    let expired = s.pki.ca.issue(&spec).unwrap();
    write_atomic(&s.files.key, &expired.key_pem);
    write_atomic(&s.files.cert, &expired.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(5);
    while reload_failures(&s, "svid").await < 1.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(presents(&s.running, &s.first_der));

    // Another identity, or a cert from a CA our bundle does not hold: refused too.
    let other = svid(&s.pki, "default", "someone-else");
    write_atomic(&s.files.key, &other.key_pem);
    write_atomic(&s.files.cert, &other.cert_pem);
    let stranger = DevCa::generate("cluster.local", time::Duration::days(1))
        .unwrap()
        .issue(&LeafSpec::svid(
            "spiffe://cluster.local/ns/default/sa/server",
            time::Duration::hours(1),
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(POLL_MS * 10)).await;
    write_atomic(&s.files.key, &stranger.key_pem);
    write_atomic(&s.files.cert, &stranger.cert_pem);
    tokio::time::sleep(Duration::from_millis(POLL_MS * 10)).await;
    assert!(presents(&s.running, &s.first_der));
    assert!(reload_failures(&s, "svid").await >= 3.0);
}

#[tokio::test]
async fn a_broken_bundle_is_refused_and_the_old_one_kept() {
    let s = single().await;
    write_atomic(&s.files.bundle, "not a certificate\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reload_failures(&s, "bundle").await < 1.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = svid(&s.pki, "default", "client");
    let app = RecordingApp::start().await;
    drop(app);
    // Handshakes still verify against the old bundle.
    let result = tls_get(
        s.running.inbound.unwrap(),
        tls_client(Some((&client.cert_pem, &client.key_pem)), &[b"http/1.1"]),
        "/",
        &[],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// Root rotation by overlap, then removal: a connection from the removed
/// CA is closed and cannot come back; the other CA's peers keep working.
#[tokio::test]
async fn a_removed_root_closes_its_connections_and_refuses_new_ones() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let old_ca = DevCa::generate("cluster.local", time::Duration::days(1)).unwrap();
    let mut files = pki.identity("server", &id("default", "server"));
    files.bundle = pki.dir.path().join("two-roots.pem");
    std::fs::write(
        &files.bundle,
        format!("{}{}", pki.ca.cert_pem(), old_ca.cert_pem()),
    )
    .unwrap();
    let server = meshguard::sidecar::app::start(&fast(inbound_config(files.clone(), app.addr)))
        .await
        .unwrap();

    let old_client = old_ca
        .issue(&LeafSpec::svid(
            "spiffe://cluster.local/ns/default/sa/legacy",
            time::Duration::hours(1),
        ))
        .unwrap();
    let new_client = svid(&pki, "default", "client");
    let old_cfg = tls_client(
        Some((&old_client.cert_pem, &old_client.key_pem)),
        &[b"http/1.1"],
    );
    let new_cfg = tls_client(
        Some((&new_client.cert_pem, &new_client.key_pem)),
        &[b"http/1.1"],
    );

    // A keep-alive connection from the old CA, working.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = tls_connect(server.inbound.unwrap(), old_cfg.clone()).await;
    kept.write_all(b"GET /before HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The old root leaves the bundle.
    write_atomic(&files.bundle, pki.ca.cert_pem());
    // The open connection is closed by the server...
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match kept.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection from a removed CA stayed open");
    // ...the next handshake from that CA fails, the other CA's peers work.
    assert!(tls_get(server.inbound.unwrap(), old_cfg, "/after", &[])
        .await
        .is_err());
    assert_eq!(
        tls_get(server.inbound.unwrap(), new_cfg, "/after", &[])
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        app.seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.target != "/after"
                || s.header("x-meshguard-client-id")[0].ends_with("/client"))
    );
    let text = scrape(server.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_reloads_total",
            &[("kind", "bundle"), ("result", "success")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_inbound_connection_outliving_its_peer_cert_is_closed() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = meshguard::sidecar::app::start(&fast(inbound_config(
        pki.identity("server", &id("default", "server")),
        app.addr,
    )))
    .await
    .unwrap();
    let mut spec = LeafSpec::svid(
        "spiffe://cluster.local/ns/default/sa/client",
        time::Duration::seconds(2),
    );
    spec.not_after = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let short = pki.ca.issue(&spec).unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(server.inbound.unwrap())
        .await
        .unwrap();
    let cfg = tls_client(Some((&short.cert_pem, &short.key_pem)), &[b"http/1.1"]);
    let mut conn = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("s.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    conn.write_all(b"GET /early HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection stayed open after its peer certificate expired"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
}

#[tokio::test]
async fn a_pooled_outbound_connection_outliving_the_server_cert_is_replaced() {
    pooled_connection_outliving_the_server_cert_is_replaced(UpstreamProtocol::Http2).await;
}

/// The HTTP/1.1 pool keeps idle connections no task reads, so the check
/// before reuse must see the revocation.
#[tokio::test]
async fn an_idle_http1_peer_connection_outliving_the_server_cert_is_replaced() {
    pooled_connection_outliving_the_server_cert_is_replaced(UpstreamProtocol::Http1).await;
}

async fn pooled_connection_outliving_the_server_cert_is_replaced(protocol: UpstreamProtocol) {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut spec = LeafSpec::svid(
        "spiffe://cluster.local/ns/default/sa/server",
        time::Duration::seconds(3),
    );
    spec.not_after = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let short = pki.ca.issue(&spec).unwrap();
    let (cert, key) = pki.write("server", &short);
    let files = IdentityConfig {
        cert,
        key,
        bundle: pki.bundle_path(),
        federated_bundles: Default::default(),
        workload_api: None,
    };
    let server = meshguard::sidecar::app::start(&fast(inbound_config(files.clone(), app.addr)))
        .await
        .unwrap();
    let mut client_cfg = fast(outbound_config(
        pki.identity("client", &id("default", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    ));
    client_cfg.outbound.as_mut().unwrap().protocol = protocol;
    let client = meshguard::sidecar::app::start(&client_cfg).await.unwrap();
    assert_eq!(
        http_get(client.outbound.unwrap(), SERVER_HOST, "/one", &[])
            .await
            .0,
        200
    );
    // The server rotates before its cert expires; the pooled connection
    // still carries the old proof.
    let fresh = svid(&pki, "default", "server");
    write_atomic(&files.key, &fresh.key_pem);
    write_atomic(&files.cert, &fresh.cert_pem);
    let fresh_der = der_of(&fresh.cert_pem);
    wait_until("server rotated", Duration::from_secs(5), || {
        presents(&server, &fresh_der)
    })
    .await;
    // Expiry is judged in whole seconds (notAfter is inclusive), so allow
    // the sweep up to a second past notAfter.
    wait_until(
        "expired pooled connection dropped",
        Duration::from_secs(10),
        || client.store.live().is_empty(),
    )
    .await;
    // The old connection was dropped; the next request makes a new handshake.
    assert_eq!(
        http_get(client.outbound.unwrap(), SERVER_HOST, "/two", &[])
            .await
            .0,
        200
    );
    let text = scrape(client.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "accepted")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn an_expired_own_svid_without_replacement_fails_closed() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let short = |sa: &str| {
        let mut spec = LeafSpec::svid(
            &format!("spiffe://cluster.local/ns/default/sa/{sa}"),
            time::Duration::seconds(2),
        );
        spec.not_after = OffsetDateTime::now_utc() + time::Duration::seconds(2);
        pki.ca.issue(&spec).unwrap()
    };
    let (scert, skey) = pki.write("server", &short("server"));
    let server = meshguard::sidecar::app::start(&fast(inbound_config(
        IdentityConfig {
            cert: scert,
            key: skey,
            bundle: pki.bundle_path(),
            federated_bundles: Default::default(),
            workload_api: None,
        },
        app.addr,
    )))
    .await
    .unwrap();
    let (ccert, ckey) = pki.write("client", &short("client"));
    let client = meshguard::sidecar::app::start(&fast(outbound_config(
        IdentityConfig {
            cert: ccert,
            key: ckey,
            bundle: pki.bundle_path(),
            federated_bundles: Default::default(),
            workload_api: None,
        },
        SERVER_HOST,
        server.inbound.unwrap(),
        id("default", "server"),
    )))
    .await
    .unwrap();
    assert_eq!(http_get(server.admin, "a", "/ready", &[]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, body) = http_get(server.admin, "a", "/ready", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("SVID"), "{body}");
    let (status, body) = http_get(client.outbound.unwrap(), SERVER_HOST, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("own SVID has expired"), "{body}");
    // Nobody gets a handshake with an expired certificate from the server.
    let good = svid(&pki, "default", "probe");
    assert!(tls_get(
        server.inbound.unwrap(),
        tls_client(Some((&good.cert_pem, &good.key_pem)), &[b"http/1.1"]),
        "/",
        &[]
    )
    .await
    .is_err());
    assert_eq!(app.count(), 0);
}
