//! The layer's own cost per request, in process (no sockets): a first
//! execution and a replay through `IdempotencyLayer` over a `MemoryStore`,
//! beside the same service without the layer.
//!
//! Run with `cargo bench -p idem-layer --bench layer`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use idem::{IdempotencyLayer, MemoryStore};
use tower::{Layer, Service, ServiceExt};

const BODY: &str = r#"{"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}"#;

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("/payments")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("authorization", "Bearer sk_test_123")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request")
}

async fn handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .header("date", "Thu, 26 Nov 2026 21:42:41 GMT")
        .body(Full::new(Bytes::from_static(
            br#"{"id":"pay_0123456789abcdef","amount":42.5,"currency":"EUR","status":"succeeded"}"#,
        )))
        .expect("response"))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("layer");
    let n = Arc::new(AtomicU64::new(0));

    let plain = tower::service_fn(handler::<Full<Bytes>>);
    g.bench_function("without_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = plain.oneshot(request("k")).await.expect("call");
                res.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });

    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
    let svc = layer.layer(tower::service_fn(handler));
    g.bench_function("first_execution", |b| {
        b.iter(|| {
            let key = format!("bench-key-{:012}", n.fetch_add(1, Ordering::Relaxed));
            rt.block_on(async {
                let res = svc.clone().oneshot(request(&key)).await.expect("call");
                res.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });

    rt.block_on(async {
        let mut s = svc.clone();
        s.ready().await.expect("ready");
        s.call(request("bench-replay-key-0001"))
            .await
            .expect("call");
    });
    g.bench_function("replay", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = svc
                    .clone()
                    .oneshot(request("bench-replay-key-0001"))
                    .await
                    .expect("call");
                res.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
