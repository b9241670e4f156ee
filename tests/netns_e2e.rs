//! Issue 7's capture proof without a cluster: three "pods" as Linux network
//! namespaces on one bridge, the real binary everywhere.
//!
//! ```text
//!                 hub namespace: bridge br0
//!          ┌──────────────┼───────────────┐
//!     client 10.250.0.2   server 10.250.0.3   outsider 10.250.0.4
//!     fd00:250::2         fd00:250::3         fd00:250::4
//!     app (UID 1000)      echo :8080, :9090   echo :8080, no sidecar
//!     meshguard (2110)    meshguard (2110)
//!     init-iptables       init-iptables --exclude-inbound-ports 9090
//! ```
//!
//! What it shows, each through plain `curl` run inside a namespace:
//! the client app's plain HTTP call to the server's pod IP is captured,
//! crosses the bridge as mTLS, is authorised by the server's policy and
//! reaches the server app with the authenticated identity header; a pod
//! without a sidecar is refused at the server; an undeclared destination
//! is refused by the client's sidecar and no packet reaches it; a
//! rewritten kubelet probe and a Prometheus scrape work under default
//! deny; an excluded port bypasses capture; the outbound listener is no
//! open relay; and, when the namespaces have IPv6, the same over IPv6.
//!
//! `egress_is_decided_by_sni_and_by_host_under_capture` (issue 20) adds a
//! pod playing the internet (dnsmasq, an HTTPS API): captured TLS is
//! matched by SNI and plain HTTP by Host; a name that lies about the
//! address dialled, or resolves to metadata, is refused.
//!
//! Needs root (namespaces, iptables, switching UIDs). As another user it
//! prints a SKIP line and passes; as root it installs what is missing
//! (iproute2, iptables, curl, util-linux) and fails loudly if anything
//! cannot be set up. Every namespace and process it makes is removed when
//! the test ends, also on failure (then the sidecars' logs are printed).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
/// `meshguard init-iptables`' default proxy UID: its traffic is not captured.
const PROXY_UID: u32 = 2110;
/// The apps and the "app-side" curl: captured like any app.
const APP_UID: u32 = 1000;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const APP_PORT: u16 = 8080;
const EXCLUDED_PORT: u16 = 9090;
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// The probe record of src/inject/probes.rs for the server's readiness probe.
const APP_PROBES: &str = r#"{"app/readiness":{"original":{"httpGet":{"path":"/ready","port":8080}},"forward":{"type":"http","port":8080,"scheme":"HTTP","path":"/ready","timeoutSeconds":1}}}"#;

/// One pod: a namespace and its addresses on the test subnet.
struct Pod {
    ns: String,
    v4: &'static str,
    v6: &'static str,
}

