//! Criterion micro-benchmarks of the pieces meshguard runs on every request
//! (issue 8) and of policy evaluation as policies grow (issue 4):
//!
//! - `spiffe_id_parse`: validating a peer's SPIFFE ID (done once per
//!   connection today, but on every SVID and every policy source);
//! - `normalize_path`: the request path before any rule sees it;
//! - `header_rewrite`: `strip_inbound` + `PeerHeaders::apply` on a realistic
//!   request header map with spoofed identity headers;
//! - `policy_evaluate/<rules>`: one `Policy::evaluate` at 10, 1,000 and
//!   10,000 rules, which must not grow with the policy.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: on a shared machine the time the thread spends preempted
//! by other work would otherwise be counted as the code's cost.
//!
//! `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3`;
//! results and how to read them are in `benches/README.md`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshguard::sidecar::headers::{strip_inbound, PeerHeaders};
use meshguard::sidecar::identity::SpiffeId;
use meshguard::sidecar::pathnorm::normalize_path;
use meshguard::sidecar::policy::{Policy, Request, Verdict};

/// CPU time consumed by the calling thread, reported like wall time.
struct ThreadCpuTime(WallTime);

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time.
        self.0.formatter()
    }
}

type C = Criterion<ThreadCpuTime>;

fn spiffe_id_parse(c: &mut C) {
    let mut g = c.benchmark_group("spiffe_id_parse");
    let typical = "spiffe://cluster.local/ns/payments/sa/checkout-api";
    // 213 bytes: a long trust domain and a deep, non-Kubernetes path.
    let long = "spiffe://prod.eu-west-1.payments.internal.example.com/region/eu-west-1/\
                cluster/prod-blue-07/ns/payments-settlement-batch/sa/\
                settlement-reconciliation-worker-v2/instance/\
                a1b2c3d4-e5f6-7890-abcd-ef0123456789";
    // Refused late: everything is valid up to the `..` segment.
    let invalid = "spiffe://cluster.local/ns/payments/sa/../checkout-api";
    assert!(SpiffeId::parse(typical).is_ok());
    assert!(SpiffeId::parse(long).is_ok());
    assert!(SpiffeId::parse(invalid).is_err());
    for (name, id) in [("typical", typical), ("long", long), ("invalid", invalid)] {
        g.bench_function(name, |b| b.iter(|| SpiffeId::parse(black_box(id))));
    }
    g.finish();
}

fn path_normalization(c: &mut C) {
    let mut g = c.benchmark_group("normalize_path");
    let normal = "/api/v1/orders/8f14e45f/items?expand=price&limit=50";
    let rewritten =
        "/api/./v1//orders/%2e%2e/orders/8f14e45f/%69tems;jsessionid=1/%3a?expand=price";
    let rejected = "/api/v1/files/..%2F..%2Fetc%2Fpasswd";
    assert!(!normalize_path(normal).unwrap().is_rewritten());
    assert_eq!(
        normalize_path(rewritten).unwrap().as_path(),
        "/api/v1/orders/8f14e45f/items/%3A"
    );
    assert!(normalize_path(rejected).is_err());
    for (name, path) in [
        ("already_normal", normal),
        ("dot_segments_and_escapes", rewritten),
        ("rejected_encoded_slash", rejected),
    ] {
        g.bench_function(name, |b| b.iter(|| normalize_path(black_box(path))));
    }
    g.finish();
}

/// A request as it arrives from a peer: 14 headers, five of them spoofed
/// identity or hop-by-hop headers (one named only by `Connection`).
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    add("host", "orders.shop.svc.cluster.local");
    add("user-agent", "checkout/2.14.1 (hyper)");
    add("accept", "application/json");
    add("accept-encoding", "gzip, br");
    add("content-type", "application/json");
    add("content-length", "512");
    add(
        "authorization",
        "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaGVja291dCJ9.c2lnbmF0dXJl",
    );
    add("x-request-id", "3f1c9a7e-2b4d-4e8f-9a6b-1c2d3e4f5a6b");
    add(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    // Spoofed: what a compromised caller would send.
    add(
        "x-forwarded-client-cert",
        "By=spiffe://cluster.local/ns/shop/sa/orders;URI=spiffe://cluster.local/ns/shop/sa/admin",
    );
    add("x-forwarded-for", "10.0.0.1");
    add(
        "l5d-client-id",
        "admin.shop.serviceaccount.identity.linkerd.cluster.local",
    );
    add("connection", "keep-alive, x-debug-bypass");
    add("x-debug-bypass", "1");
    h
}

