//! The command line is the product here: real child processes.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, Killed};

fn meshguard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshguard"));
    cmd.env("MESHGUARD_LOG", "warn");
    cmd
}

fn certs_dev(out: &Path, extra: &[&str]) -> std::process::Output {
    meshguard()
        .args(["certs", "dev", "--out"])
        .arg(out)
        .args([
            "--workload",
            "default/client",
            "--workload",
            "default/server",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn certs_dev_writes_guessable_files_and_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = certs_dev(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.crt",
        "ca.key",
        "default/client/tls.crt",
        "default/client/tls.key",
        "default/client/ca.crt",
        "default/server/tls.crt",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{stdout}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("default/client/tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are owner-only");
    }
    let cert = std::fs::read_to_string(dir.path().join("default/client/tls.crt")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("spiffe://cluster.local/ns/default/sa/client")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.contains("client.default.svc.cluster.local")),
        "{names:?}"
    );

    let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let again = certs_dev(dir.path(), &["--ttl", "30m"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("reused CA"));
    assert_eq!(
        std::fs::read(dir.path().join("ca.crt")).unwrap(),
        ca_before,
        "CA never overwritten without --force"
    );
    let forced = certs_dev(dir.path(), &["--force"]);
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read(dir.path().join("ca.crt")).unwrap(),
        ca_before,
        "--force makes a new CA"
    );
}

#[test]
fn certs_dev_refuses_bad_workloads_and_half_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshguard()
        .args(["certs", "dev", "--out"])
        .arg(dir.path())
        .args(["--workload", "noslash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace>/<service-account"));
    let out = meshguard()
        .args(["certs", "dev", "--out"])
        .arg(dir.path())
        .args(["--workload", "Bad NS/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !dir.path().join("ca.crt").exists(),
        "bad arguments write nothing"
    );
    std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
    let out = certs_dev(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca.key is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("ca.key"), "y").unwrap();
    let out = certs_dev(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("existing dev CA is unusable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        "x",
        "an unusable CA is left for the user to inspect"
    );
}

#[test]
fn bad_config_refuses_to_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "identity:\n  cert: a\n  key: b\n  bundle: c\ninbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:1\n  colour: blue\n").unwrap();
    let out = meshguard()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:8:", path.display())), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");

    // A valid file whose certificate is missing also refuses, naming it.
    std::fs::write(&path, "identity:\n  cert: missing.crt\n  key: b\n  bundle: c\ninbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:1\n").unwrap();
    let out = meshguard()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.crt"));
}

#[test]
fn a_bad_log_filter_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = meshguard()
        .env("MESHGUARD_LOG", "info,meshguard=loud")
        .args(["certs", "dev", "--workload", "default/a", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MESHGUARD_LOG=\"info,meshguard=loud\""),
        "{err}"
    );
    assert!(!dir.path().join("ca.crt").exists(), "nothing was done");
}

/// `meshguard run` with the dev SVID of `default/<workload>` made by `certs_dev`.
fn run_as(d: &Path, workload: &str) -> Command {
    let dir = d.join("default").join(workload);
    let mut cmd = meshguard();
    cmd.arg("run")
        .arg("--cert")
        .arg(dir.join("tls.crt"))
        .arg("--key")
        .arg(dir.join("tls.key"));
    cmd.arg("--bundle").arg(dir.join("ca.crt"));
    cmd
}

fn wait_ready(admin: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("meshguard exited early: {status}");
        }
        if let Ok(body) = get(admin, "admin", "/ready") {
            if body.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not ready in time");
}

/// A minimal blocking HTTP/1.1 GET (keeps this test free of an HTTP client).
fn get(port: u16, host: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Meshguard-Client-Id: spiffe://cluster.local/ns/x/sa/forged\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn flags_only_quick_start_runs_a_pair() {
    let dir = tempfile::tempdir().unwrap();
    assert!(certs_dev(dir.path(), &[]).status.success());
    let d = dir.path();
    let (app, inbound, outbound, admin_a, admin_b) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _app = Killed(
        meshguard()
            .args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{app}"),
                "--name",
                "server-app",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut server = Killed(
        run_as(d, "server")
            .args(["--workers", "1"])
            .args([
                "--inbound",
                &format!("127.0.0.1:{inbound}"),
                "--app",
                &format!("127.0.0.1:{app}"),
                "--admin",
                &format!("127.0.0.1:{admin_a}"),
            ])
            .spawn()
            .unwrap(),
    );
    let mut client = Killed(
        run_as(d, "client")
            .args(["--workers", "2"])
            .args([
                "--outbound",
                &format!("127.0.0.1:{outbound}"),
                "--peer",
                &format!("127.0.0.1:{inbound}"),
            ])
            .args([
                "--peer-id",
                "spiffe://cluster.local/ns/default/sa/server",
                "--admin",
                &format!("127.0.0.1:{admin_b}"),
            ])
            .spawn()
            .unwrap(),
    );
    wait_ready(admin_a, &mut server.0);
    wait_ready(admin_b, &mut client.0);
    let resp = get(outbound, "server.default.svc.cluster.local", "/from-flags").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("app server-app received: GET /from-flags"),
        "{resp}"
    );
    assert!(
        resp.contains("x-meshguard-client-id: spiffe://cluster.local/ns/default/sa/client"),
        "{resp}"
    );
    assert!(!resp.contains("forged"), "{resp}");
}

