//! Load on the sidecar under test while the agent rotates its SVID: mTLS
//! clients making one new connection per request, each recording which
//! certificate (by serial) the handshake was served.

use super::{svid_message, Agent};
use meshguard::dev::certs::Issued;
use meshguard::sidecar::app::Running;
use meshguard::sidecar::workload_api::proto::X509Svid;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long any awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn serial(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

/// The serial of the SVID the sidecar presents now.
pub fn presented(running: &Running) -> Vec<u8> {
    serial(running.store.svid().key.cert[0].as_ref())
}

pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn metric(running: &Running, name: &str, labels: &[(&str, &str)]) -> f64 {
    crate::support::series(&running.metrics.render(), name, labels).unwrap_or(0.0)
}

/// One new connection: handshake, one GET. The serial the server presented
/// and the status, or what failed.
pub async fn handshake_get(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, u16), String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("server.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no server certificate")?[0]
        .clone();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "server.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((serial(served.as_ref()), status))
}

/// Clients making new connections in a loop, recording every failure and
/// every handshake served an SVID older than the newest one applied when
/// it started.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// serial -> generation, filled by the rotator before it pushes.
    generations: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    /// The newest generation the sidecar is known to present.
    applied: Arc<AtomicUsize>,
    served: Arc<Mutex<HashMap<usize, usize>>>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, client: Arc<rustls::ClientConfig>, first: Vec<u8>) -> Load {
        let load = Load {
            stop: Arc::default(),
            generations: Arc::new(Mutex::new(HashMap::from([(first, 0)]))),
            applied: Arc::default(),
            served: Arc::default(),
            ok: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..4)
            .map(|_| {
                let (stop, generations, applied, served, ok, failures, client) = (
                    load.stop.clone(),
                    load.generations.clone(),
                    load.applied.clone(),
                    load.served.clone(),
                    load.ok.clone(),
                    load.failures.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let newest = applied.load(Ordering::SeqCst);
                        match handshake_get(addr, client.clone()).await {
                            Ok((serial, 200)) => {
                                let generation = generations.lock().unwrap().get(&serial).copied();
                                match generation {
                                    Some(g) if g >= newest => {
                                        *served.lock().unwrap().entry(g).or_default() += 1;
                                        ok.fetch_add(1, Ordering::SeqCst);
                                    }
                                    other => failures.lock().unwrap().push(format!(
                                        "served generation {other:?} after {newest} was applied"
                                    )),
                                }
                            }
                            Ok((_, status)) => {
                                failures.lock().unwrap().push(format!("status {status}"))
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    pub fn served(&self, generation: usize) -> usize {
        self.served
            .lock()
            .unwrap()
            .get(&generation)
            .copied()
            .unwrap_or(0)
    }

    /// Pushes generation `g` and waits until the sidecar presents it and a
    /// client was served it.
    pub async fn rotate_to(
        &self,
        agent: &Agent,
        running: &Running,
        g: usize,
        minted: (Issued, X509Svid),
    ) {
        let (issued, entry) = minted;
        let serial = serial(&issued.der);
        self.generations.lock().unwrap().insert(serial.clone(), g);
        agent.push_svid(svid_message(entry, &[]));
        until("the new SVID is presented", || presented(running) == serial).await;
        self.applied.store(g, Ordering::SeqCst);
        until("a handshake on the new SVID", || self.served(g) > 0).await;
    }

    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}
