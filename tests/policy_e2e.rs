//! The allow matrix enforced by a real sidecar over real mTLS, per request:
//! the semantics table, path tricks, HTTP/2 streams, audit mode, hot reload,
//! and the `policy check` / `policy lint` commands.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const POLICY: &str = r#"
mode: enforce
rules:
  - name: block-admin
    action: deny
    from: ["*"]
    paths: ["/api/admin/*"]
  - name: orders-api
    action: allow
    from: [spiffe://cluster.local/ns/shop/sa/orders]
    methods: [GET, POST]
    paths: ["/api/*"]
  - name: shop-public
    action: allow
    from: ["spiffe://cluster.local/ns/shop/*"]
    methods: [GET]
    paths: ["/public/*"]
  - name: health
    action: allow
    from: ["*"]
    paths: [/healthz]
"#;

struct Guarded {
    pki: Pki,
    app: RecordingApp,
    sidecar: meshguard::sidecar::app::Running,
    policy_file: std::path::PathBuf,
}

async fn guarded(policy: &str) -> Guarded {
    let pki = Pki::new();
    let app = RecordingApp::start().await;
    let policy_file = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut cfg = inbound_config(pki.identity("server", &id("shop", "api")), app.addr);
    cfg.inbound.as_mut().unwrap().policy = Some(policy_file.clone());
    let sidecar = meshguard::sidecar::app::start(&cfg).await.unwrap();
    Guarded {
        pki,
        app,
        sidecar,
        policy_file,
    }
}

fn client_of(pki: &Pki, ns: &str, sa: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let cert = pki.svid(&id(ns, sa));
    tls_client(Some((&cert.cert_pem, &cert.key_pem)), alpn)
}

async fn status(
    g: &Guarded,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
) -> u16 {
    let raw = tls_raw(g.sidecar.inbound.unwrap(), client.clone(), &format!("{method} {target} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")).await;
    status_of(&raw)
}

#[tokio::test]
async fn semantics_table_over_real_mtls() {
    let g = guarded(POLICY).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    let cart = client_of(&g.pki, "shop", "cart", &[b"http/1.1"]);
    let web = client_of(&g.pki, "web", "frontend", &[b"http/1.1"]);
    let table: &[(&Arc<rustls::ClientConfig>, &str, &str, &str, u16)] = &[
        (&orders, "orders", "GET", "/api/items", 200),
        (&orders, "orders", "POST", "/api/items", 200),
        (&orders, "orders", "DELETE", "/api/items", 403),
        (&orders, "orders", "GET", "/api/admin/users", 403),
        (&orders, "orders", "GET", "/api/admin", 403),
        (&orders, "orders", "GET", "/public/logo.png", 200),
        (&orders, "orders", "GET", "/other", 403),
        (&cart, "cart", "GET", "/public/logo.png", 200),
        (&cart, "cart", "POST", "/public/logo.png", 403),
        (&cart, "cart", "GET", "/api/items", 403),
        (&web, "web", "GET", "/public/logo.png", 403),
        (&web, "web", "GET", "/healthz", 200),
        (&web, "web", "GET", "/healthz/", 403),
        (&web, "web", "GET", "/api/admin/x", 403),
    ];
    let mut allowed = 0;
    for (client, who, method, path, want) in table {
        assert_eq!(
            status(&g, client, method, path).await,
            *want,
            "{who} {method} {path}"
        );
        if *want == 200 {
            allowed += 1;
        }
    }
    assert_eq!(
        g.app.count(),
        allowed,
        "denied requests never reach the app"
    );
    let text = scrape(g.sidecar.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_authz_decisions_total",
            &[("decision", "deny"), ("rule", "block-admin")]
        ),
        Some(3.0)
    );
    assert_eq!(
        series(
            &text,
            "meshguard_authz_decisions_total",
            &[("decision", "deny"), ("rule", "default-deny")]
        ),
        Some(6.0)
    );
    assert_eq!(
        series(
            &text,
            "meshguard_authz_decisions_total",
            &[("decision", "allow"), ("rule", "orders-api")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn denied_body_names_the_reason_not_the_rules() {
    let g = guarded(POLICY).await;
    let web = client_of(&g.pki, "web", "frontend", &[b"http/1.1"]);
    let raw = tls_raw(
        g.sidecar.inbound.unwrap(),
        web,
        "GET /api/admin/x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 403);
    assert!(raw.contains("access denied"), "{raw}");
    assert!(
        !raw.contains("block-admin"),
        "rule names are internals: {raw}"
    );
}

/// Every trick here aims at /api/admin/*, which orders may not call even
/// though it may call /api/*. None may reach the app as an admin path.
#[tokio::test]
async fn path_tricks_never_bypass_a_deny_rule() {
    let g = guarded(POLICY).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    let tricks = [
        "/api/admin/users",
        "/api/%61dmin/users",
        "/api/adm%69n/users",
        "/api/%61%64%6D%69%6E/users",
        "/api/%61%64%6d%69%6e/users",
        "//api/admin/users",
        "/api//admin/users",
        "/api///admin//users",
        "/api/./admin/users",
        "/./api/admin/users",
        "/api/x/../admin/users",
        "/public/../api/admin/users",
        "/api/items/../../api/admin/users",
        "/api/%2e%2e/api/admin/users",
        "/api/%2E%2e/api/admin/users",
        "/api/x/%2e%2e/admin/users",
        "/api/x/.%2e/admin/users",
        "/api/admin;x=1/users",
        "/api;/admin/users",
        "/api/admin/users/..",
        "/api/admin/./",
        "/api/admin%2fusers",
        "/api%2fadmin/users",
        "/api%2Fadmin%2Fusers",
        "/api/admin%5cusers",
        "/api%5cadmin/users",
        "/api/admin/users%00",
        "/api/admin/%zz",
        "/api/admin/%2",
        "/api/x/..%2fadmin/users",
        "/../api/admin/users",
        "/api/admin/users?redirect=/../public",
    ];
    assert!(tricks.len() >= 20);
    for trick in tricks {
        let s = status(&g, &orders, "GET", trick).await;
        assert!(s == 403 || s == 400, "{trick} got {s}");
    }
    let seen = g.app.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|r| !r.target.starts_with("/api/admin")),
        "an admin path reached the app: {seen:?}"
    );
    assert!(
        seen.is_empty(),
        "nothing at all should have reached the app: {seen:?}"
    );
    // The unsafe encodings are 400, not just 403.
    for bad in [
        "/api/admin%2fusers",
        "/api/items%2fx",
        "/api/items%5cx",
        "/api/items%00",
        "/api/%zz",
    ] {
        assert_eq!(status(&g, &orders, "GET", bad).await, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_app_receives_the_normalised_path_that_was_authorized() {
    let g = guarded(POLICY).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    assert_eq!(
        status(&g, &orders, "GET", "/api/./items//x/../y%7E?q=%2F..").await,
        200
    );
    assert_eq!(g.app.last().target, "/api/items/y~?q=%2F..");
    assert_eq!(
        status(&g, &orders, "GET", "/public/%2e%2e/api/items").await,
        200
    );
    assert_eq!(g.app.last().target, "/api/items");
}

#[tokio::test]
async fn every_http2_stream_is_authorized_on_its_own() {
    let g = guarded(POLICY).await;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let client = client_of(&g.pki, "shop", "orders", &[b"h2"]);
    let tls = tls_connect(g.sidecar.inbound.unwrap(), client).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, want) in [
        ("/api/items", 200),
        ("/api/admin/keys", 403),
        ("/api/items/2", 200),
        ("/nope", 403),
    ] {
        let req = http::Request::get(format!("https://api{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{path} on one HTTP/2 connection");
    }
    assert_eq!(g.app.count(), 2);
}

#[tokio::test]
async fn audit_mode_lets_would_deny_requests_pass_and_counts_them() {
    let g = guarded("mode: audit\nrules:\n  - name: health\n    action: allow\n    from: [\"*\"]\n    paths: [/healthz]\n").await;
    let web = client_of(&g.pki, "web", "frontend", &[b"http/1.1"]);
    assert_eq!(status(&g, &web, "GET", "/anything").await, 200);
    assert_eq!(status(&g, &web, "GET", "/healthz").await, 200);
    assert_eq!(g.app.count(), 2);
    let text = scrape(g.sidecar.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_requests_total",
            &[("decision", "audit_would_deny")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "meshguard_requests_total", &[("decision", "allow")]),
        Some(1.0)
    );
    assert_eq!(
        series(
            &text,
            "meshguard_authz_decisions_total",
            &[("decision", "audit_would_deny"), ("rule", "default-deny")]
        ),
        Some(1.0)
    );
}

async fn wait_for_status(g: &Guarded, client: &Arc<rustls::ClientConfig>, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(g, client, "GET", path).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still {s}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn hot_reload_applies_good_policies_and_refuses_bad_ones() {
    let g = guarded(POLICY).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    assert_eq!(status(&g, &orders, "GET", "/api/items").await, 200);

    // A good change takes effect without a restart.
    replace_file(&g.policy_file, "rules: []\n");
    wait_for_status(&g, &orders, "/api/items", 403).await;

    // A bad change is refused and the policy in force stays.
    replace_file(
        &g.policy_file,
        "rules:\n  - name: x\n    action: allow\n    from: [\"spiffe://Bad/ns\"]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while series(
        &scrape(g.sidecar.admin).await,
        "meshguard_reloads_total",
        &[("kind", "policy"), ("result", "failure")],
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "bad policy never attempted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(&g, &orders, "GET", "/api/items").await,
        403,
        "old (deny-all) policy still in force"
    );

    // And the next good one applies again.
    replace_file(&g.policy_file, POLICY);
    wait_for_status(&g, &orders, "/api/items", 200).await;
    let text = scrape(g.sidecar.admin).await;
    assert_eq!(
        series(
            &text,
            "meshguard_reloads_total",
            &[("kind", "policy"), ("result", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &text,
            "meshguard_reloads_total",
            &[("kind", "policy"), ("result", "failure")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn decisions_are_counted_under_the_rule_of_the_policy_in_force_across_reloads() {
    let rule = |name: &str, path: &str| {
        format!("  - name: {name}\n    action: allow\n    from: [\"*\"]\n    paths: [{path}]\n")
    };
    let first = format!("rules:\n{}{}", rule("r-a", "/a"), rule("r-b", "/b"));
    let g = guarded(&first).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    assert_eq!(status(&g, &orders, "GET", "/a").await, 200);
    assert_eq!(status(&g, &orders, "GET", "/b").await, 200);
    // The same paths, other names, in the other order: a rule's place in
    // the file changes, and its count must follow its name.
    replace_file(
        &g.policy_file,
        &format!(
            "rules:\n{}{}",
            rule("b-first", "/b"),
            rule("a-second", "/a")
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while series(
        &scrape(g.sidecar.admin).await,
        "meshguard_reloads_total",
        &[("kind", "policy"), ("result", "success")],
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "the new policy never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&g, &orders, "GET", "/a").await, 200);
    let text = scrape(g.sidecar.admin).await;
    let count = |rule: &str| {
        series(
            &text,
            "meshguard_authz_decisions_total",
            &[("decision", "allow"), ("rule", rule)],
        )
    };
    assert_eq!(count("a-second"), Some(1.0), "{text}");
    assert_eq!(count("r-a"), Some(1.0), "the old rule's count stays");
    assert_eq!(
        count("r-b"),
        Some(1.0),
        "nor is r-b's taken by the rule now in its place"
    );
    assert_eq!(count("b-first"), None, "never decided");
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let g = guarded(POLICY).await;
    let orders = client_of(&g.pki, "shop", "orders", &[b"http/1.1"]);
    // Let the watcher record the current file so that only SIGHUP can
    // explain a second successful reload of unchanged content.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = series(
        &scrape(g.sidecar.admin).await,
        "meshguard_reloads_total",
        &[("kind", "policy"), ("result", "success")],
    )
    .unwrap_or(0.0);
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = series(
            &scrape(g.sidecar.admin).await,
            "meshguard_reloads_total",
            &[("kind", "policy"), ("result", "success")],
        )
        .unwrap_or(0.0);
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&g, &orders, "GET", "/api/items").await, 200);
}

#[tokio::test]
async fn invalid_policy_refuses_to_start_with_file_and_line() {
    let pki = Pki::new();
    let file = pki.dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "rules:\n  - name: a\n    action: allow\n    from: [\"*\"]\n    methods: [FETCH]\n",
    )
    .unwrap();
    let mut cfg = inbound_config(pki.identity("server", &id("shop", "api")), any_port());
    cfg.inbound.as_mut().unwrap().policy = Some(file.clone());
    let err = meshguard::sidecar::app::start(&cfg)
        .await
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:5", file.display())), "{msg}");
}

fn meshguard(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_check_and_lint_via_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let f = file.to_str().unwrap();
    let check = |from: &str, method: &str, path: &str| {
        meshguard(&[
            "policy", "check", "--policy", f, "--from", from, "--method", method, "--path", path,
        ])
    };

    let (code, out, _) = check(
        "spiffe://cluster.local/ns/shop/sa/orders",
        "GET",
        "/api/items",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("allow") && out.contains("orders-api"),
        "{out}"
    );
    let (code, out, _) = check(
        "spiffe://cluster.local/ns/shop/sa/orders",
        "GET",
        "/api/%61dmin/x",
    );
    assert_eq!(code, 1);
    assert!(
        out.starts_with("deny") && out.contains("block-admin") && out.contains("/api/admin/x"),
        "{out}"
    );
    let (code, out, _) = check(
        "spiffe://cluster.local/ns/web/sa/frontend",
        "GET",
        "/api/items",
    );
    assert_eq!(code, 1);
    assert!(out.contains("default deny"), "{out}");
    let (code, _, err) = check("spiffe://Cluster.local/x", "GET", "/");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = check("spiffe://cluster.local/ns/a/sa/b", "GET", "/a%2fb");
    assert_eq!(code, 2);
    assert!(err.contains("400"), "{err}");
    let (code, _, _) = meshguard(&[
        "policy",
        "check",
        "--policy",
        "/nonexistent.yaml",
        "--from",
        "spiffe://td/a",
        "--path",
        "/",
    ]);
    assert_eq!(code, 2);

    let (code, out, _) = meshguard(&["policy", "lint", "--policy", f]);
    assert_eq!(code, 0, "{out}");
    let shadowed = format!("{POLICY}  - name: admin-read\n    action: allow\n    from: [spiffe://cluster.local/ns/shop/sa/orders]\n    paths: [\"/api/admin/*\"]\n  - name: partner\n    action: allow\n    from: [\"spiffe://partner.org/*\"]\n");
    std::fs::write(&file, shadowed).unwrap();
    let (code, out, _) = meshguard(&["policy", "lint", "--policy", f]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin-read"), "{out}");
    assert!(out.contains("partner"), "{out}");
    let (code, out, _) = meshguard(&[
        "policy",
        "lint",
        "--policy",
        f,
        "--trust-domain",
        "cluster.local",
        "--trust-domain",
        "partner.org",
    ]);
    assert_eq!(code, 1);
    assert!(
        !out.contains("partner.org"),
        "known trust domain not reported: {out}"
    );
}

#[test]
fn policy_check_and_lint_know_end_user_token_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        r#"
rules:
  - name: orders-users
    action: allow
    from: [spiffe://cluster.local/ns/edge/sa/gateway]
    paths: ["/orders/*"]
    jwt: {provider: users, scopes: [orders.read]}
  - name: banned
    action: deny
    from: ["*"]
    paths: ["/orders/*"]
    jwt: {provider: users, sub: [banned-*]}
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let check = |token: Option<&str>| {
        let mut args = vec![
            "policy",
            "check",
            "--policy",
            f,
            "--from",
            "spiffe://cluster.local/ns/edge/sa/gateway",
            "--path",
            "/orders/1",
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        meshguard(&args)
    };
    let (code, out, _) = check(None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("401"),
        "no token: the answer is a challenge: {out}"
    );
    let (code, out, _) = check(Some(
        r#"users={"iss":"https://id.example.com","sub":"u1","scope":"orders.read"}"#,
    ));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("orders-users"), "{out}");
    let (code, out, _) = check(Some(r#"users={"iss":"https://id.example.com","sub":"u1"}"#));
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains("401"),
        "a valid token without the scope is 403: {out}"
    );
    let (code, out, _) = check(Some(
        r#"users={"iss":"https://id.example.com","sub":"banned-7","scope":"orders.read"}"#,
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("banned"), "{out}");
    let (code, _, err) = check(Some(r#"users={"sub":"u1"}"#));
    assert_eq!(code, 2, "claims without iss are bad input");
    assert!(err.contains("iss"), "{err}");
    let (code, _, err) = check(Some("users"));
    assert_eq!(code, 2);
    assert!(err.contains("PROVIDER=JSON"), "{err}");

    // Clean as far as tokens go (the allow rule needs the same provider's
    // token, so the deny leaves no tokenless way round), but the provider
    // must be one the sidecar declares.
    let lint = |providers: &[&str]| {
        let mut args = vec!["policy", "lint", "--policy", f];
        for p in providers {
            args.extend(["--jwt-provider", p]);
        }
        meshguard(&args)
    };
    let (code, out, _) = lint(&["users"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = lint(&["partners"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("orders-users") && out.contains("\"users\"") && out.contains("line 3"),
        "{out}"
    );
}
