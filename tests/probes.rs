//! The probe forwarder and the shutdown endpoint over real sockets: real
//! apps (HTTP, HTTPS with an untrusted certificate, TCP, h2c gRPC health)
//! probed through `/app-probe/<key>`, as kubelet calls it.

mod probe_support;

use meshguard::kube::probe::{
    probes_from_env, serve_shutdown, shutdown_listen_from_env, KUBE_PROBE_USER_AGENT,
};
use probe_support::apps::{grpc_app, http_app, tls_server, App};
use probe_support::harness::{
    call, closed_port, forwarder, grpc_probe, http_probe, local, probe, tcp_probe,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

#[tokio::test]
async fn http_probes_answer_by_the_final_status() {
    let app = http_app(local(), None).await;
    let closed = closed_port().await;
    let p = app.port();
    let hdrs =
        json!([{"name": "X-Probe", "value": "yes"}, {"name": "Host", "value": "probe.example"}]);
    let mut probes = serde_json::Map::new();
    let cases: &[(&str, u16, &str, Value, u16, &str)] = &[
        ("app/healthz", p, "/healthz", json!([]), 200, "ok\n"),
        ("app/fail", p, "/fail", json!([]), 503, "status 500\n"),
        ("app/teapot", p, "/teapot", json!([]), 503, "status 418\n"),
        ("app/redirect", p, "/redirect", json!([]), 200, "ok\n"),
        (
            "app/relative",
            p,
            "/dir/redirect-relative",
            json!([]),
            200,
            "ok\n",
        ),
        ("app/absolute", p, "/redirect-abs", json!([]), 200, "ok\n"),
        (
            "app/redirect-fail",
            p,
            "/redirect-fail",
            json!([]),
            503,
            "status 500\n",
        ),
        ("app/away", p, "/redirect-away", json!([]), 200, "ok\n"),
        (
            "app/nowhere",
            p,
            "/redirect-nowhere",
            json!([]),
            200,
            "ok\n",
        ),
        (
            "app/loop",
            p,
            "/loop",
            json!([]),
            503,
            "stopped after 10 redirects\n",
        ),
        (
            "app/query",
            p,
            "/query?probe=1&x=%20y",
            json!([]),
            200,
            "ok\n",
        ),
        ("app/header", p, "/header", hdrs.clone(), 200, "ok\n"),
        (
            "app/no-header",
            p,
            "/header",
            json!([]),
            503,
            "status 403\n",
        ),
        (
            "app/missing",
            p,
            "/nothing-here",
            json!([]),
            503,
            "status 404\n",
        ),
        (
            "app/closed",
            closed,
            "/healthz",
            json!([]),
            503,
            "connection refused\n",
        ),
    ];
    for (key, port, path, headers, _, _) in cases {
        probes.insert(
            (*key).into(),
            http_probe(*port, "HTTP", path, headers.clone()),
        );
    }
    let f = forwarder(Value::Object(probes)).await;
    for (key, _, path, _, status, body) in cases {
        app.clear();
        assert_eq!(
            probe(&f, key).await,
            (*status, (*body).to_owned()),
            "{key} ({path})"
        );
        let targets = app.targets();
        match *key {
            "app/redirect" => assert_eq!(targets, ["/redirect", "/healthz"]),
            "app/relative" => assert_eq!(targets, ["/dir/redirect-relative", "/healthz"]),
            "app/away" => assert_eq!(targets, ["/redirect-away"]),
            "app/loop" => assert_eq!(targets, vec!["/loop"; 10]),
            "app/closed" => assert!(targets.is_empty()),
            _ => assert_eq!(targets.first().map(String::as_str), Some(*path), "{key}"),
        }
    }
    // The recorded headers win, Host included, and follow a relative redirect.
    app.clear();
    let f2 = forwarder(json!({"app/h": http_probe(p, "HTTP", "/redirect", hdrs)})).await;
    assert_eq!(probe(&f2, "app/h").await.0, 200);
    let last = app.last();
    assert_eq!(
        (
            last.target.as_str(),
            last.header("host"),
            last.header("x-probe")
        ),
        ("/healthz", Some("probe.example"), Some("yes"))
    );
}

#[tokio::test]
async fn a_slow_app_times_out_within_the_probe_timeout() {
    let app = http_app(local(), None).await;
    let f =
        forwarder(json!({"app/slow": http_probe(app.port(), "HTTP", "/slow", json!([]))})).await;
    let start = Instant::now();
    assert_eq!(
        probe(&f, "app/slow").await,
        (503, "timeout after 1s\n".to_owned())
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn nothing_of_the_request_reaches_the_app() {
    let app = http_app(local(), None).await;
    let f =
        forwarder(json!({"app/liveness": http_probe(app.port(), "HTTP", "/healthz", json!([]))}))
            .await;
    let evil = [
        ("x-evil", "1"),
        ("authorization", "Bearer secret"),
        ("user-agent", "curl/8"),
        ("accept", "text/html"),
    ];
    let (status, _) = call(
        f.addr,
        "GET",
        "/app-probe/app/liveness?path=/admin&x=1",
        &evil,
    )
    .await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.target, "/healthz");
    assert_eq!(
        seen.header("host"),
        Some(format!("127.0.0.1:{}", app.port()).as_str())
    );
    assert_eq!(seen.header("user-agent"), Some(KUBE_PROBE_USER_AGENT));
    assert!(KUBE_PROBE_USER_AGENT.starts_with("kube-probe/1."));
    assert_eq!(seen.header("accept"), Some("*/*"));
    assert_eq!(seen.header("connection"), Some("close"));
    assert_eq!(seen.header("x-evil"), None);
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn only_get_and_head_of_recorded_keys() {
    let app = http_app(local(), None).await;
    let f =
        forwarder(json!({"app/liveness": http_probe(app.port(), "HTTP", "/healthz", json!([]))}))
            .await;
    for path in [
        "/app-probe/app/readiness",
        "/app-probe/",
        "/app-probe/app/liveness/x",
        "/app-probe/app",
        "/healthz",
        "/",
        "/app-probe//app/liveness",
        "/APP-PROBE/app/liveness",
    ] {
        assert_eq!(call(f.addr, "GET", path, &[]).await.0, 404, "{path}");
        assert_eq!(call(f.addr, "POST", path, &[]).await.0, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        assert_eq!(
            call(f.addr, method, "/app-probe/app/liveness", &[]).await.0,
            405,
            "{method}"
        );
    }
    assert!(app.targets().is_empty(), "{:?}", app.targets());
    assert_eq!(
        call(f.addr, "HEAD", "/app-probe/app/liveness", &[]).await,
        (200, String::new())
    );
    assert_eq!(
        call(f.addr, "GET", "/app-probe/app/liveness?anything", &[])
            .await
            .0,
        200
    );
    assert_eq!(app.targets(), ["/healthz", "/healthz"]);
}

#[tokio::test]
async fn https_probes_do_not_verify_the_certificate() {
    let app = http_app(local(), Some(tls_server(&[&rustls::version::TLS13]))).await;
    let p = app.port();
    let f = forwarder(json!({
        "app/ok": http_probe(p, "HTTPS", "/healthz", json!([])),
        "app/fail": http_probe(p, "HTTPS", "/fail", json!([])),
        "app/redirect": http_probe(p, "HTTPS", "/redirect-abs", json!([])),
        "app/plain": http_probe(p, "HTTP", "/healthz", json!([])),
    }))
    .await;
    assert_eq!(probe(&f, "app/ok").await, (200, "ok\n".into()));
    assert_eq!(probe(&f, "app/fail").await, (503, "status 500\n".into()));
    app.clear();
    assert_eq!(probe(&f, "app/redirect").await.0, 200);
    assert_eq!(app.targets(), ["/redirect-abs", "/healthz"]);
    let (status, reason) = probe(&f, "app/plain").await;
    assert_eq!(status, 503);
    assert!(
        reason.starts_with("http: ") && reason.ends_with('\n') && reason.lines().count() == 1,
        "{reason:?}"
    );
}

#[tokio::test]
async fn https_probes_speak_tls12_when_built_with_it() {
    let Some(tls12) = rustls::ALL_VERSIONS
        .iter()
        .copied()
        .find(|v| v.version == rustls::ProtocolVersion::TLSv1_2)
    else {
        eprintln!("skipped: this rustls build has no TLS 1.2 (enable its tls12 feature)");
        return;
    };
    let app = http_app(local(), Some(tls_server(&[tls12]))).await;
    let f =
        forwarder(json!({"app/ok": http_probe(app.port(), "HTTPS", "/healthz", json!([]))})).await;
    assert_eq!(probe(&f, "app/ok").await, (200, "ok\n".into()));
}

#[tokio::test]
async fn tcp_probes_only_connect() {
    let listener = TcpListener::bind(local()).await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = closed_port().await;
    let f = forwarder(json!({"app/open": tcp_probe(open), "app/closed": tcp_probe(closed)})).await;
    assert_eq!(probe(&f, "app/open").await, (200, "ok\n".into()));
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(1), listener.accept())
        .await
        .unwrap()
        .unwrap();
    // Closed at once, without a byte.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        probe(&f, "app/closed").await,
        (503, "connection refused\n".into())
    );
}

#[tokio::test]
async fn grpc_probes_check_health_over_h2c() {
    let app = grpc_app().await;
    let http = http_app(local(), None).await;
    let p = app.port();
    let closed = closed_port().await;
    let f = forwarder(json!({
        "app/default": grpc_probe(p, None),
        "app/ok": grpc_probe(p, Some("ok")),
        "app/down": grpc_probe(p, Some("down")),
        "app/unimplemented": grpc_probe(p, Some("unimplemented")),
        "app/unknown": grpc_probe(p, Some("nope")),
        "app/http1": grpc_probe(http.port(), None),
        "app/closed": grpc_probe(closed, None),
    }))
    .await;
    assert_eq!(probe(&f, "app/default").await, (200, "ok\n".into()));
    let seen = app.last();
    assert_eq!(seen.target, "/grpc.health.v1.Health/Check");
    assert_eq!(seen.header("content-type"), Some("application/grpc"));
    assert_eq!(seen.header("te"), Some("trailers"));
    assert_eq!(seen.header("x-test-service"), Some(""));
    assert_eq!(probe(&f, "app/ok").await, (200, "ok\n".into()));
    assert_eq!(app.last().header("x-test-service"), Some("ok"));
    assert_eq!(
        probe(&f, "app/down").await,
        (503, "grpc status NOT_SERVING\n".into())
    );
    assert_eq!(
        probe(&f, "app/unimplemented").await,
        (503, "grpc error UNIMPLEMENTED\n".into())
    );
    assert_eq!(
        probe(&f, "app/unknown").await,
        (503, "grpc error NOT_FOUND\n".into())
    );
    let (status, reason) = probe(&f, "app/http1").await;
    assert!(status == 503 && reason.starts_with("grpc: "), "{reason:?}");
    assert_eq!(
        probe(&f, "app/closed").await,
        (503, "connection refused\n".into())
    );
}

#[tokio::test]
async fn falls_back_to_ipv6_loopback() {
    let Ok(v6) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    let port = v6.local_addr().unwrap().port();
    drop(v6);
    if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        eprintln!("skipped: 127.0.0.1:{port} is in use");
        return;
    }
    let app: App = http_app(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)), None).await;
    let f = forwarder(json!({
        "app/http": http_probe(port, "HTTP", "/healthz", json!([])),
        "app/tcp": tcp_probe(port),
    }))
    .await;
    assert_eq!(probe(&f, "app/http").await, (200, "ok\n".into()));
    assert_eq!(probe(&f, "app/tcp").await, (200, "ok\n".into()));
    assert_eq!(
        app.last().header("host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_run() {
    let app = http_app(local(), None).await;
    let f =
        forwarder(json!({"app/counted": http_probe(app.port(), "HTTP", "/counted", json!([]))}))
            .await;
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(call(f.addr, "GET", "/app-probe/app/counted", &[])))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    let runs = app.targets().len();
    assert!(
        (1..=2).contains(&runs),
        "{runs} runs for 20 concurrent requests"
    );
}

