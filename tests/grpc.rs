//! gRPC and HTTP/2 end to end through two sidecars started in-process:
//! a real tonic client speaks h2c to the client sidecar's outbound, the
//! call crosses as mTLS (HTTP/2, or an HTTP/1.1-configured route, which
//! HTTP/2 requests still cross on HTTP/2), and the server sidecar hands it
//! to a real tonic server as h2c. Every gRPC feature the issue lists is
//! driven from the client and checked on what the other end received.

mod grpc_support;
mod support;

use grpc_support::*;
use meshguard::sidecar::app::Running;
use meshguard::sidecar::tls::UpstreamProtocol;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tonic::{Code, Request};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

struct Pair {
    client: EchoClient,
    observed: Arc<Observed>,
    outbound: SocketAddr,
    _sidecars: (Running, Running),
    _pki: Pki,
}

/// The tonic server behind an inbound (optionally with `policy`), and an
/// outbound route to it whose hop is `hop`, with a tonic client on it.
async fn pair_with(hop: UpstreamProtocol, policy: Option<&str>, app: Option<SocketAddr>) -> Pair {
    let (server, observed) = start_server().await;
    let pki = Pki::new();
    let mut in_cfg = inbound_config(
        pki.identity("server", &id("default", "server")),
        app.unwrap_or(server),
    );
    if let Some(policy) = policy {
        let file = pki.dir.path().join("policy.yaml");
        std::fs::write(&file, policy).unwrap();
        in_cfg.inbound.as_mut().unwrap().policy = Some(file);
    }
    let inbound = meshguard::sidecar::app::start(&in_cfg).await.unwrap();
    let peer = inbound.inbound.unwrap();
    let identity = pki.identity("client", &id("default", "client"));
    let mut out_cfg = outbound_config(identity, "unused", peer, id("default", "server"));
    let out = out_cfg.outbound.as_mut().unwrap();
    out.protocol = hop;
    out.routes[0].host = None;
    out.routes[0].listen = Some(any_port());
    let outbound = meshguard::sidecar::app::start(&out_cfg).await.unwrap();
    let addr = outbound.route_listeners[0];
    Pair {
        client: EchoClient::connect(addr).await,
        observed,
        outbound: addr,
        _sidecars: (inbound, outbound),
        _pki: pki,
    }
}

async fn pair(hop: UpstreamProtocol) -> Pair {
    pair_with(hop, None, None).await
}

const HOPS: [UpstreamProtocol; 2] = [UpstreamProtocol::Http2, UpstreamProtocol::Http1];

#[tokio::test]
async fn unary_calls_cross_on_either_hop_with_the_authenticated_identity() {
    for hop in HOPS {
        let mut p = pair(hop).await;
        let mut request = Request::new(Msg {
            text: "echo".into(),
            data: b"payload".to_vec(),
            count: 7,
        });
        // A spoofed identity header must not reach the server.
        request.metadata_mut().insert(
            "x-meshguard-client-id",
            "spiffe://cluster.local/ns/evil/sa/admin".parse().unwrap(),
        );
        let resp = p
            .client
            .unary(request)
            .await
            .unwrap_or_else(|s| panic!("{hop:?}: {s:?}"));
        assert_eq!(
            resp.metadata().get("x-header").unwrap(),
            "leading",
            "{hop:?}"
        );
        let msg = resp.into_inner();
        assert_eq!(
            msg.text, CLIENT_ID,
            "{hop:?}: the server saw the proven identity"
        );
        assert_eq!(
            (msg.data.as_slice(), msg.count),
            (&b"payload"[..], 7),
            "{hop:?}"
        );
    }
}

