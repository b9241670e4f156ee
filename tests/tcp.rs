//! Opaque TCP over mTLS through two sidecars started in-process: the app
//! connects to the client sidecar's TCP route listener, the connection
//! crosses as mTLS whose ALPN names the app port, and the server sidecar
//! relays it to that port. Driven by a real `redis-server` (Debian) with
//! `redis-cli` and raw RESP, and by small tokio servers for the cases
//! redis cannot show (a server that speaks first, half-close, idle and
//! drain). Audit lines are read from the JSON log of this process.

mod support;

use meshguard::sidecar::app::Running;
use meshguard::sidecar::config::{AdminConfig, Config, OutboundConfig, TcpRouteConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

// ---------------------------------------------------------------- logs --

/// Every log line of this test process, as JSON (the format of
/// `--log-format json`). Tests tell theirs apart by their app ports.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `tcp_connection` audit lines about app port `port`.
fn tcp_lines(port: u16) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "meshguard::audit" && l["event"] == "tcp_connection")
        .filter(|l| l["port"] == port)
        .collect()
}

/// Waits for the first audit line of `direction` about `port`.
async fn tcp_line(port: u16, direction: &str) -> serde_json::Value {
    tcp_line_where(port, |l| l["direction"] == direction).await
}

/// Waits for the first audit line about `port` that `pred` accepts.
async fn tcp_line_where(port: u16, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = tcp_lines(port).into_iter().find(&pred) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no such tcp_connection line for port {port}: {:#?}",
            tcp_lines(port)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- mesh --

/// A client sidecar with one TCP route per entry of `routes` to a server
/// sidecar whose `inbound.tcp_ports` are `tcp_ports`.
struct Mesh {
    pki: Pki,
    server: Running,
    client: Running,
    policy: Option<PathBuf>,
}

impl Mesh {
    /// The client's listener of the route to app port `port`.
    fn route(&self, port: u16, routes: &[u16]) -> SocketAddr {
        let i = routes.iter().position(|&p| p == port).expect("a route");
        self.client.tcp_route_listeners[i]
    }
}

async fn mesh(
    tcp_ports: &[u16],
    routes: &[u16],
    policy: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> Mesh {
    log_buffer();
    let pki = Pki::new();
    // `app` is the HTTP app; TCP ports are reached on its address.
    let mut server_cfg = inbound_config(
        pki.identity("server", &id("default", "server")),
        "127.0.0.1:9".parse().unwrap(),
    );
    let inbound = server_cfg.inbound.as_mut().unwrap();
    inbound.tcp_ports = tcp_ports.to_vec();
    let policy = policy.map(|text| {
        let path = pki.dir.path().join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        path
    });
    inbound.policy = policy.clone();
    server_cfg.runtime.poll_interval_ms = 50;
    tweak(&mut server_cfg);
    let server = meshguard::sidecar::app::start(&server_cfg).await.unwrap();
    let peer = server.inbound.unwrap().to_string();
    let client_cfg = Config {
        identity: pki.identity("client", &id("default", "client")),
        inbound: None,
        outbound: Some(OutboundConfig {
            tcp_routes: routes
                .iter()
                .map(|&port| TcpRouteConfig {
                    listen: any_port(),
                    peer: peer.clone(),
                    identity: id("default", "server"),
                    port,
                })
                .collect(),
            ..Default::default()
        }),
        admin: AdminConfig { listen: any_port() },
        runtime: Default::default(),
        limits: Default::default(),
        shutdown: Default::default(),
        webhooks: None,
        assertion: None,
    };
    let client = meshguard::sidecar::app::start(&client_cfg).await.unwrap();
    Mesh {
        pki,
        server,
        client,
        policy,
    }
}

/// A loopback port nothing listens on for the test's life (kept bound
/// elsewhere, so no other test takes it).
async fn reserved_port() -> (TcpListener, u16) {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

// ---------------------------------------------------------- tiny apps --

/// An echo server that counts the connections it accepted.
async fn echo_app() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, accepted)
}

/// Reads until EOF or `limit`; `Err` when the read failed or timed out.
async fn read_to_end(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Ok(out),
        Ok(Err(e)) => Err(format!("read failed after {} bytes: {e}", out.len())),
        Err(_) => Err(format!(
            "no EOF within {limit:?} ({} bytes read)",
            out.len()
        )),
    }
}

// --------------------------------------------------------------- redis --

/// A real redis-server from Debian on a free loopback port, no persistence.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis() -> Redis {
    let (l, port) = reserved_port().await;
    drop(l);
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (Debian package redis-server; tests/run.sh installs it)");
    let redis = Redis { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(port, &["PING"]).await != "PONG" {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis
}

/// `redis-cli -p PORT ARGS...`, its stdout trimmed.
async fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli runs (Debian package redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One RESP command as an array of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP reply: a simple line, or a bulk string's bytes.
async fn resp_reply(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut head = String::new();
    r.read_line(&mut head).await.unwrap();
    match head.strip_prefix('$') {
        Some(len) => {
            let len: usize = len.trim().parse().unwrap();
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body).await.unwrap();
            body.truncate(len);
            body
        }
        None => head.trim_end().as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn redis_set_and_get_through_the_pair_with_redis_cli_and_raw_resp() {
    let redis = redis().await;
    let routes = [redis.port];
    let m = mesh(&routes, &routes, None, |_| {}).await;
    let route = m.route(redis.port, &routes).port();

    assert_eq!(
        redis_cli(route, &["SET", "greeting", "hello over mTLS"]).await,
        "OK"
    );
    assert_eq!(
        redis_cli(route, &["GET", "greeting"]).await,
        "hello over mTLS"
    );
    // Redis itself has the value: it crossed to the real server.
    assert_eq!(
        redis_cli(redis.port, &["GET", "greeting"]).await,
        "hello over mTLS"
    );

    // A 6 MiB value over raw RESP, both ways on one connection.
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", route)).await.unwrap());
    conn.get_mut()
        .write_all(&resp(&[b"SET", b"big", &big]))
        .await
        .unwrap();
    assert_eq!(resp_reply(&mut conn).await, b"+OK");
    conn.get_mut()
        .write_all(&resp(&[b"GET", b"big"]))
        .await
        .unwrap();
    let got = resp_reply(&mut conn).await;
    assert_eq!(got.len(), big.len());
    assert!(got == big, "the value came back changed");
    assert_eq!(
        redis_cli(redis.port, &["STRLEN", "big"]).await,
        big.len().to_string()
    );
    drop(conn);

    // One audit line per connection at each side, with the bytes moved.
    let inbound = tcp_line(redis.port, "inbound").await;
    assert_eq!(inbound["peer_id"], CLIENT_ID);
    assert_eq!(inbound["decision"], "allow");
    let big_line = tcp_line_where(redis.port, |l| {
        l["direction"] == "inbound" && l["bytes_to_server"].as_u64() > Some(6 << 20)
    })
    .await;
    assert!(
        big_line["bytes_to_client"].as_u64() > Some(6 << 20),
        "{big_line}"
    );
    assert!(big_line["duration_ms"].as_f64().is_some(), "{big_line}");
    let outbound = tcp_line(redis.port, "outbound").await;
    assert_eq!(outbound["peer_id"], SERVER_ID);

    let metrics = scrape(m.server.admin).await;
    let inbound_allowed = [("direction", "inbound"), ("decision", "allow")];
    assert_eq!(
        series(
            &metrics,
            "meshguard_tcp_connections_total",
            &inbound_allowed
        ),
        Some(3.0),
        "{metrics}"
    );
    for flow in ["client_to_server", "server_to_client"] {
        let bytes = series(
            &metrics,
            "meshguard_tcp_bytes_total",
            &[("direction", "inbound"), ("flow", flow)],
        );
        assert!(bytes > Some(6.0 * 1024.0 * 1024.0), "{flow}: {bytes:?}");
    }
}

#[tokio::test]
async fn a_server_that_speaks_first_is_heard_without_any_client_byte() {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"220 banner.test ESMTP ready\r\n")
            .await
            .unwrap();
        // Then wait for the client to close, counting what it sent.
        let mut from_client = Vec::new();
        let _ = s.read_to_end(&mut from_client).await;
        let _ = got_tx.send(from_client);
    });
    let m = mesh(&[port], &[port], None, |_| {}).await;
    let started = Instant::now();
    let mut app = TcpStream::connect(m.route(port, &[port])).await.unwrap();
    let mut banner = BufReader::new(&mut app);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), banner.read_line(&mut line))
        .await
        .expect("the banner arrives without the client sending anything")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(line, "220 banner.test ESMTP ready\r\n");
    assert!(waited < Duration::from_secs(1), "banner took {waited:?}");
    drop(app);
    let from_client = got_rx.await.unwrap();
    assert!(from_client.is_empty(), "the server got {from_client:?}");
    let line = tcp_line(port, "inbound").await;
    assert_eq!(line["bytes_to_client"], 29);
    assert_eq!(line["bytes_to_server"], 0);
    eprintln!("banner through the pair after {waited:?}");
}

