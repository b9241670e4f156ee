//! The Workload API identity as the binary and the injector deliver it:
//! `meshguard run --workload-api` (real child processes) and the SPIRE
//! example of deploy/spire injected.

mod support;

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `meshguard run --workload-api` with an inbound to an app that is not there.
fn workload_api_run() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"));
    cmd.args([
        "run",
        "--workload-api",
        "--inbound",
        "127.0.0.1:0",
        "--app",
        "127.0.0.1:1",
    ]);
    cmd
}

#[test]
fn run_with_workload_api_and_no_socket_refuses_to_start_naming_the_variable() {
    let out = workload_api_run()
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SPIFFE_ENDPOINT_SOCKET"), "{stderr}");
    // With --cert as well: one identity source only.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args([
            "run",
            "--workload-api",
            "--cert",
            "a",
            "--key",
            "b",
            "--bundle",
            "c",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// The SPIRE example in deploy/spire, injected: the socket the injector
/// mounts and names in SPIFFE_ENDPOINT_SOCKET is the one the config uses.
#[test]
fn the_spire_example_injected_mounts_the_socket_its_config_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .arg("inject")
        .arg(root.join("deploy/spire/20-server.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("driver: csi.spiffe.io"), "{text}");
    assert!(text.contains("mountPath: /spiffe-workload-api"), "{text}");
    let socket = "unix:///spiffe-workload-api/spire-agent.sock";
    assert!(
        text.contains(&format!(
            "- name: SPIFFE_ENDPOINT_SOCKET\n          value: {socket}"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("socket: {socket}")), "{text}");
}

/// The real binary, agent unreachable: it serves `/ready` 503 while it
/// waits, and SIGTERM stops it cleanly before any SVID came.
#[test]
fn the_binary_waits_for_the_agent_not_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_port();
    // Killed on drop: an assertion failing first must not leave it running.
    let mut child = support::Killed(
        workload_api_run()
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}/no-agent.sock", dir.path().display()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Retried until a whole answer arrives: the listener may not be up yet.
    let body = support::wait_answer(admin, "/ready");
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
    assert!(body.contains("waiting for the first SVID"), "{body}");
    support::sigterm(child.0.id());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            panic!("SIGTERM did not stop a sidecar waiting for its SVID");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
