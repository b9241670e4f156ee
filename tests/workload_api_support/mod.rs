//! A SPIFFE Workload API server that plays the SPIRE agent: tonic on a unix
//! socket in a temp dir, speaking the public proto (the library's
//! hand-written messages, whose field numbers its unit tests pin against
//! the proto file). Like a real agent it refuses calls without the
//! `workload.spiffe.io: true` header (InvalidArgument, "security header
//! missing from request", as SPIRE does) and answers PermissionDenied
//! while it has no identity for the caller. Every message is the full
//! state; the test pushes a new state, stops and restarts the agent.

pub mod load;

use meshguard::dev::certs::{DevCa, Issued};
use meshguard::sidecar::workload_api::proto::{
    JwtBundlesResponse, X509BundlesResponse, X509Svid, X509SvidResponse, FETCH_JWT_BUNDLES,
    FETCH_X509_BUNDLES, FETCH_X509_SVID, SECURITY_HEADER,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status};

/// What the agent serves right now.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub svid: Option<X509SvidResponse>,
    pub bundles: Option<X509BundlesResponse>,
    pub jwt: Option<JwtBundlesResponse>,
}

/// Calls the agent saw, by whether they carried the security header.
#[derive(Default)]
pub struct Observed {
    pub with_header: AtomicUsize,
    pub without_header: AtomicUsize,
    /// Play an agent too old to have `FetchX509Bundles`.
    pub no_bundles_call: std::sync::atomic::AtomicBool,
}

type Snapshots = tokio::sync::watch::Sender<Snapshot>;

#[derive(Clone)]
struct AgentService {
    state: Arc<Snapshots>,
    stop: tokio::sync::watch::Receiver<bool>,
    observed: Arc<Observed>,
}

