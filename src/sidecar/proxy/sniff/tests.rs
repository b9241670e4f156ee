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