/// A process started inside a namespace, with its log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Everything the test creates. Dropping it (also while panicking) kills
/// the processes, then deletes the namespaces (their veths go with them).
struct Lab {
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if failed {
            for p in &self.procs {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("----- last lines of {} -----\n{tail}", p.name);
            }
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running in the namespace was started by this
            // test (a curl cut short by the panic): end it by its PID so
            // the namespace really goes away.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; panics with its output otherwise.
fn must(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn tool_works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What every test here needs: (program, version argument, Debian package).
const TOOLS: &[(&str, &str, &str)] = &[
    ("ip", "-V", "iproute2"),
    ("iptables", "--version", "iptables"),
    ("ip6tables", "--version", "iptables"),
    ("curl", "--version", "curl"),
    ("setpriv", "--version", "util-linux"),
];

/// What the TCP test needs beyond `TOOLS`.
const TCP_TOOLS: &[(&str, &str, &str)] = &[
    ("redis-server", "--version", "redis-server"),
    ("redis-cli", "--version", "redis-tools"),
    ("openssl", "version", "openssl"),
    ("python3", "--version", "python3"),
];

/// Installs the packages of the tools that are missing (Debian/Ubuntu) and
/// checks that each tool then works.
fn ensure_tools(tools: &[(&str, &str, &str)]) {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(p, arg, _)| !tool_works(p, arg))
        .map(|(_, _, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return;
    }
    eprintln!("netns_e2e: installing {}", missing.join(" "));
    must("apt-get", &["update", "-qq"]);
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let out = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("apt-get runs");
    assert!(
        out.status.success(),
        "apt-get install {missing:?} failed:\n{}",
        text(&out.stderr)
    );
    for (p, arg, pkg) in tools {
        assert!(
            tool_works(p, arg),
            "{p} still missing after installing {pkg}"
        );
    }
}

/// A URL for `ip` (IPv6 in brackets).
fn url(ip: &str, port: u16, path: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}{path}")
    } else {
        format!("http://{ip}:{port}{path}")
    }
}

/// What one curl run gave.
#[derive(Debug)]
struct Reply {
    /// curl's exit status (0: an HTTP response was received).
    exit: i32,
    /// The HTTP status, when there was a response.
    status: Option<u16>,
    /// Response head and body (`curl -i`).
    body: String,
    stderr: String,
}

impl Reply {
    fn show(&self) -> String {
        format!(
            "curl exit {}, status {:?}\n{}{}",
            self.exit, self.status, self.body, self.stderr
        )
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Lab {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }

    fn add_namespace(&mut self, name: String) -> String {
        must("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// `ip netns exec NS [setpriv as UID] ARGS...`, not yet run.
    fn command(ns: &str, uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
            cmd.args(["setpriv", &u, &g, "--clear-groups", "--"]);
        }
        cmd.args(args);
        cmd
    }

    fn exec(ns: &str, uid: Option<u32>, args: &[&str]) -> Output {
        Lab::command(ns, uid, args)
            .output()
            .expect("ip netns exec runs")
    }

    /// Starts a long-running process in `ns` as `uid`, logging to a file.
    fn spawn(&mut self, name: &str, ns: &str, uid: u32, args: &[&str], env: &[(&str, &str)]) {
        let log = self.path(&format!("logs/{name}.log"));
        let file = fs::File::create(&log).expect("log file");
        let mut cmd = Lab::command(ns, Some(uid), args);
        cmd.current_dir(self.dir.path())
            .env("MESHGUARD_LOG_FORMAT", "json")
            .env("MESHGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
    }

    fn stop(&mut self, name: &str) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("known process");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Panics (and so prints the logs) if a started process has exited.
    fn all_alive(&mut self) {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("{} exited early: {status}", p.name);
            }
        }
    }

    /// `curl -i URL` in `ns` as `uid` (None: root), bounded in time.
    fn curl(ns: &str, uid: Option<u32>, extra: &[&str], url: &str) -> Reply {
        // -q first: no ~/.curlrc (root's is not readable as another UID).
        let mut args = vec![
            "curl",
            "-q",
            "-sS",
            "-i",
            "--max-time",
            "5",
            "--connect-timeout",
            "3",
        ];
        args.extend(extra);
        args.push(url);
        let out = Lab::exec(ns, uid, &args);
        let body = text(&out.stdout);
        let status = body
            .lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        Reply {
            exit: out.status.code().unwrap_or(-1),
            status,
            body,
            stderr: text(&out.stderr),
        }
    }

    /// Waits until `url` answers 200 from inside `ns` (as root, over
    /// loopback: not captured), while every started process stays up.
    fn wait_ok(&mut self, ns: &str, url: &str) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.all_alive();
            let reply = Lab::curl(ns, None, &[], url);
            if reply.status == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} in {ns} not ready within {READY_DEADLINE:?}: {}",
                reply.show()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Packets counted by the marker rule `-s SRC -p tcp --dport PORT`.
    fn counted(ns: &str, program: &str, src: &str) -> u64 {
        let out = Lab::exec(ns, None, &[program, "-t", "filter", "-nvxL", "INPUT"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find(|l| l.contains(src))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no marker rule for {src}:\n{}", text(&out.stdout)))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0")
}

#[test]
fn capture_in_network_namespaces_end_to_end() {
    if !is_root() {
        eprintln!(
            "SKIP capture_in_network_namespaces_end_to_end: needs root \
             (network namespaces, iptables, setpriv); run as root to really test capture"
        );
        return;
    }
    let started = Instant::now();
    ensure_tools(TOOLS);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab = Lab {
        namespaces: Vec::new(),
        procs: Vec::new(),
        dir,
    };
    // The sidecar (UID 2110) and the apps (UID 1000) read from here.
    fs::set_permissions(
        lab.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    fs::create_dir(lab.path("logs")).expect("logs dir");

    // ---- The network: a bridge in a hub namespace, a veth per pod. ----
    // Unique per run, so parallel runs on one machine never meet.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("mge2e-{}-{:05}", std::process::id(), nanos % 100_000);
    let hub = lab.add_namespace(format!("{tag}-hub"));
    must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
    let mut pods = Vec::new();
    for (name, v4, v6) in [
        ("client", "10.250.0.2", "fd00:250::2"),
        ("server", "10.250.0.3", "fd00:250::3"),
        ("outsider", "10.250.0.4", "fd00:250::4"),
    ] {
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
        must(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
        );
        pods.push(Pod { ns, v4, v6 });
    }
    // IPv6 where the kernel has it: `nodad` so the address is usable at once
    // (a tentative address is also skipped by REDIRECT).
    let mut v6 = true;
    for pod in &pods {
        let added = Command::new("ip")
            .args(["-n", &pod.ns, "addr", "add", &format!("{}/64", pod.v6)])
            .args(["dev", "eth0", "nodad"])
            .output()
            .expect("ip runs");
        if !added.status.success() {
            eprintln!(
                "netns_e2e: IPv6 not available in the test namespaces ({}); IPv6 checks skipped",
                text(&added.stderr).trim()
            );
            v6 = false;
            break;
        }
    }
    for pod in &pods {
        must("ip", &["-n", &pod.ns, "link", "set", "eth0", "up"]);
    }
    let [client, server, outsider] = [&pods[0], &pods[1], &pods[2]];
    let (client_ns, server_ns, outsider_ns) =
        (client.ns.clone(), server.ns.clone(), outsider.ns.clone());

    // ---- Identities: one dev CA, an SVID each, readable by the sidecar. ----
    let certs = lab.path("certs");
    let certs_s = certs.to_str().expect("utf-8 path");
    let out = Command::new(BIN)
        .args(["certs", "dev", "--out", certs_s])
        .args([
            "--workload",
            "default/client",
            "--workload",
            "default/server",
        ])
        .output()
        .expect("meshguard runs");
    assert!(out.status.success(), "certs dev: {}", text(&out.stderr));
    must(
        "chown",
        &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), certs_s],
    );

    // ---- Sidecar configs, as a pod's ConfigMap would give them. ----
    // `[::]` takes IPv4 too (bindv6only is 0), as capture needs: IPv4 is
    // redirected to 127.0.0.1:15001 and IPv6 to [::1]:15001 by OUTPUT, and
    // to the pod's own address of either family by PREROUTING.
    let any = if v6 { "[::]" } else { "0.0.0.0" };
    lab.write(
        "server-policy.yaml",
        &format!(
            // `ports` is the port the client dialled (8080), not the
            // inbound listener it was redirected to.
            "rules:\n  - name: client-read\n    action: allow\n    from: [{CLIENT_ID}]\n    \
             ports: [8080]\n    methods: [GET]\n    paths: [\"/*\"]\n"
        ),
    );
    lab.write(
        "server.yaml",
        &format!(
            "identity:\n  cert: certs/default/server/tls.crt\n  key: certs/default/server/tls.key\n  \
             bundle: certs/default/server/ca.crt\n\
             inbound:\n  listen: \"{any}:15006\"\n  app: 127.0.0.1:{APP_PORT}\n  policy: server-policy.yaml\n\
             admin:\n  listen: \"{any}:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    let mut destinations = format!(
        "    - cidr: {}/32\n      ports: [{APP_PORT}]\n      identity: {SERVER_ID}\n",
        server.v4
    );
    if v6 {
        destinations.push_str(&format!(
            "    - cidr: {}/128\n      ports: [{APP_PORT}]\n      identity: {SERVER_ID}\n",
            server.v6
        ));
    }
    lab.write(
        "client.yaml",
        &format!(
            "identity:\n  cert: certs/default/client/tls.crt\n  key: certs/default/client/tls.key\n  \
             bundle: certs/default/client/ca.crt\n\
             outbound:\n  listen: \"{any}:15001\"\n  undeclared: deny\n  destinations:\n{destinations}\
             admin:\n  listen: \"{any}:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );

    // ---- Capture, as the init container does it. ----
    let uid = PROXY_UID.to_string();
    let excluded = EXCLUDED_PORT.to_string();
    for (ns, extra) in [
        (
            &server_ns,
            vec!["--exclude-inbound-ports", excluded.as_str()],
        ),
        (&client_ns, vec![]),
    ] {
        let mut args = vec![
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
        ];
        args.extend(extra);
        let out = Lab::exec(ns, None, &args);
        assert!(
            out.status.success(),
            "init-iptables in {ns}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if v6 {
            let table = text(&Lab::exec(ns, None, &["ip6tables", "-t", "nat", "-S"]).stdout);
            assert!(
                table.contains("-A OUTPUT -p tcp -j MESHGUARD_OUTBOUND"),
                "IPv6 must be captured too:\n{table}"
            );
        }
    }
    // Marker rules on the outsider: count what the client sends it directly.
    must_in(&outsider_ns, "iptables", client.v4);
    if v6 {
        must_in(&outsider_ns, "ip6tables", client.v6);
    }

    // ---- Processes. ----
    let app_listen = format!("{any}:{APP_PORT}");
    let plain_listen = format!("{any}:{EXCLUDED_PORT}");
    let probe_listen = format!("{any}:15020");
    lab.spawn(
        "server-app",
        &server_ns,
        APP_UID,
        &[BIN, "echo", "--listen", &app_listen, "--name", "server-app"],
        &[],
    );
    lab.spawn(
        "plain-app",
        &server_ns,
        APP_UID,
        &[
            BIN,
            "echo",
            "--listen",
            &plain_listen,
            "--name",
            "plain-app",
        ],
        &[],
    );
    lab.spawn(
        "outsider-app",
        &outsider_ns,
        APP_UID,
        &[
            BIN,
            "echo",
            "--listen",
            &app_listen,
            "--name",
            "outsider-app",
        ],
        &[],
    );
    lab.spawn(
        "server-sidecar",
        &server_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "server.yaml"],
        &[
            ("MESHGUARD_PROBE_LISTEN", &probe_listen),
            ("MESHGUARD_APP_PROBES", APP_PROBES),
        ],
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
    lab.wait_ok(&server_ns, &url("127.0.0.1", APP_PORT, "/"));
    lab.wait_ok(&server_ns, &url("127.0.0.1", EXCLUDED_PORT, "/"));
    lab.wait_ok(&outsider_ns, &url("127.0.0.1", APP_PORT, "/"));
    eprintln!("netns_e2e: set up in {:?} (IPv6: {v6})", started.elapsed());

    let scrape = |from: &str| -> String {
        let r = Lab::curl(from, None, &[], &url(server.v4, 15000, "/metrics"));
        assert_eq!(r.status, Some(200), "scrape: {}", r.show());
        r.body
    };

    // 1. The client app's plain call to the server's pod IP: captured,
    //    mTLS across the bridge, authorised, identity header at the app.
    //    A forged identity header from the app is not passed on.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[
            "-H",
            "X-Meshguard-Client-Id: spiffe://cluster.local/ns/x/sa/forged",
        ],
        &url(server.v4, APP_PORT, "/hello?x=1"),
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(
        r.body.contains("app server-app received: GET /hello?x=1"),
        "{}",
        r.show()
    );
    assert!(
        r.body
            .contains(&format!("x-meshguard-client-id: {CLIENT_ID}")),
        "{}",
        r.show()
    );
    assert!(!r.body.contains("forged"), "{}", r.show());
    // 1b. The same call as HTTP/2 with prior knowledge (how gRPC clients
    //     speak): detected on the captured port, carried on the HTTP/2
    //     hop, and handed to the app as HTTP/2; HTTP/1.1 stays HTTP/1.1.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["--http2-prior-knowledge"],
        &url(server.v4, APP_PORT, "/h2c"),
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(
        r.body
            .contains("app server-app received: GET /h2c HTTP/2.0"),
        "{}",
        r.show()
    );
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[],
        &url(server.v4, APP_PORT, "/h1"),
    );
    assert!(
        r.body.contains("app server-app received: GET /h1 HTTP/1.1"),
        "{}",
        r.show()
    );
    // The server's policy is default deny for anything but the client's GET.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-X", "POST", "-d", "x"],
        &url(server.v4, APP_PORT, "/hello"),
    );
    assert_eq!(r.status, Some(403), "{}", r.show());
    assert!(
        r.body.contains("meshguard: access denied by policy"),
        "{}",
        r.show()
    );
    let m = scrape(&outsider_ns);
    let inbound_ok = [
        ("direction", "inbound"),
        ("decision", "allow"),
        ("peer", CLIENT_ID),
        ("status_class", "2xx"),
    ];
    assert!(
        metric(&m, "meshguard_requests_total", &inbound_ok) >= 1.0,
        "server sidecar did not count the inbound request:\n{m}"
    );

    // 2. A pod without a sidecar cannot reach the server app: its plain
    //    HTTP lands on the mTLS listener and is refused there.
    let r = Lab::curl(&outsider_ns, None, &[], &url(server.v4, APP_PORT, "/"));
    assert_ne!(r.exit, 0, "outsider got an answer: {}", r.show());
    assert!(!r.body.contains("received"), "{}", r.show());
    let m = scrape(&outsider_ns);
    let not_tls = [
        ("direction", "inbound"),
        ("result", "refused"),
        ("reason", "not_tls"),
    ];
    assert!(
        metric(&m, "meshguard_tls_handshakes_total", &not_tls) >= 1.0,
        "the outsider's connection should have been refused by the mTLS listener:\n{m}"
    );

    // 3. An undeclared destination (the outsider's plain server): 403 from
    //    the client's own sidecar, and not one packet reaches it.
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &[],
        &url(outsider.v4, APP_PORT, "/leak"),
    );
    assert_eq!(r.status, Some(403), "{}", r.show());
    assert!(
        r.body.contains(&format!(
            "meshguard: destination {}:{APP_PORT} is not declared",
            outsider.v4
        )),
        "{}",
        r.show()
    );
    assert_eq!(
        Lab::counted(&outsider_ns, "iptables", client.v4),
        0,
        "a packet from the client reached the outsider"
    );

