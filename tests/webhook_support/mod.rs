//! Helpers of tests/webhook.rs: dev certificates for the webhook's
//! Service name, the binary started on a free loopback port, a TLS client
//! trusting the dev CA, AdmissionReviews in and patches applied out.

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::dev::certs::{DevCa, LeafSpec};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TEST_IMAGE: &str = "ghcr.io/meshguard/meshguard:test";
pub const SERVICE_NAME: &str = "meshguard-webhook.meshguard-system.svc";
pub const UID: &str = "0df28fbd-5f5f-4f6a-9a53-6c5b5d2a0e11";

pub fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/inject")
        .join(name)
}

/// The first object of a YAML file, as JSON.
pub fn golden_object(name: &str) -> Value {
    let text = std::fs::read_to_string(golden(name)).unwrap();
    let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// A serving certificate for the webhook's Service name, and its CA.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

impl Certs {
    pub fn new() -> Certs {
        let certs = Certs {
            dir: tempfile::tempdir().unwrap(),
            ca: DevCa::generate("cluster.local", time::Duration::days(1)).unwrap(),
        };
        certs.issue(&certs.ca);
        certs
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new serving pair from `ca` over the files.
    pub fn issue(&self, ca: &DevCa) {
        let mut spec = LeafSpec::svid("spiffe://unused/x", time::Duration::hours(1));
        spec.common_name = SERVICE_NAME.into();
        spec.uris.clear();
        spec.dns = vec![SERVICE_NAME.into()];
        let issued = ca.issue(&spec).unwrap();
        std::fs::write(self.cert(), &issued.cert_pem).unwrap();
        std::fs::write(self.key(), &issued.key_pem).unwrap();
    }
}

/// A client that trusts `ca` and checks the Service's DNS name, as the
/// apiserver does with the `caBundle` of the webhook configuration.
pub fn client(ca: &DevCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(meshguard::sidecar::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The running binary; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(certs: &Certs, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--image", TEST_IMAGE])
        .arg("--cert")
        .arg(certs.cert())
        .arg("--key")
        .arg(certs.key())
        .args(extra)
        // Warnings and errors only; a failing test shows them.
        .env("MESHGUARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("meshguard runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("meshguard webhook: listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Server { child, addr }
}

/// A TLS connection to the webhook, by its Service name.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(SERVICE_NAME).unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// One request over TLS (HTTP/2 when the server picks it), returning
/// status and body.
pub async fn send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = connect(addr, tls).await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(format!("https://{SERVICE_NAME}{path}"))
        .header("host", SERVICE_NAME)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

pub fn review(operation: &str, object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// POSTs an AdmissionReview for `object` and returns the response part,
/// after checking the envelope.
pub async fn admit(server: &Server, ca: &DevCa, object: &Value) -> Value {
    let (status, body) = send(
        server.addr,
        client(ca, &[b"http/1.1"]),
        post("/mutate?timeout=10s", review("CREATE", object)),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], UID);
    response
}

/// `object` with the response's patch applied by the json-patch crate.
pub fn apply(object: &Value, response: &Value) -> Value {
    let mut doc = object.clone();
    let Some(patch) = response.get("patch") else {
        assert!(response.get("patchType").is_none(), "{response}");
        return doc;
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("an RFC 6902 patch");
    json_patch::patch(&mut doc, &ops).expect("the patch applies");
    doc
}

/// What `meshguard inject` prints for `object` (sent as JSON, which is
/// YAML), read back as JSON.
pub fn inject_cli(object: &Value) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["inject", "--image", TEST_IMAGE, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(object).unwrap().as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_norway::Value =
        serde_norway::from_slice(&out.stdout).expect("inject prints YAML");
    serde_json::to_value(yaml).unwrap()
}

/// The Pod a ReplicaSet of the golden Deployment creates, as the
/// apiserver hands it to a webhook: generateName, no name, defaults set.
pub fn deployment_pod() -> Value {
    let deployment = golden_object("kind-deployment.in.yaml");
    let template = &deployment["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
        "status": {}
    });
    let meta = pod["metadata"].as_object_mut().unwrap();
    meta.insert("generateName".into(), json!("orders-7d9f8c6b5-"));
    meta.insert("namespace".into(), json!("shop"));
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d9f8c6b5",
                "uid": "b6d3b5f0-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true}]),
    );
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.insert("restartPolicy".into(), json!("Always"));
    spec.insert("dnsPolicy".into(), json!("ClusterFirst"));
    spec.insert("terminationGracePeriodSeconds".into(), json!(30));
    spec.insert("enableServiceLinks".into(), json!(true));
    let c = &mut pod["spec"]["containers"][0];
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["terminationMessagePath"] = json!("/dev/termination-log");
    c["terminationMessagePolicy"] = json!("File");
    c["ports"][0]["protocol"] = json!("TCP");
    pod
}

/// POSTs `body` over raw TLS, with a Content-Length or chunked, and
/// returns the status of the response, which may come before the whole
/// body is sent (an HTTP client library would report the write error).
pub async fn raw_post(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Vec<u8>,
    chunked: bool,
) -> u16 {
    let stream = connect(addr, tls).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sending = tokio::spawn(async move {
        if !chunked {
            let head = format!(
                "POST /mutate HTTP/1.1\r\nhost: {SERVICE_NAME}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            writer.write_all(head.as_bytes()).await?;
            return writer.write_all(&body).await;
        }
        let head = format!(
            "POST /mutate HTTP/1.1\r\nhost: {SERVICE_NAME}\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 << 10) {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    sending.abort();
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"))
}