impl tonic::server::NamedService for AgentService {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A server-streaming call: the current state's part, then every change,
/// until the agent stops.
struct Watch<T> {
    svc: AgentService,
    pick: fn(&Snapshot) -> Option<T>,
    /// Without a value yet: refuse the call (SPIRE: "no identity issued").
    refuse_empty: bool,
}

impl<Req: Send + 'static, T: Clone + PartialEq + Send + Sync + 'static>
    tonic::server::ServerStreamingService<Req> for Watch<T>
{
    type Response = T;
    type ResponseStream = Stream<T>;
    type Future = BoxFuture<Response<Stream<T>>, Status>;

    fn call(&mut self, _: Request<Req>) -> Self::Future {
        let rx = self.svc.state.subscribe();
        let stop = self.svc.stop.clone();
        let pick = self.pick;
        let refuse = self.refuse_empty && pick(&rx.borrow()).is_none();
        Box::pin(async move {
            if refuse {
                return Err(Status::permission_denied("no identity issued"));
            }
            // Only changes of this call's part are sent, as an agent does.
            let stream = futures_util::stream::unfold(
                (rx, stop, None::<T>),
                move |(mut rx, mut stop, mut last)| async move {
                    loop {
                        if *stop.borrow() {
                            return None;
                        }
                        let value = pick(&rx.borrow_and_update());
                        if value.is_some() && value != last {
                            last = value.clone();
                            return value.map(|v| (Ok(v), (rx, stop, last)));
                        }
                        tokio::select! {
                            changed = rx.changed() => if changed.is_err() { return None },
                            _ = stop.changed() => return None,
                        }
                    }
                },
            );
            Ok(Response::new(Box::pin(stream) as Stream<T>))
        })
    }
}

fn grpc<Req: prost::Message + Default + 'static, Resp: prost::Message + 'static>(
) -> tonic::server::Grpc<tonic_prost::ProstCodec<Resp, Req>> {
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
}

impl<B> Service<http::Request<B>> for AgentService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = req.headers().get(SECURITY_HEADER).map(|v| v.as_bytes());
        if header != Some(b"true") {
            self.observed.without_header.fetch_add(1, Ordering::SeqCst);
            let refused = Status::invalid_argument("security header missing from request");
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        self.observed.with_header.fetch_add(1, Ordering::SeqCst);
        let svc = self.clone();
        match req.uri().path() {
            FETCH_X509_SVID => Box::pin(async move {
                let watch = Watch {
                    svc,
                    pick: |s| s.svid.clone(),
                    refuse_empty: true,
                };
                Ok(
                    grpc::<meshguard::sidecar::workload_api::proto::X509SvidRequest, _>()
                        .server_streaming(watch, req)
                        .await,
                )
            }),
            FETCH_X509_BUNDLES if self.observed.no_bundles_call.load(Ordering::SeqCst) => {
                Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) })
            }
            FETCH_X509_BUNDLES => Box::pin(async move {
                let watch = Watch {
                    svc,
                    pick: |s| s.bundles.clone(),
                    refuse_empty: false,
                };
                Ok(
                    grpc::<meshguard::sidecar::workload_api::proto::X509BundlesRequest, _>()
                        .server_streaming(watch, req)
                        .await,
                )
            }),
            FETCH_JWT_BUNDLES => Box::pin(async move {
                let watch = Watch {
                    svc,
                    pick: |s| s.jwt.clone(),
                    refuse_empty: false,
                };
                Ok(
                    grpc::<meshguard::sidecar::workload_api::proto::JwtBundlesRequest, _>()
                        .server_streaming(watch, req)
                        .await,
                )
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The agent: its socket, the state it serves, and its server task.
pub struct Agent {
    pub socket: PathBuf,
    pub observed: Arc<Observed>,
    state: Arc<Snapshots>,
    running: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Agent {
    /// An agent that will listen at `socket` once started.
    pub fn new(socket: &Path) -> Agent {
        Agent {
            socket: socket.to_owned(),
            observed: Arc::default(),
            state: Arc::new(tokio::sync::watch::channel(Snapshot::default()).0),
            running: None,
        }
    }

    /// Binds the socket and serves (again, after `stop`) the current state.
    pub async fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = tokio::net::UnixListener::bind(&self.socket).unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let svc = AgentService {
            state: self.state.clone(),
            stop: stop.clone(),
            observed: self.observed.clone(),
        };
        let mut stopped = stop;
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .unwrap();
        });
        self.running = Some((stop_tx, task));
    }

    /// Ends every stream, closes the connections and removes the socket
    /// (an agent restart, seen from the workload).
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn push_svid(&self, msg: X509SvidResponse) {
        self.state.send_modify(|s| s.svid = Some(msg));
    }

    pub fn push_bundles(&self, msg: X509BundlesResponse) {
        self.state.send_modify(|s| s.bundles = Some(msg));
    }

    pub fn push_jwt(&self, msg: JwtBundlesResponse) {
        self.state.send_modify(|s| s.jwt = Some(msg));
    }
}

/// DER of a PEM certificate.
pub fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// DER PKCS#8 of a PEM private key.
pub fn key_der_of(pem: &str) -> Vec<u8> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("rcgen writes PKCS#8, got {other:?}"),
    }
}

/// One `X509SVID` as SPIRE sends it: leaf DER, PKCS#8 key, the CA's DER.
pub fn svid_entry(id: &str, issued: &Issued, ca: &DevCa, hint: &str) -> X509Svid {
    X509Svid {
        spiffe_id: id.to_owned(),
        x509_svid: issued.der.clone(),
        x509_svid_key: key_der_of(&issued.key_pem),
        bundle: der_of(ca.cert_pem()),
        hint: hint.to_owned(),
    }
}

/// A `FetchX509SVID` message with one SVID and these federated CAs.
pub fn svid_message(entry: X509Svid, federated: &[(&str, &DevCa)]) -> X509SvidResponse {
    X509SvidResponse {
        svids: vec![entry],
        crl: Vec::new(),
        federated_bundles: bundle_map(federated),
    }
}

/// A `FetchX509Bundles` message: every trust domain (ours included).
pub fn bundles_message(domains: &[(&str, &DevCa)]) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundle_map(domains),
    }
}

fn bundle_map(domains: &[(&str, &DevCa)]) -> HashMap<String, Vec<u8>> {
    domains
        .iter()
        .map(|(td, ca)| (format!("spiffe://{td}"), der_of(ca.cert_pem())))
        .collect()
}

/// Dials the agent's socket: a plain client that sends no header of its own.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// A gRPC channel to the agent at `socket`.
pub async fn channel_to(socket: &Path) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(UnixConnector(socket.to_owned()))
        .await
        .unwrap()
}