fn header_rewrite(c: &mut C) {
    let mut g = c.benchmark_group("header_rewrite");
    let peer = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/checkout").unwrap();
    let own = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
    // Built once per connection in the proxy.
    let peer_headers = PeerHeaders::new(&peer, &own, &[0xab; 32]).unwrap();
    let headers = request_headers();
    {
        let mut h = headers.clone();
        let stripped = strip_inbound(&mut h, &[]);
        peer_headers.apply(&mut h);
        assert_eq!(stripped.identity, 3);
        assert!(h.get("x-debug-bypass").is_none() && h.get("connection").is_none());
        assert_eq!(h.len(), 11, "{h:?}");
    }
    // The clone alone, to subtract from the next line.
    g.bench_function("clone_only", |b| {
        b.iter_batched(|| (), |()| headers.clone(), BatchSize::SmallInput)
    });
    g.bench_function("strip_inbound_and_apply", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                strip_inbound(&mut h, &[]);
                peer_headers.apply(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// How many workloads (exact-ID rules) share a namespace.
const PER_NAMESPACE: usize = 20;

/// A policy of `n` rules shaped like a real mesh: mostly one allow rule per
/// calling workload (exact ID, port, methods, a path prefix and an exact
/// path), one namespace-wide allow rule per namespace for read-only
/// endpoints, a deny rule for the admin paths of every tenth namespace, plus
/// a constant handful that apply to every peer: health checks from any
/// peer, a partner trust domain, and one quarantined workload. The number
/// of namespaces grows with the policy, as in a cluster, so the rules that
/// name any one peer stay few.
fn policy_yaml(n: usize) -> String {
    let mut rules: Vec<String> = vec![
        "name: health-from-anyone\n    action: allow\n    from: [\"*\"]\n    \
         methods: [GET]\n    paths: [/healthz, /readyz]\n"
            .into(),
        "name: partner-reads\n    action: allow\n    \
         from: [\"spiffe://partner.example.org/*\"]\n    \
         ports: [8443]\n    methods: [GET, HEAD]\n    paths: [\"/partner/v1/*\"]\n"
            .into(),
        "name: quarantine\n    action: deny\n    \
         from: [spiffe://cluster.local/ns/ns-legacy/sa/compromised]\n"
            .into(),
    ];
    for i in 0.. {
        if rules.len() >= n {
            break;
        }
        let ns = i / PER_NAMESPACE;
        let sa = i % PER_NAMESPACE;
        rules.push(if sa == 0 {
            format!(
                "name: ns-{ns}-reads\n    action: allow\n    \
                 from: [\"spiffe://cluster.local/ns/ns-{ns}/*\"]\n    \
                 methods: [GET, HEAD]\n    paths: [\"/public/*\", /metrics]\n"
            )
        } else if sa == 1 && ns.is_multiple_of(10) {
            format!(
                "name: ns-{ns}-no-admin\n    action: deny\n    \
                 from: [\"spiffe://cluster.local/ns/ns-{ns}/*\"]\n    \
                 paths: [\"/admin/*\"]\n"
            )
        } else {
            format!(
                "name: ns-{ns}-svc-{sa}\n    action: allow\n    \
                 from: [spiffe://cluster.local/ns/ns-{ns}/sa/svc-{sa}]\n    \
                 ports: [8080]\n    methods: [GET, POST, PUT]\n    \
                 paths: [\"/api/v1/ns-{ns}/svc-{sa}/*\", /api/v1/status]\n"
            )
        });
    }
    let mut y = String::from("mode: enforce\nrules:\n");
    for r in &rules {
        let _ = write!(y, "  - {r}");
    }
    y
}

/// One request to authorise, and the outcome it must get.
struct Case<'a> {
    name: &'static str,
    peer: &'a SpiffeId,
    method: Method,
    path: &'static str,
    rule: Option<&'static str>,
    verdict: Verdict,
}

fn policy_evaluation(c: &mut C) {
    // A peer that several rules name (its ID, its namespace, the any-peer
    // rule) and one that only the any-peer rule covers.
    let known = SpiffeId::parse("spiffe://cluster.local/ns/ns-0/sa/svc-3").unwrap();
    let stranger = SpiffeId::parse("spiffe://cluster.local/ns/elsewhere/sa/stranger").unwrap();
    let case = |name, peer, method, path, rule, verdict| Case {
        name,
        peer,
        method,
        path,
        rule,
        verdict,
    };
    let cases = [
        case(
            "allow",
            &known,
            Method::POST,
            "/api/v1/ns-0/svc-3/orders",
            Some("ns-0-svc-3"),
            Verdict::Allow,
        ),
        case(
            "deny_rule",
            &known,
            Method::GET,
            "/admin/users",
            Some("ns-0-no-admin"),
            Verdict::Deny,
        ),
        case(
            "default_deny",
            &known,
            Method::DELETE,
            "/api/v1/ns-0/svc-3/orders",
            None,
            Verdict::Deny,
        ),
        case(
            "default_deny_no_candidates",
            &stranger,
            Method::GET,
            "/api/v1/ns-0/svc-3/orders",
            None,
            Verdict::Deny,
        ),
    ];
    for n in [10, 1_000, 10_000] {
        let policy = Policy::from_yaml(&policy_yaml(n), "bench-policy.yaml").unwrap();
        assert_eq!(policy.rules().len(), n);
        let mut g = c.benchmark_group(format!("policy_evaluate/{n}_rules"));
        for c in &cases {
            let req = Request {
                peer: c.peer,
                port: 8080,
                method: &c.method,
                path: c.path,
            };
            let d = policy.evaluate(&req);
            assert_eq!(
                (d.verdict(), d.rule_name()),
                (c.verdict, c.rule),
                "{}",
                c.name
            );
            g.bench_with_input(BenchmarkId::from_parameter(c.name), &req, |b, req| {
                b.iter(|| policy.evaluate(black_box(req)).verdict())
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().with_measurement(ThreadCpuTime(WallTime));
    targets = spiffe_id_parse, path_normalization, header_rewrite, policy_evaluation
}
criterion_main!(hot_path);
