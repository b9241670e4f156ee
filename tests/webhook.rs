//! `meshguard webhook` through the real binary over real TLS: the patch
//! it answers with, applied by an independent JSON Patch implementation
//! (the json-patch crate), gives exactly what `meshguard inject` prints
//! for the same object; skips, bad requests, TLS refusals, certificate
//! reload and shutdown.

mod webhook_support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use meshguard::dev::certs::DevCa;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook_support::*;

#[tokio::test]
async fn patches_applied_equal_what_inject_prints() {
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let probes = golden_object("probe-http.in.yaml");
    assert_eq!(probes["kind"], "Pod");
    let deployment = golden_object("kind-deployment.in.yaml");
    for (what, object) in [
        ("Deployment-made pod", deployment_pod()),
        ("pod with httpGet probes", probes),
        ("Deployment", deployment),
    ] {
        let response = admit(&server, &certs.ca, &object).await;
        assert_eq!(response["allowed"], true, "{what}: {response}");
        assert!(response.get("patch").is_some(), "{what}: {response}");
        let expected = inject_cli(&object);
        assert_ne!(expected, object, "{what}: inject changes it");
        assert_eq!(apply(&object, &response), expected, "{what}");
        assert_eq!(response["auditAnnotations"]["injection"], "injected");
    }
}

#[tokio::test]
async fn rewritten_probes_and_sidecar_are_in_the_patched_pod() {
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let object = golden_object("probe-http.in.yaml");
    let pod = apply(&object, &admit(&server, &certs.ca, &object).await);
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "meshguard-init");
    assert_eq!(inits[1]["name"], "meshguard");
    assert_eq!(inits[1]["restartPolicy"], "Always");
    assert_eq!(inits[1]["image"], TEST_IMAGE);
    let probe = &pod["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(probe["httpGet"]["port"], 15020, "{probe}");
    assert_eq!(probe["timeoutSeconds"], 3, "timings unchanged");
    assert!(pod["metadata"]["annotations"]["meshguard.io/app-probes"].is_string());
}

#[tokio::test]
async fn opted_out_and_already_injected_pods_get_no_patch() {
    let certs = Certs::new();
    let server = start(&certs, &[]);

    let opted_out = golden_object("skip-opted-out.in.yaml");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": opted_out["spec"]["template"]["metadata"].clone(),
        "spec": opted_out["spec"]["template"]["spec"].clone(),
    });
    let response = admit(&server, &certs.ca, &pod).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
    assert_eq!(
        response["warnings"],
        json!(["meshguard: no sidecar: opted-out"])
    );
    assert_eq!(
        response["auditAnnotations"]["injection"],
        "skipped: opted-out"
    );

    // What inject printed, sent again: nothing to do.
    let injected = inject_cli(&deployment_pod());
    let response = admit(&server, &certs.ca, &injected).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(
        response["auditAnnotations"]["injection"],
        "skipped: already-injected"
    );

    // And the webhook's own result, sent again (reinvocation): the same.
    let object = deployment_pod();
    let once = apply(&object, &admit(&server, &certs.ca, &object).await);
    let again = admit(&server, &certs.ca, &once).await;
    assert!(again.get("patch").is_none(), "{again}");
}

