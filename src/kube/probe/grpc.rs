//! The gRPC probe: `grpc.health.v1.Health/Check` over h2c (HTTP/2 with
//! prior knowledge, no TLS), as kubelet's gRPC prober sends it. The few
//! protobuf bytes involved are written and read by hand.

use super::conn::{dial, one_line, AbortOnDrop, Failure, KUBE_PROBE_USER_AGENT};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;

pub(super) const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Largest response read; a health response is a few bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// `HealthCheckResponse.ServingStatus.SERVING`.
pub(super) const SERVING: u64 = 1;

pub(super) async fn check(port: u16, service: &str, budget: Duration) -> Result<(), Failure> {
    let body = health_check_request(service)?;
    let tcp = dial(port).await?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("grpc: {}", one_line(&e)))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://127.0.0.1:{port}{CHECK_PATH}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .header(USER_AGENT, KUBE_PROBE_USER_AGENT)
        .header("grpc-timeout", format!("{}m", budget.as_millis()))
        .body(Full::new(body))
        .map_err(|e| format!("grpc: {}", one_line(&e)))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("grpc: {}", one_line(&e)))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("grpc: http status {}", resp.status().as_u16()));
    }
    let (parts, body) = resp.into_parts();
    let collected = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("grpc: reading response: {}", one_line(&*e)))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    judge(&parts.headers, &trailers, &data)
}

/// The outcome of a health check response: `grpc-status` from the trailers
/// (or the headers, for a trailers-only response) must be OK and the
/// message must say SERVING.
pub(super) fn judge(headers: &HeaderMap, trailers: &HeaderMap, data: &[u8]) -> Result<(), Failure> {
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .ok_or("grpc: response without grpc-status")?;
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or("grpc: invalid grpc-status")?;
    if code != 0 {
        return Err(format!("grpc error {}", code_name(code)));
    }
    let message = first_message(data)?;
    match serving_status(message)? {
        SERVING => Ok(()),
        other => Err(format!("grpc status {}", serving_status_name(other))),
    }
}

/// A gRPC frame holding `HealthCheckRequest { service }`: field 1, a
/// length-delimited string (tag 0x0A), left out when empty (proto3).
pub(super) fn health_check_request(service: &str) -> Result<Bytes, Failure> {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0A);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let len = u32::try_from(message.len()).map_err(|_| "grpc: service name too long")?;
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message);
    Ok(Bytes::from(frame))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The message of the first gRPC frame in `data`.
pub(super) fn first_message(data: &[u8]) -> Result<&[u8], Failure> {
    let Some((&flag, rest)) = data.split_first() else {
        return Err("grpc: empty response".into());
    };
    if flag != 0 {
        return Err("grpc: compressed response (none was asked for)".into());
    }
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or("grpc: truncated response frame")?;
    rest.get(4..)
        .and_then(|m| m.get(..len as usize))
        .ok_or_else(|| "grpc: truncated response frame".into())
}

/// Field 1 (`status`, an enum) of a `HealthCheckResponse`; 0 (UNKNOWN)
/// when absent, as in proto3. Unknown fields are skipped.
pub(super) fn serving_status(mut message: &[u8]) -> Result<u64, Failure> {
    const MALFORMED: &str = "grpc: malformed HealthCheckResponse";
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message).ok_or(MALFORMED)?;
        let skip = match key & 7 {
            0 => {
                let v = take_varint(&mut message).ok_or(MALFORMED)?;
                if key >> 3 == 1 {
                    status = v;
                }
                0
            }
            1 => 8,
            2 => usize::try_from(take_varint(&mut message).ok_or(MALFORMED)?)
                .map_err(|_| MALFORMED)?,
            5 => 4,
            _ => return Err(MALFORMED.into()),
        };
        message = message.get(skip..).ok_or(MALFORMED)?;
    }
    Ok(status)
}

fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

pub(super) fn serving_status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

pub(super) fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("code {code}"), |n| (*n).to_owned())
}
