//! Metrics after known traffic (exact values), promtool's verdict on the
//! exposition, a real Prometheus server scraping meshguard, and the audit
//! log: one JSON line per boundary decision, from the real binary.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const SERVER_HOST: &str = "server.shop.svc.cluster.local";
const POLICY: &str = "rules:\n  - name: public\n    action: allow\n    from: [\"spiffe://cluster.local/ns/shop/*\"]\n    paths: [\"/public/*\"]\n";

struct Mesh {
    pki: Pki,
    _app: RecordingApp,
    server: meshguard::sidecar::app::Running,
    client: meshguard::sidecar::app::Running,
}

async fn mesh() -> Mesh {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut cfg = inbound_config(pki.identity("server", &id("shop", "server")), app.addr);
    cfg.inbound.as_mut().unwrap().policy = Some(policy);
    let server = meshguard::sidecar::app::start(&cfg).await.unwrap();
    let client = meshguard::sidecar::app::start(&outbound_config(
        pki.identity("client", &id("shop", "client")),
        SERVER_HOST,
        server.inbound.unwrap(),
        id("shop", "server"),
    ))
    .await
    .unwrap();
    Mesh {
        pki,
        _app: app,
        server,
        client,
    }
}

/// 3 allowed, 1 denied by policy, 1 undeclared destination, 1 refused handshake.
async fn known_traffic(m: &Mesh) {
    let out = m.client.outbound.unwrap();
    for i in 0..3 {
        assert_eq!(
            http_get(out, SERVER_HOST, &format!("/public/{i}"), &[])
                .await
                .0,
            200
        );
    }
    assert_eq!(http_get(out, SERVER_HOST, "/private", &[]).await.0, 403);
    assert_eq!(http_get(out, "elsewhere.example", "/", &[]).await.0, 403);
    let stranger =
        meshguard::dev::certs::DevCa::generate("cluster.local", time::Duration::days(1)).unwrap();
    let cert = stranger
        .issue(&meshguard::dev::certs::LeafSpec::svid(
            "spiffe://cluster.local/ns/shop/sa/client",
            time::Duration::hours(1),
        ))
        .unwrap();
    assert!(tls_get(
        m.server.inbound.unwrap(),
        tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]),
        "/public/x",
        &[]
    )
    .await
    .is_err());
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

