//! End-user JWTs through a real inbound sidecar: tokens signed in the test
//! with keys made in the test (RSA and P-256 via aws-lc-rs), JWKS served
//! over real HTTPS (a hyper + rustls server with a certificate from our own
//! dev CA), callers on real mTLS over HTTP/1.1 and HTTP/2. Every refusal is
//! asserted by its status and the reason in `WWW-Authenticate`, so a check
//! that stops refusing fails its test.

mod support;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::dev::certs::LeafSpec;
use meshguard::sidecar::app::Running;
use meshguard::sidecar::config::JwtConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{id, Pki, RecordingApp};
use tokio::net::{TcpListener, TcpStream};

const H1: &[u8] = b"http/1.1";
const H2: &[u8] = b"h2";
const ISS: &str = "https://id.example.com";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key made in the test, with its JWK.
enum Signer {
    Rsa(RsaKeyPair, &'static str),
    Ec(EcdsaKeyPair, &'static str),
}

impl Signer {
    fn rsa(kid: &'static str) -> Signer {
        Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), kid)
    }
    fn ec(kid: &'static str) -> Signer {
        Signer::Ec(
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            kid,
        )
    }
    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(..) => "RS256",
            Signer::Ec(..) => "ES256",
        }
    }
    fn jwk(&self, usage: &str) -> Value {
        match self {
            Signer::Rsa(k, kid) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": kid, "use": usage, "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(k, kid) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": usage,
                       "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
        }
    }
    /// The public key's bytes, as an attacker would use them for HS256.
    fn public_bytes(&self) -> Vec<u8> {
        match self {
            Signer::Rsa(k, _) => k.public_key().as_ref().to_vec(),
            Signer::Ec(k, _) => k.public_key().as_ref().to_vec(),
        }
    }
    fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match self {
            Signer::Rsa(k, _) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            Signer::Ec(k, _) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }
    fn sign(&self, claims: &Value) -> String {
        let kid = match self {
            Signer::Rsa(_, kid) | Signer::Ec(_, kid) => *kid,
        };
        self.sign_raw(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": kid}),
            claims,
        )
    }
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Good claims for the `users` provider.
fn user_claims(sub: &str) -> Value {
    json!({"iss": ISS, "sub": sub, "aud": ["orders"], "exp": now() + 600, "iat": now(),
           "scope": "orders.read profile", "tenant": "acme"})
}

/// A JWKS endpoint over HTTPS; `None` in `doc` answers 503.
struct JwksServer {
    url: String,
    ca: std::path::PathBuf,
    doc: Arc<Mutex<Option<String>>>,
}

