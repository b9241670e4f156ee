//! Name resolution for egress, with hickory's stub resolver rather than
//! the libc one behind `tokio::net::lookup_host`: it can be pointed at a
//! given server (`outbound.egress.resolver`, which the tests use), keeps
//! TTLs (a rebinding answer with TTL 0 is asked again, never kept), and
//! runs on the runtime instead of a blocking thread per lookup. Every name
//! is asked as a fully qualified name, so the pod's search domains
//! (`api.example.default.svc.cluster.local`) never turn an external name
//! into an internal one.

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Time allowed for one query to a server (tried twice).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the egress resolver: {0}")]
pub struct ResolverError(String);

/// The resolver of one sidecar's egress.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The system's resolver, or one that asks only `server`.
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let config = ResolverConfig::from_name_servers(vec![ns]);
                TokioResolver::builder_with_config(config, provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| ResolverError(e.to_string()))?,
        };
        let opts = builder.options_mut();
        // Both families: the guard must see every address a name has.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 2;
        let inner = builder.build().map_err(|e| ResolverError(e.to_string()))?;
        Ok(Resolver { inner })
    }

    /// The addresses `name` resolves to now (A and AAAA), asked once.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{name}.");
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) => Err(e.to_string()),
        }
    }
}