#[tokio::test]
async fn half_close_is_passed_on_in_both_directions() {
    // The server answers once the client has shut its write side, then
    // half-closes itself and still reads what the client sends next.
    let l = TcpListener::bind(any_port()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.unwrap();
        let reply = format!("got {} bytes after your EOF", request.len());
        s.write_all(reply.as_bytes()).await.unwrap();
        let _ = tx.send(request);
    });
    let m = mesh(&[port], &[port], None, |_| {}).await;
    let mut app = TcpStream::connect(m.route(port, &[port])).await.unwrap();
    app.write_all(b"question").await.unwrap();
    app.shutdown().await.unwrap();
    let reply = read_to_end(&mut app, Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, b"got 8 bytes after your EOF");
    assert_eq!(rx.await.unwrap(), b"question");
    let line = tcp_line(port, "inbound").await;
    assert_eq!(line["end"], "closed", "{line}");

    // The other way: the server shuts its write side first, the client
    // reads EOF and can still send; the server reads it to EOF.
    let l = TcpListener::bind(any_port()).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"no more from me").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let _ = tx.send(rest);
    });
    let m2 = mesh(&[port], &[port], None, |_| {}).await;
    let mut app = TcpStream::connect(m2.route(port, &[port])).await.unwrap();
    let mut first = vec![0; 15];
    app.read_exact(&mut first).await.unwrap();
    assert_eq!(first, b"no more from me");
    let mut more = [0; 1];
    let eof = tokio::time::timeout(Duration::from_secs(5), app.read(&mut more)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "EOF after the server's shutdown: {eof:?}"
    );
    app.write_all(b"but I still talk").await.unwrap();
    app.shutdown().await.unwrap();
    assert_eq!(rx.await.unwrap(), b"but I still talk");
    drop(m);
}

