//! Opaque TCP under capture (issue 14), in the network-namespace lab
//! (tests/netns_support): redis and a server-speaks-first banner through
//! two sidecars. Needs root; as another user it prints a SKIP line.

mod netns_support;

use netns_support::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// The redis port of the TCP test's server pod, and a server that speaks first.
const REDIS_PORT: u16 = 6379;
const BANNER_PORT: u16 = 7000;
/// The banner's first bytes, written before the client sends anything.
const BANNER: &str = "220 meshguard banner\r\n";

/// Two pods on one bridge (client 10.251.0.2, server 10.251.0.3), IPv4.
fn tcp_pods(lab: &mut Lab) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("mgtcp-{}-{:05}", std::process::id(), nanos % 100_000);
    let hub = lab.add_namespace(format!("{tag}-hub"));
    must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
    let mut names = Vec::new();
    for (name, v4) in [("client", "10.251.0.2"), ("server", "10.251.0.3")] {
        let ns = lab.add_namespace(format!("{tag}-{name}"));
        let port = format!("v-{name}");
        must(
            "ip",
            &[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        );
        must("ip", &["-n", &hub, "link", "set", &port, "master", "br0"]);
        must("ip", &["-n", &hub, "link", "set", &port, "up"]);
        let addr = format!("{v4}/24");
        must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        names.push(ns);
    }
    (names.remove(0), names.remove(0))
}

