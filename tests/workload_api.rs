//! Identity from the SPIFFE Workload API, against a test server that plays
//! the SPIRE agent over a unix socket (`workload_api_support`): SVIDs
//! minted by our rcgen code, rotated, pushed with bundles, the agent
//! stopped and restarted. The sidecar under test is the real app started
//! in-process; its clients are real mTLS clients that record which
//! certificate (by serial) each handshake was served.

mod support;
mod workload_api_support;

use meshguard::dev::certs::{DevCa, Issued, LeafSpec};
use meshguard::sidecar::app::Running;
use meshguard::sidecar::config::{Config, IdentityConfig, WorkloadApiConfig};
use meshguard::sidecar::identity::SpiffeId;
use meshguard::sidecar::workload_api::proto::{X509Svid, X509SvidResponse};
use std::collections::HashMap;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::{id, inbound_config, series, tls_client, Pki, RecordingApp};
use workload_api_support::load::{handshake_get, metric, presented, serial, until, Load, WAIT};
use workload_api_support::{bundles_message, svid_entry, svid_message, Agent};

/// The sidecar's SPIFFE ID in every test.
fn server_id() -> SpiffeId {
    id("default", "server")
}

/// One test's world: a CA, the agent, the app behind the sidecar.
struct World {
    pki: Pki,
    agent: Agent,
    app: RecordingApp,
}

impl World {
    async fn new() -> World {
        let pki = Pki::new();
        let agent = Agent::new(&pki.dir.path().join("agent.sock"));
        World {
            agent,
            pki,
            app: RecordingApp::start().await,
        }
    }

    fn config(&self, hint: Option<&str>) -> Config {
        let identity = IdentityConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            bundle: PathBuf::new(),
            federated_bundles: Default::default(),
            workload_api: Some(WorkloadApiConfig {
                socket: Some(format!("unix://{}", self.agent.socket.display())),
                hint: hint.map(str::to_owned),
            }),
        };
        let mut cfg = inbound_config(identity, self.app.addr);
        cfg.runtime.poll_interval_ms = 50;
        cfg
    }

    /// A fresh SVID of the sidecar, as the agent would send it.
    fn mint(&self) -> (Issued, X509Svid) {
        let issued = self.pki.svid(&server_id());
        let entry = svid_entry(server_id().as_str(), &issued, &self.pki.ca, "");
        (issued, entry)
    }

    /// Pushes a fresh SVID (no federation) and returns its serial.
    fn rotate(&self) -> Vec<u8> {
        let (issued, entry) = self.mint();
        self.agent.push_svid(svid_message(entry, &[]));
        serial(&issued.der)
    }

    /// An mTLS client of `default/client` in our trust domain.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let issued = self.pki.svid(&id("default", "client"));
        tls_client(Some((&issued.cert_pem, &issued.key_pem)), &[b"http/1.1"])
    }
}

