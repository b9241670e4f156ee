//! The app hop's HTTP/1.1 codec (`proxy::h1client::wire`). The app is on
//! the other side of a trust boundary too: whatever it answers must give a
//! verdict, never a panic, and the verdict must not depend on how the bytes
//! were split across reads.
//!
//! Input: byte 0 picks the mode and the read size, byte 1 the method or the
//! request's body flags, the rest is the stream.
//! - Response mode: a head parses to the same head, at the same length,
//!   whether it comes whole or a few bytes per read; until it is complete
//!   every read asks for more. Its framing obeys RFC 9112 §6.3. A chunked
//!   body decodes to the same data, trailers and verdict whole or split,
//!   and never to more data than the input held.
//! - Request mode: a request line and `name: value` lines become a request;
//!   its encoded head parses back (httparse, as an app would) to the same
//!   method, target and fields, and its framing headers say what
//!   `request_framing` decided.
#![no_main]

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::proxy::h1client::wire::{
    encode_head, parse_head, request_framing, response_framing, Chunk, Chunked, Head,
    RequestFraming, ResponseFraming,
};

fuzz_target!(|data: &[u8]| {
    let [mode, flags, stream @ ..] = data else {
        return;
    };
    let step = usize::from(mode & 0x0f) + 1;
    if mode & 0x80 == 0 {
        let method = match flags % 3 {
            0 => Method::GET,
            1 => Method::HEAD,
            _ => Method::POST,
        };
        response(stream, step, &method);
    } else {
        request(stream, *flags);
    }
});

/// What a parse gave, in a form two parses can be compared by.
#[derive(Debug, PartialEq)]
enum Parsed {
    More,
    Refused,
    Head { used: usize, view: String },
}

fn view(head: &Head) -> String {
    format!(
        "{} {:?} {:?} {}",
        head.status, head.version, head.headers, head.keep_alive
    )
}

fn response(stream: &[u8], step: usize, method: &Method) {
    let mut whole = BytesMut::from(stream);
    let head = match parse_head(&mut whole) {
        Ok(None) => {
            assert_eq!(
                split_head(stream, step),
                Parsed::More,
                "split asked for less"
            );
            return;
        }
        Err(_) => {
            assert_eq!(split_head(stream, step), Parsed::Refused, "split accepted");
            return;
        }
        Ok(Some(head)) => head,
    };
    let used = stream.len() - whole.len();
    let expected = Parsed::Head {
        used,
        view: view(&head),
    };
    assert_eq!(split_head(stream, step), expected, "split parsed otherwise");
    check_head(&head);
    framing(head, method, &stream[used..], step);
}

/// Feeds the stream `step` bytes per read, as a slow app would send it.
fn split_head(stream: &[u8], step: usize) -> Parsed {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        match parse_head(&mut buf) {
            Ok(None) => continue,
            Err(_) => return Parsed::Refused,
            Ok(Some(head)) => {
                return Parsed::Head {
                    used: fed - buf.len(),
                    view: view(&head),
                }
            }
        }
    }
    Parsed::More
}

fn check_head(head: &Head) {
    assert!(head.headers.len() <= 100);
    let close = head.headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    });
    assert!(!(close && head.keep_alive), "connection: close kept alive");
}

fn framing(mut head: Head, method: &Method, body: &[u8], step: usize) {
    let status = head.status.as_u16();
    let had_length = head.headers.contains_key(CONTENT_LENGTH);
    let Ok(framing) = response_framing(&mut head, method) else {
        return;
    };
    if *method == Method::HEAD || status == 204 || status == 304 {
        assert_eq!(framing, ResponseFraming::Empty);
        return;
    }
    match framing {
        ResponseFraming::Empty => panic!("no body for {status} to {method}"),
        ResponseFraming::Length(n) => {
            assert!(!head.headers.contains_key(TRANSFER_ENCODING));
            for value in head.headers.get_all(CONTENT_LENGTH) {
                for part in value.to_str().unwrap().split(',') {
                    assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
                }
            }
        }
        ResponseFraming::Close | ResponseFraming::Chunked
            if head.headers.contains_key(TRANSFER_ENCODING) =>
        {
            assert!(!head.headers.contains_key(CONTENT_LENGTH));
            // Both framings were sent: never trusted for another request.
            assert!(!(had_length && head.keep_alive), "smuggling-shaped reuse");
        }
        ResponseFraming::Close => assert!(!had_length),
        ResponseFraming::Chunked => panic!("chunked without transfer-encoding"),
    }
    if framing == ResponseFraming::Chunked {
        let whole = decode(body, body.len().max(1));
        assert_eq!(whole, decode(body, step), "chunked body split across reads");
        assert!(whole.data.len() <= body.len());
    }
}

