//! Hop-by-hop headers: the fixed list, and the names `Connection` adds.

use super::*;

#[test]
fn fixed_hop_by_hop_headers_are_removed() {
    let (headers, stripped) = inbound(&[
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic YWRtaW46YWRtaW4="),
        ("Proxy-Authenticate", "Basic"),
        ("Accept", "*/*"),
    ]);
    assert_names(&headers, &["accept", CLIENT_ID_HEADER, XFCC_HEADER]);
    assert_eq!(stripped.hop_by_hop, 6);
    assert!(!stripped.sent_identity_headers());
}

#[test]
fn headers_named_by_connection_are_removed_case_insensitively() {
    let (headers, _) = inbound(&[
        ("Connection", "close, X-Foo"),
        ("x-foo", "1"),
        ("X-FOO", "2"),
        ("x-bar", "kept"),
    ]);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER, "x-bar"]);
}

#[test]
fn every_connection_header_counts() {
    let (headers, stripped) = inbound(&[
        ("Connection", "X-A"),
        ("connection", "x-b, X-C"),
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-c", "3"),
        ("x-d", "kept"),
    ]);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER, "x-d"]);
    assert_eq!(stripped.hop_by_hop, 4);
}

#[test]
fn connection_lists_tolerate_whitespace_and_empty_elements() {
    let (headers, _) = inbound(&[
        ("Connection", ",, x-a ,\tx-b,,  ,"),
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-c", "kept"),
    ]);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER, "x-c"]);
}

#[test]
fn naming_connection_itself_first_does_not_save_later_names() {
    let (headers, _) = inbound(&[("Connection", "Connection, keep-alive, x-a"), ("x-a", "1")]);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER]);
}

#[test]
fn connection_cannot_remove_framing_or_routing_headers() {
    let (headers, _) = inbound(&[
        ("Connection", "Host, Content-Length, Transfer-Encoding"),
        ("Host", "app"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
    ]);
    assert_names(
        &headers,
        &[
            "content-length",
            "host",
            "transfer-encoding",
            CLIENT_ID_HEADER,
            XFCC_HEADER,
        ],
    );
}

#[test]
fn connection_cannot_remove_the_headers_meshguard_sets() {
    let (headers, _) = inbound(&[
        (
            "Connection",
            "x-meshguard-client-id, X-Forwarded-Client-Cert",
        ),
        ("x-meshguard-client-id", "spiffe://evil/x"),
    ]);
    assert_only_meshguard_identity(&headers);
}

#[test]
fn connection_values_that_are_not_header_names_are_ignored() {
    let mut headers = map(&[("x-a", "1")]);
    headers.append(
        CONNECTION,
        HeaderValue::from_bytes(b"x-a, \xff\xfe, a b, @@").unwrap(),
    );
    let stripped = strip_inbound(&mut headers, &[]);
    assert_names(&headers, &[]);
    assert_eq!(stripped.hop_by_hop, 2);
}

#[test]
fn te_trailers_survives_for_grpc_and_nothing_else_does() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["trailers"], Some("trailers")),
        (&["Trailers"], Some("trailers")),
        (&["gzip, trailers"], Some("trailers")),
        (&["deflate;q=0.5", "trailers"], Some("trailers")),
        (&["gzip"], None),
        (&["trailersx"], None),
    ];
    for (te, expected) in cases {
        let raw: Vec<_> = te.iter().map(|v| ("TE", *v)).collect();
        let (headers, _) = inbound(&raw);
        let got: Vec<_> = values(&headers, "te");
        assert_eq!(got, expected.iter().copied().collect::<Vec<_>>(), "{te:?}");
    }
    // Naming TE in Connection (as HTTP/1.1 requires) does not lose trailers.
    let (headers, _) = inbound(&[("Connection", "TE"), ("TE", "trailers")]);
    assert_eq!(values(&headers, "te"), ["trailers"]);
}

#[test]
fn body_framing_and_trailer_declarations_are_left_alone() {
    let (headers, _) = inbound(&[
        ("Transfer-Encoding", "gzip, chunked"),
        ("Trailer", "grpc-status, grpc-message"),
    ]);
    assert_eq!(values(&headers, "transfer-encoding"), ["gzip, chunked"]);
    assert_eq!(values(&headers, "trailer"), ["grpc-status, grpc-message"]);
}
