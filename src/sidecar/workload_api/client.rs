//! The gRPC side of the Workload API: a channel over the agent's unix
//! socket and the three server-streaming calls, each carrying the security
//! header agents require. tonic's client building blocks are used directly
//! (what generated stubs call), with the hand-written messages of `proto`.

use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, X509BundlesRequest, X509BundlesResponse,
    X509SvidRequest, X509SvidResponse, FETCH_JWT_BUNDLES, FETCH_X509_BUNDLES, FETCH_X509_SVID,
    SECURITY_HEADER, SECURITY_HEADER_VALUE,
};
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

/// Largest message accepted from the agent: SVIDs with long chains and
/// many federated bundles stay far below this.
const MAX_MESSAGE: usize = 4 << 20;

/// Dials the socket at `path` for every (re)connection tonic makes.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        })
    }
}

/// Connects to the agent's socket (HTTP/2 over the unix socket; the URI is
/// a placeholder the connector ignores).
pub(super) async fn connect(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://workload-api.invalid")
        .connect_timeout(Duration::from_secs(5))
        // A hung agent must be noticed while no message is due (SVIDs
        // change every half hour or so; a dead one closes the socket). Not
        // more often than every 5 minutes: grpc-go servers, SPIRE's agent
        // among them, answer more frequent pings with GOAWAY by default.
        .http2_keep_alive_interval(Duration::from_secs(310))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector(UnixConnector(path))
        .await
}

/// A request carrying the `workload.spiffe.io: true` metadata.
fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        SECURITY_HEADER,
        MetadataValue::from_static(SECURITY_HEADER_VALUE),
    );
    request
}

async fn stream<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    message: Req,
) -> Result<Streaming<Resp>, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("Workload API not reachable: {e}")))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let response = grpc
        .server_streaming(request(message), PathAndQuery::from_static(path), codec)
        .await?;
    Ok(response.into_inner())
}

/// `FetchX509SVID`.
pub(super) async fn x509_svids(channel: &Channel) -> Result<Streaming<X509SvidResponse>, Status> {
    stream(channel, FETCH_X509_SVID, X509SvidRequest {}).await
}

/// `FetchX509Bundles`.
pub(super) async fn x509_bundles(
    channel: &Channel,
) -> Result<Streaming<X509BundlesResponse>, Status> {
    stream(channel, FETCH_X509_BUNDLES, X509BundlesRequest {}).await
}

/// `FetchJWTBundles`.
pub(super) async fn jwt_bundles(
    channel: &Channel,
) -> Result<Streaming<JwtBundlesResponse>, Status> {
    stream(channel, FETCH_JWT_BUNDLES, JwtBundlesRequest {}).await
}
