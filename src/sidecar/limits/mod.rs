//! Per-identity rate and concurrency limits, as the policy's `limits:`
//! section declares them (`policy/limits.rs`): one token bucket (and
//! in-flight counter) per key, the key being the caller's SPIFFE ID, its
//! namespace, its trust domain or the end user's token subject.
//!
//! The buckets outlive a policy: a reload keeps the buckets of every limit
//! whose name, key and `max_keys` stay the same (new `rate`/`burst` apply
//! to them from the next request; a lower `burst` caps what they hold), so
//! a reload is never a way to refill everyone. A limit that changes its key
//! or size starts afresh.
//!
//! Why not `governor`: its keyed limiter keeps one entry per key until
//! `retain_recent` is called, which evicts by time only and would forget a
//! drained bucket as readily as a full one; it has no concurrency cap; and
//! it keys by a type, not by a borrowed `&str`. The bucket here is twenty
//! lines, with the eviction rule that makes bounded memory safe
//! (`buckets.rs`).

mod buckets;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::sidecar::identity::SpiffeId;
use crate::sidecar::policy::{KeyBy, LimitRule, Policy};
pub use buckets::{Buckets, Exceeded, InFlight};

/// What a request is counted as under one limit. `Subject` is the seam for
/// end-user tokens: whoever verifies a JWT passes its `sub` to
/// [`LimitKey::of`]; without one, a `subject` limit counts the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey<'a> {
    Id(&'a SpiffeId),
    /// `spiffe://<td>/ns/<ns>/sa/`: the prefix every ID of the namespace has.
    Namespace(&'a str),
    TrustDomain(&'a str),
    Subject(&'a str),
}

impl<'a> LimitKey<'a> {
    pub fn of(by: KeyBy, peer: &'a SpiffeId, subject: Option<&'a str>) -> LimitKey<'a> {
        match by {
            KeyBy::Id => LimitKey::Id(peer),
            KeyBy::Namespace => match peer.k8s_namespace() {
                Some(_) => {
                    let id = peer.as_str();
                    // k8s_namespace() guarantees `/ns/<ns>/sa/<sa>`.
                    let end = id.rfind('/').map_or(id.len(), |slash| slash + 1);
                    LimitKey::Namespace(&id[..end])
                }
                None => LimitKey::Id(peer),
            },
            KeyBy::TrustDomain => LimitKey::TrustDomain(peer.trust_domain()),
            KeyBy::Subject => subject.map_or(LimitKey::Id(peer), LimitKey::Subject),
        }
    }

    /// The map key. IDs, namespace prefixes and trust domains cannot
    /// collide (`spiffe://` forms of different shapes, a trust domain
    /// without the scheme); a subject is any string, so it is tagged, which
    /// costs the only allocation of a check.
    fn map_key(&self) -> Cow<'a, str> {
        match *self {
            LimitKey::Id(id) => Cow::Borrowed(id.as_str()),
            LimitKey::Namespace(prefix) => Cow::Borrowed(prefix),
            LimitKey::TrustDomain(td) => Cow::Borrowed(td),
            LimitKey::Subject(sub) => Cow::Owned(format!("sub\0{sub}")),
        }
    }
}

/// A request over one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited<'p> {
    /// The limit's name (the policy's, alive as long as the policy).
    pub limit: &'p str,
    pub exceeded: Exceeded,
}

impl Limited<'_> {
    /// Bounded label / audit reason.
    pub fn kind(&self) -> &'static str {
        match self.exceeded {
            Exceeded::Rate { .. } => "rate",
            Exceeded::Concurrency => "concurrency",
        }
    }

    /// Seconds for `Retry-After`.
    pub fn retry_after(&self) -> u32 {
        match self.exceeded {
            Exceeded::Rate { retry_after } => retry_after,
            Exceeded::Concurrency => 1,
        }
    }
}

