//! Edge paths where an operation could run twice or everyone could be
//! stalled: the secret behind store keys is by default the store's own (a
//! restart or a second replica finds the same records), reading it never
//! makes requests queue behind a silent store, and a lease stays renewed
//! until the answer is stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy};
use idem_sqlite_store::SqliteStore;
use idem_testkit::clock::TokioClock;
use idem_testkit::faulty::Faulty;
use tower::ServiceExt;

fn app(layer: IdempotencyLayer, calls: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/payments",
            post(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("payment {n}")) }
            }),
        )
        .layer(layer)
}

async fn pay(router: &Router, key: &str) -> (StatusCode, bool, String) {
    let req = Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{\"amount\":10}"))
        .unwrap_or_default();
    let res = router
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = res.status();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Issue: with the default secret random per process, a layer over SQLite
/// forgot every record at restart and a retry executed again.
#[tokio::test]
async fn rule_4_a_layer_rebuilt_on_the_same_sqlite_file_replays() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("idem.db");
    let calls = Arc::new(AtomicUsize::new(0));
    let first = {
        let store = SqliteStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let router = app(IdempotencyLayer::new(Arc::new(store)), calls.clone());
        pay(&router, "restart-key-0001").await
    };
    assert_eq!((first.0, first.1), (StatusCode::CREATED, false));
    // The process restarts: a new store and a new layer on the same file.
    let store = SqliteStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let router = app(IdempotencyLayer::new(Arc::new(store)), calls.clone());
    let again = pay(&router, "restart-key-0001").await;
    assert_eq!(again, (StatusCode::CREATED, true, first.2));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the retry executed again");
}

/// Two layers on one MemoryStore (it keeps no secret) each get a random
/// one: the default still works for in-memory stores.
#[tokio::test]
async fn a_memory_store_gets_a_random_secret_per_layer() {
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let a = app(IdempotencyLayer::new(store.clone()), calls.clone());
    let b = app(IdempotencyLayer::new(store), calls.clone());
    assert_eq!(pay(&a, "memory-key-0001").await.0, StatusCode::CREATED);
    assert!(pay(&a, "memory-key-0001").await.1);
    assert!(!pay(&b, "memory-key-0001").await.1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Issue: with the store silent, requests queued behind the secret's
/// bootstrap, each waiting a store timeout after the one before.
#[tokio::test(start_paused = true)]
async fn rule_10_requests_waiting_for_the_secret_all_get_503_within_one_store_timeout() {
    let timeout = Duration::from_secs(2);
    let layer = IdempotencyLayer::new(Arc::new(Faulty::new(MemoryStore::new()).silent()))
        .secret_from_store()
        .store_timeout(timeout);
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(layer, calls.clone());
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let answer = pay(&router, &format!("silent-key-{i:04}")).await;
            (answer.0, started.elapsed())
        }));
    }
    for t in tasks {
        let (status, took) = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took <= timeout * 2, "answered after {took:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Issue: lease renewal stopped when the execution ended, before `complete`
/// returned; a `complete` slower than the lease let a duplicate take the key
/// over and execute again.
#[tokio::test(start_paused = true)]
async fn rule_8_the_lease_is_renewed_until_the_answer_is_stored() {
    let lease = Duration::from_millis(300);
    // Paused: the store's clock follows tokio's, as the renewals do.
    let clock = Arc::new(TokioClock::new());
    let store = Faulty::new(MemoryStore::new().with_clock(clock))
        .complete_delay(Duration::from_millis(1200));
    let layer = IdempotencyLayer::new(Arc::new(store))
        .policy(Policy::default().default_policy(RoutePolicy::default().lease(lease)))
        .store_timeout(Duration::from_secs(3));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(layer, calls.clone());
    let first = {
        let router = router.clone();
        tokio::spawn(async move { pay(&router, "slow-complete-0001").await })
    };
    // The execution is over at once; its answer is being stored for 1.2 s,
    // four leases. A duplicate meanwhile must find the key still held.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let duplicate = pay(&router, "slow-complete-0001").await;
    assert_eq!(duplicate.0, StatusCode::CONFLICT, "{duplicate:?}");
    let first = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.0, StatusCode::CREATED);
    let replay = pay(&router, "slow-complete-0001").await;
    assert_eq!(replay, (StatusCode::CREATED, true, first.2));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "executed twice");
}

