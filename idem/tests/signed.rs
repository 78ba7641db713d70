//! Signed keys through the layer: a valid signature executes; an unsigned
//! key, a signature for another user, a truncated or altered one are refused
//! with 400 `idempotency-key-invalid` and execute nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use idem::signed::sign;
use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy, Secret};
use tower::ServiceExt;

fn secret() -> Secret {
    Secret::from_bytes(*b"signing-secret-signing-secret-00").expect("secret")
}

async fn call(app: &Router, key: &str, user: &str) -> (u16, String, bool) {
    let req = Request::post("/payments")
        .header("idempotency-key", key)
        .header("authorization", user)
        .body(Body::from(r#"{"amount": 1}"#))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("call");
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        replayed,
    )
}

#[tokio::test]
async fn only_keys_signed_for_the_caller_execute() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "charged" }
            }),
        )
        .layer(
            IdempotencyLayer::new(Arc::new(MemoryStore::new()))
                .key_signing_secret(secret())
                .policy(
                    Policy::default()
                        .default_policy(RoutePolicy::default().require_signed_keys(true)),
                ),
        );
    let key = "order-0001-abcdef";
    let alice = sign(&secret(), key, b"Bearer alice");

    let (status, _, replayed) = call(&app, &alice, "Bearer alice").await;
    assert_eq!((status, replayed), (200, false));
    // The same signed key again replays (the Structured-Field form too).
    let (status, _, replayed) = call(&app, &format!("\"{alice}\""), "Bearer alice").await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let bob_signed = sign(&secret(), key, b"Bearer bob");
    let other_secret = Secret::from_bytes(*b"some-other-secret-some-other-sec").expect("secret");
    for (sent, user, why) in [
        (alice.clone(), "Bearer bob", "alice's key from bob"),
        (bob_signed, "Bearer alice", "bob's key from alice"),
        (
            alice[..alice.len() - 1].to_owned(),
            "Bearer alice",
            "truncated",
        ),
        (
            alice.replace("order-0001", "order-0009"),
            "Bearer alice",
            "altered key",
        ),
        (key.to_owned(), "Bearer alice", "unsigned"),
        (
            sign(&other_secret, key, b"Bearer alice"),
            "Bearer alice",
            "another secret",
        ),
    ] {
        let (status, body, _) = call(&app, &sent, user).await;
        assert_eq!(status, 400, "{why}");
        assert!(body.contains("idempotency-key-invalid"), "{why}: {body}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a refused key executed");
}
