//! Identity from the SPIFFE Workload API: our X509-SVID and the trust
//! bundles (own and federated) streamed by a SPIRE agent over its unix
//! socket, instead of files.
//!
//! One task owns the connection for the sidecar's whole life. It opens
//! `FetchX509SVID`, `FetchX509Bundles` and `FetchJWTBundles` together (every
//! call with the `workload.spiffe.io: true` header); every message is the
//! agent's full current state. Each update passes the checks of a file
//! reload (`update.rs`) or is refused, logged and counted while the last
//! good state keeps serving (an expired SVID is never presented: see
//! `CredentialStore`). The credential store only exists from the first
//! accepted SVID on, so readiness is false until then. A stream that ends
//! or fails is reopened with exponential backoff and jitter.
//!
//! Bundles: both X.509 streams carry our trust domain's roots (the SVID
//! message its `bundle`, `FetchX509Bundles` its entry for our domain) and
//! the latest message wins; the SVID is checked against the bundle of its
//! own message, so a CA rotation is never refused for arriving on one
//! stream before the other. `FetchX509Bundles` is the authority on
//! federated trust domains once it has answered (before that the SVID
//! message's `federated_bundles` stand in). A trust domain that leaves the
//! set re-verifies every open connection, closing the ones it trusted
//! (`tls/live.rs`). A refused update changes nothing.
//!
//! JWT bundles are not used here: they are published raw (JWKS bytes by
//! trust domain) on a watch channel, [`JwtBundles`], the seam for JWT-SVID
//! validation to subscribe to.

mod backoff;
mod client;
mod metrics;
pub mod proto;
mod update;

use crate::sidecar::config::{WorkloadApiConfig, ENDPOINT_ENV};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::tls::{crypto_provider, CredentialStore, DomainBundle, TrustBundles};
use backoff::Backoff;
use metrics::ApiMetrics;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Code, Status, Streaming};
use update::{BundleSet, UpdateError};

/// JWT bundles by trust domain name: each value the JWKS document exactly
/// as the agent sent it. Replaced as a whole on every update.
pub type JwtBundles = Arc<BTreeMap<String, bytes::Bytes>>;

/// Why the Workload API client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    #[error("{0}")]
    Socket(String),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What the rest of the sidecar reads from the client.
pub struct Receivers {
    /// `None` until the first SVID is accepted, then the store the client
    /// keeps updating.
    pub store: watch::Receiver<Option<Arc<CredentialStore>>>,
    /// The JWT bundles seam (empty until the agent sends some).
    pub jwt_bundles: watch::Receiver<JwtBundles>,
}

/// The state built from the agent's messages so far.
#[derive(Default)]
struct State {
    store: Option<Arc<CredentialStore>>,
    own: Option<SpiffeId>,
    federated: BundleSet,
    /// `FetchX509Bundles` has answered: `federated` is its word.
    bundles_stream_seen: bool,
}

/// The client: one per sidecar.
pub struct WorkloadApi {
    socket: PathBuf,
    /// `unix://<path>`, naming the source in logs and errors.
    label: String,
    hint: Option<String>,
    metrics: Arc<Metrics>,
    api: ApiMetrics,
    state: State,
    store_tx: watch::Sender<Option<Arc<CredentialStore>>>,
    jwt_tx: watch::Sender<JwtBundles>,
}

/// How a session with the agent ended.
enum SessionEnd {
    Connect(tonic::transport::Error),
    Status(Status),
    Closed,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Connect(e) => write!(f, "cannot connect: {e}"),
            SessionEnd::Status(s) => write!(f, "{}: {}", s.code(), s.message()),
            SessionEnd::Closed => f.write_str("the agent closed the stream"),
        }
    }
}

