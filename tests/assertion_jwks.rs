//! The asymmetric identity assertion end to end: a real sidecar pair
//! (client outbound -> server inbound, mTLS) in front of a python app
//! (tests/assertion_app.py) that verifies every request with only the
//! server sidecar's public keys, fetched from the admin listener or read
//! from `assertion.jwks_file`, using the documented verifier
//! (examples/verify_assertion_jwks.py). Key rotation under load also runs
//! in the default HMAC mode, the app reading the key file with
//! examples/verify_assertion.py.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meshguard::sidecar::app::Running;
use meshguard::sidecar::assertion::Assertion;
use meshguard::sidecar::config::{AssertionConfig, AssertionMode};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::*;

const HOST: &str = "orders.shop";

/// The python app, a child process of the test.
struct PyApp {
    child: Child,
    stdin: ChildStdin,
    addr: SocketAddr,
}

impl PyApp {
    fn start() -> PyApp {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/assertion_app.py");
        let mut child = Command::new("python3")
            .args([script, "0.05"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with cryptography (see tests/README.md)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the app prints its port");
        let stdin = child.stdin.take().unwrap();
        PyApp {
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Where the app reads the public keys from.
    fn jwks_from(&mut self, source: &str) {
        writeln!(self.stdin, "{source}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for PyApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Source {
    Admin,
    File,
    /// The default HMAC mode: the app reads the key file.
    HmacKeyFile,
}

struct Mesh {
    dir: tempfile::TempDir,
    app: PyApp,
    server: Running,
    client: Running,
}

impl Mesh {
    async fn start(mode: AssertionMode, source: Source) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut app = PyApp::start();
        let identity = pki.identity("server", &id("default", "server"));
        let mut config = inbound_config(identity, app.addr);
        let keys = dir.path().join("assertion.keys");
        config.assertion = Some(match source {
            Source::HmacKeyFile => AssertionConfig {
                mode,
                key_file: Some(keys.clone()),
                ..Default::default()
            },
            _ => AssertionConfig {
                mode,
                jwks_file: Some(dir.path().join("jwks.json")),
                ..Default::default()
            },
        });
        let server = meshguard::sidecar::app::start(&config).await.unwrap();
        app.jwks_from(&match source {
            Source::Admin => format!("http://{}/.well-known/jwks.json", server.admin),
            Source::File => dir.path().join("jwks.json").display().to_string(),
            Source::HmacKeyFile => format!("hmac:{}", keys.display()),
        });
        let client = start_outbound(&pki, HOST, &server).await;
        Mesh {
            dir,
            app,
            server,
            client,
        }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.outbound.unwrap()
    }

    async fn stop(self) {
        self.client.stop().await;
        self.server.stop().await;
    }
}

/// One keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// (status, body, the assertion the app saw).
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let seen = resp
        .headers()
        .get("x-seen-assertion")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).trim().to_owned(),
        seen,
    )
}

async fn once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    send(&mut connect(addr).await, method, path, headers).await
}

fn caller() -> String {
    id("default", "client").to_string()
}

/// The documented verifier's command line at a given clock (a child
/// process the runtime waits for without blocking: it may fetch the JWKS
/// from the admin listener served by this very runtime).
async fn verify_cli(h: &str, target: &str, jwks: &str, now: i64) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/verify_assertion_jwks.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, h, &caller(), "GET", target, jwks, &now.to_string()])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "{err}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn refusals(mode: AssertionMode, source: Source) {
    let mesh = Mesh::start(mode, source).await;
    let me = caller();
    // Through the sidecars, a caller's own assertion is replaced by ours.
    let forged = "v1.abc.1.9999999999.r.AAAA";
    let (status, body, seen) = once(
        mesh.outbound(),
        "GET",
        "/orders/7?x=1",
        &[("x-meshguard-assertion", forged)],
    )
    .await;
    assert_eq!((status, body.starts_with("ok ")), (200, true), "{body}");
    assert_ne!(seen, forged);
    let parts: Vec<&str> = seen.split('.').collect();
    assert_eq!(body, format!("ok {}", parts[4]));
    let direct = mesh.app.addr;
    let id_header = ("x-meshguard-client-id", me.as_str());
    // Straight to the app's port, without the sidecar: no assertion.
    let (status, body, _) = once(direct, "GET", "/orders/7?x=1", &[id_header]).await;
    assert_eq!((status, body.as_str()), (401, "refused: missing"));
    // The captured assertion, replayed: on its own path, on another one.
    let captured = ("x-meshguard-assertion", seen.as_str());
    let (status, body, _) = once(direct, "GET", "/orders/7?x=1", &[id_header, captured]).await;
    assert_eq!((status, body.as_str()), (401, "refused: replayed"));
    let (status, body, _) = once(direct, "GET", "/orders/8?x=1", &[id_header, captured]).await;
    assert_eq!((status, body.as_str()), (401, "refused: bad signature"));
    let (status, body, _) = once(direct, "DELETE", "/orders/7?x=1", &[id_header, captured]).await;
    assert_eq!((status, body.as_str()), (401, "refused: bad signature"));
    // Tampered: a later expiry.
    let later = seen.replacen(parts[3], "9999999999", 1);
    let tampered = ("x-meshguard-assertion", later.as_str());
    let (status, body, _) = once(direct, "GET", "/orders/7?x=1", &[id_header, tampered]).await;
    assert_eq!((status, body.as_str()), (401, "refused: bad signature"));
    // Signed by a key that is not in the JWKS (another signer of the same mode).
    let stranger = Assertion::start(&AssertionConfig {
        mode,
        ..Default::default()
    })
    .unwrap();
    let mut h = http::HeaderMap::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    stranger.stamp(&mut h, &me, "GET", "/orders/7?x=1", now);
    let theirs = h["x-meshguard-assertion"].to_str().unwrap();
    let (status, body, _) = once(
        direct,
        "GET",
        "/orders/7?x=1",
        &[id_header, ("x-meshguard-assertion", theirs)],
    )
    .await;
    assert_eq!((status, body.as_str()), (401, "refused: unknown key"));
    // Expired: the same verifier past `exp`, from the admin URL and the file.
    let exp: i64 = parts[3].parse().unwrap();
    let url = format!("http://{}/.well-known/jwks.json", mesh.server.admin);
    let file = mesh.dir.path().join("jwks.json").display().to_string();
    for jwks in [&url, &file] {
        assert_eq!(
            verify_cli(&seen, "/orders/7?x=1", jwks, exp - 1).await,
            parts[4]
        );
        assert_eq!(
            verify_cli(&seen, "/orders/7?x=1", jwks, exp + 1).await,
            "refused: expired"
        );
    }
    mesh.stop().await;
}

