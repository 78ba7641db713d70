//! A tonic gRPC service and client for tests of gRPC unary calls, without
//! generated code: messages are raw bytes (`RawCodec`), so any payload is
//! a message. The service `pay.Payments/Charge` counts its executions and
//! answers `charged <n>: <payload>` with metadata `x-charge: <n>`; the
//! request's `x-test-grpc-code: N` metadata makes it fail with that code,
//! and `x-test-grpc-delay-ms: N` makes it answer N ms later.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// The method's path.
pub const CHARGE: &str = "/pay.Payments/Charge";

/// Messages as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The `pay.Payments` service, as a tower service a server (or a layer in
/// front of it) calls.
#[derive(Clone, Default)]
pub struct Payments {
    runs: Arc<AtomicUsize>,
}

impl Payments {
    /// Executions of `Charge` so far.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Charge(Arc<AtomicUsize>);

impl tonic::server::UnaryService<Bytes> for Charge {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = req
            .metadata()
            .get("x-test-grpc-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        let delay = req
            .metadata()
            .get("x-test-grpc-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let payload = req.into_inner();
        Box::pin(async move {
            if let Some(ms) = delay {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            if let Some(code) = fail {
                return Err(Status::new(
                    Code::from(code),
                    format!("failed on purpose ({n})"),
                ));
            }
            let mut out = format!("charged {n}: ").into_bytes();
            out.extend_from_slice(&payload);
            let mut res = tonic::Response::new(Bytes::from(out));
            res.metadata_mut().insert(
                "x-charge",
                n.to_string()
                    .parse()
                    .map_err(|_| Status::internal("metadata"))?,
            );
            Ok(res)
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for Payments
where
    B: http_body::Body + Send + 'static,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let charge = Charge(self.runs.clone());
        Box::pin(async move {
            if req.uri().path() != CHARGE {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(charge, req).await)
        })
    }
}

/// Calls `Charge` with `payload` through `channel` (any HTTP/2 client
/// service, or a layer in front of `Payments`), with the key as the
/// `idempotency-key` metadata and any `extra` metadata.
pub async fn charge<T>(
    channel: T,
    origin: http::Uri,
    key: Option<&str>,
    extra: &[(&'static str, &str)],
    payload: &'static [u8],
) -> Result<tonic::Response<Bytes>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut client = tonic::client::Grpc::with_origin(channel, origin);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let mut req = tonic::Request::new(Bytes::from_static(payload));
    if let Some(k) = key {
        let v = k.parse().map_err(|_| Status::invalid_argument("key"))?;
        req.metadata_mut().insert("idempotency-key", v);
    }
    for (name, value) in extra {
        let v = value
            .parse()
            .map_err(|_| Status::invalid_argument("metadata"))?;
        req.metadata_mut().insert(*name, v);
    }
    let path = http::uri::PathAndQuery::from_static(CHARGE);
    client.unary(req, path, RawCodec).await
}

/// Serves `payments` on a free loopback port, HTTP/2 without TLS (h2c), as
/// gRPC servers are reached behind a proxy; stops when the task is aborted.
pub async fn serve(
    payments: Payments,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route_service(CHARGE, payments);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// An ASCII metadata value, if there is one.
pub fn meta<'a>(metadata: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a str> {
    metadata.get(name).and_then(|v| v.to_str().ok())
}