#[tokio::test]
async fn a_status_with_details_and_trailing_metadata_arrives_whole() {
    for hop in HOPS {
        let mut p = pair(hop).await;
        let status = p
            .client
            .unary(Request::new(Msg::text("fail")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{hop:?}");
        assert_eq!(status.message(), "bad thing");
        assert_eq!(status.details(), b"details!");
        assert_eq!(status.metadata().get("x-custom").unwrap(), "trailing value");
        let blob = status
            .metadata()
            .get_bin("x-blob-bin")
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(blob.as_ref(), &[0, 1, 2, 255]);
    }
}

#[tokio::test]
async fn server_streaming_ends_with_its_trailers() {
    let mut p = pair(UpstreamProtocol::Http2).await;
    let req = Msg {
        count: 50,
        ..Msg::text("ok")
    };
    let mut stream = p
        .client
        .server_stream(Request::new(req))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        seen.push(msg.count);
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());

    // Messages first, then a failure status in the trailers after them.
    let req = Msg {
        count: 3,
        ..Msg::text("fail")
    };
    let mut stream = p
        .client
        .server_stream(Request::new(req))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await.unwrap().unwrap().count, i);
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.metadata().get("x-custom").unwrap(), "trailing value");
}

#[tokio::test]
async fn client_streaming_counts_every_message() {
    let mut p = pair(UpstreamProtocol::Http2).await;
    let messages = (0..200).map(|_| Msg {
        data: vec![7; 1000],
        ..Msg::default()
    });
    let resp = p
        .client
        .client_stream(Request::new(tokio_stream::iter(messages)))
        .await
        .unwrap();
    let msg = resp.into_inner();
    assert_eq!((msg.count, msg.text.as_str()), (200, "200000"));
}

#[tokio::test]
async fn bidi_streams_interleave_with_backpressure() {
    let mut p = pair(UpstreamProtocol::Http2).await;
    // The client sends one message at a time and waits for its echo: a
    // proxy that buffered a whole direction would deadlock here.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut responses = p
        .client
        .bidi(Request::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
        .await
        .unwrap()
        .into_inner();
    for i in 0..100u32 {
        tx.send(Msg {
            count: i,
            data: vec![1; 4096],
            ..Msg::default()
        })
        .await
        .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("echo arrives before the next message is sent")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.count, i + 1);
    }
    drop(tx);
    assert!(
        responses.message().await.unwrap().is_none(),
        "the stream ends with OK"
    );
}

#[tokio::test]
async fn sixteen_mib_messages_cross_both_ways() {
    for hop in HOPS {
        let mut p = pair(hop).await;
        let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = Msg {
            data: data.clone(),
            ..Msg::text("echo")
        };
        let resp = p.client.unary(Request::new(req)).await.unwrap();
        assert!(
            resp.into_inner().data == data,
            "{hop:?}: 16 MiB echoed intact"
        );
    }
}

#[tokio::test]
async fn a_deadline_is_passed_on_and_enforced() {
    let mut p = pair(UpstreamProtocol::Http2).await;
    // The deadline as the header alone: tonic's client would otherwise end
    // the call itself, and this test is about the server receiving it.
    let mut req = Request::new(Msg::text("slow"));
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let started = Instant::now();
    let status = p.client.unary(req).await.unwrap_err();
    // tonic's server answers an expired grpc-timeout with CANCELLED
    // ("Timeout expired"); what matters is that it came from the server.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ended at the deadline, not the server's 3 s"
    );
    wait_for(
        || p.observed.cancelled.load(Ordering::SeqCst) == 1,
        "the server's handler is dropped",
    )
    .await;

    // With the client's own deadline the call also ends on time.
    let mut req = Request::new(Msg::text("slow"));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = p.client.unary(req).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_cancelled_call_is_cancelled_at_the_server() {
    for hop in HOPS {
        let p = pair(hop).await;
        let mut client = EchoClient::connect(p.outbound).await;
        let call = tokio::spawn(async move { client.unary(Request::new(Msg::text("hang"))).await });
        wait_for(
            || p.observed.calls.load(Ordering::SeqCst) == 1,
            "the call reaches the server",
        )
        .await;
        call.abort();
        wait_for(
            || p.observed.cancelled.load(Ordering::SeqCst) == 1,
            "the reset reaches the server through both sidecars",
        )
        .await;
    }
}