    // 4. The rewritten kubelet probe (the outsider plays kubelet) passes
    //    under default deny; an unrecorded probe is 404.
    let probe = url(server.v4, 15020, "/app-probe/app/readiness");
    let r = Lab::curl(&outsider_ns, None, &[], &probe);
    assert_eq!(r.status, Some(200), "{}", r.show());
    let r = Lab::curl(
        &outsider_ns,
        None,
        &[],
        &url(server.v4, 15020, "/app-probe/app/liveness"),
    );
    assert_eq!(r.status, Some(404), "{}", r.show());

    // 5. The excluded port bypasses capture: the plain app answers
    //    directly, without any identity header.
    let r = Lab::curl(
        &outsider_ns,
        None,
        &[],
        &url(server.v4, EXCLUDED_PORT, "/direct"),
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(
        r.body.contains("app plain-app received: GET /direct"),
        "{}",
        r.show()
    );
    assert!(!r.body.contains("x-meshguard"), "{}", r.show());

    // 6. Prometheus scrapes the admin port from another pod (done above;
    //    once more explicitly, with the status).
    let r = Lab::curl(&outsider_ns, None, &[], &url(server.v4, 15000, "/metrics"));
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("meshguard_build_info"), "{}", r.show());

    // The client's outbound listener is not an open relay: from the
    // network its port is captured to the (absent) inbound listener.
    let r = Lab::curl(&outsider_ns, None, &[], &url(client.v4, 15001, "/"));
    assert_ne!(r.exit, 0, "{}", r.show());
    assert!(!r.body.contains("meshguard: destination"), "{}", r.show());