#[tokio::test]
async fn a_connection_denied_by_policy_is_closed_after_the_handshake_with_an_audit_line() {
    let (open, open_accepted) = echo_app().await;
    let (closed, closed_accepted) = echo_app().await;
    let policy = format!(
        "rules:\n  - name: cache-for-client\n    action: allow\n    from: [{CLIENT_ID}]\n    ports: [{open}]\n  \
         - name: no-db\n    action: deny\n    from: [\"*\"]\n    ports: [{closed}]\n"
    );
    let routes = [open, closed];
    let m = mesh(&routes, &routes, Some(&policy), |_| {}).await;

    let mut allowed = TcpStream::connect(m.route(open, &routes)).await.unwrap();
    allowed.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    allowed.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    let mut denied = TcpStream::connect(m.route(closed, &routes)).await.unwrap();
    let _ = denied.write_all(b"SELECT secrets").await;
    let got = read_to_end(&mut denied, Duration::from_secs(5)).await;
    assert!(
        matches!(&got, Ok(b) if b.is_empty())
            || got.as_ref().is_err_and(|e| e.contains("read failed")),
        "the denied connection must be closed with nothing sent back: {got:?}"
    );
    let line = tcp_line(closed, "inbound").await;
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["end"], "refused", "{line}");
    assert_eq!(line["rule"], "no-db", "{line}");
    assert_eq!(line["peer_id"], CLIENT_ID, "{line}");
    assert_eq!(line["bytes_to_server"], 0, "{line}");
    assert_eq!(
        closed_accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    assert_eq!(open_accepted.load(Ordering::SeqCst), 1);

    let metrics = scrape(m.server.admin).await;
    let count = |decision| {
        series(
            &metrics,
            "meshguard_tcp_connections_total",
            &[("direction", "inbound"), ("decision", decision)],
        )
    };
    assert_eq!(count("deny"), Some(1.0), "{metrics}");
    assert_eq!(count("allow"), Some(1.0), "{metrics}");
    let by_rule = |rule| {
        series(
            &metrics,
            "meshguard_authz_decisions_total",
            &[("rule", rule)],
        )
    };
    assert_eq!(by_rule("no-db"), Some(1.0), "{metrics}");
    assert_eq!(by_rule("cache-for-client"), Some(1.0), "{metrics}");
    let refused = series(
        &metrics,
        "meshguard_tcp_connection_duration_seconds_count",
        &[("direction", "inbound"), ("end", "refused")],
    );
    assert_eq!(refused, Some(1.0), "{metrics}");
}