impl WorkloadApi {
    /// A client for `cfg` (its socket, or `SPIFFE_ENDPOINT_SOCKET`'s),
    /// counting into `metrics`' registry.
    pub fn new(
        cfg: &WorkloadApiConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(WorkloadApi, Receivers), WorkloadApiError> {
        let env = std::env::var(ENDPOINT_ENV).ok();
        let socket = cfg
            .socket_path(env.as_deref())
            .map_err(WorkloadApiError::Socket)?;
        let api = ApiMetrics::new(metrics.registry())?;
        let (store_tx, store) = watch::channel(None);
        let (jwt_tx, jwt_bundles) = watch::channel(JwtBundles::default());
        let client = WorkloadApi {
            label: format!("unix://{}", socket.display()),
            socket,
            hint: cfg.hint.clone(),
            metrics,
            api,
            state: State::default(),
            store_tx,
            jwt_tx,
        };
        Ok((client, Receivers { store, jwt_bundles }))
    }

    /// Streams from the agent until `shutdown`, reconnecting as needed.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        let mut first = true;
        loop {
            if !first {
                self.api.reconnect();
            }
            first = false;
            let end = tokio::select! {
                end = self.session(&mut backoff) => end,
                _ = shutdown.changed() => return,
            };
            self.api.set_up(false);
            let delay = backoff.next_delay();
            let serving = self.state.store.as_ref().map(|s| s.svid_is_valid_now());
            tracing::warn!(
                socket = %self.label,
                reason = %end,
                retry_in_ms = delay.as_millis() as u64,
                serving_last_svid = serving.unwrap_or(false),
                "Workload API stream down; reconnecting"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One connection: open the three streams, apply messages until one
    /// of the X.509 streams ends.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        let channel = match client::connect(self.socket.clone()).await {
            Ok(channel) => channel,
            Err(e) => return SessionEnd::Connect(e),
        };
        let (svids, bundles) =
            tokio::join!(client::x509_svids(&channel), client::x509_bundles(&channel),);
        let mut svids = match svids {
            Ok(s) => s,
            Err(status) => return SessionEnd::Status(status),
        };
        let mut bundles = match optional(bundles, "FetchX509Bundles", &self.label) {
            Ok(s) => s,
            Err(status) => return SessionEnd::Status(status),
        };
        // JWT bundles never hold the X.509 identity hostage: opened
        // alongside, and a failure only ends that stream.
        let mut jwt_opening = std::pin::pin!(client::jwt_bundles(&channel));
        let (mut jwt, mut jwt_pending) = (None, true);
        self.api.set_up(true);
        tracing::info!(socket = %self.label, "Workload API streams open");
        loop {
            tokio::select! {
                msg = svids.message() => match msg {
                    Ok(Some(msg)) => { backoff.reset(); self.on_svid(&msg); }
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return SessionEnd::Status(status),
                },
                msg = next(&mut bundles) => match msg {
                    Ok(Some(msg)) => { backoff.reset(); self.on_bundles(&msg); }
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return SessionEnd::Status(status),
                },
                opened = &mut jwt_opening, if jwt_pending => {
                    jwt_pending = false;
                    jwt = optional(opened, "FetchJWTBundles", &self.label).unwrap_or_else(|status| {
                        tracing::warn!(socket = %self.label, error = %status, "FetchJWTBundles refused; no JWT bundles from this connection");
                        None
                    });
                }
                msg = next(&mut jwt) => match msg {
                    Ok(Some(msg)) => self.on_jwt_bundles(&msg),
                    Ok(None) => jwt = None,
                    Err(status) => {
                        tracing::warn!(socket = %self.label, error = %status, "FetchJWTBundles failed; JWT bundles stay as they were");
                        jwt = None;
                    }
                },
            }
        }
    }

    fn refuse(&self, kind: &'static str, reload_kind: &str, e: &UpdateError) {
        self.api.refused(kind, e.reason_label());
        self.metrics.reload(reload_kind, false);
        tracing::error!(kind, socket = %self.label, reason = e.reason_label(), error = %e, "Workload API update refused; the previous state stays");
    }

    fn on_svid(&mut self, msg: &proto::X509SvidResponse) {
        let checked = update::check_svid(
            msg,
            self.hint.as_deref(),
            self.state.own.as_ref(),
            &self.label,
            &crypto_provider(),
        );
        let up = match checked {
            Ok(up) => up,
            Err(e) => return self.refuse("svid", "svid", &e),
        };
        let (id, not_after) = (up.svid.id.clone(), up.svid.not_after);
        // Until FetchX509Bundles answers, the SVID message's federated
        // bundles stand in for its word.
        let federated = if self.state.bundles_stream_seen {
            self.state.federated.clone()
        } else {
            up.federated
        };
        let bundles = match trust_bundles(id.trust_domain(), &up.own_bundle, &federated) {
            Ok(b) => b,
            Err(e) => return self.refuse("svid", "svid", &e.into()),
        };
        // Nothing below refuses: the state follows the accepted update.
        self.state.federated = federated;
        match &self.state.store {
            Some(store) => {
                store.set_svid(up.svid);
                self.replace_bundles(store, bundles);
            }
            None => match CredentialStore::new(up.svid, bundles) {
                Ok(store) => {
                    tracing::info!(id = %id, socket = %self.label, "first SVID from the Workload API; identity ready");
                    self.state.own = Some(id.clone());
                    self.state.store = Some(store.clone());
                    self.store_tx.send_replace(Some(store));
                }
                // Not reached (our own bundle is in `bundles`), but a store
                // that cannot be built leaves us waiting, not half-built.
                Err(e) => return self.refuse("svid", "svid", &e.into()),
            },
        }
        if let Some(store) = &self.state.store {
            crate::sidecar::reload::publish_cert_expiry(&self.metrics, store);
        }
        self.api.accepted("svid");
        self.metrics.reload("svid", true);
        tracing::info!(kind = "svid", id = %id, not_after, "SVID from the Workload API accepted; new handshakes present it");
    }

    fn on_bundles(&mut self, msg: &proto::X509BundlesResponse) {
        let mut set = match update::bundle_set(&msg.bundles, &self.label) {
            Ok(set) => set,
            Err(e) => return self.refuse("bundles", "bundle", &e),
        };
        let Some(own) = self.state.own.clone() else {
            // Before the first SVID: kept until it says which domain is ours.
            self.state.federated = set;
            self.state.bundles_stream_seen = true;
            self.api.accepted("bundles");
            return;
        };
        let td = own.trust_domain();
        let Some(own_bundle) = set.remove(td) else {
            return self.refuse(
                "bundles",
                "bundle",
                &UpdateError::NoOwnBundle(td.to_owned()),
            );
        };
        let bundles = match trust_bundles(td, &own_bundle, &set) {
            Ok(b) => b,
            Err(e) => return self.refuse("bundles", "bundle", &e.into()),
        };
        self.state.federated = set;
        self.state.bundles_stream_seen = true;
        if let Some(store) = &self.state.store {
            self.replace_bundles(store, bundles);
            crate::sidecar::reload::publish_cert_expiry(&self.metrics, store);
        }
        self.api.accepted("bundles");
        self.metrics.reload("bundle", true);
    }

    /// Swaps in `bundles` if their roots differ, then re-verifies every
    /// open connection (a removed trust domain closes its peers').
    fn replace_bundles(&self, store: &CredentialStore, bundles: TrustBundles) {
        if roots_of(&store.bundles()) == roots_of(&bundles) {
            return;
        }
        let domains = bundles.trust_domains().join(",");
        store.set_bundles(bundles);
        let closed = store.revalidate_live();
        tracing::info!(kind = "bundle", socket = %self.label, trust_domains = %domains, closed_connections = closed, "trust bundles from the Workload API applied");
    }

    fn on_jwt_bundles(&mut self, msg: &proto::JwtBundlesResponse) {
        let mut out = BTreeMap::new();
        for (key, jwks) in &msg.bundles {
            match update::trust_domain_of(key) {
                Ok(td) => {
                    out.insert(td, bytes::Bytes::copy_from_slice(jwks));
                }
                Err(e) => return self.refuse("jwt_bundles", "jwt_bundle", &e),
            }
        }
        let domains = out.keys().cloned().collect::<Vec<_>>().join(",");
        self.jwt_tx.send_replace(Arc::new(out));
        self.api.accepted("jwt_bundles");
        tracing::info!(kind = "jwt_bundles", trust_domains = %domains, "JWT bundles from the Workload API published");
    }
}

/// Our trust domain's roots plus every federated one but ours.
fn trust_bundles(
    own_td: &str,
    own: &DomainBundle,
    federated: &BundleSet,
) -> Result<TrustBundles, crate::sidecar::tls::TlsError> {
    let mut out = TrustBundles::new();
    out.insert(own_td, own.clone())?;
    for (td, bundle) in federated.iter().filter(|(td, _)| *td != own_td) {
        out.insert(td, bundle.clone())?;
    }
    Ok(out)
}

/// Every (trust domain, root) pair, sorted: equal when two sets trust the same.
fn roots_of(bundles: &TrustBundles) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = bundles
        .roots()
        .map(|(td, r)| (td.to_owned(), r.as_ref().to_vec()))
        .collect();
    v.sort_unstable();
    v
}