const POLICY: &str = r#"
mode: enforce
rules:
  - name: echo-unary
    action: allow
    from: [spiffe://cluster.local/ns/default/sa/client]
    paths: [/test.Echo/Unary]
"#;

#[tokio::test]
async fn a_denied_method_is_permission_denied_and_never_reaches_the_server() {
    let mut p = pair_with(UpstreamProtocol::Http2, Some(POLICY), None).await;
    let ok = p.client.unary(Request::new(Msg::text("echo"))).await;
    assert!(ok.is_ok(), "the allowed method passes: {ok:?}");
    let status = p
        .client
        .call_unary("/test.Echo/Forbidden", Request::new(Msg::text("echo")))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "denied");
    assert_eq!(
        p.observed.calls.load(Ordering::SeqCst),
        1,
        "only the allowed call reached the app"
    );
}

#[tokio::test]
async fn an_app_that_is_down_is_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut p = pair_with(UpstreamProtocol::Http2, None, Some(closed)).await;
    let status = p
        .client
        .unary(Request::new(Msg::text("echo")))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unavailable, "unavailable");
}

#[tokio::test]
async fn an_outbound_route_nobody_declared_is_permission_denied_for_grpc() {
    let p = pair(UpstreamProtocol::Http2).await;
    // The shared outbound listener routes by :authority; this one is undeclared.
    let shared = p._sidecars.1.outbound.unwrap();
    let mut client = EchoClient::connect(shared).await;
    let status = client
        .unary(Request::new(Msg::text("echo")))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "not declared");
}

#[tokio::test]
async fn http1_callers_still_reach_an_http1_app_as_http1() {
    // The same pair shape in front of the HTTP/1.1-only recording app: an
    // HTTP/1.1 request keeps its version end to end on an HTTP/2 hop.
    let app = RecordingApp::start().await;
    let pki = Pki::new();
    let inbound = start_inbound(&pki, "server", app.addr).await;
    let outbound = start_outbound(&pki, "app.test", &inbound).await;
    let (status, _) = http_get(outbound.outbound.unwrap(), "app.test", "/hello", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(app.last().target, "/hello");

    // An app cannot claim the hop header itself: sent over HTTP/1.1 it is
    // stripped, so the inbound still speaks HTTP/1.1 to this HTTP/1.1-only app
    // (were it believed, the app would get an h2c preface and the call a 502).
    let claimed = [("x-meshguard-app-protocol", "h2")];
    let (status, _) = http_get(outbound.outbound.unwrap(), "app.test", "/claimed", &claimed).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.target, "/claimed");
    assert!(seen.header("x-meshguard-app-protocol").is_empty());
}

/// A refusal a gRPC client can read: the code, and a message that says why.
fn assert_refused(status: &tonic::Status, code: Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{:?}", status.message());
}

async fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A per-identity limit in force: the calls beyond the burst are
/// RESOURCE_EXHAUSTED (the 429 of the inbound in gRPC's form) and never
/// reach the server, on either hop.
#[tokio::test]
async fn calls_beyond_a_rate_limit_are_resource_exhausted() {
    const LIMITED: &str = "rules:\n  - name: all\n    action: allow\n    from: [\"*\"]\nlimits:\n  - name: per-caller\n    rate: 0.001\n    burst: 3\n";
    for hop in HOPS {
        let mut p = pair_with(hop, Some(LIMITED), None).await;
        let mut codes = Vec::new();
        for _ in 0..5 {
            match p.client.unary(Request::new(Msg::text("echo"))).await {
                Ok(_) => codes.push(Code::Ok),
                Err(status) => {
                    assert_refused(&status, Code::ResourceExhausted, "rate limited");
                    codes.push(status.code());
                }
            }
        }
        let exhausted = [Code::ResourceExhausted; 2];
        assert_eq!(
            codes,
            [[Code::Ok; 3].as_slice(), &exhausted].concat(),
            "{hop:?}"
        );
        assert_eq!(p.observed.calls.load(Ordering::SeqCst), 3, "{hop:?}");
    }
}
