//! A bounded map of token buckets, one per key, with in-flight counters.
//!
//! # Memory
//!
//! At most `max_keys` buckets are kept, whatever the number of distinct
//! keys, in shards of their own lock (so that callers in different shards
//! never wait for each other). When a shard is full and a new key arrives,
//! the shard drops every bucket that is *evictable*: full again (its
//! tokens, refilled to now, are at `burst`) and with nothing in flight.
//! Such a bucket is exactly what a fresh one would be, so forgetting it
//! grants its key nothing: the key's next request starts from the same
//! full bucket it would have had. A bucket that is not full is never
//! dropped: forgetting a drained bucket would hand its key a full burst
//! again, which is how a caller would escape its limit by making others
//! fill the map.
//!
//! When nothing is evictable (more distinct active keys than `max_keys`),
//! the new key shares the shard's *overflow* bucket with every other key
//! that found no room: it is limited as one more key would be, the crowd
//! together no more than a single fresh key. That is the fail-closed end of
//! the trade-off: bounded memory costs the newcomers of a flood of distinct
//! identities their own bucket, never the established keys theirs. A sweep
//! scans a shard (`max_keys / shards` entries) at most once per refill
//! period, so a flood cannot make every request pay for a scan.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sidecar::policy::Rate;

/// Shards per map (fewer when `max_keys` is smaller).
const SHARDS: usize = 16;
/// Bounds of the wait between two sweeps of a full shard.
const MIN_SWEEP: Duration = Duration::from_millis(10);
const MAX_SWEEP: Duration = Duration::from_secs(1);
/// Longest `Retry-After` ever sent, so a tiny rate does not ask for days.
const MAX_RETRY_AFTER: u32 = 3600;

/// Why a request is over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The bucket is empty; a token is back after `retry_after` seconds.
    Rate { retry_after: u32 },
    /// As many requests as allowed are in flight.
    Concurrency,
}

/// One request in flight against a concurrency cap; released on drop.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    stamp: Instant,
    /// Shared with the `InFlight` guards: more than one reference means a
    /// request is in flight and the bucket must stay.
    in_flight: Arc<AtomicU32>,
}

impl Bucket {
    fn fresh(now: Instant, rate: Option<Rate>) -> Bucket {
        Bucket {
            tokens: rate.map_or(0.0, |r| r.burst),
            stamp: now,
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Tokens as of `now`, at most `burst` (a reload may have lowered it).
    fn refill(&mut self, now: Instant, rate: Option<Rate>) {
        if let Some(rate) = rate {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        }
        self.stamp = now;
    }

    /// Exactly what a fresh bucket would be: full and idle.
    fn evictable(&self, now: Instant, rate: Option<Rate>) -> bool {
        if Arc::strong_count(&self.in_flight) > 1 {
            return false;
        }
        rate.is_none_or(|rate| {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            self.tokens + elapsed * rate.per_second >= rate.burst
        })
    }

    fn take(
        &mut self,
        now: Instant,
        rate: Option<Rate>,
        cap: Option<u32>,
    ) -> Result<Option<InFlight>, Exceeded> {
        self.refill(now, rate);
        if let Some(cap) = cap {
            if self.in_flight.load(Ordering::Acquire) >= cap {
                return Err(Exceeded::Concurrency);
            }
        }
        if let Some(rate) = rate {
            if self.tokens < 1.0 {
                let wait = ((1.0 - self.tokens) / rate.per_second).ceil();
                let retry_after = if wait >= f64::from(MAX_RETRY_AFTER) {
                    MAX_RETRY_AFTER
                } else {
                    (wait as u32).max(1)
                };
                return Err(Exceeded::Rate { retry_after });
            }
            self.tokens -= 1.0;
        }
        Ok(cap.map(|_| {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            InFlight(self.in_flight.clone())
        }))
    }
}

#[derive(Debug)]
struct Shard {
    map: HashMap<Box<str>, Bucket>,
    /// Shared by the keys that found the shard full.
    overflow: Option<Bucket>,
    next_sweep: Instant,
}

/// The buckets of one limit.
#[derive(Debug)]
pub struct Buckets {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl Buckets {
    /// Room for at most `max_keys` buckets (at least one).
    pub fn new(max_keys: usize) -> Buckets {
        let max_keys = max_keys.max(1);
        let shards = SHARDS.min(max_keys);
        let now = Instant::now();
        Buckets {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        overflow: None,
                        next_sweep: now,
                    })
                })
                .collect(),
            per_shard: max_keys / shards,
            hasher: Default::default(),
        }
    }

    /// Most buckets this map keeps.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Buckets kept now (the overflow buckets not counted).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a token (and an in-flight slot when `cap` is set) for `key`.
    pub fn take(
        &self,
        key: &str,
        now: Instant,
        rate: Option<Rate>,
        cap: Option<u32>,
    ) -> Result<Option<InFlight>, Exceeded> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        let mut shard = lock(&self.shards[index]);
        if let Some(bucket) = shard.map.get_mut(key) {
            return bucket.take(now, rate, cap);
        }
        if shard.map.len() >= self.per_shard {
            shard.sweep(now, rate);
        }
        if shard.map.len() >= self.per_shard {
            // Made on first use, full like any fresh bucket.
            let overflow = shard
                .overflow
                .get_or_insert_with(|| Bucket::fresh(now, rate));
            return overflow.take(now, rate, cap);
        }
        shard
            .map
            .entry(Box::from(key))
            .or_insert_with(|| Bucket::fresh(now, rate))
            .take(now, rate, cap)
    }
}

impl Shard {
    /// Drops every evictable bucket, at most once per refill period.
    fn sweep(&mut self, now: Instant, rate: Option<Rate>) {
        if now < self.next_sweep {
            return;
        }
        self.map.retain(|_, bucket| !bucket.evictable(now, rate));
        let period = rate.map_or(MIN_SWEEP, |r| {
            Duration::try_from_secs_f64(r.burst / r.per_second).unwrap_or(MAX_SWEEP)
        });
        self.next_sweep = now + period.clamp(MIN_SWEEP, MAX_SWEEP);
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}
