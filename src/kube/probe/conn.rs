//! What every kind of probe shares: dialing the app on loopback, the
//! failure text kubelet shows, the user agent, and tying a connection
//! task's life to the probe. Both `check` (HTTP, TCP) and `grpc` build on
//! this module.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::net::TcpStream;

/// What kubelet 1.31 sends; apps sometimes log or match on it.
pub const KUBE_PROBE_USER_AGENT: &str = "kube-probe/1.31";

/// Why a probe failed, as one line of text for kubelet's events.
pub type Failure = String;

/// Connects to the app: `127.0.0.1:port`, then `[::1]:port` if refused.
/// Never the pod IP: capture sends our own connections to it through the
/// inbound (mTLS) listener.
pub(super) async fn dial(port: u16) -> Result<TcpStream, Failure> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = match TcpStream::connect(v4).await {
        Ok(tcp) => tcp,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect(v6)
                .await
                .map_err(|_| "connection refused".to_owned())?
        }
        Err(e) => return Err(format!("connect: {}", one_line(&e))),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Error text on one line (kubelet shows it in events).
pub(super) fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace(['\r', '\n'], " ")
}

/// Aborts a spawned connection task when the probe is done or times out.
pub(super) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
