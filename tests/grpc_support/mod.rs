//! A real gRPC service for the tests, written against tonic's own server
//! and client building blocks (what tonic's code generator emits, without
//! needing `protoc`): the messages are prost types, the service dispatches
//! by path to tonic's `Grpc` handlers, and the client calls through
//! `tonic::client::Grpc` with prost's codec, exactly as generated stubs do.
//!
//! Service `test.Echo`:
//! - `Unary`: by `text`: `echo` answers the request (and, in its text, the
//!   identity header the server saw); `fail` answers a status with details
//!   and custom metadata; `slow` sleeps 3 s (for deadlines); `hang` waits
//!   until cancelled.
//! - `ServerStream`: `count` messages, then a status with custom metadata
//!   in the trailers (`fail`) or OK.
//! - `ClientStream`: the number of messages and bytes received.
//! - `Bidi`: every message echoed as it arrives.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

/// Large enough for the 16 MiB messages of the tests.
pub const MAX_MESSAGE: usize = 32 << 20;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

impl Msg {
    pub fn text(text: &str) -> Msg {
        Msg {
            text: text.into(),
            ..Msg::default()
        }
    }
}

/// What the server observed, for the assertions.
#[derive(Default)]
pub struct Observed {
    /// Calls whose handler was dropped before it finished (cancelled).
    pub cancelled: AtomicUsize,
    /// Calls that reached the server at all.
    pub calls: AtomicUsize,
}

/// Sets a flag when dropped before `finish`: the server saw a cancellation.
struct CancelGuard(Arc<Observed>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone)]
pub struct EchoServer {
    pub observed: Arc<Observed>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send + 'static>>;

fn codec() -> tonic_prost::ProstCodec<Msg, Msg> {
    tonic_prost::ProstCodec::default()
}

fn grpc() -> tonic::server::Grpc<tonic_prost::ProstCodec<Msg, Msg>> {
    tonic::server::Grpc::new(codec())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// The status of `fail`: details and custom metadata, text and binary.
pub fn failure() -> Status {
    let mut status = Status::with_details(
        Code::InvalidArgument,
        "bad thing",
        b"details!".to_vec().into(),
    );
    status
        .metadata_mut()
        .insert("x-custom", MetadataValue::from_static("trailing value"));
    status.metadata_mut().insert_bin(
        "x-blob-bin",
        BinaryMetadataValue::from_bytes(&[0, 1, 2, 255]),
    );
    status
}

struct Unary(Arc<Observed>);

impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let observed = self.0.clone();
        Box::pin(async move {
            let mut guard = CancelGuard(observed, false);
            let seen_id = request
                .metadata()
                .get("x-meshguard-client-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let msg = request.into_inner();
            let result = match msg.text.as_str() {
                "fail" => Err(failure()),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(Response::new(Msg::text("slow done")))
                }
                "hang" => std::future::pending().await,
                _ => {
                    let mut resp = Response::new(Msg {
                        text: seen_id,
                        data: msg.data,
                        count: msg.count,
                    });
                    resp.metadata_mut()
                        .insert("x-header", MetadataValue::from_static("leading"));
                    Ok(resp)
                }
            };
            guard.1 = true;
            result
        })
    }
}

struct ServerStream;

impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let msg = request.into_inner();
        Box::pin(async move {
            let fail = msg.text == "fail";
            let items = (0..msg.count).map(|i| {
                Ok(Msg {
                    count: i,
                    ..Msg::default()
                })
            });
            let end = fail.then(|| Err(failure()));
            let stream = tokio_stream::iter(items.chain(end));
            Ok(Response::new(Box::pin(stream) as MsgStream))
        })
    }
}

struct ClientStream;

impl tonic::server::ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let (mut count, mut bytes) = (0u32, 0usize);
            while let Some(msg) = stream.message().await? {
                count += 1;
                bytes += msg.data.len();
            }
            Ok(Response::new(Msg {
                text: bytes.to_string(),
                count,
                ..Msg::default()
            }))
        })
    }
}

struct Bidi;

impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let stream = request.into_inner().map(|m| {
                m.map(|m| Msg {
                    count: m.count + 1,
                    ..m
                })
            });
            Ok(Response::new(Box::pin(stream) as MsgStream))
        })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.observed.calls.fetch_add(1, Ordering::SeqCst);
        let observed = self.observed.clone();
        match req.uri().path() {
            "/test.Echo/Unary" => {
                Box::pin(async move { Ok(grpc().unary(Unary(observed), req).await) })
            }
            "/test.Echo/ServerStream" => {
                Box::pin(async move { Ok(grpc().server_streaming(ServerStream, req).await) })
            }
            "/test.Echo/ClientStream" => {
                Box::pin(async move { Ok(grpc().client_streaming(ClientStream, req).await) })
            }
            "/test.Echo/Bidi" => Box::pin(async move { Ok(grpc().streaming(Bidi, req).await) }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Starts the service on a loopback port (h2c, as gRPC apps listen).
pub async fn start_server() -> (std::net::SocketAddr, Arc<Observed>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let observed = Arc::new(Observed::default());
    let server = EchoServer {
        observed: observed.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, observed)
}

/// A client of `test.Echo` at `addr` (h2c with prior knowledge).
pub struct EchoClient(tonic::client::Grpc<tonic::transport::Channel>);

impl EchoClient {
    pub async fn connect(addr: std::net::SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        EchoClient(grpc)
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))
    }

    pub async fn unary(&mut self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.call_unary("/test.Echo/Unary", request).await
    }

    /// A unary call to any path (for methods the policy denies).
    pub async fn call_unary(
        &mut self,
        path: &'static str,
        request: Request<Msg>,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(path);
        self.0.unary(request, path, codec()).await
    }

    pub async fn server_stream(
        &mut self,
        request: Request<Msg>,
    ) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/ServerStream");
        self.0.server_streaming(request, path, codec()).await
    }

    pub async fn client_stream(
        &mut self,
        request: Request<impl Stream<Item = Msg> + Send + 'static>,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/ClientStream");
        self.0.client_streaming(request, path, codec()).await
    }

    pub async fn bidi(
        &mut self,
        request: Request<impl Stream<Item = Msg> + Send + 'static>,
    ) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/test.Echo/Bidi");
        self.0.streaming(request, path, codec()).await
    }
}
