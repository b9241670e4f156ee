//! The `limits:` section: per-identity rate and concurrency limits, as
//! written and validated. The buckets live in `sidecar::limits`, which
//! keeps them across reloads by limit name.

use std::collections::HashMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::boundary::{entry_error, source_matches};
use super::file::{PolicyError, RuleName};
use super::pattern::{NonEmpty, Source};
use super::Rule;
use crate::sidecar::identity::SpiffeId;

/// Buckets kept per limit unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
const MAX_MAX_KEYS: usize = 1_000_000;
const MAX_RATE: f64 = 1e9;

/// What one bucket counts: the caller exactly, its namespace, its trust
/// domain, or the end user's token subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    #[default]
    Id,
    /// Kubernetes-convention IDs share their namespace's bucket; another ID
    /// shape has no namespace and is counted by its exact ID.
    Namespace,
    TrustDomain,
    /// The verified JWT `sub`; a request without one is counted by its
    /// caller's exact ID, so an unauthenticated user cannot escape the limit.
    Subject,
}

impl KeyBy {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyBy::Id => "id",
            KeyBy::Namespace => "namespace",
            KeyBy::TrustDomain => "trust_domain",
            KeyBy::Subject => "subject",
        }
    }
}

/// A token bucket's parameters: `per_second` tokens refill continuously
/// up to `burst`; a request takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// One validated limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    name: Box<str>,
    from: Box<[Source]>,
    rules: Option<Box<[Box<str>]>>,
    key: KeyBy,
    rate: Option<Rate>,
    concurrency: Option<u32>,
    max_keys: usize,
}

impl LimitRule {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key(&self) -> KeyBy {
        self.key
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    pub fn concurrency(&self) -> Option<u32> {
        self.concurrency
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Whether this limit counts a request from `peer` that `rule` (the
    /// deciding policy rule, if any) let through.
    pub fn applies(&self, peer: &SpiffeId, rule: Option<&str>) -> bool {
        let by_rule = match &self.rules {
            None => true,
            Some(names) => rule.is_some_and(|r| names.iter().any(|n| &**n == r)),
        };
        by_rule && self.from.iter().any(|s| source_matches(s, peer))
    }
}

/// A limit as written; numbers validated as they are read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    name: RuleName,
    #[serde(default)]
    from: Option<NonEmpty<Source>>,
    #[serde(default)]
    rules: Option<NonEmpty<RuleName>>,
    #[serde(default)]
    key: KeyBy,
    #[serde(default)]
    rate: Option<PerSecond>,
    #[serde(default)]
    burst: Option<Count>,
    #[serde(default)]
    concurrency: Option<Count>,
    #[serde(default)]
    max_keys: Option<Count>,
}

/// A positive, finite rate.
struct PerSecond(f64);

impl<'de> Deserialize<'de> for PerSecond {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v.is_finite() && v > 0.0 && v <= MAX_RATE) {
            return Err(de::Error::custom(format_args!(
                "rate {v} must be a number of requests per second above 0 and at most 1e9"
            )));
        }
        Ok(PerSecond(v))
    }
}

/// A count of at least 1.
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Ok(Count(n)),
            _ => Err(de::Error::custom(format_args!(
                "{v} must be between 1 and 4294967295"
            ))),
        }
    }
}

/// Validates the section against the policy's rules.
pub(super) fn build(
    raw: Vec<RawLimit>,
    rules: &[Rule],
    text: &str,
    file: &str,
) -> Result<Box<[LimitRule]>, PolicyError> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for limit in &raw {
        let name = &*limit.name.0;
        let err = |message: String| {
            entry_error(
                text,
                file,
                "limits",
                name,
                format!("limits: {name:?}: {message}"),
            )
        };
        if seen.insert(name, ()).is_some() {
            return Err(err("limit name is already used".into()));
        }
        if limit.rate.is_none() && limit.concurrency.is_none() {
            return Err(err(
                "give `rate` (with optional `burst`), `concurrency`, or both".into(),
            ));
        }
        if limit.rate.is_none() && limit.burst.is_some() {
            return Err(err("`burst` needs a `rate`".into()));
        }
        if let Some(Count(n)) = limit.max_keys {
            if n as usize > MAX_MAX_KEYS {
                return Err(err(format!("max_keys {n} is above {MAX_MAX_KEYS}")));
            }
        }
        for RuleName(wanted) in limit.rules.iter().flat_map(|r| r.0.iter()) {
            match rules.iter().find(|r| r.name() == &**wanted) {
                None => return Err(err(format!("rules: no rule is named {wanted:?}"))),
                Some(r) if r.action().is_deny() => {
                    return Err(err(format!(
                        "rules: {wanted:?} is a deny rule; its requests never reach a limit"
                    )))
                }
                Some(_) => {}
            }
        }
        out.push(limit_rule(limit));
    }
    Ok(out.into_boxed_slice())
}

fn limit_rule(raw: &RawLimit) -> LimitRule {
    let rate = raw.rate.as_ref().map(|PerSecond(per_second)| Rate {
        per_second: *per_second,
        burst: raw
            .burst
            .as_ref()
            .map_or(per_second.ceil().max(1.0), |Count(b)| f64::from(*b)),
    });
    LimitRule {
        name: raw.name.0.clone(),
        from: raw
            .from
            .as_ref()
            .map_or_else(|| vec![Source::Any], |f| f.0.clone())
            .into_boxed_slice(),
        rules: raw
            .rules
            .as_ref()
            .map(|r| r.0.iter().map(|RuleName(n)| n.clone()).collect()),
        key: raw.key,
        rate,
        concurrency: raw.concurrency.as_ref().map(|Count(c)| *c),
        max_keys: raw
            .max_keys
            .as_ref()
            .map_or(DEFAULT_MAX_KEYS, |Count(m)| *m as usize),
    }
}
