use super::*;
use crate::sidecar::policy::{Policy, Rate};
use std::time::Duration;

fn rate(per_second: f64, burst: f64) -> Option<Rate> {
    Some(Rate { per_second, burst })
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn a_burst_gets_exactly_burst_tokens_then_retry_after() {
    let buckets = Buckets::new(100);
    let now = Instant::now();
    let results: Vec<_> = (0..25)
        .map(|_| buckets.take("a", now, rate(2.0, 10.0), None))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 15);
    assert!(
        results[..10].iter().all(Result::is_ok),
        "the first ten pass"
    );
    // One token is back after half a second at 2/s: Retry-After rounds up to 1.
    assert_eq!(
        results[10].as_ref().unwrap_err(),
        &Exceeded::Rate { retry_after: 1 }
    );
    let later = now + Duration::from_millis(500);
    assert!(buckets.take("a", later, rate(2.0, 10.0), None).is_ok());
    assert!(buckets.take("a", later, rate(2.0, 10.0), None).is_err());
    // A slow rate asks for a longer wait.
    let slow = Buckets::new(10);
    assert!(slow.take("s", now, rate(0.1, 1.0), None).is_ok());
    let refused = slow.take("s", now, rate(0.1, 1.0), None).unwrap_err();
    assert_eq!(refused, Exceeded::Rate { retry_after: 10 });
}

#[test]
fn one_noisy_key_never_throttles_another() {
    let buckets = Buckets::new(100);
    let now = Instant::now();
    for _ in 0..1000 {
        let _ = buckets.take("noisy", now, rate(1.0, 5.0), None);
    }
    for _ in 0..5 {
        assert!(buckets.take("quiet", now, rate(1.0, 5.0), None).is_ok());
    }
    assert!(buckets.take("quiet", now, rate(1.0, 5.0), None).is_err());
}

#[test]
fn the_concurrency_cap_holds_until_the_slot_is_released() {
    let buckets = Buckets::new(10);
    let now = Instant::now();
    let a = buckets.take("k", now, None, Some(2)).unwrap();
    let b = buckets.take("k", now, None, Some(2)).unwrap();
    assert!(a.is_some() && b.is_some());
    assert_eq!(
        buckets.take("k", now, None, Some(2)).unwrap_err(),
        Exceeded::Concurrency
    );
    assert!(buckets.take("other", now, None, Some(2)).is_ok(), "per key");
    drop(a);
    assert!(buckets.take("k", now, None, Some(2)).is_ok());
}

#[test]
fn memory_is_bounded_with_100k_distinct_keys() {
    let buckets = Buckets::new(1000);
    let start = Instant::now();
    for i in 0..100_000u64 {
        // Callers arriving 1 ms apart at 100/s, burst 1: each bucket is
        // full again 10 ms after its only request.
        let now = start + Duration::from_millis(i);
        let key = format!("spiffe://td/ns/n{i}/sa/s");
        assert!(
            buckets.take(&key, now, rate(100.0, 1.0), None).is_ok(),
            "key {i} has its own fresh bucket"
        );
        assert!(
            buckets.len() <= buckets.capacity(),
            "{} > {}",
            buckets.len(),
            buckets.capacity()
        );
    }
    assert!(buckets.capacity() <= 1000);
}

#[test]
fn a_drained_bucket_is_never_forgotten_to_make_room() {
    // Evicting a full bucket is safe (a fresh one is the same); evicting a
    // drained one would hand its key a new burst. So with the map full of
    // drained keys, newcomers share the overflow bucket, and the drained
    // key stays drained.
    let buckets = Buckets::new(16);
    let now = Instant::now();
    let slow = rate(0.001, 2.0);
    for i in 0..16 {
        let key = format!("k{i}");
        while buckets.take(&key, now, slow, None).is_ok() {}
    }
    let kept = buckets.len();
    let mut newcomers_ok = 0;
    for i in 0..10_000 {
        if buckets.take(&format!("new{i}"), now, slow, None).is_ok() {
            newcomers_ok += 1;
        }
    }
    assert!(buckets.len() <= buckets.capacity());
    // Some newcomers got a bucket of their own where a shard had room;
    // the rest shared one overflow bucket per full shard (burst 2 each).
    let full_shards = 16usize;
    assert!(
        newcomers_ok <= (buckets.capacity() - kept) * 2 + full_shards * 2,
        "{newcomers_ok}"
    );
    for i in 0..16 {
        let key = format!("k{i}");
        if buckets.take(&key, now, slow, None).is_ok() {
            panic!("{key} was drained and got tokens back");
        }
    }
}

