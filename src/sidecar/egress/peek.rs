//! Reading what the app sends first without consuming it: whether it is
//! TLS, and the SNI of its ClientHello. The bytes stay in the socket and
//! go to the destination unchanged.

use super::sni::{self, SniError, MAX_RECORD, RECORD_HEADER};
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long to wait between peeks while only part of the record is there.
const PARTIAL_WAIT: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Sni(#[from] SniError),
}

/// Whether the connection's first byte opens a TLS handshake record
/// (0x16; no HTTP method and not the h2 preface starts with it).
pub async fn starts_with_tls(tcp: &TcpStream, timeout: Option<Duration>) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let peek = tcp.peek(&mut first);
    let n = match timeout {
        Some(t) => tokio::time::timeout(t, peek)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??,
        None => peek.await?,
    };
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0] == 0x16)
}

/// The SNI of the ClientHello the app has started to send, waiting at most
/// `timeout` for the whole record.
pub async fn client_hello(tcp: &TcpStream, timeout: Option<Duration>) -> Result<String, PeekError> {
    let read = read_hello(tcp);
    match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
        None => read.await,
    }
}

async fn read_hello(tcp: &TcpStream) -> Result<String, PeekError> {
    // On the heap: one record at most, kept only while it is read.
    let mut buf = vec![0u8; RECORD_HEADER + MAX_RECORD];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        match sni::server_name(&buf[..n]) {
            Err(SniError::Incomplete { .. }) => {}
            other => return Ok(other?),
        }
        if n == seen {
            // Nothing new since the last peek: wait for more instead of
            // spinning on the same bytes.
            tokio::time::sleep(PARTIAL_WAIT).await;
        }
        seen = n;
    }
}