/// A stream that an older agent may not implement: `None` then.
fn optional<T>(
    opened: Result<Streaming<T>, Status>,
    method: &str,
    label: &str,
) -> Result<Option<Streaming<T>>, Status> {
    match opened {
        Ok(s) => Ok(Some(s)),
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::info!(socket = %label, method, "the agent does not implement this call; going without it");
            Ok(None)
        }
        Err(status) => Err(status),
    }
}

/// The next message of an optional stream; never completes without one.
async fn next<T>(stream: &mut Option<Streaming<T>>) -> Result<Option<T>, Status> {
    match stream {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

/// Closes connections whose peer certificate expired and says when our own
/// SVID expires without a replacement (the file watcher's tick does this
/// for file identities).
pub async fn sweep_expired(
    store: Arc<CredentialStore>,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_valid = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let expired = store.live().sweep_expired(crate::sidecar::tls::unix_now());
        if expired > 0 {
            tracing::info!(
                closed = expired,
                reason = "peer_certificate_expired",
                "closing connections whose peer certificate expired"
            );
        }
        let valid = store.svid_is_valid_now();
        if was_valid && !valid {
            tracing::error!(id = %store.own_id(), "own SVID expired and the Workload API sent no valid replacement: refusing handshakes, readiness is false");
        }
        was_valid = valid;
    }
}

#[cfg(test)]
mod tests;
