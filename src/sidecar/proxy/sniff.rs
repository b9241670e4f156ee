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
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn sniff(chunks: &[&[u8]]) -> io::Result<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            for chunk in chunks {
                tcp.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Longer than the timeout below: silence, not a close.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let result = h2_preface(&tcp, Some(Duration::from_millis(500))).await;
        client.abort();
        result
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_anything_else_http1() {
        assert!(sniff(&[H2_PREFACE]).await.unwrap());
        assert!(
            sniff(&[&H2_PREFACE[..5], &H2_PREFACE[5..]]).await.unwrap(),
            "split preface"
        );
        assert!(!sniff(&[b"GET / HTTP/1.1\r\n\r\n"]).await.unwrap());
        assert!(
            !sniff(&[b"PUT / HTTP/1.1\r\n\r\n"]).await.unwrap(),
            "P but not PRI"
        );
        assert!(!sniff(&[b"PRI * HTTP/1.1\r\n"]).await.unwrap());
    }

    #[tokio::test]
    async fn silence_times_out() {
        let err = sniff(&[]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