async fn jwks_server(pki: &Pki, doc: Value) -> JwksServer {
    let mut spec = LeafSpec::svid("spiffe://cluster.local/jwks", time::Duration::hours(1));
    spec.uris.clear();
    spec.dns = vec!["localhost".into()];
    spec.common_name = "localhost".into();
    let issued = pki.ca.issue(&spec).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(meshguard::sidecar::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let doc = Arc::new(Mutex::new(Some(doc.to_string())));
    let served = doc.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let body = served.lock().unwrap().clone();
                    async move {
                        let resp = match body {
                            Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                            None => {
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                r
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    JwksServer {
        url: format!("https://localhost:{port}/.well-known/jwks.json"),
        ca: pki.bundle_path(),
        doc,
    }
}

const POLICY: &str = r#"
rules:
  - name: orders-read
    action: allow
    from: ["*"]
    methods: [GET]
    paths: ["/orders/*"]
    jwt:
      provider: users
      scopes: [orders.read]
      claims: {tenant: acme}
  - name: health
    action: allow
    from: ["*"]
    paths: [/healthz]
"#;

/// Added where the `workloads` (JWT-SVID) provider exists.
const INTERNAL_RULE: &str = r#"
  - name: internal
    action: allow
    from: ["*"]
    paths: ["/internal/*"]
    jwt: {provider: workloads}
"#;

/// A sidecar in front of a recording app, with `jwt` (YAML) and [`POLICY`].
struct World {
    pki: Pki,
    server: Running,
    app: RecordingApp,
    clients: [(&'static str, Arc<rustls::ClientConfig>); 2],
}

async fn world(pki: Pki, jwt: &str) -> World {
    world_with(pki, jwt, POLICY).await
}

async fn world_with(pki: Pki, jwt: &str, policy_text: &str) -> World {
    let app = RecordingApp::start().await;
    let identity = pki.identity("server", &id("default", "server"));
    let mut config = support::inbound_config(identity, app.addr);
    config.runtime.poll_interval_ms = 100;
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text).unwrap();
    let inbound = config.inbound.as_mut().unwrap();
    inbound.policy = Some(policy);
    let jwt: JwtConfig = serde_norway::from_str(jwt).unwrap();
    inbound.jwt = Some(jwt);
    config.validate().unwrap();
    let server = meshguard::sidecar::app::start(&config).await.unwrap();
    let gw = pki.svid(&id("edge", "gateway"));
    let client = |alpn: &[u8]| support::tls_client(Some((&gw.cert_pem, &gw.key_pem)), &[alpn]);
    World {
        clients: [("HTTP/1.1", client(H1)), ("HTTP/2", client(H2))],
        pki,
        server,
        app,
    }
}

fn users_url(jwks: &JwksServer, refresh: u64, stale: u64) -> String {
    format!(
        r#"
providers:
  - name: users
    issuers: ["{ISS}"]
    audiences: [orders]
    jwks: {{url: "{}", ca: "{}", refresh_interval_s: {refresh}, max_stale_s: {stale}}}
    claim_headers: {{sub: x-user-id, tenant: x-tenant}}
"#,
        jwks.url,
        jwks.ca.display()
    )
}

/// One GET over mTLS; the status, response headers and body.
async fn call(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("server.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
    let mut req = Request::get(format!("http://server.test{path}"));
    if !h2 {
        req = req.header("host", "server.test");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

impl World {
    async fn get(&self, client: usize, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("x-user-id", "forged-admin")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let (status, h, _) = call(
            self.server.inbound.unwrap(),
            self.clients[client].1.clone(),
            path,
            &headers,
        )
        .await;
        (status, h)
    }

    /// Asserts a 401 whose challenge names `reason` (or has no error when `None`).
    async fn refused(&self, path: &str, token: Option<&str>, reason: Option<&str>) {
        for (c, (version, _)) in self.clients.iter().enumerate() {
            let before = self.app.count();
            let (status, h) = self.get(c, path, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{version}: {reason:?}");
            let challenge = h
                .get("www-authenticate")
                .expect("a 401 carries WWW-Authenticate")
                .to_str()
                .unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"cluster.local\""),
                "{challenge}"
            );
            match reason {
                Some(r) => {
                    assert!(
                        challenge.contains("error=\"invalid_token\""),
                        "{version}: {challenge}"
                    );
                    assert!(
                        challenge.contains(r),
                        "{version}: expected {r:?} in {challenge}"
                    );
                }
                None => assert!(!challenge.contains("error="), "{version}: {challenge}"),
            }
            assert_eq!(
                self.app.count(),
                before,
                "{version}: a refused request reached the app"
            );
        }
    }

    async fn allowed(&self, path: &str, token: &str) {
        for (c, (version, _)) in self.clients.iter().enumerate() {
            let (status, _) = self.get(c, path, Some(token)).await;
            assert_eq!(status, StatusCode::OK, "{version}");
        }
    }
}

#[tokio::test]
async fn valid_tokens_pass_and_set_claim_headers_over_both_versions() {
    let pki = Pki::new();
    let (rsa, ec) = (Signer::rsa("r1"), Signer::ec("e1"));
    let jwks = jwks_server(&pki, json!({"keys": [rsa.jwk("sig"), ec.jwk("sig")]})).await;
    let w = world(pki, &users_url(&jwks, 300, 3600)).await;
    let token = rsa.sign(&user_claims("alice"));
    wait_for(&w, "/orders/1", &token).await;
    for (c, (version, _)) in w.clients.iter().enumerate() {
        for (signer, sub) in [(&rsa, "alice"), (&ec, "bob")] {
            let token = signer.sign(&user_claims(sub));
            let (status, _) = w.get(c, "/orders/1", Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{version} {}", signer.alg());
            let seen = w.app.last();
            assert_eq!(
                seen.header("x-user-id"),
                vec![sub],
                "{version}: the verified sub, not the caller's copy"
            );
            assert_eq!(seen.header("x-tenant"), vec!["acme"]);
            assert_eq!(
                seen.header("authorization").len(),
                1,
                "the token is forwarded by default"
            );
        }
    }
    // The same token again is answered from the cache.
    let metrics = support::scrape(w.server.admin).await;
    let cached = support::series(
        &metrics,
        "meshguard_jwt_validations_total",
        &[("provider", "users"), ("result", "cached")],
    );
    assert!(cached.unwrap_or(0.0) >= 1.0, "{metrics}");
    // Without a token, a caller-sent x-user-id never reaches the app.
    let (status, _) = w.get(0, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(w.app.last().header("x-user-id").is_empty());
}

/// Waits for the first JWKS fetch (the watcher fetches at start).
async fn wait_for(w: &World, path: &str, token: &str) {
    for _ in 0..100 {
        if w.get(0, path, Some(token)).await.0 == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("token never accepted");
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_its_reason() {
    let pki = Pki::new();
    let rsa = Signer::rsa("r1");
    let jwks = jwks_server(&pki, json!({"keys": [rsa.jwk("sig")]})).await;
    let w = world(pki, &users_url(&jwks, 300, 3600)).await;
    wait_for(&w, "/orders/1", &rsa.sign(&user_claims("alice"))).await;
    w.refused("/orders/1", None, None).await;

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(user_claims("alice").to_string().as_bytes())
    );
    w.refused("/orders/1", Some(&none), Some("algorithm not allowed"))
        .await;
    let none_sig = format!("{none}c2ln");
    w.refused("/orders/1", Some(&none_sig), Some("algorithm not allowed"))
        .await;

    // The classic confusion: an RS256 key's public bytes used as an HS256 secret.
    let confused = hs256(
        &rsa.public_bytes(),
        &json!({"alg": "HS256", "kid": "r1"}),
        &user_claims("alice"),
    );
    w.refused("/orders/1", Some(&confused), Some("algorithm not allowed"))
        .await;
    let jwk_text = rsa.jwk("sig").to_string();
    let confused = hs256(
        jwk_text.as_bytes(),
        &json!({"alg": "HS256", "kid": "r1"}),
        &user_claims("alice"),
    );
    w.refused("/orders/1", Some(&confused), Some("algorithm not allowed"))
        .await;

    let mut c = user_claims("alice");
    c["exp"] = json!(now() - 3600);
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("token expired"))
        .await;
    let mut c = user_claims("alice");
    c["nbf"] = json!(now() + 3600);
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("not yet valid"))
        .await;
    let mut c = user_claims("alice");
    c["aud"] = json!("payments");
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("audience"))
        .await;
    let mut c = user_claims("alice");
    c["iss"] = json!("https://evil.example.com");
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("issuer"))
        .await;
    let mut c = user_claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("malformed"))
        .await;

    let stranger = Signer::rsa("r2");
    w.refused(
        "/orders/1",
        Some(&stranger.sign(&user_claims("alice"))),
        Some("kid"),
    )
    .await;
    // A key nobody published, under a published kid: the signature fails.
    let impostor = Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), "r1");
    w.refused(
        "/orders/1",
        Some(&impostor.sign(&user_claims("alice"))),
        Some("signature"),
    )
    .await;

    // Tampered payload: the signature of alice's token on mallory's claims.
    let good = rsa.sign(&user_claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(user_claims("mallory").to_string().as_bytes()),
        parts[2]
    );
    w.refused("/orders/1", Some(&tampered), Some("signature"))
        .await;

    let mut c = user_claims("alice");
    c["padding"] = json!("x".repeat(9 * 1024));
    w.refused("/orders/1", Some(&rsa.sign(&c)), Some("larger"))
        .await;
    w.refused("/orders/1", Some("not-a-jwt"), Some("malformed"))
        .await;
}

#[tokio::test]
async fn valid_token_with_claims_the_rule_does_not_allow_is_403() {
    let pki = Pki::new();
    let rsa = Signer::rsa("r1");
    let jwks = jwks_server(&pki, json!({"keys": [rsa.jwk("sig")]})).await;
    let w = world(pki, &users_url(&jwks, 300, 3600)).await;
    wait_for(&w, "/orders/1", &rsa.sign(&user_claims("alice"))).await;
    let mut no_scope = user_claims("alice");
    no_scope["scope"] = json!("profile");
    let mut other_tenant = user_claims("alice");
    other_tenant["tenant"] = json!("globex");
    for claims in [no_scope, other_tenant] {
        for (c, (version, _)) in w.clients.iter().enumerate() {
            let (status, h) = w.get(c, "/orders/1", Some(&rsa.sign(&claims))).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{version}: {claims}");
            assert!(h.get("www-authenticate").is_none());
        }
    }
    // A path no rule allows stays 403 with or without a token.
    let (status, _) = w
        .get(0, "/admin", Some(&rsa.sign(&user_claims("alice"))))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn jwks_down_keeps_keys_within_the_stale_bound_then_fails_closed() {
    let pki = Pki::new();
    let rsa = Signer::rsa("r1");
    let jwks = jwks_server(&pki, json!({"keys": [rsa.jwk("sig")]})).await;
    let w = world(pki, &users_url(&jwks, 1, 3)).await;
    let token = rsa.sign(&user_claims("alice"));
    wait_for(&w, "/orders/1", &token).await;
    *jwks.doc.lock().unwrap() = None;
    // Within the bound (3 s after the last good fetch) the keys still serve.
    w.allowed("/orders/1", &rsa.sign(&user_claims("bob"))).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    // A fresh token (no cache entry) and the cached one are both refused.
    w.refused(
        "/orders/1",
        Some(&rsa.sign(&user_claims("carol"))),
        Some("no verification keys"),
    )
    .await;
    w.refused("/orders/1", Some(&token), Some("no verification keys"))
        .await;
    let metrics = support::scrape(w.server.admin).await;
    assert!(
        support::series(
            &metrics,
            "meshguard_jwks_fetches_total",
            &[("provider", "users"), ("result", "http")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn no_key_ever_fetched_fails_closed() {
    let pki = Pki::new();
    let rsa = Signer::rsa("r1");
    let jwks = jwks_server(&pki, json!({"keys": []})).await;
    *jwks.doc.lock().unwrap() = None;
    let w = world(pki, &users_url(&jwks, 1, 3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.refused(
        "/orders/1",
        Some(&rsa.sign(&user_claims("alice"))),
        Some("no verification keys"),
    )
    .await;
}

#[tokio::test]
async fn key_rotation_in_the_jwks_is_followed() {
    let pki = Pki::new();
    let (old, new) = (Signer::rsa("2026-01"), Signer::ec("2026-02"));
    let jwks = jwks_server(&pki, json!({"keys": [old.jwk("sig")]})).await;
    let w = world(pki, &users_url(&jwks, 1, 60)).await;
    let old_token = old.sign(&user_claims("alice"));
    wait_for(&w, "/orders/1", &old_token).await;
    let new_token = new.sign(&user_claims("alice"));
    w.refused("/orders/1", Some(&new_token), Some("kid")).await;
    // The issuer publishes the new key beside the old one, then retires the old.
    *jwks.doc.lock().unwrap() = Some(json!({"keys": [old.jwk("sig"), new.jwk("sig")]}).to_string());
    wait_for(&w, "/orders/1", &new_token).await;
    w.allowed("/orders/1", &old_token).await;
    *jwks.doc.lock().unwrap() = Some(json!({"keys": [new.jwk("sig")]}).to_string());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Even the cached old token: its entry was made with keys no longer in force.
    w.refused("/orders/1", Some(&old_token), Some("kid")).await;
    w.allowed("/orders/1", &new_token).await;
}

#[tokio::test]
async fn jwt_svids_need_their_audience_and_a_spiffe_subject() {
    let pki = Pki::new();
    let rsa = Signer::rsa("u1");
    let jwks = jwks_server(&pki, json!({"keys": [rsa.jwk("sig")]})).await;
    let svid_key = Signer::ec("td-1");
    let bundle = pki.dir.path().join("jwt-bundle.json");
    std::fs::write(
        &bundle,
        json!({"keys": [svid_key.jwk("jwt-svid")], "spiffe_refresh_hint": 300}).to_string(),
    )
    .unwrap();
    let jwt = format!(
        "{}  - name: workloads\n    kind: spiffe\n    trust_domain: cluster.local\n    audiences: [spiffe://cluster.local/ns/shop/sa/orders]\n    algorithms: [ES256]\n    jwks: {{file: \"{}\"}}\n    header: x-jwt-svid\n",
        users_url(&jwks, 300, 3600),
        bundle.display()
    );
    let w = world_with(pki, &jwt, &format!("{POLICY}{INTERNAL_RULE}")).await;
    let svid = |aud: Option<&str>, sub: &str| {
        let mut c =
            json!({"iss": "spiffe://cluster.local", "sub": sub, "exp": now() + 300, "iat": now()});
        if let Some(a) = aud {
            c["aud"] = json!([a]);
        }
        svid_key.sign(&c)
    };
    let orders = "spiffe://cluster.local/ns/shop/sa/orders";
    let caller = "spiffe://cluster.local/ns/shop/sa/cart";
    let w = &w;
    let call_with = |token: String| async move {
        let mut out = Vec::new();
        for (_, client) in w.clients.iter() {
            let (status, _, _) = call(
                w.server.inbound.unwrap(),
                client.clone(),
                "/internal/stock",
                &[("x-jwt-svid", &token)],
            )
            .await;
            out.push(status);
        }
        out
    };
    assert_eq!(
        call_with(svid(Some(orders), caller)).await,
        [StatusCode::OK; 2]
    );
    assert_eq!(
        call_with(svid(None, caller)).await,
        [StatusCode::UNAUTHORIZED; 2],
        "no audience"
    );
    assert_eq!(
        call_with(svid(
            Some("spiffe://cluster.local/ns/shop/sa/payments"),
            caller
        ))
        .await,
        [StatusCode::UNAUTHORIZED; 2]
    );
    assert_eq!(
        call_with(svid(Some(orders), "alice")).await,
        [StatusCode::UNAUTHORIZED; 2],
        "sub not a SPIFFE ID"
    );
    assert_eq!(
        call_with(svid(Some(orders), "spiffe://other.org/ns/x/sa/y")).await,
        [StatusCode::UNAUTHORIZED; 2],
        "other trust domain"
    );
    // A user token in the SVID header is not a JWT-SVID.
    assert_eq!(
        call_with(rsa.sign(&user_claims("alice"))).await,
        [StatusCode::UNAUTHORIZED; 2]
    );
    // The bundle file is hot-reloaded: a rotated key takes over.
    let rotated = Signer::ec("td-2");
    std::fs::write(
        &bundle,
        json!({"keys": [rotated.jwk("jwt-svid")]}).to_string(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call_with(svid(Some(orders), caller)).await,
        [StatusCode::UNAUTHORIZED; 2],
        "old key gone"
    );
    let token = rotated.sign(
        &json!({"iss": "spiffe://cluster.local", "sub": caller, "aud": orders, "exp": now() + 300}),
    );
    assert_eq!(call_with(token).await, [StatusCode::OK; 2]);
    // A key marked for another use in a JWT bundle is not taken.
    std::fs::write(&bundle, json!({"keys": [svid_key.jwk("sig")]}).to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call_with(svid(Some(orders), caller)).await,
        [StatusCode::UNAUTHORIZED; 2],
        "a bad bundle keeps the old keys"
    );
    let _ = &w.pki;
}