async fn started(world: &mut World) -> (Running, Vec<u8>) {
    world.agent.start().await;
    world
        .agent
        .push_bundles(bundles_message(&[(support::TD, &world.pki.ca)]));
    let first = world.rotate();
    let running = tokio::time::timeout(WAIT, meshguard::sidecar::app::start(&world.config(None)))
        .await
        .expect("the first SVID arrives")
        .unwrap();
    assert_eq!(presented(&running), first);
    (running, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rotations_under_load_fail_no_request_and_new_handshakes_get_the_newest() {
    let mut world = World::new().await;
    let (running, first) = started(&mut world).await;
    let load = Load::start(running.inbound.unwrap(), world.client(), first);
    for g in 1..=100 {
        load.rotate_to(&world.agent, &running, g, world.mint())
            .await;
    }
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 101, "every generation was served at least once: {ok}");
    let accepted = [("kind", "svid"), ("result", "accepted")];
    assert_eq!(
        metric(&running, "meshguard_workload_api_updates_total", &accepted),
        101.0
    );
    assert!(
        metric(
            &running,
            "meshguard_workload_api_last_update_timestamp_seconds",
            &[("kind", "svid")]
        ) > 0.0
    );
    assert_eq!(
        metric(&running, "meshguard_workload_api_stream_up", &[]),
        1.0
    );
    println!("100 rotations: {ok} requests on new connections, 0 failed");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_mid_load_fails_no_request_and_is_reconnected() {
    let mut world = World::new().await;
    let (running, first) = started(&mut world).await;
    let load = Load::start(running.inbound.unwrap(), world.client(), first);
    until("load running", || load.served(0) > 5).await;
    world.agent.stop().await;
    until("the stream is seen down", || {
        metric(&running, "meshguard_workload_api_stream_up", &[]) == 0.0
    })
    .await;
    // The last SVID keeps serving while the agent is away.
    let before = load.served(0);
    until("requests while the agent is down", || {
        load.served(0) > before + 20
    })
    .await;
    world.agent.start().await;
    until("reconnected", || {
        metric(&running, "meshguard_workload_api_stream_up", &[]) == 1.0
            && metric(&running, "meshguard_workload_api_reconnects_total", &[]) >= 1.0
    })
    .await;
    // The new stream delivers: the next SVID is presented.
    load.rotate_to(&world.agent, &running, 1, world.mint())
        .await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    println!(
        "agent restart: {ok} requests, 0 failed, reconnects {}",
        metric(&running, "meshguard_workload_api_reconnects_total", &[])
    );
    running.stop().await;
}

/// Pushes `msg` and waits for its refusal under `reason`.
async fn refused(world: &World, running: &Running, msg: X509SvidResponse, reason: &str) {
    let labels = [("kind", "svid"), ("result", "refused"), ("reason", reason)];
    let before = metric(running, "meshguard_workload_api_updates_total", &labels);
    world.agent.push_svid(msg);
    until(reason, || {
        metric(running, "meshguard_workload_api_updates_total", &labels) > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_last_good_svid_keeps_serving() {
    let mut world = World::new().await;
    let (running, first) = started(&mut world).await;
    let ca = &world.pki.ca;
    // Another workload's SVID: the agent may not change who we are.
    let other = world.pki.svid(&id("default", "other"));
    let entry = svid_entry(id("default", "other").as_str(), &other, ca, "");
    refused(
        &world,
        &running,
        svid_message(entry, &[]),
        "identity_changed",
    )
    .await;
    // Expired.
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::svid(server_id().as_str(), time::Duration::hours(1));
    spec.not_before = now - time::Duration::hours(2);
    spec.not_after = now - time::Duration::hours(1);
    let expired = ca.issue(&spec).unwrap();
    let entry = svid_entry(server_id().as_str(), &expired, ca, "");
    refused(&world, &running, svid_message(entry, &[]), "invalid").await;
    // A certificate with another certificate's key.
    let (a, b) = (world.pki.svid(&server_id()), world.pki.svid(&server_id()));
    let mut entry = svid_entry(server_id().as_str(), &a, ca, "");
    entry.x509_svid_key = workload_api_support::key_der_of(&b.key_pem);
    refused(&world, &running, svid_message(entry, &[]), "invalid").await;
    // Signed by a CA outside our bundle.
    let rogue = DevCa::generate(support::TD, time::Duration::days(1)).unwrap();
    let forged = rogue
        .issue(&LeafSpec::svid(
            server_id().as_str(),
            time::Duration::hours(1),
        ))
        .unwrap();
    let entry = svid_entry(server_id().as_str(), &forged, ca, "");
    refused(&world, &running, svid_message(entry, &[]), "untrusted").await;
    // A message whose spiffe_id field disagrees with its certificate.
    let (_, mut entry) = world.mint();
    entry.spiffe_id = id("default", "liar").to_string();
    refused(&world, &running, svid_message(entry, &[]), "invalid").await;
    // Bundles without our own trust domain.
    let before = metric(
        &running,
        "meshguard_workload_api_updates_total",
        &[("kind", "bundles"), ("reason", "no_own_bundle")],
    );
    world
        .agent
        .push_bundles(bundles_message(&[("other.org", &rogue)]));
    until("bundles refused", || {
        metric(
            &running,
            "meshguard_workload_api_updates_total",
            &[("kind", "bundles"), ("reason", "no_own_bundle")],
        ) > before
    })
    .await;
    // Through all of it, the first SVID is presented and handshakes work.
    assert_eq!(presented(&running), first);
    let (served, status) = handshake_get(running.inbound.unwrap(), world.client())
        .await
        .unwrap();
    assert_eq!((served, status), (first, 200));
    assert_eq!(
        metric(
            &running,
            "meshguard_reloads_total",
            &[("kind", "svid"), ("result", "failure")]
        ),
        5.0
    );
    // And a good update after them is taken.
    let next = world.rotate();
    until("the good SVID after the bad ones", || {
        presented(&running) == next
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_trust_domain_added_then_removed_closes_its_live_connections() {
    use http_body_util::BodyExt;
    let mut world = World::new().await;
    let (running, _) = started(&mut world).await;
    let addr = running.inbound.unwrap();
    let other = Pki::for_domain("other.org");
    let foreign_id = SpiffeId::parse("spiffe://other.org/ns/default/sa/client").unwrap();
    let foreign = other.svid(&foreign_id);
    let foreign_client = tls_client(Some((&foreign.cert_pem, &foreign.key_pem)), &[b"http/1.1"]);
    assert!(
        handshake_get(addr, foreign_client.clone()).await.is_err(),
        "other.org is not trusted yet"
    );

    world.agent.push_bundles(bundles_message(&[
        (support::TD, &world.pki.ca),
        ("other.org", &other.ca),
    ]));
    until("other.org trusted", || {
        running.store.bundles().get("other.org").is_some()
    })
    .await;
    let (_, status) = handshake_get(addr, foreign_client.clone()).await.unwrap();
    assert_eq!(status, 200);
    // Two keep-alive connections: one from other.org, one from our own domain.
    let mut live = Vec::new();
    for client in [foreign_client.clone(), world.client()] {
        let tls = support::tls_connect(addr, client).await;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = || {
            http::Request::get("/")
                .header("host", "server.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        };
        let resp = sender.send_request(req()).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        live.push((sender, conn, req));
    }

    world
        .agent
        .push_bundles(bundles_message(&[(support::TD, &world.pki.ca)]));
    let (mut own_sender, own_conn, req) = live.pop().unwrap();
    let (_foreign_sender, foreign_conn, _) = live.pop().unwrap();
    // The other.org connection is closed by the sidecar...
    tokio::time::timeout(WAIT, foreign_conn)
        .await
        .expect("the other.org connection is closed")
        .unwrap()
        .ok();
    // ...a new one is refused, and our own domain's connection lives on.
    assert!(
        handshake_get(addr, foreign_client).await.is_err(),
        "other.org is no longer trusted"
    );
    let resp = own_sender.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!own_conn.is_finished());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_svid_with_the_agent_down_at_start() {
    let mut world = World::new().await;
    let cfg: &'static Config = Box::leak(Box::new(world.config(None)));
    let starting = meshguard::sidecar::app::begin(cfg).await.unwrap();
    let admin = starting.admin;
    let finish = tokio::spawn(starting.finish());
    let ready = || support::http_get(admin, "admin", "/ready", &[]);
    let (status, body) = ready().await;
    assert_eq!(status, 503);
    assert!(body.contains("waiting for the first SVID"), "{body}");
    // Up, but with no identity for us yet (SPIRE: PermissionDenied).
    world.agent.start().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready().await.0, 503);
    let text = support::scrape(admin).await;
    assert_eq!(
        series(&text, "meshguard_workload_api_stream_up", &[]),
        Some(0.0)
    );
    assert!(
        series(&text, "meshguard_workload_api_reconnects_total", &[]).unwrap() >= 1.0,
        "{text}"
    );
    world
        .agent
        .push_bundles(bundles_message(&[(support::TD, &world.pki.ca)]));
    let first = world.rotate();
    let running = tokio::time::timeout(WAIT, finish)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(presented(&running), first);
    assert_eq!(ready().await, (http::StatusCode::OK, "ready\n".to_owned()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_calls_without_the_security_header_and_meshguard_sends_it() {
    let mut world = World::new().await;
    let (running, _) = started(&mut world).await;
    // A client of the same agent without the header, as the agent sees it.
    let channel = workload_api_support::channel_to(&world.agent.socket).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        meshguard::sidecar::workload_api::proto::X509SvidRequest,
        meshguard::sidecar::workload_api::proto::X509SvidResponse,
    >::default();
    let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
    let refused = grpc
        .server_streaming(tonic::Request::new(Default::default()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "security header missing from request");
    // meshguard's three calls all carried it (and it got its SVID).
    assert_eq!(
        world.agent.observed.without_header.load(Ordering::SeqCst),
        1
    );
    let with = &world.agent.observed.with_header;
    until("the three calls", || with.load(Ordering::SeqCst) >= 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(with.load(Ordering::SeqCst), 3);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hint_chooses_among_several_svids_and_jwt_bundles_reach_the_seam() {
    let mut world = World::new().await;
    world.agent.start().await;
    let external = world.pki.svid(&id("default", "server-external"));
    let internal = world.pki.svid(&server_id());
    let mut msg = svid_message(
        svid_entry(
            id("default", "server-external").as_str(),
            &external,
            &world.pki.ca,
            "external",
        ),
        &[],
    );
    msg.svids.push(svid_entry(
        server_id().as_str(),
        &internal,
        &world.pki.ca,
        "internal",
    ));
    world.agent.push_svid(msg);
    world.agent.push_jwt(
        meshguard::sidecar::workload_api::proto::JwtBundlesResponse {
            bundles: HashMap::from([(
                format!("spiffe://{}", support::TD),
                b"{\"keys\":[]}".to_vec(),
            )]),
        },
    );
    let cfg = world.config(Some("internal"));
    let start = meshguard::sidecar::app::start(&cfg);
    let running = tokio::time::timeout(WAIT, start).await.unwrap().unwrap();
    assert_eq!(running.own_id, server_id());
    let (served, _) = handshake_get(running.inbound.unwrap(), world.client())
        .await
        .unwrap();
    assert_eq!(served, serial(&internal.der));
    let mut jwt = running.jwt_bundles.clone().expect("the Workload API seam");
    let bundles = jwt.wait_for(|b| !b.is_empty()).await.unwrap().clone();
    assert_eq!(bundles[support::TD].as_ref(), b"{\"keys\":[]}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_that_expires_while_the_agent_is_away_is_never_presented() {
    let mut world = World::new().await;
    world.agent.start().await;
    world
        .agent
        .push_bundles(bundles_message(&[(support::TD, &world.pki.ca)]));
    let short = world
        .pki
        .ca
        .issue(&LeafSpec::svid(
            server_id().as_str(),
            time::Duration::seconds(3),
        ))
        .unwrap();
    let entry = svid_entry(server_id().as_str(), &short, &world.pki.ca, "");
    world.agent.push_svid(svid_message(entry, &[]));
    let cfg = world.config(None);
    let running = tokio::time::timeout(WAIT, meshguard::sidecar::app::start(&cfg))
        .await
        .unwrap()
        .unwrap();
    let addr = running.inbound.unwrap();
    let ready = || support::http_get(running.admin, "admin", "/ready", &[]);
    assert_eq!(ready().await.0, 200);
    world.agent.stop().await;
    // Served while valid, even with the agent gone...
    let (served, status) = handshake_get(addr, world.client()).await.unwrap();
    assert_eq!((served, status), (serial(&short.der), 200));
    // ...never once expired: handshakes fail closed, readiness goes false.
    let deadline = tokio::time::Instant::now() + WAIT;
    while running.store.svid_is_valid_now() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handshake_get(addr, world.client()).await.is_err());
    let (status, body) = ready().await;
    assert_eq!(status, 503);
    assert!(body.contains("expired"), "{body}");
    // The agent back with a fresh SVID: served and ready again.
    world.agent.start().await;
    let fresh = world.rotate();
    until("the fresh SVID", || presented(&running) == fresh).await;
    let (served, status) = handshake_get(addr, world.client()).await.unwrap();
    assert_eq!((served, status), (fresh, 200));
    assert_eq!(ready().await.0, 200);
    running.stop().await;
}

/// Both sidecars of a call on the Workload API (each its own agent socket,
/// as a node agent tells workloads apart): the caller's identity, proved
/// with its streamed SVID, is what the server's app is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_two_sidecars_both_on_the_workload_api() {
    let mut world = World::new().await;
    let (server, _) = started(&mut world).await;
    let mut client_agent = Agent::new(&world.pki.dir.path().join("client-agent.sock"));
    client_agent.start().await;
    let client_id = id("default", "client");
    let issued = world.pki.svid(&client_id);
    let entry = svid_entry(client_id.as_str(), &issued, &world.pki.ca, "");
    client_agent.push_svid(svid_message(entry, &[]));
    let mut cfg = support::outbound_config(
        world.config(None).identity,
        "server.test",
        server.inbound.unwrap(),
        server_id(),
    );
    cfg.identity.workload_api.as_mut().unwrap().socket =
        Some(format!("unix://{}", client_agent.socket.display()));
    let client = tokio::time::timeout(WAIT, meshguard::sidecar::app::start(&cfg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.own_id, client_id);
    let (status, _) =
        support::http_get(client.outbound.unwrap(), "server.test", "/hello", &[]).await;
    assert_eq!(status, 200);
    let seen = world.app.last();
    assert_eq!(
        seen.header("x-meshguard-client-id"),
        vec![client_id.as_str()]
    );
    client.stop().await;
    server.stop().await;
}

/// An agent without `FetchX509Bundles`: the SVID stream alone is enough,
/// its federated bundles are used, and nothing reconnects in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_bundles_call_is_served_by_the_svid_stream_alone() {
    let mut world = World::new().await;
    world
        .agent
        .observed
        .no_bundles_call
        .store(true, Ordering::SeqCst);
    world.agent.start().await;
    let other = Pki::for_domain("other.org");
    let (_, entry) = world.mint();
    world
        .agent
        .push_svid(svid_message(entry, &[("other.org", &other.ca)]));
    let cfg = world.config(None);
    let running = tokio::time::timeout(WAIT, meshguard::sidecar::app::start(&cfg))
        .await
        .unwrap()
        .unwrap();
    let foreign_id = SpiffeId::parse("spiffe://other.org/ns/default/sa/client").unwrap();
    let foreign = other.svid(&foreign_id);
    let client = tls_client(Some((&foreign.cert_pem, &foreign.key_pem)), &[b"http/1.1"]);
    let (_, status) = handshake_get(running.inbound.unwrap(), client)
        .await
        .unwrap();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&running, "meshguard_workload_api_stream_up", &[]),
        1.0
    );
    assert_eq!(
        metric(&running, "meshguard_workload_api_reconnects_total", &[]),
        0.0
    );
    running.stop().await;
}

/// SPIRE behind an upstream CA sends the leaf followed by intermediates,
/// DER concatenated: the chain is split, checked to the root and presented whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_with_intermediates_is_split_checked_and_presented_whole() {
    let mut world = World::new().await;
    let (running, _) = started(&mut world).await;
    let intermediate = world
        .pki
        .ca
        .intermediate(support::TD, "spire intermediate", time::Duration::days(1))
        .unwrap();
    let leaf = intermediate
        .issue(&LeafSpec::svid(
            server_id().as_str(),
            time::Duration::hours(1),
        ))
        .unwrap();
    let mut entry = svid_entry(server_id().as_str(), &leaf, &world.pki.ca, "");
    entry
        .x509_svid
        .extend(workload_api_support::der_of(intermediate.cert_pem()));
    world.agent.push_svid(svid_message(entry, &[]));
    until("the chained SVID", || {
        presented(&running) == serial(&leaf.der)
    })
    .await;
    assert_eq!(running.store.svid().key.cert.len(), 2);
    let (served, status) = handshake_get(running.inbound.unwrap(), world.client())
        .await
        .unwrap();
    assert_eq!((served, status), (serial(&leaf.der), 200));
    running.stop().await;
}