#[tokio::test]
async fn an_undeclared_port_is_refused_in_the_handshake() {
    let (declared, _) = echo_app().await;
    let (_keep, undeclared) = reserved_port().await;
    let routes = [declared, undeclared];
    let m = mesh(&[declared], &routes, None, |_| {}).await;

    // Through the client sidecar: its handshake fails, the app's
    // connection is closed without a byte.
    let mut app = TcpStream::connect(m.route(undeclared, &routes))
        .await
        .unwrap();
    let got = read_to_end(&mut app, Duration::from_secs(5)).await;
    assert!(matches!(&got, Ok(b) if b.is_empty()), "{got:?}");
    let line = tcp_line(undeclared, "outbound").await;
    assert_eq!(line["end"], "peer_unavailable", "{line}");
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains("NoApplicationProtocol")),
        "{line}"
    );

    // A TLS client with the client's own SVID asking for the port directly.
    let issued = m.pki.svid(&id("default", "client"));
    let token = format!("meshguard-tcp/{undeclared}");
    let tls = tls_client(
        Some((&issued.cert_pem, &issued.key_pem)),
        &[token.as_bytes()],
    );
    let tcp = TcpStream::connect(m.server.inbound.unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("s.test").unwrap();
    let refused = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await;
    let err = refused.expect_err("the handshake is refused").to_string();
    assert!(err.contains("NoApplicationProtocol"), "{err}");

    let metrics = scrape(m.server.admin).await;
    let no_alpn = [
        ("direction", "inbound"),
        ("result", "refused"),
        ("reason", "no_application_protocol"),
    ];
    assert_eq!(
        series(&metrics, "meshguard_tls_handshakes_total", &no_alpn),
        Some(2.0),
        "{metrics}"
    );
    // The declared port still works through the same sidecars.
    let mut ok = TcpStream::connect(m.route(declared, &routes))
        .await
        .unwrap();
    ok.write_all(b"x").await.unwrap();
    let mut b = [0; 1];
    ok.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}

