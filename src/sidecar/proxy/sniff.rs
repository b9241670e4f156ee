//! What an app's plain connection speaks, read from its first bytes
//! without consuming them: HTTP/2 with prior knowledge (h2c) starts with a
//! fixed 24-byte preface (RFC 9113 §3.4), anything else is served as
//! HTTP/1.1. No HTTP/1.1 method starts with `PRI `, so the two cannot be
//! confused, and the bytes stay in the socket for hyper to read.

use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait between peeks while only part of the preface has
/// arrived (clients write it in one piece; a split is rare).
const PARTIAL_WAIT: Duration = Duration::from_millis(2);

/// Whether the connection starts with the HTTP/2 preface. Waits at most
/// `timeout` for the first bytes (the header read timeout: a client that
/// sends nothing is closed as hyper would close it; `None`, no limit); an
/// error means the connection should be dropped.
pub async fn h2_preface(tcp: &TcpStream, timeout: Option<Duration>) -> io::Result<bool> {
    let Some(timeout) = timeout else {
        return peek_preface(tcp).await;
    };
    match tokio::time::timeout(timeout, peek_preface(tcp)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no request within the header read timeout",
        )),
    }
}

async fn peek_preface(tcp: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // `peek` returns at once while bytes are waiting, so wait a little
        // for the rest instead of spinning on the same prefix.
        tokio::time::sleep(PARTIAL_WAIT).await;
    }
}

#[cfg(test)]
mod tests;
