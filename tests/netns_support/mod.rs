//! The lab of the network-namespace tests (netns_e2e, netns_tcp,
//! netns_egress): "pods" as Linux network namespaces on one bridge, the
//! real binary in each, plain tools (curl, iptables) to look.

// Each test binary uses a part of this.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
/// `meshguard init-iptables`' default proxy UID: its traffic is not captured.
pub const PROXY_UID: u32 = 2110;
/// The apps and the "app-side" curl: captured like any app.
pub const APP_UID: u32 = 1000;
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
pub const APP_PORT: u16 = 8080;
pub const EXCLUDED_PORT: u16 = 9090;
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// The probe record of src/inject/probes.rs for the server's readiness probe.
pub const APP_PROBES: &str = r#"{"app/readiness":{"original":{"httpGet":{"path":"/ready","port":8080}},"forward":{"type":"http","port":8080,"scheme":"HTTP","path":"/ready","timeoutSeconds":1}}}"#;

/// One pod: a namespace and its addresses on the test subnet.
pub struct Pod {
    pub ns: String,
    pub v4: &'static str,
    pub v6: &'static str,
}

/// A process started inside a namespace, with its log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Everything the test creates. Dropping it (also while panicking) kills
/// the processes, then deletes the namespaces (their veths go with them).
pub struct Lab {
    pub namespaces: Vec<String>,
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn must(program: &str, args: &[&str]) -> Output {
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

pub fn tool_works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What every test here needs: (program, version argument, Debian package).
pub const TOOLS: &[(&str, &str, &str)] = &[
    ("ip", "-V", "iproute2"),
    ("iptables", "--version", "iptables"),
    ("ip6tables", "--version", "iptables"),
    ("curl", "--version", "curl"),
    ("setpriv", "--version", "util-linux"),
];

/// What the TCP test needs beyond `TOOLS`.
pub const TCP_TOOLS: &[(&str, &str, &str)] = &[
    ("redis-server", "--version", "redis-server"),
    ("redis-cli", "--version", "redis-tools"),
    ("openssl", "version", "openssl"),
    ("python3", "--version", "python3"),
];

/// Installs the packages of the tools that are missing (Debian/Ubuntu) and
/// checks that each tool then works.
pub fn ensure_tools(tools: &[(&str, &str, &str)]) {
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
pub fn url(ip: &str, port: u16, path: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}{path}")
    } else {
        format!("http://{ip}:{port}{path}")
    }
}

/// What one curl run gave.
#[derive(Debug)]
pub struct Reply {
    /// curl's exit status (0: an HTTP response was received).
    pub exit: i32,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// Response head and body (`curl -i`).
    pub body: String,
    pub stderr: String,
}

impl Reply {
    pub fn show(&self) -> String {
        format!(
            "curl exit {}, status {:?}\n{}{}",
            self.exit, self.status, self.body, self.stderr
        )
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
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
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }

    pub fn add_namespace(&mut self, name: String) -> String {
        must("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// `ip netns exec NS [setpriv as UID] ARGS...`, not yet run.
    pub fn command(ns: &str, uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
            cmd.args(["setpriv", &u, &g, "--clear-groups", "--"]);
        }
        cmd.args(args);
        cmd
    }

    pub fn exec(ns: &str, uid: Option<u32>, args: &[&str]) -> Output {
        Lab::command(ns, uid, args)
            .output()
            .expect("ip netns exec runs")
    }

    /// Starts a long-running process in `ns` as `uid`, logging to a file.
    pub fn spawn(&mut self, name: &str, ns: &str, uid: u32, args: &[&str], env: &[(&str, &str)]) {
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

    pub fn stop(&mut self, name: &str) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("known process");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Panics (and so prints the logs) if a started process has exited.
    pub fn all_alive(&mut self) {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("{} exited early: {status}", p.name);
            }
        }
    }

    /// `curl -i URL` in `ns` as `uid` (None: root), bounded in time.
    pub fn curl(ns: &str, uid: Option<u32>, extra: &[&str], url: &str) -> Reply {
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
    pub fn wait_ok(&mut self, ns: &str, url: &str) {
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
    pub fn counted(ns: &str, program: &str, src: &str) -> u64 {
        let out = Lab::exec(ns, None, &[program, "-t", "filter", "-nvxL", "INPUT"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find(|l| l.contains(src))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no marker rule for {src}:\n{}", text(&out.stdout)))
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0")
}

/// Adds a counting rule (no target) for TCP from `src` to the app port.
pub fn must_in(ns: &str, program: &str, src: &str) {
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

/// The JSON audit lines a process logged, with `event`.
pub fn audit_events(lab: &Lab, name: &str, event: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(lab.path(&format!("logs/{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "meshguard::audit" && l["event"] == event)
        .collect()
}

/// Waits until `name` has logged an audit line with `event` that `pred` accepts.
pub fn wait_audit(
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