#[tokio::test]
async fn the_forwarder_stops_on_shutdown() {
    let f = forwarder(json!({})).await;
    assert_eq!(call(f.addr, "GET", "/app-probe/a/b", &[]).await.0, 404);
    f.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), f.task)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(f.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_endpoint_fires_once_on_post() {
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, mut fired) = mpsc::channel(4);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve_shutdown(listener, trigger, stop_rx));
    assert_eq!(call(addr, "GET", "/shutdown", &[]).await.0, 405);
    assert_eq!(call(addr, "POST", "/", &[]).await.0, 404);
    assert_eq!(call(addr, "POST", "/shutdown/now", &[]).await.0, 404);
    assert!(fired.try_recv().is_err());
    assert_eq!(
        call(addr, "POST", "/shutdown", &[]).await,
        (202, "draining\n".into())
    );
    assert_eq!(
        call(addr, "POST", "/shutdown?x", &[]).await,
        (202, "draining\n".into())
    );
    tokio::time::timeout(Duration::from_secs(1), fired.recv())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fired.try_recv().is_err(), "fired twice");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn environment_variables() {
    // The only test of this binary that touches these variables.
    let clear = || {
        for v in [
            "MESHGUARD_PROBE_LISTEN",
            "MESHGUARD_APP_PROBES",
            "MESHGUARD_SHUTDOWN_LISTEN",
        ] {
            std::env::remove_var(v);
        }
    };
    clear();
    assert!(probes_from_env().unwrap().is_none());
    assert!(shutdown_listen_from_env().unwrap().is_none());
    std::env::set_var("MESHGUARD_PROBE_LISTEN", "[::]:15020");
    let e = probes_from_env().unwrap_err().to_string();
    assert!(e.contains("MESHGUARD_APP_PROBES"), "{e}");
    std::env::set_var("MESHGUARD_APP_PROBES", "[1, 2]");
    let e = probes_from_env().unwrap_err().to_string();
    assert!(
        e.starts_with("MESHGUARD_APP_PROBES is not a valid app probe map"),
        "{e}"
    );
    std::env::set_var(
        "MESHGUARD_APP_PROBES",
        json!({"app/liveness": tcp_probe(8080)}).to_string(),
    );
    let (addr, probes) = probes_from_env().unwrap().unwrap();
    assert_eq!((addr.port(), probes.len()), (15020, 1));
    std::env::set_var("MESHGUARD_SHUTDOWN_LISTEN", "0.0.0.0:15021");
    let e = shutdown_listen_from_env().unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
    std::env::set_var("MESHGUARD_SHUTDOWN_LISTEN", "127.0.0.1:15021");
    assert_eq!(
        shutdown_listen_from_env().unwrap(),
        Some("127.0.0.1:15021".parse().unwrap())
    );
    clear();
}
