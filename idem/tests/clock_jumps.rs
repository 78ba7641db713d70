//! Wall-clock jumps. Leases and TTLs are wall-clock deadlines (the store's
//! `Clock`), so a jump forwards can end a live lease early: a duplicate that
//! arrives before the holder's next renewal takes the key over and executes
//! again. What must still hold is fencing: the first holder's late answer
//! never overwrites the new holder's record, and every later retry replays
//! one answer. A jump backwards only lengthens leases and TTLs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use idem::{IdempotencyLayer, ManualClock, MemoryStore};
use tower::ServiceExt;

async fn call(app: &Router) -> (u16, String, bool) {
    let req = Request::post("/pay")
        .header("idempotency-key", "clock-jump-key-01")
        .body(Body::from("{}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_jump_may_re_execute_but_never_mixes_answers() {
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    let store = Arc::new(MemoryStore::new().with_clock(clock.clone()));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/pay",
            post(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n == 1 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    format!("execution {n}")
                }
            }),
        )
        .layer(IdempotencyLayer::new(store));

    let first = {
        let app = app.clone();
        tokio::spawn(async move { call(&app).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&app).await.0, 409, "the lease is live");

    // The wall clock jumps an hour forwards: the lease looks over.
    clock.advance(Duration::from_secs(3600));
    let second = call(&app).await;
    assert_eq!(
        second,
        (200, "execution 2".to_owned(), false),
        "the key was taken over"
    );
    let first = first.await.expect("first");
    assert_eq!(
        first,
        (200, "execution 1".to_owned(), false),
        "its own client still gets its answer"
    );

    // Fencing: the late first answer did not overwrite the second.
    for _ in 0..3 {
        assert_eq!(call(&app).await, (200, "execution 2".to_owned(), true));
    }
    // Backwards by two hours: the record only lives longer.
    clock.set(1_764_000_000_000 - 7_200_000);
    assert_eq!(call(&app).await, (200, "execution 2".to_owned(), true));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
