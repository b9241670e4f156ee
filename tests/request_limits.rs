//! The policy's boundary sections enforced by real sidecars over real mTLS,
//! over HTTP/1.1 and HTTP/2: per-identity rate and concurrency limits (exact
//! 429 counts, `Retry-After`, isolation, a reload through a real sidecar
//! pair), claim headers only from trusted callers, and the strict path
//! profile.

mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::sidecar::app::Running;
use meshguard::sidecar::config::AppProtocol;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpStream;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

/// An inbound of `default/server` in front of `app`, with `policy`.
struct Guarded {
    pki: Pki,
    sidecar: Running,
    policy_file: PathBuf,
}

async fn guarded(policy: &str, app: SocketAddr) -> Guarded {
    guarded_with(policy, app, Default::default()).await
}

async fn guarded_with(policy: &str, app: SocketAddr, app_protocol: AppProtocol) -> Guarded {
    let pki = Pki::new();
    let policy_file = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut cfg = inbound_config(pki.identity("server", &id("default", "server")), app);
    cfg.inbound.as_mut().unwrap().policy = Some(policy_file.clone());
    cfg.inbound.as_mut().unwrap().app_protocol = app_protocol;
    cfg.runtime.poll_interval_ms = 50;
    let sidecar = meshguard::sidecar::app::start(&cfg).await.unwrap();
    Guarded {
        pki,
        sidecar,
        policy_file,
    }
}

