//! The authorization counters of the policy in force, beside the policy
//! they count: the metrics module hands out counters by label, this cache
//! resolves each rule's counter once so counting a decision is one atomic
//! add (no label hashing or lock per request).

use super::{Decision, Policy};
use crate::sidecar::metrics::Metrics;
use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use std::sync::{Arc, OnceLock};

/// The counters of one policy, looked up in the metric family the first
/// time a rule decides and then held. A rule that never decides gets no
/// series. Built again when the policy is replaced.
pub struct PolicyCounters {
    policy: Arc<Policy>,
    /// Per rule, in file order: allow, deny, audit-mode would-deny.
    rules: Box<[[OnceLock<IntCounter>; 3]]>,
    default_deny: [OnceLock<IntCounter>; 3],
}

impl PolicyCounters {
    pub fn new(policy: Arc<Policy>) -> PolicyCounters {
        let rules = policy.rules().iter().map(|_| Default::default()).collect();
        PolicyCounters {
            policy,
            rules,
            default_deny: Default::default(),
        }
    }

    /// Whether these are the counters of `policy` (the one in force).
    pub fn belong_to(&self, policy: &Arc<Policy>) -> bool {
        Arc::ptr_eq(&self.policy, policy)
    }

    /// Counts one decision of this policy.
    pub fn count(&self, metrics: &Metrics, decision: &Decision<'_>) {
        let column = match decision {
            Decision::Allow { .. } => 0,
            Decision::Deny { .. } => 1,
            Decision::AuditWouldDeny { .. } => 2,
        };
        let cell = match decision.rule() {
            Some(rule) => &self.rules[rule.position()][column],
            None => &self.default_deny[column],
        };
        cell.get_or_init(|| {
            let rule = decision.rule_name().unwrap_or("default-deny");
            metrics.authz_counter(decision.label(), rule)
        })
        .inc();
    }
}

/// The counters of whichever policy is in force: one lock-free load per
/// decision, made anew (once) after a reload.
pub struct DecisionCounters {
    metrics: Arc<Metrics>,
    cached: ArcSwapOption<PolicyCounters>,
}

impl DecisionCounters {
    pub fn new(metrics: Arc<Metrics>) -> DecisionCounters {
        DecisionCounters {
            metrics,
            cached: ArcSwapOption::empty(),
        }
    }

    /// Counts a decision of `policy`, the policy in force.
    pub fn count(&self, policy: &Arc<Policy>, decision: &Decision<'_>) {
        let cached = self.cached.load();
        match cached.as_deref() {
            Some(counters) if counters.belong_to(policy) => counters.count(&self.metrics, decision),
            _ => {
                let counters = Arc::new(PolicyCounters::new(policy.clone()));
                counters.count(&self.metrics, decision);
                self.cached.store(Some(counters));
            }
        }
    }
}
