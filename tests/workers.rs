//! `runtime.workers: 2` in the real binary: connections are dealt to both
//! event loops (each thread does part of the work), every request through
//! the outbound and inbound arrives, and a drain still ends the process
//! with connections open on both loops.

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
    let cfg = pki.dir.path().join("sidecar.yaml");
    // One sidecar that calls its own inbound through its outbound: both
    // directions, both pools, in one process with two loops.
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\n\
             inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\n\
             outbound:\n  listen: 127.0.0.1:{outbound}\n  routes:\n  - host: server.default.svc\n    peer: 127.0.0.1:{inbound}\n    identity: {me}\n\
             admin:\n  listen: 127.0.0.1:{admin}\n\
             runtime:\n  workers: 2\n\
             shutdown:\n  drain_delay_ms: 100\n  deadline_ms: 5000\n",
            ident.cert.display(),
            ident.key.display(),
            ident.bundle.display(),
            app.addr,
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("MESHGUARD_LOG", "warn")
        .spawn()
        .unwrap();
    // Killed if an assertion fails first: an orphan would keep its
    // listeners and the test's output pipes open.
    let mut child = KillOnDrop(Some(child));
    let pid = child.0.as_ref().unwrap().id();
    wait_ready(admin).await;
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

    // A drain with the clients' keep-alive connections still open on both
    // loops ends the process, cleanly.
    let started = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut exited = child.0.take().unwrap();
    let exit = tokio::task::spawn_blocking(move || exited.wait())
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

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(admin: u16) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "a", "/ready", &[]).await.0 == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
