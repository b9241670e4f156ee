//! Criterion micro-benchmarks of the per-identity limit check
//! (`Limiter::check`, issue 15), the step every request of a policy with
//! `limits:` pays after authorisation:
//!
//! - `limit_check/none`: a policy without limits (what everyone else pays);
//! - `limit_check/rate_one_key`: one token bucket by caller ID, admitted;
//! - `limit_check/rate_and_concurrency`: the same with a concurrency cap,
//!   the in-flight slot taken and released;
//! - `limit_check/rate_10k_keys`: callers rotating over 10,000 identities,
//!   so the map is large and cache-cold;
//! - `limit_check/refused`: a drained bucket, the 429 path.
//!
//! Wall time of a single thread (no contention).
//! `cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard::sidecar::identity::SpiffeId;
use meshguard::sidecar::limits::Limiter;
use meshguard::sidecar::policy::Policy;

fn policy(limits: &str) -> Arc<Policy> {
    let yaml = format!("rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\n{limits}");
    Arc::new(Policy::from_yaml(&yaml, "bench.yaml").unwrap())
}

fn limit_check(c: &mut Criterion) {
    let peer = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
    let mut group = c.benchmark_group("limit_check");
    let cases = [
        ("none", ""),
        (
            "rate_one_key",
            "limits:\n  - name: l\n    rate: 1000000000\n",
        ),
        (
            "rate_and_concurrency",
            "limits:\n  - name: l\n    rate: 1000000000\n    concurrency: 1000\n",
        ),
    ];
    for (name, limits) in cases {
        let limiter = Limiter::default();
        let policy = policy(limits);
        group.bench_function(name, |b| {
            b.iter(|| {
                let admitted = limiter.check(&policy, black_box(&peer), Some("all"), None);
                black_box(admitted.is_ok())
            })
        });
    }
    let limiter = Limiter::default();
    let policy10k = policy("limits:\n  - name: l\n    rate: 1000000000\n    max_keys: 20000\n");
    let peers: Vec<SpiffeId> = (0..10_000)
        .map(|i| SpiffeId::parse(&format!("spiffe://cluster.local/ns/n{i}/sa/s")).unwrap())
        .collect();
    let mut i = 0;
    group.bench_function("rate_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % peers.len();
            black_box(
                limiter
                    .check(&policy10k, &peers[i], Some("all"), None)
                    .is_ok(),
            )
        })
    });
    let limiter = Limiter::default();
    let drained = policy("limits:\n  - name: l\n    rate: 0.001\n    burst: 1\n");
    let _ = limiter.check(&drained, &peer, Some("all"), None);
    group.bench_function("refused", |b| {
        b.iter(|| {
            black_box(
                limiter
                    .check(&drained, black_box(&peer), Some("all"), None)
                    .is_err(),
            )
        })
    });
    group.finish();
}

criterion_group!(rate_limit, limit_check);
criterion_main!(rate_limit);
