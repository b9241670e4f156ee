//! The JWT families: validations by provider and result, JWKS fetches, and
//! how old and how many the keys in force are. Counters of the request
//! path are resolved once per provider, so a request does no label lookup.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every result a validation is counted under (bounded).
pub const RESULTS: &[&str] = &[
    "valid",
    "cached",
    "too_large",
    "malformed",
    "alg_not_allowed",
    "unknown_issuer",
    "no_keys",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_audience",
    "bad_subject",
];

pub struct JwtMetrics {
    /// Per provider (and one `unknown` row last), one counter per [`RESULTS`].
    validations: Vec<Vec<IntCounter>>,
    fetches: IntCounterVec,
    last_success: IntGaugeVec,
    keys: IntGaugeVec,
}

impl JwtMetrics {
    pub fn new(registry: &Registry, providers: &[&str]) -> prometheus::Result<JwtMetrics> {
        let validations = IntCounterVec::new(
            Opts::new(
                "meshguard_jwt_validations_total",
                "End-user token checks by provider and result",
            ),
            &["provider", "result"],
        )?;
        let fetches = IntCounterVec::new(
            Opts::new(
                "meshguard_jwks_fetches_total",
                "JWKS fetches and file loads by provider and result",
            ),
            &["provider", "result"],
        )?;
        let last_success = IntGaugeVec::new(
            Opts::new(
                "meshguard_jwks_last_success_timestamp_seconds",
                "When the keys in force were loaded, Unix seconds (0: no keys)",
            ),
            &["provider"],
        )?;
        let keys = IntGaugeVec::new(
            Opts::new(
                "meshguard_jwks_keys",
                "Verification keys in force by provider",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(validations.clone()))?;
        registry.register(Box::new(fetches.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        let rows = providers
            .iter()
            .copied()
            .chain(["unknown"])
            .map(|p| {
                RESULTS
                    .iter()
                    .map(|r| validations.with_label_values(&[p, r]))
                    .collect()
            })
            .collect();
        Ok(JwtMetrics {
            validations: rows,
            fetches,
            last_success,
            keys,
        })
    }

    /// `provider`: its index, or `None` for a token no provider claims.
    pub fn validation(&self, provider: Option<usize>, result: &str) {
        let row = provider.unwrap_or(self.validations.len() - 1);
        let col = RESULTS.iter().position(|r| *r == result).unwrap_or(1);
        if let Some(c) = self.validations.get(row).and_then(|r| r.get(col)) {
            c.inc();
        }
    }

    pub fn fetch(&self, provider: &str, result: &str) {
        self.fetches.with_label_values(&[provider, result]).inc();
    }

    pub fn keys_in_force(&self, provider: &str, count: usize, loaded_at: i64) {
        self.keys.with_label_values(&[provider]).set(count as i64);
        self.last_success
            .with_label_values(&[provider])
            .set(loaded_at);
    }
}
