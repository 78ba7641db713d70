//! Rule 6 over part of a JSON body (`RoutePolicy::fingerprint_fields`): a
//! retry that changes only a field that does not count replays; one that
//! changes a field that counts gets 422; nothing executes twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use idem::{BodyFields, IdempotencyLayer, MemoryStore, Policy, RoutePolicy};
use tower::ServiceExt;

fn app(runs: Arc<AtomicUsize>) -> Router {
    let policy = Policy::default()
        .route(
            "/payments",
            RoutePolicy::default()
                .fingerprint_fields(BodyFields::Exclude(vec!["/client_ts".into()])),
        )
        .route(
            "/transfers",
            RoutePolicy::default().fingerprint_fields(BodyFields::Include(vec![
                "/amount".into(),
                "/currency".into(),
            ])),
        );
    let handler = move || {
        let runs = runs.clone();
        async move { format!("run {}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
    };
    Router::new()
        .route("/payments", post(handler.clone()))
        .route("/transfers", post(handler))
        .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(policy))
}

async fn call(app: &Router, path: &str, key: &str, body: &'static str) -> (u16, bool, String) {
    let req = Request::post(path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("call");
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
async fn rule_6_a_change_to_an_excluded_field_replays() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(runs.clone());
    let k = "fields-exclude-0001";
    let first = call(&app, "/payments", k, r#"{"amount": 10, "client_ts": 1}"#).await;
    assert_eq!(first, (200, false, "run 1".into()));
    let retry = call(&app, "/payments", k, r#"{"client_ts": 2, "amount": 10}"#).await;
    assert_eq!(retry, (200, true, "run 1".into()));
    let other = call(&app, "/payments", k, r#"{"amount": 11, "client_ts": 1}"#).await;
    assert_eq!(other.0, 422, "{other:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rule_6_only_included_fields_count() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(runs.clone());
    let k = "fields-include-0001";
    let body = r#"{"amount": 5, "currency": "EUR", "note": "rent"}"#;
    assert_eq!(
        call(&app, "/transfers", k, body).await,
        (200, false, "run 1".into())
    );
    let note = r#"{"amount": 5, "currency": "EUR", "note": "rent, March"}"#;
    assert_eq!(
        call(&app, "/transfers", k, note).await,
        (200, true, "run 1".into())
    );
    let amount = r#"{"amount": 6, "currency": "EUR", "note": "rent"}"#;
    assert_eq!(call(&app, "/transfers", k, amount).await.0, 422);
    // A field that counts, removed: another request.
    assert_eq!(call(&app, "/transfers", k, r#"{"amount": 5}"#).await.0, 422);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
