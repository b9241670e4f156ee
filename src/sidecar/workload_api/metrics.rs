//! The Workload API's metric families, registered in the sidecar's own
//! registry beside the others.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// What the stream to the agent did.
#[derive(Clone)]
pub struct ApiMetrics {
    up: IntGauge,
    updates: IntCounterVec,
    reconnects: IntCounter,
    last_update: IntGaugeVec,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    metric: prometheus::Result<T>,
) -> prometheus::Result<T> {
    let metric = metric?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl ApiMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<ApiMetrics> {
        Ok(ApiMetrics {
            up: registered(
                r,
                IntGauge::new(
                    "meshguard_workload_api_stream_up",
                    "1 while the Workload API streams are open, 0 while connecting or backing off",
                ),
            )?,
            updates: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "meshguard_workload_api_updates_total",
                        "Workload API messages by kind (svid, bundles, jwt_bundles), result and refusal reason",
                    ),
                    &["kind", "result", "reason"],
                ),
            )?,
            reconnects: registered(
                r,
                IntCounter::new(
                    "meshguard_workload_api_reconnects_total",
                    "Connections to the Workload API made after a stream ended or a connection failed",
                ),
            )?,
            last_update: registered(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "meshguard_workload_api_last_update_timestamp_seconds",
                        "When the last accepted update of each kind arrived, Unix seconds",
                    ),
                    &["kind"],
                ),
            )?,
        })
    }

    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn accepted(&self, kind: &str) {
        self.updates
            .with_label_values(&[kind, "accepted", ""])
            .inc();
        self.last_update
            .with_label_values(&[kind])
            .set(crate::sidecar::tls::unix_now());
    }

    pub fn refused(&self, kind: &str, reason: &str) {
        self.updates
            .with_label_values(&[kind, "refused", reason])
            .inc();
    }
}