#[test]
fn opaque_tcp_is_carried_over_mtls_under_capture() {
    if !is_root() {
        eprintln!("SKIP opaque_tcp_is_carried_over_mtls_under_capture: needs root");
        return;
    }
    ensure_tools(TOOLS);
    ensure_tools(TCP_TOOLS);
    let mut lab = Lab {
        namespaces: Vec::new(),
        procs: Vec::new(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::create_dir(lab.path("logs")).expect("logs dir");
    let (client_ns, server_ns) = tcp_pods(&mut lab);
    let server_ip = "10.251.0.3";
    let certs = lab.path("certs");
    let certs_s = certs.to_str().expect("utf-8 path");
    must(
        BIN,
        &[
            "certs",
            "dev",
            "--out",
            certs_s,
            "--workload",
            "default/client",
            "--workload",
            "default/server",
        ],
    );
    must(
        "chown",
        &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), certs_s],
    );

    // The server declares its TCP ports; the client declares the server's
    // redis and banner ports as TCP destinations. Nothing else changes:
    // the apps dial the pod IP and port as they would without a mesh.
    lab.write(
        "server-policy.yaml",
        &format!(
            "rules:\n  - name: client-tcp\n    action: allow\n    from: [{CLIENT_ID}]\n    \
             ports: [{REDIS_PORT}, {BANNER_PORT}]\n"
        ),
    );
    lab.write(
        "server.yaml",
        &format!(
            "identity:\n  cert: certs/default/server/tls.crt\n  key: certs/default/server/tls.key\n  \
             bundle: certs/default/server/ca.crt\n\
             inbound:\n  listen: \"0.0.0.0:15006\"\n  app: 127.0.0.1:{APP_PORT}\n  policy: server-policy.yaml\n  \
             tcp_ports: [{REDIS_PORT}]\n\
             admin:\n  listen: \"0.0.0.0:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    lab.write(
        "client.yaml",
        &format!(
            "identity:\n  cert: certs/default/client/tls.crt\n  key: certs/default/client/tls.key\n  \
             bundle: certs/default/client/ca.crt\n\
             outbound:\n  listen: \"0.0.0.0:15001\"\n  undeclared: deny\n  destinations:\n    \
             - cidr: {server_ip}/32\n      ports: [{REDIS_PORT}, {BANNER_PORT}]\n      \
             identity: {SERVER_ID}\n      protocol: tcp\n\
             admin:\n  listen: \"0.0.0.0:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    let uid = PROXY_UID.to_string();
    for ns in [&server_ns, &client_ns] {
        let out = Lab::exec(
            ns,
            None,
            &[
                BIN,
                "init-iptables",
                "--inbound-port",
                "15006",
                "--outbound-port",
                "15001",
                "--admin-port",
                "15000",
                "--probe-port",
                "15020",
                "--proxy-uid",
                &uid,
            ],
        );
        assert!(
            out.status.success(),
            "init-iptables in {ns}: {}",
            text(&out.stderr)
        );
    }

    let redis_port = REDIS_PORT.to_string();
    lab.spawn(
        "redis",
        &server_ns,
        APP_UID,
        &[
            "redis-server",
            "--port",
            &redis_port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/tmp",
        ],
        &[],
    );
    let banner = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {BANNER_PORT}))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    \
         c.sendall({BANNER:?}.encode())\n    c.recv(1)\n    c.close()\n"
    );
    // The system interpreter: a user-local one may not be readable by the app UID.
    lab.spawn(
        "banner",
        &server_ns,
        APP_UID,
        &["/usr/bin/python3", "-c", &banner],
        &[],
    );
    // The banner's port is declared the way `meshguard inject` does it
    // from the pod's annotation: the variable, beside the file's ports.
    let banner_port = BANNER_PORT.to_string();
    lab.spawn(
        "server-sidecar",
        &server_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "server.yaml"],
        &[("MESHGUARD_INBOUND_TCP_PORTS", &banner_port)],
    );
    lab.spawn(
        "client-sidecar",
        &client_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "client.yaml"],
        &[],
    );
    lab.wait_ok(&server_ns, "http://127.0.0.1:15000/ready");
    lab.wait_ok(&client_ns, "http://127.0.0.1:15000/ready");
    let deadline = Instant::now() + READY_DEADLINE;
    let redis_cli = |args: &[&str]| -> String {
        let mut full = vec!["redis-cli", "-h", "127.0.0.1", "-p", &redis_port];
        full.extend(args);
        text(&Lab::exec(&server_ns, Some(APP_UID), &full).stdout)
            .trim()
            .to_owned()
    };
    while redis_cli(&["PING"]) != "PONG" {
        lab.all_alive();
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The banner server is a Python process: on a loaded machine it may
    // bind its port well after redis is up (CI once read nothing from it).
    let banner_up = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{BANNER_PORT}; head -c {} <&3",
        BANNER.len()
    );
    while text(
        &Lab::exec(
            &server_ns,
            Some(APP_UID),
            &["timeout", "2", "bash", "-c", &banner_up],
        )
        .stdout,
    ) != BANNER
    {
        lab.all_alive();
        assert!(Instant::now() < deadline, "the banner server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. The client app's redis-cli to the server's pod IP: captured,
    //    carried as mTLS, authorized per connection, relayed to redis.
    let client_cli = |args: &[&str], stdin: Option<&PathBuf>| -> Output {
        let mut full = vec!["redis-cli", "-h", server_ip, "-p", &redis_port];
        full.extend(args);
        let mut cmd = Lab::command(&client_ns, Some(APP_UID), &full);
        if let Some(path) = stdin {
            cmd.stdin(fs::File::open(path).expect("value file"));
        }
        cmd.output().expect("redis-cli runs")
    };
    let out = client_cli(&["SET", "who", "captured"], None);
    assert_eq!(text(&out.stdout).trim(), "OK", "{}", text(&out.stderr));
    let out = client_cli(&["GET", "who"], None);
    assert_eq!(
        text(&out.stdout).trim(),
        "captured",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        redis_cli(&["GET", "who"]),
        "captured",
        "redis itself has it"
    );
    // A 3 MiB value read from stdin (`-x`).
    let value: String = (0..3 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let value_file = lab.write("value.txt", &value);
    let out = client_cli(&["-x", "SET", "big"], Some(&value_file));
    assert_eq!(text(&out.stdout).trim(), "OK", "{}", text(&out.stderr));
    assert_eq!(redis_cli(&["STRLEN", "big"]), value.len().to_string());
    let big = wait_audit(&lab, "server-sidecar", "tcp_connection", |l| {
        l["bytes_to_server"].as_u64() > Some(3 << 20)
    });
    assert_eq!(big["peer_id"], CLIENT_ID, "{big}");
    assert_eq!(big["port"], REDIS_PORT, "{big}");
    assert_eq!(big["decision"], "allow", "{big}");
    assert_eq!(big["rule"], "client-tcp", "{big}");
    assert_eq!(big["end"], "closed", "{big}");
    let out_line = wait_audit(&lab, "client-sidecar", "tcp_connection", |l| {
        l["bytes_to_server"].as_u64() > Some(3 << 20)
    });
    assert_eq!(out_line["peer_addr"], format!("{server_ip}:{REDIS_PORT}"));
    assert_eq!(out_line["peer_id"], SERVER_ID);

    // 2. A server that speaks first: the banner arrives through the pair
    //    while the client has sent nothing (bash's /dev/tcp only reads).
    let read_banner = format!(
        "exec 3<>/dev/tcp/{server_ip}/{BANNER_PORT}; head -c {} <&3",
        BANNER.len()
    );
    let started = Instant::now();
    let out = Lab::exec(
        &client_ns,
        Some(APP_UID),
        &["timeout", "5", "bash", "-c", &read_banner],
    );
    assert_eq!(text(&out.stdout), BANNER, "{}", text(&out.stderr));
    eprintln!("netns_e2e: banner under capture in {:?}", started.elapsed());

    // 3. Under capture the handshake's port and the dialled port must
    //    agree: a client (as the proxy UID, not captured) that dials 6379
    //    but asks for another declared port is refused after the handshake.
    let client_cert = lab.path("certs/default/client/tls.crt");
    let client_key = lab.path("certs/default/client/tls.key");
    let (cert, key) = (client_cert.to_str().unwrap(), client_key.to_str().unwrap());
    let mismatch = format!("meshguard-tcp/{BANNER_PORT}");
    let connect = format!("{server_ip}:{REDIS_PORT}");
    let out = Lab::command(
        &client_ns,
        Some(PROXY_UID),
        &[
            "timeout", "5", "openssl", "s_client", "-quiet", "-tls1_3", "-connect", &connect,
            "-cert", cert, "-key", key, "-alpn", &mismatch,
        ],
    )
    .stdin(Stdio::null())
    .output()
    .expect("openssl runs");
    assert!(
        !text(&out.stdout).contains("banner"),
        "{}",
        text(&out.stdout)
    );
    let refused = wait_audit(&lab, "server-sidecar", "tcp_connection", |l| {
        l["end"] == "port_mismatch"
    });
    assert_eq!(refused["decision"], "deny", "{refused}");
    assert_eq!(refused["port"], BANNER_PORT, "{refused}");

    // 4. HTTP to a port declared TCP is refused, whatever the policy:
    //    an mTLS client speaking HTTP/1.1 to 6379 is closed unanswered.
    let url = format!("https://{server_ip}:{REDIS_PORT}/");
    let out = Lab::exec(
        &client_ns,
        Some(PROXY_UID),
        &[
            "curl",
            "-q",
            "-sS",
            "-k",
            "--http1.1",
            "--max-time",
            "5",
            "--cert",
            cert,
            "--key",
            key,
            &url,
        ],
    );
    assert!(
        !out.status.success(),
        "curl got an answer: {}",
        text(&out.stdout)
    );
    let http = wait_audit(&lab, "server-sidecar", "connection_refused", |l| {
        l["reason"] == "http_to_tcp_port"
    });
    assert_eq!(http["port"], REDIS_PORT, "{http}");

    let metrics = Lab::curl(&server_ns, None, &[], "http://127.0.0.1:15000/metrics").body;
    let allowed = metric(
        &metrics,
        "meshguard_tcp_connections_total",
        &[("direction", "inbound"), ("decision", "allow")],
    );
    assert!(allowed >= 4.0, "{metrics}");
    let denied = metric(
        &metrics,
        "meshguard_tcp_connections_total",
        &[("direction", "inbound"), ("decision", "deny")],
    );
    assert_eq!(denied, 2.0, "{metrics}");
}