#[tokio::test]
async fn a_bad_annotation_is_denied_with_the_reason() {
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"]["meshguard.io/exclude-outbound-cidrs"] = json!("0.0.0.0/0");
    let response = admit(&server, &certs.ca, &pod).await;
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("shop/orders-7d9f8c6b5-*")
            && message.contains("meshguard.io/exclude-outbound-cidrs"),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_limits_hold() {
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let tls = || client(&certs.ca, &[b"http/1.1"]);
    let valid: Value = serde_json::from_slice(&review("CREATE", &deployment_pod())).unwrap();
    let mutated = |f: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid JSON", b"{\"apiVersion\":".to_vec(), "invalid JSON"),
        ("empty body", Vec::new(), "invalid JSON"),
        (
            "v1beta1",
            mutated(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "only admission.k8s.io/v1",
        ),
        (
            "wrong kind",
            mutated(&|v| v["kind"] = json!("Pod")),
            "expected AdmissionReview",
        ),
        (
            "no uid",
            mutated(&|v| {
                v["request"].as_object_mut().unwrap().remove("uid");
            }),
            "request.uid",
        ),
        (
            "a pod, not a review",
            serde_json::to_vec(&deployment_pod()).unwrap(),
            "apiVersion \"v1\"",
        ),
    ];
    for (what, body, expected) in cases {
        let (status, text) = send(server.addr, tls(), post("/mutate", body))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
        assert!(text.contains(expected), "{what}: {text}");
    }

    // Over the limit, declared or streamed without a length.
    let big = vec![b' '; 5 << 20];
    assert_eq!(raw_post(server.addr, tls(), big.clone(), false).await, 413);
    assert_eq!(raw_post(server.addr, tls(), big, true).await, 413);

    // Methods and paths.
    let get = |path: &str| {
        Request::get(format!("https://{SERVICE_NAME}{path}"))
            .header("host", SERVICE_NAME)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, body) = send(server.addr, tls(), get("/healthz")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    let (status, _) = send(server.addr, tls(), get("/mutate")).await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = send(server.addr, tls(), post("/validate", "{}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Still serving after all that.
    let response = admit(&server, &certs.ca, &deployment_pod()).await;
    assert_eq!(response["allowed"], true);
}

#[tokio::test]
async fn http2_is_served_too() {
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let object = deployment_pod();
    let stream = connect(server.addr, client(&certs.ca, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(stream);
    let (status, body) = send(
        server.addr,
        client(&certs.ca, &[b"h2"]),
        post("/mutate", review("CREATE", &object)),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(apply(&object, &answer["response"]), inject_cli(&object));
}

#[tokio::test]
async fn plain_http_and_untrusted_clients_get_nothing() {
    let certs = Certs::new();
    let server = start(&certs, &[]);

    // Plain HTTP: no HTTP answer, whatever the server sends back.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // A client that does not trust the webhook's CA.
    let other = DevCa::generate("cluster.local", time::Duration::days(1)).unwrap();
    let err = connect(server.addr, client(&other, &[])).await.unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    // The right client still works.
    let response = admit(&server, &certs.ca, &deployment_pod()).await;
    assert_eq!(response["allowed"], true);
}

/// rustls here is built without TLS 1.2, so openssl plays the old client.
#[test]
fn tls12_is_refused_and_tls13_accepted() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl not found");
        return;
    }
    let certs = Certs::new();
    let server = start(&certs, &[]);
    let ca = certs.dir.path().join("ca.crt");
    std::fs::write(&ca, certs.ca.cert_pem()).unwrap();
    let s_client = |version: &str| {
        Command::new("openssl")
            .args(["s_client", version, "-verify_return_error", "-connect"])
            .arg(server.addr.to_string())
            .args([
                "-servername",
                SERVICE_NAME,
                "-verify_hostname",
                SERVICE_NAME,
            ])
            .arg("-CAfile")
            .arg(&ca)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let tls13 = s_client("-tls1_3");
    let out = String::from_utf8_lossy(&tls13.stdout);
    assert!(tls13.status.success(), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let tls12 = s_client("-tls1_2");
    assert!(
        !tls12.status.success(),
        "{}",
        String::from_utf8_lossy(&tls12.stdout)
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
    let certs = Certs::new();
    let server = start(&certs, &["--reload-interval", "1"]);
    let healthz = |ca: &DevCa| {
        let req = Request::get(format!("https://{SERVICE_NAME}/healthz"))
            .header("host", SERVICE_NAME)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(server.addr, client(ca, &[]), req)
    };
    assert!(healthz(&certs.ca).await.is_ok());

    // cert-manager renews from a new CA: new connections get the new pair.
    let renewed = DevCa::generate("cluster.local", time::Duration::days(1)).unwrap();
    certs.issue(&renewed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&renewed).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healthz(&certs.ca).await.is_err(), "the old pair is gone");

    // A half-written or broken pair is refused; the loaded one stays.
    std::fs::write(certs.cert(), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(healthz(&renewed).await.is_ok());
    let other = Certs::new();
    std::fs::copy(other.cert(), certs.cert()).unwrap(); // key does not match
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(healthz(&renewed).await.is_ok());
    assert!(healthz(&other.ca).await.is_err());
}

#[test]
fn bad_certificate_files_stop_the_start_with_a_message() {
    let certs = Certs::new();
    let other = Certs::new();
    let run = |cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_meshguard"))
            .args(["webhook", "--listen", "127.0.0.1:0"])
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .output()
            .unwrap()
    };
    let missing = certs.dir.path().join("missing.key");
    for (cert, key, expected) in [
        (certs.cert(), missing.clone(), "missing.key"),
        (
            certs.cert(),
            other.key(),
            "does the key belong to the certificate?",
        ),
        (certs.key(), certs.key(), "no CERTIFICATE"),
        (certs.cert(), certs.cert(), "no usable private key"),
    ] {
        let out = run(&cert, &key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--proxy-uid", "0"])
        .arg("--cert")
        .arg(certs.cert())
        .arg("--key")
        .arg(certs.key())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-uid"));
}

/// After SIGTERM the webhook keeps answering for --shutdown-delay (the
/// apiserver may still pick this pod), then exits 0.
#[tokio::test]
async fn sigterm_keeps_serving_for_the_delay_then_exits() {
    let certs = Certs::new();
    let mut server = start(&certs, &["--shutdown-delay", "2"]);
    let pid = server.child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = admit(&server, &certs.ca, &deployment_pod()).await;
    assert_eq!(response["allowed"], true, "served during the delay");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "exited before the delay"
    );
}
