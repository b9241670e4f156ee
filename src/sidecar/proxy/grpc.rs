//! Refusals a gRPC client can read. A gRPC client reads the outcome of a
//! call from `grpc-status`, not from the HTTP status: to it a 403 with a
//! text body is a protocol error (`UNKNOWN`/`INTERNAL`: "unexpected HTTP
//! status"), so a denial would look like a broken server. For a caller
//! that sent `content-type: application/grpc*`, meshguard's own refusals
//! are answered as gRPC "trailers-only" responses (HTTP 200, headers that
//! carry `grpc-status` and `grpc-message`, no body), as the gRPC over HTTP/2
//! spec describes and as Envoy's and Linkerd's gRPC-aware errors do.
//! Metrics and audit keep the HTTP status and the reason.

use super::ProxyBody;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

/// The gRPC status codes meshguard answers with (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The code for one of meshguard's refusal statuses, following the
    /// HTTP-to-gRPC mapping of grpc/doc/http-grpc-status-mapping.md where
    /// it has one (401, 403, 404, 429, 502, 503, 504) and the nearest
    /// meaning elsewhere.
    pub fn for_status(status: StatusCode) -> Code {
        match status.as_u16() {
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 | 501 => Code::Unimplemented,
            413 | 429 | 431 => Code::ResourceExhausted,
            408 | 504 => Code::DeadlineExceeded,
            502 | 503 => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from(self as u16)
    }
}

/// Whether the request is a gRPC call (`application/grpc`, `+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The trailers-only response for a refusal with `status` and `message`.
pub fn refusal(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", Code::for_status(status).header_value());
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    resp
}

/// `grpc-message` is percent-encoded UTF-8: every byte outside printable
/// ASCII, and `%` itself, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.trim_end().as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