/// One request's answer as a client sees it.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// One connection (HTTP/1.1 keep-alive or HTTP/2) to an inbound, made
/// with the SVID of `ns/sa`, or plain to an outbound.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn mtls(g: &Guarded, ns: &str, sa: &str, alpn: &[&[u8]]) -> Conn {
        let cert = g.pki.svid(&id(ns, sa));
        let client = tls_client(Some((&cert.cert_pem, &cert.key_pem)), alpn);
        let tls = tls_connect(g.sidecar.inbound.unwrap(), client).await;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        assert_eq!(h2, alpn == H2);
        Conn::over(TokioIo::new(tls), h2).await
    }

    async fn plain(addr: SocketAddr, h2: bool) -> Conn {
        Conn::over(TokioIo::new(TcpStream::connect(addr).await.unwrap()), h2).await
    }

    async fn over<T>(io: TokioIo<T>, h2: bool) -> Conn
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
        let mut req = Request::get(format!("http://app.test{path}"));
        if matches!(self, Conn::H1(_)) {
            req = req.header("host", "app.test");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        match self {
            Conn::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Conn::H2(s) => s.send_request(req).await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Got {
        let resp = self.send(path, headers).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for_reloads(admin: SocketAddr, result: &str, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = series(
            &scrape(admin).await,
            "meshguard_reloads_total",
            &[("kind", "policy"), ("result", result)],
        );
        if got >= Some(count) {
            return;
        }
        assert!(Instant::now() < deadline, "no policy reload ({result})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A limit nothing refills during a test: exactly `burst` requests pass.
fn burst_policy(burst: u32, extra: &str) -> String {
    format!(
        "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\n{extra}limits:\n  - name: per-caller\n    rate: 0.001\n    burst: {burst}\n"
    )
}

#[tokio::test]
async fn a_burst_gets_exactly_burst_answers_and_429s_with_retry_after_for_the_rest() {
    let app = RecordingApp::start().await;
    let g = guarded(&burst_policy(5, ""), app.addr).await;
    // Two identities, one per HTTP version, so each has a bucket of its own.
    for (sa, alpn) in [("h1-caller", H1), ("h2-caller", H2)] {
        let mut conn = Conn::mtls(&g, "default", sa, alpn).await;
        let mut statuses = Vec::new();
        for _ in 0..12 {
            let got = conn.get("/x", &[]).await;
            if got.status == StatusCode::TOO_MANY_REQUESTS {
                let retry: u64 = got.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                // 1 token at 0.001/s is 1000 s away; capped at an hour.
                assert!((1..=3600).contains(&retry), "{retry}");
                assert!(
                    got.body.contains("per-caller"),
                    "names the limit: {}",
                    got.body
                );
            }
            statuses.push(got.status.as_u16());
        }
        assert_eq!(statuses, [[200; 5].as_slice(), &[429; 7]].concat(), "{sa}");
    }
    assert_eq!(
        app.count(),
        10,
        "only the admitted requests reached the app"
    );
    let text = scrape(g.sidecar.admin).await;
    for sa in ["h1-caller", "h2-caller"] {
        let peer = format!("spiffe://cluster.local/ns/default/sa/{sa}");
        let labels = [
            ("limit", "per-caller"),
            ("peer", peer.as_str()),
            ("kind", "rate"),
        ];
        assert_eq!(
            series(&text, "meshguard_rate_limited_total", &labels),
            Some(7.0)
        );
    }
    let labels = [("decision", "deny"), ("status_class", "4xx")];
    assert_eq!(
        series(&text, "meshguard_requests_total", &labels),
        Some(14.0)
    );
}

#[tokio::test]
async fn one_noisy_identity_never_throttles_another_nor_its_namespace_key() {
    let app = RecordingApp::start().await;
    let policy = "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\nlimits:\n  - name: per-caller\n    rate: 0.001\n    burst: 3\n  - name: shop-namespace\n    from: [\"spiffe://cluster.local/ns/shop/*\"]\n    key: namespace\n    rate: 0.001\n    burst: 4\n";
    let g = guarded(policy, app.addr).await;
    for (i, alpn) in [H1, H2].into_iter().enumerate() {
        let mut noisy = Conn::mtls(&g, "default", &format!("noisy{i}"), alpn).await;
        for _ in 0..50 {
            noisy.get("/x", &[]).await;
        }
        let mut quiet = Conn::mtls(&g, "default", &format!("quiet{i}"), alpn).await;
        for _ in 0..3 {
            assert_eq!(quiet.get("/x", &[]).await.status, 200);
        }
        assert_eq!(quiet.get("/x", &[]).await.status, 429);
    }
    // The namespace limit counts every ID of `shop` together: 4 in all,
    // each caller within its own per-caller burst of 3.
    let mut passed = 0;
    for sa in ["a", "b", "c"] {
        let mut conn = Conn::mtls(&g, "shop", sa, H2).await;
        for _ in 0..2 {
            let got = conn.get("/x", &[]).await;
            if got.status == 200 {
                passed += 1;
            } else {
                assert!(got.body.contains("shop-namespace"), "{}", got.body);
            }
        }
    }
    assert_eq!(passed, 4);
}

/// An app whose response headers come at once and whose body ends only
/// after `hold`, so a request is in flight for that long after its head.
async fn slow_body_app(hold: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    let end = futures_util::stream::once(async move {
                        tokio::time::sleep(hold).await;
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"done")))
                    });
                    Ok::<_, Infallible>(http::Response::new(StreamBody::new(end)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_concurrency_cap_holds_a_slot_until_the_response_body_ends() {
    let app = slow_body_app(Duration::from_millis(400)).await;
    let policy = "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\nlimits:\n  - name: in-flight\n    concurrency: 1\n";
    let g = guarded(policy, app).await;
    for alpn in [H1, H2] {
        let mut first = Conn::mtls(&g, "default", "caller", alpn).await;
        let mut second = Conn::mtls(&g, "default", "caller", alpn).await;
        let head = first.send("/slow", &[]).await;
        assert_eq!(
            head.status(),
            200,
            "the head arrived; the body is still coming"
        );
        let refused = second.get("/slow", &[]).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.headers["retry-after"], "1");
        assert!(
            refused.body.contains("concurrency limited"),
            "{}",
            refused.body
        );
        // Another identity has its own slot meanwhile.
        let mut other = Conn::mtls(&g, "default", "other", alpn).await;
        assert_eq!(other.get("/slow", &[]).await.status, 200);
        assert_eq!(head.into_body().collect().await.unwrap().to_bytes(), "done");
        assert_eq!(
            second.get("/slow", &[]).await.status,
            200,
            "slot released at body end"
        );
    }
}

#[tokio::test]
async fn a_reload_through_a_sidecar_pair_keeps_the_buckets_of_limits_that_remain() {
    let app = RecordingApp::start().await;
    // The recording app speaks HTTP/1.1 only, whatever its caller spoke.
    let g = guarded_with(&burst_policy(3, ""), app.addr, AppProtocol::Http1).await;
    let identity = g.pki.identity("client", &id("default", "client"));
    let mut out_cfg = outbound_config(
        identity,
        "app.test",
        g.sidecar.inbound.unwrap(),
        id("default", "server"),
    );
    out_cfg.runtime.poll_interval_ms = 50;
    let outbound = meshguard::sidecar::app::start(&out_cfg).await.unwrap();
    let out = outbound.outbound.unwrap();
    // The app speaks HTTP/1.1 and HTTP/2 (h2c) to its outbound; both are
    // one caller, `default/client`, to the inbound.
    let mut h1 = Conn::plain(out, false).await;
    let mut h2 = Conn::plain(out, true).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let conn = if i % 2 == 0 { &mut h1 } else { &mut h2 };
        statuses.push(conn.get("/x", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);

    // A new policy with the same limit (and a new rule): the drained
    // bucket stays drained, a reload is no refill.
    let extra = "  - name: health\n    action: allow\n    from: [\"*\"]\n    paths: [/healthz]\n";
    replace_file(&g.policy_file, &burst_policy(3, extra));
    wait_for_reloads(g.sidecar.admin, "success", 1.0).await;
    assert_eq!(h1.get("/x", &[]).await.status, 429);
    assert_eq!(h2.get("/x", &[]).await.status, 429);

    // A bad policy is refused; the limit in force stays.
    replace_file(
        &g.policy_file,
        &burst_policy(3, "").replace("rate: 0.001", "rate: -5"),
    );
    wait_for_reloads(g.sidecar.admin, "failure", 1.0).await;
    assert_eq!(h2.get("/x", &[]).await.status, 429);

    // Removing the limit lifts it; bringing it back starts a new bucket.
    replace_file(
        &g.policy_file,
        "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\n",
    );
    wait_for_reloads(g.sidecar.admin, "success", 2.0).await;
    assert_eq!(h1.get("/x", &[]).await.status, 200);
    assert_eq!(h2.get("/x", &[]).await.status, 200);
    assert_eq!(app.count(), 5);
}

const CLAIMS: &str = r#"
rules:
  - name: all
    action: allow
    from: ["*"]
claim_headers:
  headers:
    - name: x-authenticated-user-id
      from: [spiffe://cluster.local/ns/edge/sa/gateway]
    - name: x-user-roles
      from: [spiffe://cluster.local/ns/edge/sa/gateway]
      on_untrusted: deny
"#;

/// (caller ns, sa, headers sent, status, user id the app sees)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    u16,
    Option<&'a str>,
);

/// Callers × claim headers, over both HTTP versions: what the app gets.
#[tokio::test]
async fn claim_headers_reach_the_app_only_from_the_callers_allowed_to_assert_them() {
    let app = RecordingApp::start().await;
    let g = guarded(CLAIMS, app.addr).await;
    let user = ("x-authenticated-user-id", "alice");
    let roles = ("x-user-roles", "admin");
    let table: [Row; 5] = [
        ("edge", "gateway", &[user, roles], 200, Some("alice")),
        ("edge", "gateway", &[user], 200, Some("alice")),
        ("edge", "metrics", &[user], 200, None),
        ("shop", "orders", &[user], 200, None),
        ("shop", "orders", &[user, roles], 403, None),
    ];
    for alpn in [H1, H2] {
        for (ns, sa, headers, status, seen_user) in table {
            let before = app.count();
            let mut conn = Conn::mtls(&g, ns, sa, alpn).await;
            let got = conn.get("/x", headers).await;
            assert_eq!(got.status.as_u16(), status, "{ns}/{sa} {headers:?}");
            if status == 403 {
                assert!(got.body.contains("x-user-roles"), "{}", got.body);
                assert_eq!(
                    app.count(),
                    before,
                    "a refused request never reaches the app"
                );
                continue;
            }
            let seen = app.last();
            let user_seen = seen.header("x-authenticated-user-id");
            assert_eq!(user_seen.first().copied(), seen_user, "{ns}/{sa}");
            assert_eq!(user_seen.len(), usize::from(seen_user.is_some()));
        }
    }
    let text = scrape(g.sidecar.admin).await;
    let stripped = [("header", "x-authenticated-user-id"), ("action", "strip")];
    assert_eq!(
        series(&text, "meshguard_untrusted_claim_headers_total", &stripped),
        Some(4.0)
    );
    let denied = [("header", "x-user-roles"), ("action", "deny")];
    assert_eq!(
        series(&text, "meshguard_untrusted_claim_headers_total", &denied),
        Some(2.0)
    );
}

const STRICT: &str = r#"
path_profile: strict_case_insensitive
rules:
  - name: no-admin
    action: deny
    from: ["*"]
    paths: ["/admin/*"]
  - name: all
    action: allow
    from: ["*"]
"#;

#[tokio::test]
async fn the_strict_profile_refuses_what_a_lenient_app_would_read_as_another_path() {
    let app = RecordingApp::start().await;
    let g = guarded(STRICT, app.addr).await;
    for alpn in [H1, H2] {
        let mut conn = Conn::mtls(&g, "default", "caller", alpn).await;
        for (path, status, says) in [
            ("/admin./x", 400, "ends in '.'"),
            ("/admin%20/x", 400, "ends in whitespace"),
            ("/%2561dmin/x", 400, "double-encoded"),
            ("/a/%252e%252e/admin", 400, "double-encoded"),
            ("/admin::$DATA", 400, "NTFS stream"),
            ("/ADMIN/x", 403, "denied"),
            ("/Admin/x", 403, "denied"),
            ("/Public/Index.html", 200, "app ok"),
        ] {
            let got = conn.get(path, &[]).await;
            assert_eq!(got.status.as_u16(), status, "{path}: {}", got.body);
            assert!(got.body.contains(says), "{path}: {}", got.body);
        }
        // The app gets the path as sent (normalised), not lowercased.
        assert_eq!(app.last().target, "/Public/Index.html");
    }
    assert_eq!(app.count(), 2);
}

/// `meshguard policy check` applies the policy's path profile as the
/// sidecar does: a strict refusal is bad input (exit 2, the 400), and
/// case-insensitive matching decides by the folded path.
#[test]
fn policy_check_applies_the_path_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, STRICT).unwrap();
    let check = |path: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
            .args(["policy", "check", "--policy", file.to_str().unwrap()])
            .args([
                "--from",
                "spiffe://cluster.local/ns/default/sa/caller",
                "--path",
                path,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = check("/ADMIN/users");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no-admin"), "{text}");
    let (code, text) = check("/admin./users");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("strict profile") && text.contains("ends in '.'"),
        "{text}"
    );
    assert_eq!(check("/Public/x").0, Some(0));
}
