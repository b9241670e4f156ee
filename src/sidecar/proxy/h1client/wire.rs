//! The bytes of an HTTP/1.1 hop (RFC 9112): a request head out, a
//! response head and body framing in, and the chunked body decoder. Pure
//! functions over buffers; the connection that moves them is `h1client`.
//!
//! The framing choices are hyper's client's, so that an app sees the same
//! requests it saw before this codec replaced hyper's client.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRAILER, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// Response header lines accepted (hyper's default).
const MAX_HEADERS: usize = 100;

/// A response head larger than this is refused (hyper's default buffer).
pub const MAX_HEAD_BYTES: usize = 400 * 1024;

/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// Why the upstream's side of an exchange (the app's, or a peer's) could
/// not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed response from upstream: {0}")]
    Malformed(&'static str),
    #[error("response head from upstream is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
}

fn malformed(what: &'static str) -> WireError {
    WireError::Malformed(what)
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestFraming {
    /// No body is sent.
    None,
    /// `content-length` bytes.
    Length(u64),
    /// Chunked, with the trailer fields the request's `trailer` header
    /// announced (others are dropped, as hyper does).
    Chunked(Vec<HeaderName>),
}

/// Decides the request's framing and makes its headers say so: the
/// caller's `content-length` is kept, a known size becomes one, an unknown
/// size is chunked, except for GET, HEAD and CONNECT, which are sent
/// without a body.
pub fn request_framing(parts: &mut Parts, ended: bool, exact: Option<u64>) -> RequestFraming {
    let headers = &mut parts.headers;
    if ended {
        headers.remove(TRANSFER_ENCODING);
        return RequestFraming::None;
    }
    let declared = content_length(headers).ok().flatten();
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        return RequestFraming::Chunked(announced_trailers(headers));
    }
    if let Some(len) = declared.or(exact) {
        if declared.is_none() {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        return RequestFraming::Length(len);
    }
    if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        return RequestFraming::None;
    }
    headers.remove(CONTENT_LENGTH);
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    RequestFraming::Chunked(announced_trailers(headers))
}

fn announced_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The request line and headers, ending in the blank line.
pub fn encode_head(parts: &Parts) -> Bytes {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let size = parts.method.as_str().len()
        + target.len()
        + 13
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    encode_fields(&mut head, parts.headers.iter());
    head.extend_from_slice(b"\r\n");
    Bytes::from(head)
}

/// `name: value\r\n` for each field (http's types hold no CR or LF).
fn encode_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The last chunk with the announced trailer fields, ending the body.
pub fn encode_trailers(trailers: &HeaderMap, allowed: &[HeaderName]) -> Bytes {
    let mut out = b"0\r\n".to_vec();
    encode_fields(
        &mut out,
        trailers.iter().filter(|(n, _)| allowed.contains(n)),
    );
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The upstream allows another request on this connection.
    pub keep_alive: bool,
}

/// Parses a response head off the front of `buf`: `None` until it is
/// complete. The header values share the head's bytes rather than copy
/// them.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, WireError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(malformed("too many header fields")),
        Err(_) => return Err(malformed("invalid response head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(WireError::HeadTooLarge);
    }
    let status = response.code.and_then(|c| StatusCode::from_u16(c).ok());
    let status = status.ok_or_else(|| malformed("invalid status code"))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Offsets first, on the stack (no allocation per response): the fields
    // borrow `buf`, which is split below. A head is at most MAX_HEAD_BYTES,
    // so its offsets fit in u32.
    let base = buf.as_ptr() as usize;
    let offset = |field: &[u8]| (field.as_ptr() as usize - base) as u32;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = response.headers.len();
    for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
        let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
        *span = (
            name,
            name + field.name.len() as u32,
            value,
            value + field.value.len() as u32,
        );
    }
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    for &(name_start, name_end, start, end) in &spans[..count] {
        let name = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize])
            .map_err(|_| malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(start as usize..end as usize))
            .map_err(|_| malformed("invalid header value"))?;
        if name == CONNECTION {
            close |= has_token(&value, "close");
            keep_alive |= has_token(&value, "keep-alive");
        }
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        keep_alive: keep_alive && !close,
    }))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// The framing of a final response to `method`. Informational responses
/// are skipped by the caller before this.
pub fn response_framing(head: &mut Head, method: &Method) -> Result<ResponseFraming, WireError> {
    if matches!(head.status.as_u16(), 204 | 304) || method == Method::HEAD {
        return Ok(ResponseFraming::Empty);
    }
    if head.headers.contains_key(TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            return Err(malformed("transfer-encoding in an HTTP/1.0 response"));
        }
        // Both present: transfer-encoding wins, and the connection is not
        // trusted for another request (RFC 9112 §6.3, item 3).
        if head.headers.remove(CONTENT_LENGTH).is_some() {
            head.keep_alive = false;
        }
        let last = head.headers.get_all(TRANSFER_ENCODING).iter().next_back();
        let chunked = last.is_some_and(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        return Ok(match chunked {
            true => ResponseFraming::Chunked,
            false => ResponseFraming::Close,
        });
    }
    match content_length(&head.headers) {
        Ok(Some(len)) => Ok(ResponseFraming::Length(len)),
        Ok(None) => Ok(ResponseFraming::Close),
        Err(()) => Err(malformed("invalid content-length")),
    }
}

/// The one length all `content-length` fields agree on; `Err` when one
/// is not a number or two differ.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.to_str().map_err(|_| ())?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let len: u64 = part.parse().map_err(|_| ())?;
            if found.is_some_and(|f| f != len) {
                return Err(());
            }
            found = Some(len);
        }
    }
    Ok(found)
}

/// One step of a chunked body.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Where the chunked decoder is between calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    /// Takes the next step off the front of `buf`; `None` when more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, WireError> {
        loop {
            match *self {
                Chunked::Size => {
                    if !buf.first().is_some_and(u8::is_ascii_hexdigit) {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        return Err(malformed("invalid chunk size"));
                    }
                    // The limits hold for a whole line as for a partial
                    // one, so a verdict never depends on how the upstream's
                    // bytes were split across reads.
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                            return Err(malformed("chunk-size line too long"))
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            let _ = buf.split_to(used);
                            *self = match size {
                                0 => Chunked::Trailers,
                                n => Chunked::Data(n),
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(malformed("chunk-size line too long"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(malformed("invalid chunk size")),
                    }
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    *self = match left - n as u64 {
                        0 => Chunked::DataEnd,
                        rest => Chunked::Data(rest),
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => return self.trailers(buf),
                Chunked::Done => return Ok(Some(Chunk::End)),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, WireError> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            *self = Chunked::Done;
            return Ok(Some(Chunk::End));
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields.iter() {
                    let name = HeaderName::from_bytes(field.name.as_bytes());
                    let value = HeaderValue::from_bytes(field.value);
                    match (name, value) {
                        (Ok(name), Ok(value)) if !framing_field(&name) => {
                            trailers.append(name, value);
                        }
                        (Ok(_), Ok(_)) => {}
                        _ => return Err(malformed("invalid trailer field")),
                    }
                }
                (used, trailers)
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(malformed("invalid trailer section")),
        };
        let _ = buf.split_to(used);
        *self = Chunked::Done;
        Ok(Some(Chunk::Trailers(trailers)))
    }
}

/// Fields a trailer section may not carry (RFC 9110 §6.5.1): dropped.
fn framing_field(name: &HeaderName) -> bool {
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        http::header::HOST,
        TRAILER,
        CONNECTION,
    ]
    .contains(name)
}

#[cfg(test)]
mod tests;
