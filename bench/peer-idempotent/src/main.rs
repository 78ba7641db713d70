//! The same tiny payments handler as idem/examples/bench_axum.rs, served
//! plain, behind idem's layer over `RedisStore`, or behind a middleware
//! built on the `idempotent` crate's `ValkeyStore` the way its README
//! shows (claim, run, complete with the fencing token; an existing entry
//! replays when completed and its fingerprint matches, 409 while in
//! progress, 422 for another payload). One binary, one build profile, so
//! the two layers differ only in themselves.
//!
//! usage: peer-idempotent ADDR plain|layer-redis|idempotent-redis [multi|current]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idempotent::entry::ExistingEntry;
use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
use idempotent::store::valkey::ValkeyStore;
use idempotent::store::{IdempotencyStore, InsertResult};
use idempotent::{CachedResponse, IdempotencyEntry, IdempotencyKey};
use serde_json::{json, Value};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
const TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_BODY: usize = 1 << 20;

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

fn status(code: StatusCode, text: &'static str) -> Response {
    (code, text).into_response()
}

fn replay(cached: CachedResponse) -> Response {
    let mut response = Response::new(Body::from(cached.body));
    *response.status_mut() = StatusCode::from_u16(cached.status_code).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `idempotent` crate around the handler.
async fn peer(State(store): State<Arc<ValkeyStore>>, request: Request, next: Next) -> Response {
    let Some(raw) = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
    else {
        return next.run(request).await;
    };
    let Ok(key) = IdempotencyKey::new(raw) else {
        return status(StatusCode::BAD_REQUEST, "invalid Idempotency-Key");
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let operation = format!("{} {}", parts.method, parts.uri.path());
    let fingerprint = DefaultFingerprintStrategy.compute(&operation, &body);
    let entry = IdempotencyEntry::new(fingerprint, TTL);
    match store.try_insert(&key, entry.clone()).await {
        Ok(InsertResult::Claimed { fencing_token }) => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            let (parts, body) = response.into_parts();
            let Ok(body) = to_bytes(body, MAX_BODY).await else {
                let _ = store.remove(&key).await;
                return status(StatusCode::INTERNAL_SERVER_ERROR, "answer too large");
            };
            let cached = CachedResponse {
                status_code: parts.status.as_u16(),
                metadata: Default::default(),
                body: body.clone(),
            };
            if store
                .complete(&key, entry.complete(cached), fencing_token)
                .await
                .is_err()
            {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "could not store the answer",
                );
            }
            Response::from_parts(parts, Body::from(body))
        }
        Ok(InsertResult::Exists(ExistingEntry::Completed(done))) => {
            if done.fingerprint_matches(fingerprint) {
                replay(done.into_response())
            } else {
                status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "key reused for another payload",
                )
            }
        }
        Ok(InsertResult::Exists(ExistingEntry::Processing(_))) => {
            status(StatusCode::CONFLICT, "in progress")
        }
        Err(_) => status(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: peer-idempotent ADDR plain|layer-redis|idempotent-redis [multi|current]";
    let addr = args.next().ok_or(usage)?;
    let variant = args.next().ok_or(usage)?;
    let runtime = args.next().unwrap_or_else(|| "multi".to_owned());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/3".to_owned());
    let prefix = format!("bench:{}", idem_core::key::generate_uuid_v4());
    let rt = match runtime.as_str() {
        "multi" => tokio::runtime::Builder::new_multi_thread(),
        "current" => tokio::runtime::Builder::new_current_thread(),
        _ => return Err(usage.into()),
    }
    .enable_all()
    .build()?;
    rt.block_on(async move {
        let app = Router::new().route("/payments", post(pay));
        let app = match variant.as_str() {
            "plain" => app,
            "layer-redis" => {
                let options = idem_redis_store::RedisOptions {
                    prefix: format!("idem-{prefix}:"),
                    ..Default::default()
                };
                let store = idem_redis_store::RedisStore::new(&url, options)?;
                app.layer(idem::IdempotencyLayer::new(Arc::new(store)))
            }
            "idempotent-redis" => {
                let client = redis::Client::open(url.as_str())?;
                let store = ValkeyStore::with_prefix(client, Some(&prefix)).await?;
                app.layer(from_fn_with_state(Arc::new(store), peer))
            }
            _ => return Err(usage.into()),
        };
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
