//! Keys carried in the body (`RoutePolicy::key_json`, `WebhookKeys::json`):
//! rules 1 and 2 for APIs that put the key in the JSON body (Square's
//! `idempotency_key`) and webhooks whose stable id is a body field
//! (Stripe's event `id`). The header wins when both are sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy, WebhookKeys};
use tower::ServiceExt;

fn app(runs: Arc<AtomicUsize>) -> Router {
    let webhook = WebhookKeys {
        json: Some("/id".into()),
        body_hash_fallback: false,
        ..WebhookKeys::default()
    };
    let policy = Policy::default()
        .route(
            "/orders",
            RoutePolicy::default().key_json(Some("/idempotency_key".into())),
        )
        .route("/hooks", RoutePolicy::default().webhook(Some(webhook)));
    let handler = move || {
        let runs = runs.clone();
        async move { format!("run {}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
    };
    Router::new()
        .route("/orders", post(handler.clone()))
        .route("/hooks", post(handler))
        .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(policy))
}

async fn call(app: &Router, path: &str, header: Option<&str>, body: &str) -> (u16, bool, String) {
    let mut req = Request::post(path).header("content-type", "application/json");
    if let Some(k) = header {
        req = req.header("idempotency-key", k);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("call");
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .expect("body");
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn rules_1_and_2_a_key_in_the_body() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(runs.clone());
    let body = r#"{"idempotency_key": "sq-order-000001", "amount": 5}"#;
    assert_eq!(
        call(&app, "/orders", None, body).await,
        (200, false, "run 1".into())
    );
    assert_eq!(
        call(&app, "/orders", None, body).await,
        (200, true, "run 1".into())
    );
    // The same body key with another payload: 422, as with a header.
    let other = r#"{"idempotency_key": "sq-order-000001", "amount": 6}"#;
    assert_eq!(call(&app, "/orders", None, other).await.0, 422);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // No key anywhere: 400, naming both places.
    let (status, _, detail) = call(&app, "/orders", None, r#"{"amount": 5}"#).await;
    assert_eq!(status, 400);
    assert!(
        detail.contains("/idempotency_key") && detail.contains("Idempotency-Key"),
        "{detail}"
    );
    // A key that is not a string, or breaks the key rules: 400.
    let (status, _, detail) =
        call(&app, "/orders", None, r#"{"idempotency_key": 12345678901}"#).await;
    assert_eq!(status, 400);
    assert!(detail.contains("must be a string"), "{detail}");
    assert_eq!(
        call(&app, "/orders", None, r#"{"idempotency_key": "short"}"#)
            .await
            .0,
        400
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_header_wins_over_the_body() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(runs.clone());
    let body = r#"{"idempotency_key": "sq-order-body-0002", "amount": 5}"#;
    let header = Some("sq-order-header-0002");
    assert_eq!(
        call(&app, "/orders", header, body).await,
        (200, false, "run 1".into())
    );
    assert_eq!(
        call(&app, "/orders", header, body).await,
        (200, true, "run 1".into())
    );
    // The body's key was never the key: alone, it is a new operation.
    assert_eq!(
        call(&app, "/orders", None, body).await,
        (200, false, "run 2".into())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_webhook_is_keyed_by_its_body_id() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(runs.clone());
    let event = r#"{"id": "evt_1Nq2x3", "type": "payment_intent.succeeded"}"#;
    assert_eq!(
        call(&app, "/hooks", None, event).await,
        (200, false, "run 1".into())
    );
    // The redelivery: answered from the store.
    assert_eq!(
        call(&app, "/hooks", None, event).await,
        (200, true, "run 1".into())
    );
    let next = r#"{"id": "evt_1Nq2x4", "type": "payment_intent.succeeded"}"#;
    assert_eq!(
        call(&app, "/hooks", None, next).await,
        (200, false, "run 2".into())
    );
    // No id and no hash fallback: refused.
    assert_eq!(call(&app, "/hooks", None, r#"{"type": "x"}"#).await.0, 400);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