#[tokio::test]
async fn counters_after_known_traffic_are_exact() {
    let m = mesh().await;
    known_traffic(&m).await;
    // The refused handshake is counted when the server side gives up on it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = scrape(m.server.admin).await;
    let v = |name: &str, labels: &[(&str, &str)]| series(&s, name, labels);
    assert_eq!(
        v(
            "meshguard_requests_total",
            &[
                ("direction", "inbound"),
                ("peer", CLIENT_ID),
                ("decision", "allow"),
                ("status_class", "2xx")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "meshguard_requests_total",
            &[
                ("direction", "inbound"),
                ("peer", CLIENT_ID),
                ("decision", "deny"),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(v("meshguard_requests_total", &[]), Some(4.0));
    assert_eq!(
        v(
            "meshguard_request_duration_seconds_count",
            &[("direction", "inbound")]
        ),
        Some(4.0)
    );
    assert_eq!(
        v(
            "meshguard_authz_decisions_total",
            &[("decision", "allow"), ("rule", "public")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "meshguard_authz_decisions_total",
            &[("decision", "deny"), ("rule", "default-deny")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "meshguard_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "accepted")]
        ),
        Some(1.0),
        "one pooled connection"
    );
    assert_eq!(
        v(
            "meshguard_tls_handshakes_total",
            &[
                ("direction", "inbound"),
                ("result", "refused"),
                ("reason", "unknown_ca")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        v("meshguard_connections_total", &[("direction", "inbound")]),
        Some(2.0)
    );
    assert_eq!(
        v("meshguard_open_connections", &[("direction", "inbound")]),
        Some(1.0),
        "the pooled connection stays open"
    );
    assert!(
        v(
            "meshguard_bytes_total",
            &[("direction", "inbound"), ("flow", "rx")]
        )
        .unwrap()
            > 1000.0
    );
    assert!(
        v(
            "meshguard_bytes_total",
            &[("direction", "inbound"), ("flow", "tx")]
        )
        .unwrap()
            > 1000.0
    );
    assert_eq!(
        v(
            "meshguard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let not_after = m.server.store.svid().not_after as f64;
    assert_eq!(
        v(
            "meshguard_certificate_expiry_timestamp_seconds",
            &[("kind", "svid"), ("subject", SERVER_ID)]
        ),
        Some(not_after)
    );
    assert!(
        v(
            "meshguard_certificate_expiry_timestamp_seconds",
            &[("kind", "bundle_root"), ("trust_domain", "cluster.local")]
        )
        .unwrap()
            > not_after
    );

    let c = scrape(m.client.admin).await;
    let v = |name: &str, labels: &[(&str, &str)]| series(&c, name, labels);
    assert_eq!(
        v(
            "meshguard_requests_total",
            &[
                ("direction", "outbound"),
                ("peer", SERVER_ID),
                ("decision", "allow"),
                ("status_class", "2xx")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "meshguard_requests_total",
            &[
                ("direction", "outbound"),
                ("peer", SERVER_ID),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0),
        "the peer's 403 passes through"
    );
    assert_eq!(
        v(
            "meshguard_requests_total",
            &[
                ("direction", "outbound"),
                ("peer", "none"),
                ("decision", "deny"),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "meshguard_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v("meshguard_open_connections", &[("direction", "outbound")]),
        Some(1.0)
    );
    drop(m.pki);
}

#[tokio::test]
async fn peer_labels_stay_bounded() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let server = meshguard::sidecar::app::start(&inbound_config(
        pki.identity("server", &id("shop", "server")),
        app.addr,
    ))
    .await
    .unwrap();
    for i in 0..(meshguard::sidecar::metrics::MAX_DYNAMIC_PEERS + 5) {
        let cert = pki.svid(&id("load", &format!("caller{i}")));
        let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]);
        assert_eq!(
            tls_get(server.inbound.unwrap(), client, "/", &[])
                .await
                .unwrap()
                .0,
            200
        );
    }
    let s = scrape(server.admin).await;
    let peers: std::collections::HashSet<&str> = s
        .lines()
        .filter(|l| l.starts_with("meshguard_requests_total{"))
        .filter_map(|l| l.split("peer=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        peers.len(),
        meshguard::sidecar::metrics::MAX_DYNAMIC_PEERS + 1,
        "{peers:?}"
    );
    assert_eq!(
        series(&s, "meshguard_requests_total", &[("peer", "other")]),
        Some(5.0)
    );
}

#[tokio::test]
async fn admin_port_is_outside_the_allow_matrix() {
    let m = mesh().await;
    // A deny-everything-else policy is in force; health and scraping still work.
    assert_eq!(
        http_get(m.server.admin, "admin", "/ready", &[]).await.0,
        200
    );
    assert_eq!(http_get(m.server.admin, "admin", "/live", &[]).await.0, 200);
    let (status, body) = http_get(m.server.admin, "admin", "/config", &[]).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("policy.yaml") && !body.contains("BEGIN"),
        "{body}"
    );
    assert!(scrape(m.server.admin)
        .await
        .contains("meshguard_build_info"));
}

fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn exposition_passes_promtool_check_metrics() {
    assert!(
        promtool_available(),
        "promtool missing: install Debian's `prometheus` package (tests/run.sh does)"
    );
    let m = mesh().await;
    known_traffic(&m).await;
    for admin in [m.server.admin, m.client.admin] {
        let text = scrape(admin).await;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_meshguard() {
    assert!(
        promtool_available(),
        "prometheus missing: install Debian's `prometheus` package (tests/run.sh does)"
    );
    let m = mesh().await;
    known_traffic(&m).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: meshguard\n    static_configs:\n      - targets: ['{}']\n", m.server.admin)).unwrap();
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = "/api/v1/query?query=sum(meshguard_requests_total%7Bdirection%3D%22inbound%22%2Cdecision%3D%22allow%22%7D)";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok((status, body))) = tokio::time::timeout(Duration::from_secs(5), async {
            let tcp = tokio::net::TcpStream::connect(prom).await?;
            drop(tcp);
            Ok::<_, std::io::Error>(http_get(prom, "prometheus", query, &[]).await)
        })
        .await
        {
            if status == 200 && body.contains("\"result\":[{") {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                let value = json["data"]["result"][0]["value"][1]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(value, "3", "{body}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the meshguard counter"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn meshguard_json(args: &[String]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_meshguard"))
            .args(["--log-format", "json"])
            .args(args)
            .env("MESHGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn audit_log_has_one_json_line_per_decision() {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let (s_in, s_admin, c_out, c_admin) = (free_port(), free_port(), free_port(), free_port());
    let server_id = pki.identity("server", &id("shop", "server"));
    let client_id = pki.identity("client", &id("shop", "client"));
    let path = |p: &std::path::Path| p.display().to_string();
    let mut server = meshguard_json(&[
        "run".into(),
        "--cert".into(),
        path(&server_id.cert),
        "--key".into(),
        path(&server_id.key),
        "--bundle".into(),
        path(&server_id.bundle),
        "--inbound".into(),
        format!("127.0.0.1:{s_in}"),
        "--app".into(),
        app.addr.to_string(),
        "--policy".into(),
        path(&policy),
        "--admin".into(),
        format!("127.0.0.1:{s_admin}"),
    ]);
    let mut client = meshguard_json(&[
        "run".into(),
        "--cert".into(),
        path(&client_id.cert),
        "--key".into(),
        path(&client_id.key),
        "--bundle".into(),
        path(&client_id.bundle),
        "--outbound".into(),
        format!("127.0.0.1:{c_out}"),
        "--peer".into(),
        format!("127.0.0.1:{s_in}"),
        "--peer-id".into(),
        SERVER_ID.into(),
        "--admin".into(),
        format!("127.0.0.1:{c_admin}"),
    ]);
    wait_ready(s_admin);
    wait_ready(c_admin);
    let out: std::net::SocketAddr = format!("127.0.0.1:{c_out}").parse().unwrap();
    assert_eq!(http_get(out, SERVER_HOST, "/public/./a", &[]).await.0, 200);
    assert_eq!(http_get(out, SERVER_HOST, "/private", &[]).await.0, 403);
    let stranger =
        meshguard::dev::certs::DevCa::generate("cluster.local", time::Duration::days(1)).unwrap();
    let cert = stranger
        .issue(&meshguard::dev::certs::LeafSpec::svid(
            CLIENT_ID,
            time::Duration::hours(1),
        ))
        .unwrap();
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{s_in}").parse().unwrap();
    assert!(tls_get(
        inbound,
        tls_client(Some((&cert.cert_pem, &cert.key_pem)), &[b"http/1.1"]),
        "/",
        &[]
    )
    .await
    .is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stop both and read everything they logged.
    let lines = |k: &mut Killed| -> Vec<serde_json::Value> {
        let _ = Command::new("kill")
            .args(["-INT", &k.0.id().to_string()])
            .status();
        let _ = k.0.wait();
        let stderr = k.0.stderr.take().unwrap();
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    };
    let server_lines: Vec<_> = lines(&mut server)
        .into_iter()
        .filter(|l| l["target"] == "meshguard::audit")
        .collect();
    let client_lines: Vec<_> = lines(&mut client)
        .into_iter()
        .filter(|l| l["target"] == "meshguard::audit")
        .collect();

    let requests: Vec<_> = server_lines
        .iter()
        .filter(|l| l["event"] == "request")
        .collect();
    assert_eq!(requests.len(), 2, "one line per request: {server_lines:#?}");
    let allowed = requests
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("allowed line");
    for field in [
        "timestamp",
        "direction",
        "peer_addr",
        "peer_id",
        "method",
        "path",
        "decision",
        "rule",
        "status",
        "duration_ms",
        "reason",
    ] {
        assert!(
            !allowed[field].is_null(),
            "allowed line lacks {field}: {allowed}"
        );
    }
    assert_eq!(allowed["direction"], "inbound");
    assert_eq!(allowed["peer_id"], CLIENT_ID);
    assert_eq!(allowed["method"], "GET");
    assert_eq!(
        allowed["path"], "/public/a",
        "the normalised path is logged"
    );
    assert_eq!(allowed["rule"], "public");
    assert_eq!(allowed["status"], 200);
    let denied = requests
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("denied line");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["path"], "/private");
    assert_eq!(denied["reason"], "denied by policy");
    let handshakes: Vec<_> = server_lines
        .iter()
        .filter(|l| l["event"] == "handshake")
        .collect();
    assert_eq!(handshakes.len(), 1, "{server_lines:#?}");
    assert_eq!(handshakes[0]["reason"], "unknown_ca");
    assert!(!handshakes[0]["peer_addr"].is_null());

    // Client side: two forwarded requests. No undeclared destination exists in
    // flags mode (the listener route takes everything), so make one with a
    // config-file sidecar below.
    let fwd: Vec<_> = client_lines
        .iter()
        .filter(|l| l["event"] == "request")
        .collect();
    assert_eq!(fwd.len(), 2, "{client_lines:#?}");
    assert!(fwd
        .iter()
        .all(|l| l["direction"] == "outbound" && l["peer_id"] == SERVER_ID));
    for l in server_lines.iter().chain(client_lines.iter()) {
        let text = l.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("BEGIN CERTIFICATE"),
            "secret in log: {text}"
        );
    }
}

#[tokio::test]
async fn audit_log_records_undeclared_destinations() {
    let pki = Pki::new();
    let c_admin = free_port();
    let c_out = free_port();
    let ident = pki.identity("client", &id("shop", "client"));
    let cfg = pki.dir.path().join("client.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\noutbound:\n  listen: 127.0.0.1:{c_out}\n  routes:\n    - host: {SERVER_HOST}\n      peer: 127.0.0.1:1\n      identity: {SERVER_ID}\nadmin:\n  listen: 127.0.0.1:{c_admin}\n",
            ident.cert.display(),
            ident.key.display(),
            ident.bundle.display()
        ),
    )
    .unwrap();
    let mut client = meshguard_json(&["run".into(), "--config".into(), cfg.display().to_string()]);
    wait_ready(c_admin);
    let out: std::net::SocketAddr = format!("127.0.0.1:{c_out}").parse().unwrap();
    assert_eq!(
        http_get(out, "exfil.example.com", "/upload", &[]).await.0,
        403
    );
    let _ = Command::new("kill")
        .args(["-INT", &client.0.id().to_string()])
        .status();
    let _ = client.0.wait();
    let lines: Vec<serde_json::Value> = BufReader::new(client.0.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let audit: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "meshguard::audit" && l["event"] == "request")
        .collect();
    assert_eq!(audit.len(), 1, "{lines:#?}");
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["reason"], "undeclared destination");
    assert_eq!(audit[0]["status"], 403);
    assert_eq!(audit[0]["path"], "/upload");
}