    // 7. IPv6: the same capture for the other family.
    if v6 {
        let r = Lab::curl(
            &client_ns,
            Some(APP_UID),
            &[],
            &url(server.v6, APP_PORT, "/hello6"),
        );
        assert_eq!(r.status, Some(200), "IPv6 call: {}", r.show());
        assert!(
            r.body.contains("app server-app received: GET /hello6")
                && r.body
                    .contains(&format!("x-meshguard-client-id: {CLIENT_ID}")),
            "{}",
            r.show()
        );
        let r = Lab::curl(&outsider_ns, None, &[], &url(server.v6, APP_PORT, "/"));
        assert_ne!(r.exit, 0, "outsider over IPv6: {}", r.show());
        assert!(!r.body.contains("received"), "{}", r.show());
        let r = Lab::curl(
            &client_ns,
            Some(APP_UID),
            &[],
            &url(outsider.v6, APP_PORT, "/leak6"),
        );
        assert_eq!(r.status, Some(403), "{}", r.show());
        assert_eq!(
            Lab::counted(&outsider_ns, "ip6tables", client.v6),
            0,
            "an IPv6 packet from the client reached the outsider"
        );
        let r = Lab::curl(
            &outsider_ns,
            None,
            &[],
            &url(server.v6, 15020, "/app-probe/app/readiness"),
        );
        assert_eq!(r.status, Some(200), "IPv6 probe: {}", r.show());
        let r = Lab::curl(
            &outsider_ns,
            None,
            &[],
            &url(server.v6, EXCLUDED_PORT, "/direct6"),
        );
        assert!(
            r.body.contains("app plain-app received: GET /direct6"),
            "{}",
            r.show()
        );
    }

