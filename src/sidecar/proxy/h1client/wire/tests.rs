use super::*;
use http::Request;

fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
    let mut req = Request::builder().method(method).uri("/a?b=1");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(()).unwrap().into_parts().0
}

fn head(raw: &str) -> Result<Option<Head>, WireError> {
    parse_head(&mut BytesMut::from(raw))
}

#[test]
fn an_ended_body_is_sent_as_none_and_loses_a_stray_transfer_encoding() {
    let mut p = parts(Method::POST, &[("transfer-encoding", "chunked")]);
    assert_eq!(request_framing(&mut p, true, Some(0)), RequestFraming::None);
    assert!(!p.headers.contains_key(TRANSFER_ENCODING));
}

#[test]
fn a_declared_length_is_kept_and_a_known_size_becomes_one() {
    let mut p = parts(Method::POST, &[("content-length", "5")]);
    assert_eq!(
        request_framing(&mut p, false, None),
        RequestFraming::Length(5)
    );
    let mut p = parts(Method::PUT, &[]);
    assert_eq!(
        request_framing(&mut p, false, Some(7)),
        RequestFraming::Length(7)
    );
    assert_eq!(p.headers[CONTENT_LENGTH], "7");
}

#[test]
fn an_unknown_size_is_chunked_except_for_get_head_and_connect() {
    let mut p = parts(Method::POST, &[("trailer", "x-sum, grpc-status")]);
    let framing = request_framing(&mut p, false, None);
    let expected = vec![
        HeaderName::from_static("x-sum"),
        HeaderName::from_static("grpc-status"),
    ];
    assert_eq!(framing, RequestFraming::Chunked(expected));
    assert_eq!(p.headers[TRANSFER_ENCODING], "chunked");
    for method in [Method::GET, Method::HEAD, Method::CONNECT] {
        let mut p = parts(method, &[]);
        assert_eq!(request_framing(&mut p, false, None), RequestFraming::None);
        assert!(!p.headers.contains_key(TRANSFER_ENCODING));
    }
}

#[test]
fn the_head_is_the_request_line_and_fields() {
    let p = parts(Method::GET, &[("host", "app:8080"), ("x-a", "1")]);
    let bytes = encode_head(&p);
    assert_eq!(
        &bytes[..],
        b"GET /a?b=1 HTTP/1.1\r\nhost: app:8080\r\nx-a: 1\r\n\r\n"
    );
}

#[test]
fn only_announced_trailers_are_written() {
    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("9"));
    t.insert("x-other", HeaderValue::from_static("no"));
    let out = encode_trailers(&t, &[HeaderName::from_static("x-sum")]);
    assert_eq!(&out[..], b"0\r\nx-sum: 9\r\n\r\n");
}

#[test]
fn a_head_parses_with_its_fields_and_leaves_the_body_in_the_buffer() {
    let mut buf = BytesMut::from("HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody");
    let h = parse_head(&mut buf).unwrap().unwrap();
    assert_eq!(h.status, StatusCode::CREATED);
    assert_eq!(h.version, Version::HTTP_11);
    assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
    assert!(h.keep_alive);
    assert_eq!(&buf[..], b"body");
}

#[test]
fn a_partial_head_waits_and_a_huge_one_is_refused() {
    assert!(head("HTTP/1.1 200 OK\r\nx-a: 1\r\n").unwrap().is_none());
    let huge = format!("HTTP/1.1 200 OK\r\nx-a: {}", "a".repeat(MAX_HEAD_BYTES));
    assert!(matches!(head(&huge), Err(WireError::HeadTooLarge)));
}

#[test]
fn malformed_heads_are_refused() {
    for raw in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        assert!(head(raw).is_err(), "{raw:?} was accepted");
    }
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    assert!(head(&many).is_err());
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    let h = |raw| head(raw).unwrap().unwrap().keep_alive;
    assert!(!h("HTTP/1.0 200 OK\r\n\r\n"));
    assert!(h("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n"));
    assert!(!h("HTTP/1.1 200 OK\r\nconnection: Upgrade, close\r\n\r\n"));
    assert!(!h(
        "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n"
    ));
}

fn framing(raw: &str, method: Method) -> Result<(ResponseFraming, Head), WireError> {
    let mut h = head(raw).unwrap().unwrap();
    response_framing(&mut h, &method).map(|f| (f, h))
}

#[test]
fn response_framing_follows_rfc_9112_section_6_3() {
    let f = |raw, m| framing(raw, m).map(|(f, _)| f).ok();
    use ResponseFraming::*;
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD),
        Some(Empty)
    );
    assert_eq!(
        f("HTTP/1.1 204 No\r\ncontent-length: 5\r\n\r\n", Method::GET),
        Some(Empty)
    );
    assert_eq!(f("HTTP/1.1 304 No\r\n\r\n", Method::GET), Some(Empty));
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET),
        Some(Length(5))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            Method::GET
        ),
        Some(Length(5))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            Method::GET
        ),
        Some(Chunked)
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            Method::GET
        ),
        Some(Close)
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", Method::GET), Some(Close));
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert!(framing(bad, Method::GET).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn length_and_chunked_together_take_chunked_and_end_the_connection() {
    let raw = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
    let (f, h) = framing(raw, Method::GET).unwrap();
    assert_eq!(f, ResponseFraming::Chunked);
    assert!(!h.headers.contains_key(CONTENT_LENGTH));
    assert!(!h.keep_alive);
}

/// Decodes all of `raw`, fed `step` bytes at a time.
fn dechunk(raw: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), WireError> {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        match state.decode(&mut buf)? {
            Some(Chunk::Data(d)) => data.extend_from_slice(&d),
            Some(Chunk::Trailers(t)) => trailers = Some(t),
            Some(Chunk::End) => return Ok((data, trailers, buf.len())),
            None if fed >= raw.len() => return Err(malformed("ran out")),
            None => {
                let end = (fed + step).min(raw.len());
                buf.extend_from_slice(&raw[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_whole_or_a_byte_at_a_time() {
    let raw = b"4\r\nWiki\r\n5;ext=\"x\"\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 7\r\ncontent-length: 1\r\n\r\nNEXT";
    for step in [1, 3, raw.len()] {
        let (data, trailers, left) = dechunk(raw, step).unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-sum"], "7");
        assert!(
            !trailers.contains_key(CONTENT_LENGTH),
            "a framing trailer was kept"
        );
        if step == raw.len() {
            assert_eq!(left, 4, "bytes after the body were consumed");
        }
    }
    let (data, trailers, _) = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
}

#[test]
fn bad_chunked_bodies_are_refused() {
    for raw in [
        &b"\r\nabc"[..],
        b"x\r\n",
        b"-1\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabcX\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"0\r\nbad field\r\n\r\n",
    ] {
        assert!(
            dechunk(raw, 1).is_err(),
            "{:?} was accepted",
            String::from_utf8_lossy(raw)
        );
    }
    let long_ext = format!("1;{}", "e".repeat(MAX_CHUNK_LINE + 1));
    assert!(dechunk(long_ext.as_bytes(), 4096).is_err());
}

/// The limits refuse a line or a trailer section that arrived whole as
/// they refuse one still arriving: a verdict must not depend on the reads.
#[test]
fn the_size_limits_hold_however_the_bytes_arrive() {
    let long_line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
    let huge_trailer = format!("0\r\nx-big: {}\r\n\r\n", "t".repeat(MAX_HEAD_BYTES));
    for raw in [long_line, huge_trailer] {
        for step in [4096, raw.len()] {
            assert!(
                dechunk(raw.as_bytes(), step).is_err(),
                "accepted in reads of {step}"
            );
        }
    }
}