/// The in-flight slots a request holds, released when dropped: when its
/// response body ends, or with the request if it fails first.
#[derive(Debug, Default)]
pub struct Admitted(Vec<InFlight>);

impl Admitted {
    /// True if no slot is held, so there is nothing to keep alive.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The buckets of the limits of the policy in force.
struct Generation {
    /// Held so that its address (compared on every request) is not reused.
    policy: Arc<Policy>,
    /// In the order of `policy.boundary().limits`.
    buckets: Box<[Arc<Buckets>]>,
}

/// The limits of one inbound, across policy reloads.
#[derive(Default)]
pub struct Limiter {
    current: ArcSwapOption<Generation>,
    /// Serialises rebuilding after a reload.
    rebuild: Mutex<()>,
}

impl Limiter {
    /// Checks every limit of `policy` that applies to this request (from
    /// `peer`, let through by `rule`); says which one is exceeded first.
    /// A token taken by an earlier limit of the same request stays taken.
    pub fn check<'p>(
        &self,
        policy: &'p Arc<Policy>,
        peer: &SpiffeId,
        rule: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Admitted, Limited<'p>> {
        let limits = &policy.boundary().limits;
        if limits.is_empty() {
            return Ok(Admitted::default());
        }
        // A borrowed load (no reference count) on the hot path; the rebuild
        // after a reload hands back an owned one.
        let current = self.current.load();
        let rebuilt;
        let generation: &Generation = match current.as_deref() {
            Some(g) if Arc::ptr_eq(&g.policy, policy) => g,
            _ => {
                rebuilt = self.generation(policy);
                &rebuilt
            }
        };
        let now = Instant::now();
        let mut admitted = Admitted::default();
        for (limit, buckets) in limits.iter().zip(generation.buckets.iter()) {
            if !limit.applies(peer, rule) {
                continue;
            }
            let key = LimitKey::of(limit.key(), peer, subject).map_key();
            match buckets.take(&key, now, limit.rate(), limit.concurrency()) {
                Ok(Some(slot)) => admitted.0.push(slot),
                Ok(None) => {}
                Err(exceeded) => {
                    return Err(Limited {
                        limit: limit.name(),
                        exceeded,
                    })
                }
            }
        }
        Ok(admitted)
    }

    /// Buckets kept by the limit `name` of the policy in force (tests, admin).
    pub fn keys(&self, name: &str) -> Option<usize> {
        let generation = self.current.load_full()?;
        let limits = &generation.policy.boundary().limits;
        let at = limits.iter().position(|l| l.name() == name)?;
        Some(generation.buckets[at].len())
    }

    /// The buckets for `policy`, rebuilt once after each reload.
    fn generation(&self, policy: &Arc<Policy>) -> Arc<Generation> {
        if let Some(current) = self.current.load_full() {
            if Arc::ptr_eq(&current.policy, policy) {
                return current;
            }
        }
        let _one = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if let Some(current) = &old {
            if Arc::ptr_eq(&current.policy, policy) {
                return current.clone();
            }
        }
        let buckets = policy
            .boundary()
            .limits
            .iter()
            .map(|limit| {
                reuse(old.as_deref(), limit)
                    .unwrap_or_else(|| Arc::new(Buckets::new(limit.max_keys())))
            })
            .collect();
        let generation = Arc::new(Generation {
            policy: policy.clone(),
            buckets,
        });
        self.current.store(Some(generation.clone()));
        generation
    }
}

/// The buckets of the same limit in the previous policy, if it still
/// counts the same keys in the same room.
fn reuse(old: Option<&Generation>, limit: &LimitRule) -> Option<Arc<Buckets>> {
    let old = old?;
    let limits = &old.policy.boundary().limits;
    let at = limits.iter().position(|l| {
        l.name() == limit.name() && l.key() == limit.key() && l.max_keys() == limit.max_keys()
    })?;
    Some(old.buckets[at].clone())
}

#[cfg(test)]
mod tests;
