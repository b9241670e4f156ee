//! How the process runs: the resource limits of every listener, what a
//! SIGTERM does, and the runtime's threads and file polling.

use serde::Deserialize;

/// Resource limits of every listener (inbound and outbound alike).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A peer must finish its TLS handshake within this time.
    pub handshake_timeout_ms: u64,
    /// Request headers must arrive within this time (slowloris); for
    /// HTTP/1 this also bounds the wait for the next request on an idle
    /// keep-alive connection. 0 disables it.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed. Never cuts a stream that is still moving data. 0 disables it.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers accepted (HTTP/1); more gets 431.
    pub max_headers: usize,
    /// Most connections open at once per listener; the excess is closed.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 15_000,
            idle_timeout_ms: 300_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_streams_per_connection: 100,
        }
    }
}

fn ms(v: u64) -> Option<std::time::Duration> {
    (v > 0).then(|| std::time::Duration::from_millis(v))
}

impl LimitsConfig {
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Option<std::time::Duration> {
        ms(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        ms(self.idle_timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), (String, Option<String>)> {
        let bad =
            |key: &str, rule: &str| Err((format!("limits.{key} {rule}"), Some(format!("{key}:"))));
        if self.handshake_timeout_ms == 0 {
            return bad("handshake_timeout_ms", "must be at least 1");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_header_bytes) {
            return bad("max_header_bytes", "must be between 1024 and 16777216");
        }
        if !(1..=10_000).contains(&self.max_headers) {
            return bad("max_headers", "must be between 1 and 10000");
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return bad("max_connections", "must be between 1 and 1000000");
        }
        if self.max_streams_per_connection == 0 {
            return bad("max_streams_per_connection", "must be at least 1");
        }
        Ok(())
    }
}

/// What happens on SIGTERM: keep serving for `drain_delay_ms` (readiness
/// already false, so endpoints are removed), then stop accepting, close
/// connections gracefully and exit once drained or at `deadline_ms`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub drain_delay_ms: u64,
    pub deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        // Fits Kubernetes' default terminationGracePeriodSeconds of 30.
        ShutdownConfig {
            drain_delay_ms: 5_000,
            deadline_ms: 25_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Event loops, one thread each, that connections are dealt to
    /// (`sidecar/workers.rs`); 1 runs everything on one loop.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How often the policy, SVID, key and bundle files are re-read, in
    /// milliseconds (SIGHUP re-reads at once).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: default_workers(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    1000
}

fn default_workers() -> usize {
    1
}