/// Issue: a request body that never arrives held its in-flight slot for as
/// long as the client kept the connection, so a few such clients made every
/// covered request get 503. It now gets 408 once the body read timeout has
/// passed, nothing executes, and its slot is free for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_and_frees_its_slot() {
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()))
        .max_in_flight(1)
        .body_read_timeout(Duration::from_millis(300));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(layer, calls.clone());
    // A body stream that sends nothing and never ends.
    let silent = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let req = Request::post("/payments")
        .header("idempotency-key", "silent-body-0001")
        .body(Body::from_stream(silent))
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(3), router.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("no answer: the silent body held its request"))
        .unwrap_or_else(|e| match e {});
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    let ok = pay(&router, "after-silent-0001").await;
    assert_eq!(ok.0, StatusCode::CREATED, "the slot was not freed: {ok:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Issue 17 item 7: a body that trickles in held its request until the
/// total body read timeout. A body that stops arriving for the idle timeout
/// now gets 408 then, long before the total; one that keeps coming, however
/// slowly, is read to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_at_the_idle_timeout() {
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()))
        .max_in_flight(1)
        .body_read_timeout(Duration::from_secs(30))
        .body_idle_timeout(Duration::from_millis(400));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(layer, calls.clone());
    // `chunks` bytes of `{"amount":10}` (padded with spaces), one every `gap`,
    // then, if `stall`, nothing more.
    let trickle = |gap: Duration, stall: bool| {
        let text = b"{\"amount\":10}      ".to_vec();
        let stream = futures_util::stream::unfold(0usize, move |i| {
            let text = text.clone();
            async move {
                if i == 4 && stall {
                    futures_util::future::pending::<()>().await;
                }
                if i >= text.len() {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&text[i..=i])),
                    i + 1,
                ))
            }
        });
        Body::from_stream(stream)
    };
    let send = |key: &'static str, body: Body| {
        let router = router.clone();
        async move {
            let req = Request::post("/payments")
                .header("idempotency-key", key)
                .header("content-type", "application/json")
                .body(body)
                .unwrap_or_default();
            let res = tokio::time::timeout(Duration::from_secs(10), router.oneshot(req))
                .await
                .unwrap_or_else(|_| panic!("no answer for {key}"))
                .unwrap_or_else(|e| match e {});
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // 20 bytes 100 ms apart: 2 s in all, no gap near the idle timeout.
    let (status, text) = send("trickle-0001", trickle(Duration::from_millis(100), false)).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let started = std::time::Instant::now();
    let (status, text) = send("stalled-0001", trickle(Duration::from_millis(10), true)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
    assert!(text.contains("stopped arriving"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}: the idle timeout did not apply",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let ok = pay(&router, "after-stalled-0001").await;
    assert_eq!(ok.0, StatusCode::CREATED, "the slot was not freed: {ok:?}");
}

async fn pay_as(router: &Router, who: Option<&str>, key: &str) -> (StatusCode, Option<String>) {
    let mut req = Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json");
    if let Some(who) = who {
        req = req.header("authorization", format!("Bearer {who}"));
    }
    let req = req.body(Body::from("{\"amount\":10}")).unwrap_or_default();
    let res = router
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("idempotency-scope-full")
                || text.contains("idempotency-scope-rate-limited"),
            "{text}"
        );
    }
    (status, retry)
}

/// Issue 17 item 8: one client flooding new keys filled the store, and every
/// user got 503 `idempotency-store-full` for a TTL. One scope now holds at
/// most half the store (the default share): past it, its new keys get 429,
/// while its replays and other scopes' requests go on.
#[tokio::test]
async fn one_scope_cannot_take_more_than_its_share_of_the_store() {
    let store = Arc::new(MemoryStore::new().with_capacity(10));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(IdempotencyLayer::new(store), calls.clone());
    for i in 0..5 {
        let (status, _) = pay_as(&router, None, &format!("flood-key-{i:04}")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, retry) = pay_as(&router, None, "flood-key-0005").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some(), "no Retry-After");
    assert_eq!(calls.load(Ordering::SeqCst), 5, "the refused key executed");
    // Its replays still replay.
    assert_eq!(
        pay_as(&router, None, "flood-key-0000").await.0,
        StatusCode::CREATED
    );
    // Another scope keeps working, up to its own share.
    for i in 0..5 {
        let (status, _) = pay_as(&router, Some("sk_other"), &format!("other-key-{i:04}")).await;
        assert_eq!(status, StatusCode::CREATED, "another scope was refused");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

/// The refused key was released: once the share allows, the same key
/// executes (it was never left in progress).
#[tokio::test]
async fn a_key_refused_for_its_scope_is_not_left_in_progress() {
    let store = Arc::new(MemoryStore::new().with_capacity(2));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = app(
        IdempotencyLayer::new(store.clone()).scope_share(0.5),
        calls.clone(),
    );
    assert_eq!(
        pay_as(&router, None, "share-key-0001").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        pay_as(&router, None, "share-key-0002").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(store.len(), 1, "the refused key's record was kept");
    // With the share off, the same key executes at once.
    let router = app(IdempotencyLayer::new(store).scope_share(1.0), calls.clone());
    assert_eq!(
        pay_as(&router, None, "share-key-0002").await.0,
        StatusCode::CREATED
    );
}

/// Issue 17 item 8, the opt-in rate: a scope past its rate of new keys gets
/// 429 with a Retry-After; its replays and other scopes are not limited.
#[tokio::test]
async fn a_scope_past_its_rate_of_new_keys_gets_429_and_replays_still_replay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new())).scope_key_rate(0.5, 2);
    let router = app(layer, calls.clone());
    assert_eq!(
        pay_as(&router, Some("fast"), "rate-key-0001").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        pay_as(&router, Some("fast"), "rate-key-0002").await.0,
        StatusCode::CREATED
    );
    let (status, retry) = pay_as(&router, Some("fast"), "rate-key-0003").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the limited key executed");
    // A retry of an answered key takes no token.
    assert_eq!(
        pay_as(&router, Some("fast"), "rate-key-0001").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        pay_as(&router, Some("slow"), "rate-key-0004").await.0,
        StatusCode::CREATED
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
