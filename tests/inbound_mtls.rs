//! Inbound over real loopback sockets: a caller without an acceptable
//! X509-SVID never gets a request to the app; a good one does, with the
//! identity meshguard authenticated and nothing the caller claimed.

mod support;

use meshguard::dev::certs::{DevCa, LeafSpec};
use rcgen::KeyUsagePurpose;
use support::*;
use time::{Duration, OffsetDateTime};

struct Server {
    pki: Pki,
    app: RecordingApp,
    sidecar: meshguard::sidecar::app::Running,
}

async fn server() -> Server {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let sidecar = start_inbound(&pki, "server", app.addr).await;
    Server { pki, app, sidecar }
}

fn client_spec() -> LeafSpec {
    LeafSpec::svid(
        "spiffe://cluster.local/ns/default/sa/client",
        Duration::hours(1),
    )
}

#[tokio::test]
async fn good_client_reaches_app_with_authenticated_identity_only() {
    let s = server().await;
    let cert = s.pki.svid(&id("default", "client"));
    let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
    let forged = [
        (
            "x-meshguard-client-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        ),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://x;URI=spiffe://cluster.local/ns/kube-system/sa/admin",
        ),
        (
            "l5d-client-id",
            "admin.kube-system.serviceaccount.identity.linkerd.cluster.local",
        ),
        ("x-forwarded-for", "10.0.0.1"),
    ];
    let (status, body) = tls_get(s.sidecar.inbound.unwrap(), client, "/orders?id=7", &forged)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = s.app.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
    let xfcc = seen.header("x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1);
    let hash: String = meshguard::sidecar::tls::sha256(&cert.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(xfcc[0], format!("By=spiffe://cluster.local/ns/default/sa/server;Hash={hash};URI=spiffe://cluster.local/ns/default/sa/client"));
    assert!(seen.header("l5d-client-id").is_empty());
    assert!(seen.header("x-forwarded-for").is_empty());
    assert_eq!(seen.header("host"), vec!["server.test"]);
}

#[tokio::test]
async fn http2_from_a_peer_is_accepted_and_forwarded_as_http1() {
    let s = server().await;
    let cert = s.pki.svid(&id("default", "client"));
    let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"h2"]);
    let (status, _) = tls_get(s.sidecar.inbound.unwrap(), client, "/h2", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = s.app.last();
    assert_eq!(seen.target, "/h2");
    assert_eq!(
        seen.header("host"),
        vec!["server.test"],
        ":authority becomes Host for the app"
    );
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
}

/// Every way a caller can fail to prove an identity, over a real socket.
#[tokio::test]
async fn bad_client_certificates_never_reach_the_app() {
    let s = server().await;
    let ca = &s.pki.ca;
    let now = OffsetDateTime::now_utc();
    let other_ca = DevCa::generate("cluster.local", Duration::days(1)).unwrap();
    let other_td_ca = DevCa::generate("evil.org", Duration::days(1)).unwrap();
    let mut cases = Vec::new();
    cases.push((
        "cert from another CA",
        other_ca.issue(&client_spec()).unwrap(),
    ));
    cases.push((
        "cert from another trust domain",
        other_td_ca
            .issue(&LeafSpec::svid(
                "spiffe://evil.org/ns/default/sa/client",
                Duration::hours(1),
            ))
            .unwrap(),
    ));
    cases.push((
        "foreign trust domain signed by our CA",
        ca.issue(&LeafSpec::svid(
            "spiffe://evil.org/ns/default/sa/client",
            Duration::hours(1),
        ))
        .unwrap(),
    ));
    let mut spec = client_spec();
    spec.not_before = now - Duration::hours(2);
    spec.not_after = now - Duration::hours(1);
    cases.push(("expired", ca.issue(&spec).unwrap()));
    let mut spec = client_spec();
    spec.not_before = now + Duration::hours(1);
    spec.not_after = now + Duration::hours(2);
    cases.push(("not yet valid", ca.issue(&spec).unwrap()));
    let mut spec = client_spec();
    spec.uris
        .push("spiffe://cluster.local/ns/kube-system/sa/admin".into());
    cases.push(("two URI SANs", ca.issue(&spec).unwrap()));
    let mut spec = client_spec();
    spec.is_ca = true;
    spec.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    cases.push(("CA certificate as leaf", ca.issue(&spec).unwrap()));
    let mut spec = client_spec();
    spec.uris = vec!["spiffe://cluster.local".into()];
    cases.push(("root-path SPIFFE ID", ca.issue(&spec).unwrap()));
    let mut spec = client_spec();
    spec.uris.clear();
    spec.dns = vec!["client.default.svc.cluster.local".into()];
    cases.push(("no URI SAN", ca.issue(&spec).unwrap()));

    for (case, cert) in &cases {
        let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
        let result = tls_get(s.sidecar.inbound.unwrap(), client, "/secret", &[]).await;
        assert!(result.is_err(), "{case}: got a response {result:?}");
    }
    let client = tls_client(None, &[b"http/1.1"]);
    let result = tls_get(s.sidecar.inbound.unwrap(), client, "/secret", &[]).await;
    assert!(result.is_err(), "no client certificate: got {result:?}");
    assert_eq!(s.app.count(), 0, "the app must see nothing");

    // The listener keeps serving good callers after all those refusals.
    let good = s.pki.svid(&id("default", "client"));
    let client = tls_client(Some((&good.cert_pem, &good.key_pem)), &[b"http/1.1"]);
    assert_eq!(
        tls_get(s.sidecar.inbound.unwrap(), client, "/ok", &[])
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(s.app.count(), 1);
}

#[tokio::test]
async fn plain_http_to_the_mtls_port_gets_nothing_through() {
    let s = server().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.sidecar.inbound.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("app ok"));
    assert_eq!(s.app.count(), 0);
}
