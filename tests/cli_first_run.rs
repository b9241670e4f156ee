//! What a newcomer meets first, with the real binary: inputs refused with a
//! reason, errors that name their cause once and the address they could
//! not bind, and log lines without Rust debug formatting or colour codes
//! when stderr is not a terminal.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use support::Killed;

fn meshguard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshguard"));
    cmd.env("MESHGUARD_LOG", "warn");
    cmd
}

/// `meshguard run` with the dev SVID of workload `w` (a `certs dev` folder).
fn run_with_svid(w: &Path) -> Command {
    let mut cmd = meshguard();
    cmd.arg("run")
        .arg("--cert")
        .arg(w.join("tls.crt"))
        .arg("--key")
        .arg(w.join("tls.key"))
        .arg("--bundle")
        .arg(w.join("ca.crt"));
    cmd
}

/// Runs `cmd`, which must exit within 20 s (`stuck` says what it means if
/// it does not), and returns how it exited and its stderr.
fn exit_and_stderr(cmd: &mut Command, stuck: &str) -> (ExitStatus, String) {
    let mut child = Killed(
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{stuck}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let mut pipe = child.0.stderr.take().unwrap();
    pipe.read_to_string(&mut err).unwrap();
    (status, err)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The OS's text for a missing file, as the error line must hold it once.
fn not_found() -> String {
    std::io::Error::from_raw_os_error(2).to_string()
}

fn certs(dir: &Path) {
    let out = meshguard()
        .args(["certs", "dev", "--workload", "default/a", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_log_level_that_is_not_a_level_refuses_to_start() {
    for spec in ["verbose", "debugg", "info,meshguard::audit=loud"] {
        let dir = tempfile::tempdir().unwrap();
        let out = meshguard()
            .env("MESHGUARD_LOG", spec)
            .args(["certs", "dev", "--workload", "default/a", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{spec}");
        let err = stderr(&out);
        assert!(err.contains("is not a level"), "{spec}: {err}");
        assert!(
            !dir.path().join("ca.crt").exists(),
            "{spec}: nothing was done"
        );
    }
}

/// `--workers 0` (what a bad injection or a typo would pass) refuses to
/// start instead of serving nothing; the config file's `runtime.workers: 0`
/// is refused by the config's own validation (config tests).
#[test]
fn zero_workers_on_the_command_line_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let w = dir.path().join("default/a");
    let (status, err) = exit_and_stderr(
        run_with_svid(&w)
            .args(["--inbound", "127.0.0.1:0", "--app", "127.0.0.1:9"])
            .args(["--admin", "127.0.0.1:0", "--workers", "0"]),
        // A sidecar that accepted zero workers would serve forever.
        "started with --workers 0",
    );
    assert!(!status.success());
    assert!(err.contains("--workers must be at least 1"), "{err}");
    assert!(!err.contains("meshguard ready"), "{err}");
}

#[test]
fn a_workload_that_kubernetes_would_refuse_is_refused_naming_the_part() {
    for (workload, part) in [
        ("Shop/web", "namespace \"Shop\""),
        ("shop/Web_x", "service account \"Web_x\""),
        ("shop-/web", "namespace \"shop-\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = meshguard()
            .args(["certs", "dev", "--workload", workload, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{workload}");
        let err = stderr(&out);
        assert!(err.contains(part), "{workload}: {err}");
        assert!(
            !dir.path().join("ca.crt").exists(),
            "{workload}: nothing was written"
        );
    }
}

#[test]
fn policy_check_refuses_a_lowercase_method_as_policy_files_do() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\n",
    )
    .unwrap();
    let check = |method: &str| {
        meshguard()
            .args(["policy", "check", "--policy"])
            .arg(&policy)
            .args(["--from", "spiffe://cluster.local/ns/a/sa/b", "--path", "/"])
            .args(["--method", method])
            .output()
            .unwrap()
    };
    let out = check("post");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("uppercase: POST"), "{}", stderr(&out));
    let out = check("POST");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_missing_config_file_names_its_cause_once() {
    let out = meshguard()
        .args(["run", "--config", "/nonexistent/meshguard.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/meshguard.yaml"), "{err}");
    assert_eq!(err.matches(&not_found()).count(), 1, "{err}");
}

#[test]
fn a_missing_cert_names_its_cause_once() {
    let out = meshguard()
        .args([
            "run",
            "--cert",
            "/nonexistent/tls.crt",
            "--key",
            "/nonexistent/tls.key",
        ])
        .args([
            "--bundle",
            "/nonexistent/ca.crt",
            "--inbound",
            "127.0.0.1:0",
        ])
        .args(["--app", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/"), "{err}");
    assert_eq!(err.matches(&not_found()).count(), 1, "{err}");
}

/// Runs `cmd` with `busy` (an address held by this test) and returns stderr.
fn bind_error(cmd: &mut Command) -> String {
    exit_and_stderr(cmd, "still running with its address taken").1
}

#[test]
fn an_address_in_use_is_named_with_its_cause_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
    let err = bind_error(meshguard().args(["echo", "--listen", &addr]));
    assert!(err.contains(&addr), "echo: {err}");
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let w = dir.path().join("default/a");
    let err = bind_error(run_with_svid(&w).args([
        "--inbound",
        &addr,
        "--app",
        "127.0.0.1:9",
        "--admin",
        "127.0.0.1:0",
    ]));
    assert!(
        err.contains(&format!("cannot listen on {addr}")),
        "run: {err}"
    );
    // The OS's text varies ("Address in use" / "Address already in use"):
    // count its one certain word.
    let word = if in_use.contains("already") {
        "already"
    } else {
        "use"
    };
    assert_eq!(err.matches(word).count(), 1, "run: {err}");
}

/// The log lines of a sidecar up to and including "meshguard ready", with
/// stderr a pipe and NO_COLOR unset.
fn ready_lines(format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let w = dir.path().join("default/a");
    let mut child = Killed(
        run_with_svid(&w)
            .env("MESHGUARD_LOG", "info")
            .env_remove("NO_COLOR")
            .args(["--log-format", format])
            .args(["--inbound", "127.0.0.1:0", "--app", "127.0.0.1:9"])
            .args(["--admin", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stderr.take().unwrap()));
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("meshguard ready") {
            return seen;
        }
    }
    panic!("no ready line: {seen}");
}

#[test]
fn log_fields_are_plain_values_and_absent_ones_are_left_out() {
    for format in ["text", "json"] {
        let lines = ready_lines(format);
        assert!(!lines.contains("Some("), "{format}: {lines}");
        assert!(!lines.contains("None"), "{format}: {lines}");
        assert!(!lines.contains("outbound"), "{format}: {lines}");
        assert!(lines.contains("127.0.0.1:"), "{format}: {lines}");
    }
}

#[test]
fn no_colour_codes_reach_a_stderr_that_is_not_a_terminal() {
    let lines = ready_lines("text");
    assert!(!lines.contains("\x1b["), "{lines:?}");
}
