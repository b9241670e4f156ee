//! Tokens already verified, so a repeated token (a user's session making
//! many calls) costs a hash and a map lookup instead of a signature check.
//! Keyed by the token's SHA-256 (the token itself is never kept), each entry
//! dies with the token's `exp` (plus skew) and with the keys it was checked
//! with; the number of entries is bounded, and 16 shards keep the locks
//! short and rarely shared.

use super::Verified;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

struct Entry {
    verified: Arc<Verified>,
    /// The provider's key generation the signature was checked against.
    generation: u64,
    /// Unix seconds after which the token is expired even with skew.
    valid_until: i64,
}

/// One shard: token hash → entry.
type Shard = Mutex<HashMap<[u8; 32], Entry>>;

pub struct TokenCache {
    shards: Box<[Shard]>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(entries: usize) -> TokenCache {
        let per_shard = entries.div_ceil(SHARDS).max(1);
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Shard {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The verification of this token, if it is cached, unexpired at `now`,
    /// and was made with the keys `generation_of(provider)` says are in force.
    pub fn get(
        &self,
        key: &[u8; 32],
        now: i64,
        generation_of: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<Verified>> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(key)?;
        if entry.valid_until >= now
            && Some(entry.generation) == generation_of(entry.verified.provider)
        {
            return Some(entry.verified.clone());
        }
        shard.remove(key);
        None
    }

    /// Remembers a verification. A full shard first drops its expired
    /// entries, then, if still full, one arbitrary entry: the bound holds
    /// whatever the number of distinct tokens.
    pub fn insert(
        &self,
        key: [u8; 32],
        verified: Arc<Verified>,
        generation: u64,
        valid_until: i64,
        now: i64,
    ) {
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.valid_until >= now);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                verified,
                generation,
                valid_until,
            },
        );
    }

    /// Entries held now (for tests and the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}