    // The probe really runs against the app: with the app gone it fails.
    lab.stop("server-app");
    let r = Lab::curl(&outsider_ns, None, &[], &probe);
    assert_eq!(r.status, Some(503), "{}", r.show());

    eprintln!("netns_e2e: all checks passed in {:?}", started.elapsed());
}

/// Adds a counting rule (no target) for TCP from `src` to the app port.
fn must_in(ns: &str, program: &str, src: &str) {
    let port = APP_PORT.to_string();
    let out = Lab::exec(
        ns,
        None,
        &[
            program, "-I", "INPUT", "-s", src, "-p", "tcp", "--dport", &port,
        ],
    );
    assert!(
        out.status.success(),
        "{program} marker rule in {ns}: {}",
        text(&out.stderr)
    );
}

// ---- Opaque TCP under capture (issue 14) ----

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

/// The JSON audit lines a process logged, with `event`.
fn audit_events(lab: &Lab, name: &str, event: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(lab.path(&format!("logs/{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "meshguard::audit" && l["event"] == event)
        .collect()
}

/// Waits until `name` has logged an audit line with `event` that `pred` accepts.
fn wait_audit(
    lab: &Lab,
    name: &str,
    event: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = audit_events(lab, name, event);
        if let Some(line) = lines.iter().find(|l| pred(l)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no such {event} line in {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

// ---- Egress outside the mesh under capture (issue 20) ----

/// The "internet" of the egress test: a DNS server (dnsmasq) and an HTTPS
/// API on 10.252.0.4, and a second address of the same pod, 10.252.0.5,
/// that the names do not resolve to.
const OUTSIDE_IP: &str = "10.252.0.4";
const HIDDEN_IP: &str = "10.252.0.5";
const PAY_HOST: &str = "pay.outside.test";
const HTTPS_PORT: u16 = 8443;

/// Two pods on one bridge: the client (sidecar, captured app) and outside.
fn egress_pods(lab: &mut Lab) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("mgeg-{}-{:05}", std::process::id(), nanos % 100_000);
    let hub = lab.add_namespace(format!("{tag}-hub"));
    must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
    let mut names = Vec::new();
    for (name, addrs) in [
        ("client", &["10.252.0.2/24"][..]),
        ("outside", &["10.252.0.4/24", "10.252.0.5/24"][..]),
    ] {
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
        for addr in addrs {
            must("ip", &["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        }
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        names.push(ns);
    }
    // A default route, so that the app's call to a metadata address is
    // made (and captured) rather than failing for want of a route.
    let client = &names[0];
    must(
        "ip",
        &["-n", client, "route", "add", "default", "via", OUTSIDE_IP],
    );
    (names.remove(0), names.remove(0))
}

/// The outside API's CA and certificate (our rcgen code), written to the lab.
fn outside_certs(lab: &Lab) {
    use meshguard::dev::certs::{DevCa, LeafSpec};
    let ca = DevCa::generate("outside.test", time::Duration::days(1)).expect("CA");
    let mut spec = LeafSpec::svid("spiffe://outside.test/unused", time::Duration::hours(1));
    spec.uris.clear();
    spec.common_name = PAY_HOST.into();
    spec.dns = vec![PAY_HOST.into(), "*.outside.test".into()];
    let leaf = ca.issue(&spec).expect("leaf");
    lab.write("outside-ca.pem", ca.cert_pem());
    lab.write("pay.crt", &leaf.cert_pem);
    lab.write("pay.key", &leaf.key_pem);
}

/// The egress decisions the client sidecar counted with `reason`.
fn egress_count(client_ns: &str, reason: &str) -> f64 {
    let m = Lab::curl(client_ns, None, &[], "http://127.0.0.1:15000/metrics").body;
    metric(
        &m,
        "meshguard_egress_decisions_total",
        &[("reason", reason)],
    )
}

#[test]
fn egress_is_decided_by_sni_and_by_host_under_capture() {
    if !is_root() {
        eprintln!("SKIP egress_is_decided_by_sni_and_by_host_under_capture: needs root");
        return;
    }
    ensure_tools(TOOLS);
    ensure_tools(TCP_TOOLS);
    ensure_tools(&[("dnsmasq", "--version", "dnsmasq-base")]);
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
    let (client_ns, outside_ns) = egress_pods(&mut lab);
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
        ],
    );
    must(
        "chown",
        &["-R", &format!("{PROXY_UID}:{PROXY_UID}"), certs_s],
    );
    outside_certs(&lab);

    // The client declares the API twice (its app's own TLS, matched by
    // SNI; plain HTTP, TLS originated) and any other name below
    // outside.test (TLS). The lab's subnet is allowed past the guard.
    lab.write(
        "client.yaml",
        &format!(
            "identity:\n  cert: certs/default/client/tls.crt\n  key: certs/default/client/tls.key\n  \
             bundle: certs/default/client/ca.crt\n\
             outbound:\n  listen: \"0.0.0.0:15001\"\n  undeclared: deny\n  egress:\n    \
             resolver: {OUTSIDE_IP}:5353\n    allow_cidrs: [10.252.0.0/24]\n    destinations:\n      \
             - host: {PAY_HOST}\n        mode: tls\n        ports: [{HTTPS_PORT}]\n      \
             - host: {PAY_HOST}\n        mode: originate\n        port: {HTTPS_PORT}\n        ca: outside-ca.pem\n      \
             - host: \"*.outside.test\"\n        mode: tls\n        ports: [{HTTPS_PORT}]\n\
             admin:\n  listen: \"0.0.0.0:15000\"\n\
             shutdown:\n  drain_delay_ms: 0\n  deadline_ms: 1000\n"
        ),
    );
    let uid = PROXY_UID.to_string();
    let out = Lab::exec(
        &client_ns,
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
    assert!(out.status.success(), "init-iptables: {}", text(&out.stderr));
    // Count what the client sends to the address no name resolves to.
    let port = HTTPS_PORT.to_string();
    must(
        "ip",
        &[
            "netns",
            "exec",
            &outside_ns,
            "iptables",
            "-I",
            "INPUT",
            "-d",
            HIDDEN_IP,
            "-p",
            "tcp",
            "--dport",
            &port,
        ],
    );

    let listen = format!("--listen-address={OUTSIDE_IP}");
    let pay = format!("--address=/{PAY_HOST}/{OUTSIDE_IP}");
    lab.spawn(
        "dnsmasq",
        &outside_ns,
        0,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--port=5353",
            "--bind-interfaces",
            &listen,
            &pay,
            "--address=/meta.outside.test/169.254.169.254",
            "--log-queries",
            "--log-facility=-",
        ],
        &[],
    );
    let accept = format!("{HTTPS_PORT}");
    let (crt, key) = (lab.path("pay.crt"), lab.path("pay.key"));
    lab.spawn(
        "outside-api",
        &outside_ns,
        APP_UID,
        &[
            "openssl",
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &accept,
            "-cert",
            crt.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    lab.spawn(
        "client-sidecar",
        &client_ns,
        PROXY_UID,
        &[BIN, "run", "--config", "client.yaml"],
        &[],
    );
    lab.wait_ok(&client_ns, "http://127.0.0.1:15000/ready");
    let api = format!("https://{OUTSIDE_IP}:{HTTPS_PORT}/");
    let deadline = Instant::now() + READY_DEADLINE;
    while Lab::curl(&outside_ns, None, &["-k"], &api).status != Some(200) {
        lab.all_alive();
        assert!(Instant::now() < deadline, "the outside API did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca = lab.path("outside-ca.pem");
    let ca = ca.to_str().unwrap();
    let resolve = |name: &str, port: u16, ip: &str| format!("{name}:{port}:{ip}");

    // 1. By SNI: the app's own TLS to the API, verified by the app itself,
    //    captured and passed through.
    let to = resolve(PAY_HOST, HTTPS_PORT, OUTSIDE_IP);
    let pay_url = format!("https://{PAY_HOST}:{HTTPS_PORT}/");
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["--cacert", ca, "--resolve", &to],
        &pay_url,
    );
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("s_server"), "{}", r.show());
    // 2. An SNI that lies: the API's name while dialling another address.
    let to = resolve(PAY_HOST, HTTPS_PORT, HIDDEN_IP);
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &pay_url,
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    assert_eq!(egress_count(&client_ns, "address_mismatch"), 1.0);
    let hidden = Lab::counted(&outside_ns, "iptables", HIDDEN_IP);
    assert_eq!(hidden, 0, "a packet reached the address the SNI lied about");

    // 3. By Host: plain HTTP from the app, TLS originated to the API.
    let to = resolve(PAY_HOST, 8080, OUTSIDE_IP);
    let http_url = format!("http://{PAY_HOST}:8080/charge");
    let r = Lab::curl(&client_ns, Some(APP_UID), &["--resolve", &to], &http_url);
    assert_eq!(r.status, Some(200), "{}", r.show());
    assert!(r.body.contains("s_server"), "{}", r.show());
    // 4. A Host that lies about the address.
    let to = resolve(PAY_HOST, 8080, HIDDEN_IP);
    let r = Lab::curl(&client_ns, Some(APP_UID), &["--resolve", &to], &http_url);
    assert_eq!(r.status, Some(403), "{}", r.show());
    assert!(r.body.contains("is not an address"), "{}", r.show());
    assert_eq!(egress_count(&client_ns, "address_mismatch"), 2.0);

    // 5. A declared name that resolves to the metadata address, dialled
    //    there: refused by address, whatever the name.
    let to = resolve("meta.outside.test", HTTPS_PORT, "169.254.169.254");
    let meta_url = format!("https://meta.outside.test:{HTTPS_PORT}/");
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &meta_url,
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    assert_eq!(egress_count(&client_ns, "metadata"), 1.0);
    // 6. Undeclared TLS is closed, and audited with the name asked for.
    let to = resolve("pay.elsewhere.test", HTTPS_PORT, OUTSIDE_IP);
    let r = Lab::curl(
        &client_ns,
        Some(APP_UID),
        &["-k", "--resolve", &to],
        &format!("https://pay.elsewhere.test:{HTTPS_PORT}/"),
    );
    assert_ne!(r.exit, 0, "{}", r.show());
    let line = wait_audit(&lab, "client-sidecar", "egress", |l| {
        l["reason"] == "undeclared"
    });
    assert_eq!(line["host"], "pay.elsewhere.test", "{line}");
    assert_eq!(line["mode"], "tls", "{line}");
    assert_eq!(line["decision"], "deny", "{line}");
}
