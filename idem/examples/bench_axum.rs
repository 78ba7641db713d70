//! A tiny axum payments handler (parse a small JSON body, answer 201 with an
//! id), served with or without `IdempotencyLayer` + `MemoryStore`: what
//! `bench/layer.sh` measures, pinned, to see the layer's own cost.
//!
//! Usage: `bench_axum ADDR plain|layer|layer-no-context|layer-redis [multi|current]`
//! (`layer-no-context`: the layer told that no handler reads
//! `IdempotencyContext`, to see what putting it in the request costs;
//! `layer-redis`: the layer over `RedisStore` at `REDIS_URL`, default
//! `redis://127.0.0.1:6379/3`).
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idem::{IdempotencyLayer, MemoryStore};
use serde_json::{json, Value};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

async fn pay(Json(payment): Json<Value>) -> (StatusCode, Json<Value>) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::CREATED,
        Json(json!({
            "id": format!("pay_{id:016x}"),
            "amount": payment.get("amount"),
            "currency": payment.get("currency"),
            "status": "succeeded",
        })),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_axum ADDR plain|layer|layer-no-context|layer-redis [multi|current]";
    let addr = args.next().ok_or(usage)?;
    let variant = args.next().ok_or(usage)?;
    let runtime = args.next().unwrap_or_else(|| "multi".to_owned());
    let app = Router::new().route("/payments", post(pay));
    // Room for every key of a long run: the default million would refuse
    // new keys (503) part-way through, and measure refusals instead.
    let layer = || IdempotencyLayer::new(Arc::new(MemoryStore::new().with_capacity(50_000_000)));
    let app = match variant.as_str() {
        "plain" => app,
        "layer" => app.layer(layer()),
        "layer-no-context" => app.layer(layer().request_context(false)),
        "layer-redis" => {
            let url = std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/3".to_owned());
            let options = idem_redis_store::RedisOptions {
                prefix: format!("idem-bench:{}:", idem_core::key::generate_uuid_v4()),
                ..Default::default()
            };
            let store = idem_redis_store::RedisStore::new(&url, options)?;
            app.layer(IdempotencyLayer::new(Arc::new(store)))
        }
        _ => return Err(usage.into()),
    };
    let rt = match runtime.as_str() {
        "multi" => tokio::runtime::Builder::new_multi_thread(),
        "current" => tokio::runtime::Builder::new_current_thread(),
        _ => return Err(usage.into()),
    }
    .enable_all()
    .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await
    })?;
    Ok(())
}