#[tokio::test]
async fn ed25519_verified_with_the_admin_jwks_refuses_what_did_not_come_through_the_sidecar() {
    refusals(AssertionMode::Ed25519, Source::Admin).await;
}

#[tokio::test]
async fn es256_verified_with_the_jwks_file_refuses_what_did_not_come_through_the_sidecar() {
    refusals(AssertionMode::Es256, Source::File).await;
}

/// Clients send requests on keep-alive connections while the server
/// sidecar rotates its key three times (each retired after a while, as its
/// rotation task does after `grace_s`): every request is served, also one
/// signed by the old key and verified by the app only after requests signed
/// by the new one made it reload the JWKS.
async fn rotation_under_load(mode: AssertionMode, source: Source) {
    let mesh = Mesh::start(mode, source).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, stop) = (mesh.outbound(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, body, seen) = send(&mut sender, "POST", "/orders", &[]).await;
                let kid = seen.split('.').nth(1).unwrap_or_default().to_owned();
                results.push((status, body, kid));
            }
            results
        }));
    }
    let signer = mesh.server.assertion.clone().unwrap();
    let ms = std::time::Duration::from_millis;
    for _ in 0..3 {
        // Signed by the old key, verified after the rotation (and after the
        // app reloaded the JWKS for the new key's requests).
        let addr = mesh.outbound();
        let in_flight = tokio::spawn(async move { once(addr, "POST", "/slow", &[]).await });
        tokio::time::sleep(ms(200)).await;
        let old = signer.rotate().unwrap();
        let (status, body, seen) = in_flight.await.unwrap();
        assert_eq!(
            (status, seen.split('.').nth(1)),
            (200, Some(old.as_str())),
            "{body}"
        );
        tokio::time::sleep(ms(100)).await;
        signer.retire().unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let refused: Vec<_> = all.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {} refused: {:?}",
        refused.len(),
        all.len(),
        &refused[..refused.len().min(5)]
    );
    let used: std::collections::HashSet<&str> = all.iter().map(|(_, _, k)| k.as_str()).collect();
    assert_eq!(
        used.len(),
        4,
        "the initial key and three rotations all signed requests"
    );
    assert!(all.len() >= 40, "under load: {} requests", all.len());
    mesh.stop().await;
}

#[tokio::test]
async fn a_rotation_under_load_loses_no_request_with_the_admin_jwks() {
    rotation_under_load(AssertionMode::Ed25519, Source::Admin).await;
}

#[tokio::test]
async fn a_rotation_under_load_loses_no_request_with_the_hmac_key_file() {
    rotation_under_load(AssertionMode::Hmac, Source::HmacKeyFile).await;
}

#[tokio::test]
async fn a_rotation_under_load_loses_no_request_with_the_jwks_file() {
    rotation_under_load(AssertionMode::Es256, Source::File).await;
}

#[tokio::test]
async fn the_admin_jwks_is_404_in_hmac_mode() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let mut config = inbound_config(pki.identity("server", &id("default", "server")), app.addr);
    config.assertion = Some(AssertionConfig {
        key_file: Some(dir.path().join("keys")),
        ..Default::default()
    });
    let server = meshguard::sidecar::app::start(&config).await.unwrap();
    let (status, body) = http_get(server.admin, "admin", "/.well-known/jwks.json", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not ed25519 or es256"), "{body}");
    server.stop().await;
}
