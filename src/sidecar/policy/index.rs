//! Rules indexed by source, so a request looks only at rules that name its
//! peer (exactly, by namespace, by trust domain, or as any peer) instead of
//! scanning the whole policy.

use std::collections::HashMap;

use super::pattern::Source;
use super::Rule;
use crate::sidecar::identity::SpiffeId;

/// The rules reachable through one index key, as positions in the policy,
/// deny and allow apart and each in declaration order.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub deny: Vec<usize>,
    pub allow: Vec<usize>,
}

impl Bucket {
    fn push(&mut self, deny: bool, rule: usize) {
        let list = if deny {
            &mut self.deny
        } else {
            &mut self.allow
        };
        // A rule listing a source twice is indexed once.
        if list.last() != Some(&rule) {
            list.push(rule);
        }
    }
}

/// The up to four buckets whose sources cover one peer or pattern.
pub(crate) type Candidates<'a> = [Option<&'a Bucket>; 4];

#[derive(Debug, Default)]
pub(crate) struct SourceIndex {
    ids: HashMap<SpiffeId, Bucket>,
    /// Keyed by `spiffe://<td>/ns/<ns>/sa/`, which is a prefix of every
    /// matching peer ID, so a lookup borrows from the peer and never
    /// allocates.
    namespaces: HashMap<Box<str>, Bucket>,
    trust_domains: HashMap<Box<str>, Bucket>,
    any: Bucket,
}

/// `spiffe://<td>/ns/<ns>/sa/` for a Kubernetes-convention peer ID.
fn peer_namespace_key(peer: &SpiffeId) -> Option<&str> {
    peer.k8s_namespace()?;
    let id = peer.as_str();
    id.rfind('/').map(|slash| &id[..=slash])
}

fn pattern_namespace_key(trust_domain: &str, namespace: &str) -> Box<str> {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/").into_boxed_str()
}

impl SourceIndex {
    pub fn build(rules: &[Rule]) -> Self {
        let mut index = SourceIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let deny = rule.action().is_deny();
            for source in rule.sources() {
                let bucket = match source {
                    Source::Id(id) => index.ids.entry(id.clone()).or_default(),
                    Source::Namespace {
                        trust_domain,
                        namespace,
                    } => index
                        .namespaces
                        .entry(pattern_namespace_key(trust_domain, namespace))
                        .or_default(),
                    Source::TrustDomain(td) => index.trust_domains.entry(td.clone()).or_default(),
                    Source::Any => &mut index.any,
                };
                bucket.push(deny, i);
            }
        }
        index
    }

    /// The buckets of every rule whose sources match `peer`.
    pub fn for_peer(&self, peer: &SpiffeId) -> Candidates<'_> {
        // Skipping empty maps spares hashing the peer ID in the common
        // policies that use only one or two kinds of source.
        let id = if self.ids.is_empty() {
            None
        } else {
            self.ids.get(peer)
        };
        let namespace = if self.namespaces.is_empty() {
            None
        } else {
            peer_namespace_key(peer).and_then(|key| self.namespaces.get(key))
        };
        let trust_domain = if self.trust_domains.is_empty() {
            None
        } else {
            self.trust_domains.get(peer.trust_domain())
        };
        [id, namespace, trust_domain, Some(&self.any)]
    }

    /// The buckets of every rule with a source that covers all of `source`.
    pub fn covering(&self, source: &Source) -> Candidates<'_> {
        match source {
            Source::Id(id) => self.for_peer(id),
            Source::Namespace {
                trust_domain,
                namespace,
            } => [
                None,
                self.namespaces
                    .get(&pattern_namespace_key(trust_domain, namespace)),
                self.trust_domains.get(trust_domain),
                Some(&self.any),
            ],
            Source::TrustDomain(td) => [None, None, self.trust_domains.get(td), Some(&self.any)],
            Source::Any => [None, None, None, Some(&self.any)],
        }
    }
}

/// The first rule (in declaration order) among `candidates` that `accept`s,
/// looking only at the deny or only at the allow lists.
pub(crate) fn first_match(
    candidates: &Candidates<'_>,
    deny: bool,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for bucket in candidates.iter().flatten() {
        let list = if deny { &bucket.deny } else { &bucket.allow };
        // Each list is in declaration order, so its first hit is its
        // earliest; a later position than the best so far cannot win.
        let limit = best.unwrap_or(usize::MAX);
        if let Some(&i) = list
            .iter()
            .take_while(|&&i| i < limit)
            .find(|&&i| accept(i))
        {
            best = Some(i);
        }
    }
    best
}