#[test]
fn keys_by_namespace_trust_domain_and_subject() {
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let api = id("spiffe://cluster.local/ns/shop/sa/api");
    let odd = id("spiffe://cluster.local/batch/job");
    assert_eq!(LimitKey::of(KeyBy::Id, &web, None), LimitKey::Id(&web));
    assert_eq!(
        LimitKey::of(KeyBy::Namespace, &web, None),
        LimitKey::of(KeyBy::Namespace, &api, None)
    );
    assert_eq!(
        LimitKey::of(KeyBy::Namespace, &web, None),
        LimitKey::Namespace("spiffe://cluster.local/ns/shop/sa/")
    );
    assert_eq!(
        LimitKey::of(KeyBy::Namespace, &odd, None),
        LimitKey::Id(&odd)
    );
    assert_eq!(
        LimitKey::of(KeyBy::TrustDomain, &odd, None),
        LimitKey::TrustDomain("cluster.local")
    );
    assert_eq!(
        LimitKey::of(KeyBy::Subject, &web, Some("alice")),
        LimitKey::Subject("alice")
    );
    assert_eq!(LimitKey::of(KeyBy::Subject, &web, None), LimitKey::Id(&web));
    // A subject spelled like an ID is still another key.
    let spoof = LimitKey::Subject(web.as_str()).map_key();
    assert_ne!(spoof, LimitKey::Id(&web).map_key());
}

fn limits_policy(rate: &str) -> Arc<Policy> {
    let yaml = format!(
        "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\nlimits:\n  - name: per-caller\n    {rate}\n"
    );
    Arc::new(Policy::from_yaml(&yaml, "p.yaml").unwrap())
}

#[test]
fn a_reload_keeps_the_buckets_of_the_limits_that_remain() {
    let limiter = Limiter::default();
    let a = id("spiffe://cluster.local/ns/shop/sa/a");
    let first = limits_policy("rate: 0.001\n    burst: 3");
    let passed = (0..5)
        .filter(|_| limiter.check(&first, &a, Some("all"), None).is_ok())
        .count();
    assert_eq!(passed, 3);
    // The same limit, a new policy object: still drained.
    let reloaded = limits_policy("rate: 0.001\n    burst: 3");
    assert!(!Arc::ptr_eq(&first, &reloaded));
    let limited = limiter.check(&reloaded, &a, Some("all"), None).unwrap_err();
    assert_eq!(limited.limit, "per-caller");
    assert_eq!(limited.kind(), "rate");
    assert_eq!(limiter.keys("per-caller"), Some(1));
    // A larger burst lets the bucket refill toward it, not jump to it.
    let larger = limits_policy("rate: 0.001\n    burst: 10");
    assert!(limiter.check(&larger, &a, Some("all"), None).is_err());
    // Another key kind is another count: it starts afresh.
    let by_ns = limits_policy("rate: 0.001\n    burst: 3\n    key: namespace");
    assert!(limiter.check(&by_ns, &a, Some("all"), None).is_ok());
}

#[test]
fn a_policy_without_limits_admits_without_buckets() {
    let limiter = Limiter::default();
    let p = Arc::new(Policy::from_yaml("rules: []\n", "p.yaml").unwrap());
    let a = id("spiffe://cluster.local/ns/shop/sa/a");
    assert!(limiter.check(&p, &a, None, None).unwrap().is_empty());
    assert_eq!(limiter.keys("x"), None);
}
