//! What the egress tests play the outside world with: a DNS server that
//! answers from a table written by the test (hand-built answers over UDP,
//! TTL 0, one answer set after another for a name that rebinds), an HTTPS
//! server with a certificate from our dev CA that records what reached it,
//! and a TCP echo server.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshguard::dev::certs::{DevCa, LeafSpec};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The answers of one name: the n-th query of a type gets the n-th set
/// (cycling), so a name can rebind between two lookups.
#[derive(Default)]
struct Zone {
    answers: HashMap<String, Vec<Vec<IpAddr>>>,
    /// (name, type) -> queries seen.
    queries: HashMap<(String, u16), usize>,
}

/// A DNS server on 127.0.0.1 answering from a table the test fills.
pub struct Dns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

impl Dns {
    pub async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &z) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Dns { addr, zone }
    }

    /// `name` always resolves to `addrs` (A and AAAA by family).
    pub fn set(&self, name: &str, addrs: &[&str]) {
        self.rebind(name, &[addrs]);
    }

    /// `name` answers each query with the next of `sets`.
    pub fn rebind(&self, name: &str, sets: &[&[&str]]) {
        let sets = sets
            .iter()
            .map(|s| s.iter().map(|a| a.parse().unwrap()).collect())
            .collect();
        self.zone
            .lock()
            .unwrap()
            .answers
            .insert(name.to_owned(), sets);
    }

    /// How many A queries `name` got.
    pub fn a_queries(&self, name: &str) -> usize {
        let zone = self.zone.lock().unwrap();
        zone.queries
            .get(&(name.to_owned(), TYPE_A))
            .copied()
            .unwrap_or(0)
    }
}

/// The reply to one query: our answers with TTL 0, NXDOMAIN for a name
/// not in the table, no answer (NOERROR) for a type it has none of.
fn answer(query: &[u8], zone: &Mutex<Zone>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let mut zone = zone.lock().unwrap();
    let seen = zone.queries.entry((name.clone(), qtype)).or_insert(0);
    let nth = *seen;
    *seen += 1;
    let set = zone
        .answers
        .get(&name)
        .map(|sets| sets[nth % sets.len()].clone());
    let mut out = Vec::with_capacity(512);
    out.extend(&query[0..2]);
    let rcode = if set.is_some() { 0 } else { 3 };
    out.extend([0x81, 0x80 | rcode]);
    let records: Vec<IpAddr> = set
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| match qtype {
            TYPE_A => ip.is_ipv4(),
            TYPE_AAAA => ip.is_ipv6(),
            _ => false,
        })
        .collect();
    out.extend([0, 1]);
    out.extend((records.len() as u16).to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(query.get(12..question_end)?);
    for ip in records {
        out.extend([0xc0, 12]);
        out.extend(qtype.to_be_bytes());
        out.extend([0, 1, 0, 0, 0, 0]);
        match ip {
            IpAddr::V4(v4) => {
                out.extend([0, 4]);
                out.extend(v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend([0, 16]);
                out.extend(v6.octets());
            }
        }
    }
    Some(out)
}

/// What one request looked like at the HTTPS server.
#[derive(Debug, Clone)]
pub struct Hit {
    pub sni: Option<String>,
    pub host: Option<String>,
    pub target: String,
}

/// An HTTPS server (HTTP/1.1) with a certificate for `names` from `ca`.
pub struct Https {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

impl Https {
    /// Listens on `bind` (`ip:port`, port 0 for any).
    pub async fn start(ca: &DevCa, names: &[&str], bind: &str) -> Https {
        let mut spec = LeafSpec::svid("spiffe://x/unused", time::Duration::hours(1));
        spec.uris.clear();
        spec.common_name = names[0].to_owned();
        spec.dns = names.iter().map(|n| n.to_string()).collect();
        let leaf = ca.issue(&spec).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let record = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let hit = Hit {
                            sni: sni.clone(),
                            host: req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap().to_owned()),
                            target: req.uri().to_string(),
                        };
                        record.lock().unwrap().push(hit);
                        let mut resp = Response::new(Full::new(Bytes::from("paid")));
                        if req.uri().path() == "/redirect" {
                            *resp.status_mut() = http::StatusCode::FOUND;
                            resp.headers_mut()
                                .insert("location", "http://169.254.169.254/".parse().unwrap());
                        }
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Https { addr, hits }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// A TCP server that echoes what it reads; counts its connections.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<Mutex<usize>>,
}

impl Echo {
    pub async fn start(ip: &str) -> Echo {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                *count.lock().unwrap() += 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}
