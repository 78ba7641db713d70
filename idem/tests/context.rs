//! The `IdempotencyContext` extension: present for executions by default,
//! absent when the layer is told nothing reads it (`request_context(false)`),
//! and the idempotency contract unchanged either way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use idem::{IdempotencyContext, IdempotencyLayer, MemoryStore};
use tower::ServiceExt;

fn app(context: bool, runs: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/payments",
            post(move |req: Request<Body>| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                match req.extensions().get::<IdempotencyContext>() {
                    Some(ctx) => format!("context {}", ctx.key().as_str()),
                    None => "no context".to_owned(),
                }
            }),
        )
        .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).request_context(context))
}

async fn post_twice(app: &Router) -> (String, String) {
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let res = app
            .clone()
            .oneshot(
                Request::post("/payments")
                    .header("idempotency-key", "context-key-00001")
                    .body(Body::from("{}"))
                    .expect("request"),
            )
            .await
            .expect("call");
        assert_eq!(res.status(), 200);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    (bodies.remove(0), bodies.remove(0))
}

#[tokio::test]
async fn executions_see_the_context_by_default() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (first, replay) = post_twice(&app(true, runs.clone())).await;
    assert_eq!(first, "context context-key-00001");
    assert_eq!(replay, first);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_the_context_the_contract_is_unchanged() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (first, replay) = post_twice(&app(false, runs.clone())).await;
    assert_eq!(first, "no context");
    assert_eq!(replay, first);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