#[test]
fn flags_need_identity_files() {
    let out = meshguard()
        .args(["run", "--inbound", "127.0.0.1:0", "--app", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert"));
}

#[test]
fn demo_shows_the_authenticated_identity_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    // Find a free block of ports for the demo's fixed layout.
    let base = loop {
        let p = free_port();
        if p < 60000
            && [0u16, 1, 6, 10, 100, 101, 106, 110]
                .iter()
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
        {
            break p;
        }
    };
    let mut child = Killed(
        meshguard()
            .args(["demo", "--base-port", &base.to_string(), "--certs"])
            .arg(dir.path().join("certs"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Ctrl-C to stop") {
            break;
        }
    }
    assert!(seen.contains("HTTP 200 OK"), "{seen}");
    assert!(
        seen.contains("x-meshguard-client-id: spiffe://cluster.local/ns/default/sa/client"),
        "{seen}"
    );
    // The demo shows what was sent (the forged headers), then what the app
    // received: only the second part must be free of them.
    let (sent, received) = seen
        .split_once("and the server app receives")
        .expect("the demo shows what was sent, then what was received");
    assert!(sent.contains("kube-system"), "{seen}");
    assert!(
        !received.contains("kube-system"),
        "forged identity reached the app: {seen}"
    );
    // Still serving after the scripted request.
    let resp = get(base + 1, "server.default.svc.cluster.local", "/again").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let status = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The env contract of injected pods: the probe port runs the recorded
/// probes against the app; the loopback shutdown endpoint drains and exits 0.
#[test]
fn injected_env_serves_probes_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    assert!(certs_dev(dir.path(), &[]).status.success());
    let d = dir.path();
    let (app, inbound, admin, probe, shut) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _app = Killed(
        meshguard()
            .args(["echo", "--listen", &format!("127.0.0.1:{app}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probes = format!(
        r#"{{"app/readiness":{{"original":{{"httpGet":{{"path":"/ready","port":{app}}}}},"forward":{{"type":"http","port":{app},"scheme":"HTTP","path":"/ready","timeoutSeconds":1}}}}}}"#
    );
    let mut sidecar = Killed(
        run_as(d, "server")
            .args([
                "--inbound",
                &format!("127.0.0.1:{inbound}"),
                "--app",
                &format!("127.0.0.1:{app}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .env("MESHGUARD_PROBE_LISTEN", format!("127.0.0.1:{probe}"))
            .env("MESHGUARD_APP_PROBES", probes)
            .env("MESHGUARD_SHUTDOWN_LISTEN", format!("127.0.0.1:{shut}"))
            .spawn()
            .unwrap(),
    );
    wait_ready(admin, &mut sidecar.0);
    let resp = get(probe, "kubelet", "/app-probe/app/readiness").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = get(probe, "kubelet", "/app-probe/app/liveness").unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // POST /shutdown: drain (5 s default delay) and exit 0.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", shut)).unwrap();
    write!(
        s,
        "POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = sidecar.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not exit after /shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_injected_env_refuses_to_start() {
    let out = meshguard()
        .args([
            "run",
            "--cert",
            "a",
            "--key",
            "b",
            "--bundle",
            "c",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            "127.0.0.1:1",
        ])
        .env("MESHGUARD_PROBE_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_APP_PROBES", "{not json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MESHGUARD_APP_PROBES"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = meshguard()
        .args([
            "run",
            "--cert",
            "a",
            "--key",
            "b",
            "--bundle",
            "c",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            "127.0.0.1:1",
        ])
        .env("MESHGUARD_SHUTDOWN_LISTEN", "0.0.0.0:15021")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MESHGUARD_SHUTDOWN_LISTEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