#[tokio::test]
async fn http_rules_on_a_tcp_port_are_refused_at_start_with_file_and_line() {
    let pki = Pki::new();
    let cases = [
        (
            "rules:\n  - name: tcp-ok\n    action: allow\n    from: [\"*\"]\n    ports: [6379]\n  - name: web\n    action: allow\n    from: [\"*\"]\n    paths: [\"/api/*\"]\n",
            ":6: rules[1] \"web\" has paths but has no `ports`, so it applies to every port, TCP port 6379 included",
        ),
        (
            "rules:\n  - name: mixed\n    action: deny\n    from: [\"*\"]\n    ports: [8080, 6379]\n    methods: [POST]\n",
            ":2: rules[0] \"mixed\" has methods but lists TCP port 6379",
        ),
    ];
    for (policy, want) in cases {
        let path = pki.dir.path().join("policy.yaml");
        std::fs::write(&path, policy).unwrap();
        let mut cfg = inbound_config(pki.identity("server", &id("default", "server")), any_port());
        let inbound = cfg.inbound.as_mut().unwrap();
        inbound.tcp_ports = vec![6379];
        inbound.policy = Some(path.clone());
        let err = match meshguard::sidecar::app::start(&cfg).await {
            Ok(_) => panic!("started with:\n{policy}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with(&format!("{}{want}", path.display())),
            "{err}"
        );
    }
    // The binary says the same and exits non-zero.
    let path = pki.dir.path().join("policy.yaml");
    let identity = pki.identity("bin", &id("default", "server"));
    let config = pki.dir.path().join("meshguard.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\ninbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:9\n  tcp_ports: [6379]\n  policy: {}\nadmin:\n  listen: 127.0.0.1:0\n",
            identity.cert.display(),
            identity.key.display(),
            identity.bundle.display(),
            path.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:2: rules[0] \"mixed\" has methods",
            path.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_with_http_rules_on_a_tcp_port_keeps_the_policy_in_force() {
    let (port, _) = echo_app().await;
    let allow = format!("rules:\n  - name: client\n    action: allow\n    from: [{CLIENT_ID}]\n    ports: [{port}]\n");
    let m = mesh(&[port], &[port], Some(&allow), |_| {}).await;
    let bad = format!("{allow}  - name: no-admin\n    action: deny\n    from: [\"*\"]\n    paths: [\"/admin/*\"]\n");
    std::fs::write(m.policy.as_ref().unwrap(), bad).unwrap();
    let failure = [("kind", "policy"), ("result", "failure")];
    let deadline = Instant::now() + Duration::from_secs(10);
    while series(
        &scrape(m.server.admin).await,
        "meshguard_reloads_total",
        &failure,
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "the bad policy was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still the old policy: the client's connection is allowed.
    let mut app = TcpStream::connect(m.route(port, &[port])).await.unwrap();
    app.write_all(b"still").await.unwrap();
    let mut back = [0; 5];
    app.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still");
}

#[tokio::test]
async fn a_policy_change_closes_open_connections_it_no_longer_allows() {
    let (port, _) = echo_app().await;
    let allow = format!("rules:\n  - name: client\n    action: allow\n    from: [{CLIENT_ID}]\n    ports: [{port}]\n");
    let m = mesh(&[port], &[port], Some(&allow), |_| {}).await;
    let mut app = TcpStream::connect(m.route(port, &[port])).await.unwrap();
    app.write_all(b"hi").await.unwrap();
    let mut back = [0; 2];
    app.read_exact(&mut back).await.unwrap();
    // Another rule changes nothing for this connection.
    let more =
        format!("{allow}  - name: other\n    action: allow\n    from: [\"*\"]\n    ports: [1]\n");
    std::fs::write(m.policy.as_ref().unwrap(), more).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.write_all(b"on").await.unwrap();
    app.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"on");
    // A policy that denies it closes it.
    std::fs::write(m.policy.as_ref().unwrap(), "rules: []\n").unwrap();
    let got = read_to_end(&mut app, Duration::from_secs(5)).await;
    assert!(matches!(&got, Ok(b) if b.is_empty()), "{got:?}");
    let line = tcp_line(port, "inbound").await;
    assert_eq!(line["end"], "policy_changed", "{line}");
    assert_eq!(line["bytes_to_server"], 4, "{line}");
}

#[tokio::test]
async fn idle_timeout_closes_only_connections_that_move_no_bytes() {
    let (port, _) = echo_app().await;
    let m = mesh(&[port], &[port], None, |c| c.limits.idle_timeout_ms = 400).await;
    let route = m.route(port, &[port]);
    let mut quiet = TcpStream::connect(route).await.unwrap();
    let mut busy = TcpStream::connect(route).await.unwrap();
    // The busy one moves a byte every 100 ms for 1.5 s: never idle.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        busy.write_all(b".").await.unwrap();
        let mut b = [0; 1];
        tokio::time::timeout(Duration::from_secs(2), busy.read_exact(&mut b))
            .await
            .expect("the busy connection is still open")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The quiet one was closed long ago.
    let got = read_to_end(&mut quiet, Duration::from_millis(100)).await;
    assert!(matches!(&got, Ok(b) if b.is_empty()), "{got:?}");
    let lines = tcp_lines(port);
    let idle: Vec<_> = lines
        .iter()
        .filter(|l| l["direction"] == "inbound" && l["end"] == "idle_timeout")
        .collect();
    assert_eq!(idle.len(), 1, "only the quiet one: {lines:#?}");
    assert_eq!(idle[0]["bytes_to_server"], 0);
    // Then the busy one goes quiet and is closed too.
    let got = read_to_end(&mut busy, Duration::from_secs(3)).await;
    assert!(matches!(&got, Ok(b) if b.is_empty()), "{got:?}");
}

#[tokio::test]
async fn drain_ends_tcp_connections_before_the_deadline() {
    let (port, _) = echo_app().await;
    let m = mesh(&[port], &[port], None, |c| {
        c.shutdown.drain_delay_ms = 0;
        c.shutdown.deadline_ms = 2000;
    })
    .await;
    let route = m.route(port, &[port]);
    let mut quiet = TcpStream::connect(route).await.unwrap();
    let mut busy = TcpStream::connect(route).await.unwrap();
    busy.write_all(b"x").await.unwrap();
    let mut b = [0; 1];
    busy.read_exact(&mut b).await.unwrap();
    // Keeps the busy connection moving bytes throughout the drain.
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            if busy.write_all(&[b'y'; 512]).await.is_err() {
                return sent;
            }
            let mut sink = [0; 512];
            match tokio::time::timeout(Duration::from_secs(3), busy.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => sent += n as u64,
                _ => return sent,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let Mesh { server, client, .. } = m;
    let started = Instant::now();
    let quiet_closed = tokio::spawn(async move {
        let got = read_to_end(&mut quiet, Duration::from_secs(5)).await;
        (got, Instant::now())
    });
    server.drain().await;
    let drained = started.elapsed();
    assert!(
        drained < Duration::from_millis(2000),
        "drain took {drained:?}"
    );
    let (got, quiet_at) = quiet_closed.await.unwrap();
    assert!(matches!(&got, Ok(b) if b.is_empty()), "{got:?}");
    let moved = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the busy connection ended")
        .unwrap();
    assert!(moved > 0);
    // The quiet one went at its first quiet moment, the busy one at the grace.
    assert!(
        quiet_at.duration_since(started) < Duration::from_millis(1000),
        "{:?}",
        quiet_at.duration_since(started)
    );
    let lines = tcp_lines(port);
    let draining = lines
        .iter()
        .filter(|l| l["direction"] == "inbound" && l["end"] == "draining")
        .count();
    assert_eq!(draining, 2, "{lines:#?}");
    eprintln!("drained in {drained:?}");
    client.stop().await;
}
