//! A minimal upstream for the gateway benchmarks (bench/gateway.sh): reads
//! each request's body and answers 201 with a small JSON payment (or, with
//! `BENCH_BODY_BYTES=N` in the environment, with a body of N bytes: the
//! byte-budget flood in docs/RELIABILITY.md).
//!
//! Run with `cargo run --release -p idem-gateway --example bench_upstream -- 127.0.0.1:18200`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18200".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench upstream listening on http://{addr}");
    let counter = Arc::new(AtomicU64::new(0));
    let padding: Option<Bytes> = std::env::var("BENCH_BODY_BYTES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| Bytes::from(vec![b'x'; n]));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let counter = counter.clone();
        let padding = padding.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let counter = counter.clone();
                let padding = padding.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let json = format!(
                        r#"{{"id":"pay_{n:016x}","amount":42.5,"currency":"EUR","status":"succeeded","received":{}}}"#,
                        body.len()
                    );
                    let body = padding.unwrap_or_else(|| Bytes::from(json));
                    let mut res = Response::new(Full::new(body));
                    *res.status_mut() = StatusCode::CREATED;
                    res.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