/// A chunked body as the client would see it.
#[derive(Debug, PartialEq, Default)]
struct Decoded {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    ended: bool,
    refused: bool,
}

fn decode(body: &[u8], step: usize) -> Decoded {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut out = Decoded::default();
    for piece in body.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match state.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Chunk::Data(data))) => {
                    assert!(!data.is_empty(), "an empty data step");
                    out.data.extend_from_slice(&data);
                }
                Ok(Some(Chunk::Trailers(trailers))) => {
                    assert!(!trailers.contains_key(CONTENT_LENGTH));
                    assert!(!trailers.contains_key(TRANSFER_ENCODING));
                    out.trailers = Some(trailers);
                }
                Ok(Some(Chunk::End)) => {
                    out.ended = true;
                    return out;
                }
                Err(_) => {
                    out.refused = true;
                    return out;
                }
            }
        }
    }
    out
}

fn request(stream: &[u8], flags: u8) {
    let Some(request) = build_request(stream) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let ended = flags & 1 == 1;
    let exact = (flags & 2 == 2).then_some(u64::from(flags >> 2));
    let decided = request_framing(&mut parts, ended, exact);
    let head = encode_head(&parts);

    let mut fields = vec![httparse::EMPTY_HEADER; parts.headers.len() + 1];
    let mut parsed = httparse::Request::new(&mut fields);
    let status = parsed.parse(&head);
    assert_eq!(
        status.map_err(|e| e.to_string()),
        Ok(httparse::Status::Complete(head.len())),
        "an app cannot parse {:?}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(parsed.method, Some(parts.method.as_str()));
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(parsed.path, Some(target));
    assert_eq!(parsed.version, Some(1));
    let sent: Vec<_> = parts.headers.iter().collect();
    assert_eq!(parsed.headers.len(), sent.len());
    for (field, (name, value)) in parsed.headers.iter().zip(sent) {
        assert!(field.name.eq_ignore_ascii_case(name.as_str()));
        assert_eq!(field.value, trim_ows(value.as_bytes()));
    }
    check_request_framing(&parts.headers, &parts.method, ended, decided);
}

fn check_request_framing(
    headers: &HeaderMap,
    method: &Method,
    ended: bool,
    decided: RequestFraming,
) {
    let te: Vec<_> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    match decided {
        RequestFraming::None => {
            assert!(te.is_empty());
            assert!(ended || matches!(*method, Method::GET | Method::HEAD | Method::CONNECT));
        }
        RequestFraming::Length(n) => {
            assert!(te.is_empty());
            let lengths: Vec<_> = headers.get_all(CONTENT_LENGTH).iter().collect();
            assert!(!lengths.is_empty(), "a length the head does not carry");
            for value in lengths {
                for part in value.to_str().unwrap().split(',') {
                    assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
                }
            }
        }
        RequestFraming::Chunked(_) => {
            assert_eq!(te, [HeaderValue::from_static("chunked")]);
            assert!(!headers.contains_key(CONTENT_LENGTH));
        }
    }
}

/// `METHOD target` then `name: value` lines; `None` when http's types
/// refuse a part (what meshguard forwards was accepted by them first).
fn build_request(stream: &[u8]) -> Option<Request<()>> {
    let mut lines = stream.split(|b| *b == b'\n');
    let first = lines.next()?;
    let space = first.iter().position(|b| *b == b' ')?;
    let method = Method::from_bytes(&first[..space]).ok()?;
    let uri = Uri::try_from(&first[space + 1..]).ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &value[start..end]
}
