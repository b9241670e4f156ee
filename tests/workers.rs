//! `runtime.workers: 2` in the real binary: connections are dealt to both
//! event loops (each thread does part of the work), every request through
//! the outbound and inbound arrives, the refusals hold on every loop (a
//! request the policy denies, a caller without a certificate), and a drain
//! still ends the process with connections open on both loops.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use support::*;

const CONNECTIONS: usize = 8;
const REQUESTS: usize = 300;

#[tokio::test]
async fn two_workers_share_the_connections_and_lose_no_request() {
    let app = RecordingApp::start().await;
    let pki = Pki::new();
    let me = id("default", "server");
    let ident = pki.identity("server", &me);
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("mode: enforce\nrules:\n  - name: load\n    action: allow\n    from: [\"{me}\"]\n    methods: [GET]\n    paths: [\"/w/*\"]\n"),
    )
    .unwrap();
    let cfg = pki.dir.path().join("sidecar.yaml");
    // One sidecar that calls its own inbound through its outbound: both
    // directions, both pools, in one process with two loops.
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\n\
             inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\n  policy: {}\n\
             outbound:\n  listen: 127.0.0.1:{outbound}\n  routes:\n  - host: server.default.svc\n    peer: 127.0.0.1:{inbound}\n    identity: {me}\n\
             admin:\n  listen: 127.0.0.1:{admin}\n\
             runtime:\n  workers: 2\n\
             shutdown:\n  drain_delay_ms: 100\n  deadline_ms: 5000\n",
            ident.cert.display(),
            ident.key.display(),
            ident.bundle.display(),
            app.addr,
            policy.display(),
        ),
    )
    .unwrap();
    let child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("MESHGUARD_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    wait_ready(admin);
    let threads = thread_names(pid);
    assert!(
        threads.iter().any(|(_, name)| name == "meshguard-w1"),
        "a second loop runs on a thread of its own: {threads:?}"
    );

    let before = cpu_ticks(pid);
    let addr = format!("127.0.0.1:{outbound}").parse().unwrap();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(keep_alive_client(addr)))
        .collect();
    let mut senders = Vec::new();
    for client in clients {
        senders.push(client.await.unwrap());
    }
    let after = cpu_ticks(pid);
    assert_eq!(app.seen.lock().unwrap().len(), CONNECTIONS * REQUESTS);
    let caller = app.seen.lock().unwrap()[0].header("x-meshguard-client-id")[0].to_string();
    assert_eq!(caller, me.as_str());
    // Both loops did part of the work: the main thread (its tid is the
    // pid) and the worker each used at least a tenth of the CPU.
    let used = |name: &str| {
        let tid = threads.iter().find(|(_, n)| n == name).map(|(t, _)| *t);
        let tid = tid.unwrap_or_else(|| panic!("no thread {name}: {threads:?}"));
        after.get(&tid).copied().unwrap_or(0) - before.get(&tid).copied().unwrap_or(0)
    };
    let (main, worker) = (used("meshguard"), used("meshguard-w1"));
    let total = main + worker;
    assert!(
        total > 0 && main * 10 >= total && worker * 10 >= total,
        "CPU ticks during the load: main {main}, worker {worker}"
    );

    // Refusals on every loop: the policy denies another path on each of the
    // clients' connections (both outbound loops, both multiplexed
    // connections to the inbound), and callers without a certificate are
    // refused on as many fresh connections, dealt to both inbound loops.
    for sender in &mut senders {
        let req = http::Request::get("/denied")
            .header("host", "server.default.svc")
            .body(Empty::new())
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 403);
    }
    assert_eq!(app.seen.lock().unwrap().len(), CONNECTIONS * REQUESTS);
    let inbound_addr = format!("127.0.0.1:{inbound}").parse().unwrap();
    for _ in 0..CONNECTIONS {
        let anonymous = tls_get(inbound_addr, tls_client(None, &[b"http/1.1"]), "/w/0", &[]);
        assert!(
            anonymous.await.is_err(),
            "a caller without a certificate is refused"
        );
    }
    assert_eq!(app.seen.lock().unwrap().len(), CONNECTIONS * REQUESTS);

    // A drain with the clients' keep-alive connections still open on both
    // loops ends the process, cleanly.
    let started = Instant::now();
    sigterm(pid);
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(senders);
}

/// One keep-alive connection sending `REQUESTS` requests in a row; each
/// must be answered 200. Returns the open connection.
async fn keep_alive_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..REQUESTS {
        let req = http::Request::get(format!("/w/{i}"))
            .header("host", "server.default.svc")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    sender
}

/// The process's threads: (tid, name).
fn thread_names(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, name.trim().to_string()))
        })
        .collect()
}

/// User + system CPU ticks of each thread.
fn cpu_ticks(pid: u32) -> std::collections::HashMap<u32, u64> {
    thread_names(pid)
        .into_iter()
        .filter_map(|(tid, _)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            // Fields after the parenthesised name: state is the 3rd, utime
            // and stime the 14th and 15th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((tid, ticks))
        })
        .collect()
}
