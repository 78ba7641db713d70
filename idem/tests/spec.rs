//! Every rule of SPEC.md through the layer, on an axum app whose handlers
//! count their executions: "nothing executed" is a count that did not move.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use idem::{
    IdempotencyContext, IdempotencyLayer, ItemAnswer, ManualClock, MemoryStore, Policy,
    RoutePolicy, Store, WebhookKeys,
};
use idem_testkit::clock::TokioClock;
use idem_testkit::faulty::Unreachable;
use idem_testkit::spec_suite::{Served, Settings};
use idem_testkit::upstream::CountingUpstream;
use tokio::sync::Semaphore;
use tower::ServiceExt;

const KEY: &str = "key-0000000001";

#[derive(Clone)]
struct Counters {
    calls: Arc<AtomicUsize>,
    /// Handlers on /slow wait for a permit; tests add permits to let them go.
    gate: Arc<Semaphore>,
    entered: Arc<tokio::sync::Notify>,
    fail_next: Arc<AtomicBool>,
    item_calls: Arc<[AtomicUsize; 3]>,
}

struct App {
    router: Router,
    c: Counters,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

fn app_with(policy: Policy, store_capacity: usize) -> App {
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    let store = Arc::new(
        MemoryStore::new()
            .with_clock(clock.clone())
            .with_capacity(store_capacity),
    );
    let c = Counters {
        calls: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
        entered: Arc::default(),
        fail_next: Arc::default(),
        item_calls: Arc::default(),
    };
    let router = Router::new()
        .route(
            "/payments",
            post(
                |Extension(c): Extension<Counters>, body: Bytes| async move {
                    let n = c.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    Response::builder()
                        .status(201)
                        .header("content-type", "application/json")
                        .body(Body::from(format!("{{\"n\":{n},\"len\":{}}}", body.len())))
                        .unwrap_or_default()
                },
            )
            .get(|Extension(c): Extension<Counters>| async move {
                c.calls.fetch_add(1, Ordering::SeqCst);
                "list"
            }),
        )
        .route(
            "/slow",
            post(|Extension(c): Extension<Counters>| async move {
                let n = c.calls.fetch_add(1, Ordering::SeqCst) + 1;
                c.entered.notify_one();
                if let Ok(p) = c.gate.acquire().await {
                    p.forget();
                }
                (StatusCode::CREATED, format!("slow {n}"))
            }),
        )
        .route(
            "/panic",
            post(|Extension(c): Extension<Counters>| async move {
                let n = c.calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    panic!("handler bug");
                }
                "recovered"
            }),
        )
        .route(
            "/webhooks",
            post(|Extension(c): Extension<Counters>| async move {
                c.calls.fetch_add(1, Ordering::SeqCst);
                "received"
            }),
        )
        .route(
            "/batch",
            post(
                |Extension(c): Extension<Counters>,
                 Extension(ctx): Extension<IdempotencyContext>| async move {
                    c.calls.fetch_add(1, Ordering::SeqCst);
                    let mut statuses = Vec::new();
                    for i in 0..3 {
                        let c = c.clone();
                        let item = format!("{{\"item\":{i}}}");
                        let out = ctx
                            .batch_item(i, item.as_bytes(), || async move {
                                c.item_calls[i].fetch_add(1, Ordering::SeqCst);
                                if i == 1 && c.fail_next.swap(false, Ordering::SeqCst) {
                                    ItemAnswer::new(500, "item failed")
                                } else {
                                    ItemAnswer::new(201, format!("item {i}"))
                                }
                            })
                            .await;
                        statuses.push(out.map(|o| o.status).unwrap_or(503));
                    }
                    let status = if statuses.iter().any(|s| *s >= 500) {
                        502
                    } else {
                        200
                    };
                    (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        format!("{statuses:?}"),
                    )
                },
            ),
        )
        .layer(
            // One client sends everything here: the per-scope share of
            // the store (tested in edge_paths.rs) would stop it at half
            // of a small store's capacity.
            IdempotencyLayer::new(store.clone())
                .policy(policy)
                .scope_share(1.0)
                .store_timeout(Duration::from_secs(2)),
        )
        .layer(Extension(c.clone()));
    App {
        router,
        c,
        store,
        clock,
    }
}

fn app() -> App {
    app_with(default_policy(), 1_000_000)
}

fn default_policy() -> Policy {
    Policy::default()
        .route(
            "/webhooks",
            RoutePolicy::default().webhook(Some(WebhookKeys::default())),
        )
        .route(
            "/wait",
            RoutePolicy::default().wait(Some(Duration::from_secs(5))),
        )
}

fn post_req(path: &str, key: Option<&str>, body: &'static str) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(body)).unwrap_or_default()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn problem_type(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["type"].as_str().unwrap_or_default().to_owned()
    }
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let res = router
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn calls(a: &App) -> usize {
    a.c.calls.load(Ordering::SeqCst)
}

#[tokio::test]
async fn optional_key_passes_through_unprotected() {
    let a = app_with(
        Policy::default().default_policy(RoutePolicy::default().key_required(false)),
        100,
    );
    assert_eq!(
        send(&a.router, post_req("/payments", None, "{}"))
            .await
            .status,
        201
    );
    assert_eq!(
        send(&a.router, post_req("/payments", None, "{}"))
            .await
            .status,
        201
    );
    assert_eq!(calls(&a), 2);
}

#[tokio::test]
async fn rule_5_in_progress_duplicate_is_409_with_retry_after() {
    let a = app();
    let router = a.router.clone();
    let first =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    let dup = send(&a.router, post_req("/slow", Some(KEY), "{}")).await;
    assert_eq!(dup.status, 409);
    assert_eq!(
        dup.problem_type(),
        "urn:idem:problem:idempotency-key-in-use"
    );
    assert!(dup.headers.contains_key("retry-after"));
    a.c.gate.add_permits(1);
    let first = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status, 201);
    let replay = send(&a.router, post_req("/slow", Some(KEY), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(calls(&a), 1);
}

#[tokio::test]
async fn rule_5_wait_mode_holds_the_duplicate_then_replays() {
    let policy = Policy::default().route(
        "/slow",
        RoutePolicy::default().wait(Some(Duration::from_secs(5))),
    );
    let a = app_with(policy, 100);
    let router = a.router.clone();
    let first =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    let router = a.router.clone();
    let dup = tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!dup.is_finished(), "the duplicate waits");
    a.c.gate.add_permits(1);
    let first = first.await.unwrap_or_else(|e| panic!("{e}"));
    let dup = dup.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dup.status, 201);
    assert!(dup.replayed());
    assert_eq!(dup.body, first.body);
    assert_eq!(calls(&a), 1);
}

#[tokio::test]
async fn rule_6_mismatch_while_in_progress_is_422() {
    let a = app();
    let router = a.router.clone();
    let first =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    let r = send(&a.router, post_req("/slow", Some(KEY), "{\"x\":1}")).await;
    assert_eq!(r.status, 422);
    a.c.gate.add_permits(1);
    let _ = first.await;
    assert_eq!(calls(&a), 1);
}

#[tokio::test]
async fn rule_7_panicking_handler_releases_the_key() {
    let a = app();
    let r = send(&a.router, post_req("/panic", Some(KEY), "{}")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.problem_type(), "urn:idem:problem:execution-failed");
    let retry = send(&a.router, post_req("/panic", Some(KEY), "{}")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(calls(&a), 2);
}

#[tokio::test]
async fn rule_7_service_error_releases_the_key() {
    use http_body_util::Full;
    let store = Arc::new(MemoryStore::new());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let svc = tower::service_fn(
        move |_req: Request<idem::layer::RequestBody<Full<Bytes>>>| {
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err("upstream unreachable")
                } else {
                    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            }
        },
    );
    let svc = tower::Layer::layer(&IdempotencyLayer::new(store.clone()), svc);
    let req = || {
        Request::post("/x")
            .header("idempotency-key", KEY)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    };
    assert!(svc.clone().oneshot(req()).await.is_err());
    let ok = svc.clone().oneshot(req()).await;
    assert!(ok.is_ok_and(|r| r.status() == 200));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rule_8_expired_lease_is_taken_over_and_the_stale_holder_is_fenced() {
    let a = app();
    let router = a.router.clone();
    let first =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    // The holder "crashed": its lease (30 s) runs out without renewal.
    a.clock.advance(Duration::from_secs(31));
    let router = a.router.clone();
    let second =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    assert_eq!(calls(&a), 2, "the second request took over");
    // The stale first holder finishes first (the gate is FIFO): its client
    // gets its answer, but its fenced completion must not be stored.
    a.c.gate.add_permits(1);
    let stale = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stale.body, Bytes::from_static(b"slow 1"));
    let dup = send(&a.router, post_req("/slow", Some(KEY), "{}")).await;
    assert_eq!(dup.status, 409, "the second holder still holds the key");
    a.c.gate.add_permits(1);
    let live = second.await.unwrap_or_else(|e| panic!("{e}"));
    let replay = send(&a.router, post_req("/slow", Some(KEY), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, live.body);
    assert_eq!(replay.body, Bytes::from_static(b"slow 2"));
    assert_eq!(calls(&a), 2);
}

#[tokio::test(start_paused = true)]
async fn rule_8_lease_is_renewed_while_the_execution_runs() {
    // Paused time with a short lease: the store's clock follows tokio's, so
    // the renewals, the handler's sleep and the test's run in virtual time.
    let store = Arc::new(MemoryStore::new().with_clock(Arc::new(TokioClock::new())));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new()
        .route(
            "/long",
            post(move || {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    "long"
                }
            }),
        )
        .layer(
            IdempotencyLayer::new(store).policy(
                Policy::default()
                    .default_policy(RoutePolicy::default().lease(Duration::from_millis(300))),
            ),
        );
    let r2 = router.clone();
    let first = tokio::spawn(async move { send(&r2, post_req("/long", Some(KEY), "{}")).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Past the original lease (twice over), but it was renewed: still in progress.
    assert_eq!(
        send(&router, post_req("/long", Some(KEY), "{}"))
            .await
            .status,
        409
    );
    let _ = first.await;
    assert!(send(&router, post_req("/long", Some(KEY), "{}"))
        .await
        .replayed());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rule_9_completed_record_past_ttl_is_no_record() {
    let policy =
        Policy::default().default_policy(RoutePolicy::default().ttl(Duration::from_secs(60)));
    let a = app_with(policy, 100);
    assert_eq!(
        send(&a.router, post_req("/payments", Some(KEY), "{}"))
            .await
            .status,
        201
    );
    a.clock.advance(Duration::from_secs(59));
    assert!(send(&a.router, post_req("/payments", Some(KEY), "{}"))
        .await
        .replayed());
    a.clock.advance(Duration::from_secs(2));
    let r = send(&a.router, post_req("/payments", Some(KEY), "{}")).await;
    assert!(!r.replayed());
    assert_eq!(calls(&a), 2);
}

fn down_app(fail_open: bool) -> (Router, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router =
        Router::new()
            .route(
                "/payments",
                post(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                    async { "charged" }
                }),
            )
            .layer(IdempotencyLayer::new(Arc::new(Unreachable)).policy(
                Policy::default().default_policy(RoutePolicy::default().fail_open(fail_open)),
            ));
    (router, hits)
}

#[tokio::test]
async fn rule_10_store_unreachable_is_503_fail_closed() {
    let (router, hits) = down_app(false);
    let r = send(&router, post_req("/payments", Some(KEY), "{}")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.problem_type(),
        "urn:idem:problem:idempotency-store-unavailable"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rule_10_fail_open_is_an_explicit_opt_in() {
    let (router, hits) = down_app(true);
    let r = send(&router, post_req("/payments", Some(KEY), "{}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn full_store_refuses_with_503_and_keeps_live_records() {
    let a = app_with(default_policy(), 2);
    assert_eq!(
        send(
            &a.router,
            post_req("/payments", Some("key-full-000001"), "{}")
        )
        .await
        .status,
        201
    );
    assert_eq!(
        send(
            &a.router,
            post_req("/payments", Some("key-full-000002"), "{}")
        )
        .await
        .status,
        201
    );
    let r = send(
        &a.router,
        post_req("/payments", Some("key-full-000003"), "{}"),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.problem_type(), "urn:idem:problem:idempotency-store-full");
    assert!(send(
        &a.router,
        post_req("/payments", Some("key-full-000001"), "{}")
    )
    .await
    .replayed());
    assert_eq!(calls(&a), 2);
}

#[tokio::test]
async fn rule_11_body_over_the_limit_is_413() {
    let policy = Policy::default().default_policy(RoutePolicy::default().max_request_body(16));
    let a = app_with(policy, 100);
    let declared = send(
        &a.router,
        post_req("/payments", Some(KEY), "{\"this body is\":\"too long\"}"),
    )
    .await;
    assert_eq!(declared.status, 413);
    assert_eq!(
        declared.problem_type(),
        "urn:idem:problem:request-body-too-large"
    );
    // No Content-Length: a stream that grows past the limit.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789"))),
    );
    let streamed = Request::post("/payments")
        .header("idempotency-key", KEY)
        .body(Body::from_stream(chunks))
        .unwrap_or_default();
    assert_eq!(send(&a.router, streamed).await.status, 413);
    assert_eq!(calls(&a), 0);
    assert!(a.store.is_empty());
}

#[tokio::test]
async fn rule_12_client_disconnect_does_not_cancel_the_execution() {
    let a = app();
    let router = a.router.clone();
    let client =
        tokio::spawn(async move { send(&router, post_req("/slow", Some(KEY), "{}")).await });
    a.c.entered.notified().await;
    client.abort(); // the client hangs up
    let _ = client.await;
    a.c.gate.add_permits(1);
    // The execution finishes on its own and stores its answer.
    let mut replay = None;
    for _ in 0..200 {
        let r = send(&a.router, post_req("/slow", Some(KEY), "{}")).await;
        if r.status != 409 {
            replay = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replay = replay.unwrap_or_else(|| panic!("never completed"));
    assert!(replay.replayed());
    assert_eq!(replay.body, Bytes::from_static(b"slow 1"));
    assert_eq!(calls(&a), 1);
}

#[tokio::test]
async fn scopes_are_isolated() {
    let a = app();
    let as_user = |user: &str| {
        Request::post("/payments")
            .header("idempotency-key", KEY)
            .header("authorization", format!("Bearer {user}"))
            .body(Body::from("{}"))
            .unwrap_or_default()
    };
    let alice = send(&a.router, as_user("alice")).await;
    let bob = send(&a.router, as_user("bob")).await;
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body);
    let alice_again = send(&a.router, as_user("alice")).await;
    assert!(alice_again.replayed());
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(calls(&a), 2);
}

#[tokio::test]
async fn webhook_deliveries_run_once() {
    let a = app();
    let delivery = |id: Option<&str>, body: &'static str| {
        let mut b = Request::post("/webhooks");
        if let Some(id) = id {
            b = b.header("webhook-id", id);
        }
        b.body(Body::from(body)).unwrap_or_default()
    };
    assert_eq!(
        send(
            &a.router,
            delivery(Some("msg_2KWPBgLlAfxdpx2AI54"), "{\"a\":1}")
        )
        .await
        .status,
        200
    );
    assert!(send(
        &a.router,
        delivery(Some("msg_2KWPBgLlAfxdpx2AI54"), "{\"a\":1}")
    )
    .await
    .replayed());
    assert_eq!(calls(&a), 1);
    // No id header: keyed by SHA-256 of the raw body.
    assert!(!send(&a.router, delivery(None, "{\"event\":\"paid\"}"))
        .await
        .replayed());
    assert!(send(&a.router, delivery(None, "{\"event\":\"paid\"}"))
        .await
        .replayed());
    assert!(!send(&a.router, delivery(None, "{\"event\":\"refunded\"}"))
        .await
        .replayed());
    assert_eq!(calls(&a), 3);
    // Idempotency-Key is the second choice.
    let r = Request::post("/webhooks")
        .header("idempotency-key", KEY)
        .body(Body::from("x"))
        .unwrap_or_default();
    assert!(!send(&a.router, r).await.replayed());
    assert_eq!(calls(&a), 4);
}

#[tokio::test]
async fn retried_batch_reexecutes_only_items_without_an_answer() {
    let a = app();
    a.c.fail_next.store(true, Ordering::SeqCst);
    let first = send(&a.router, post_req("/batch", Some(KEY), "[0,1,2]")).await;
    assert_eq!(first.status, 502, "{:?}", first.body);
    let retry = send(&a.router, post_req("/batch", Some(KEY), "[0,1,2]")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body, Bytes::from_static(b"[201, 201, 201]"));
    let per_item: Vec<usize> =
        a.c.item_calls
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
    assert_eq!(per_item, [1, 2, 1], "only the failed item ran again");
    // The batch's own answer is stored under the key.
    let again = send(&a.router, post_req("/batch", Some(KEY), "[0,1,2]")).await;
    assert!(again.replayed());
    assert_eq!(calls(&a), 2);
}

#[tokio::test]
async fn problem_base_is_configurable() {
    let store = Arc::new(MemoryStore::new());
    let router = Router::new()
        .route("/p", post(|| async { "x" }))
        .layer(IdempotencyLayer::new(store).problem_base("https://errors.example.com/"));
    let r = send(&router, post_req("/p", None, "{}")).await;
    assert_eq!(
        r.problem_type(),
        "https://errors.example.com/idempotency-key-missing"
    );
}

/// The layer around the counting upstream's own handler, over TCP: what the
/// gateway's tests run through its proxy (`idem-gateway/tests/gateway.rs`),
/// one suite for both.
async fn layer_in_front_of_a_handler(settings: Settings) -> Served {
    let store: Arc<dyn Store> = if settings.store_down {
        Arc::new(Unreachable)
    } else {
        Arc::new(MemoryStore::new())
    };
    let mut route = RoutePolicy::default();
    if let Some(ttl) = settings.ttl {
        route.ttl = ttl;
    }
    route.wait = settings.wait.or(route.wait);
    if let Some(n) = settings.max_body {
        route.max_request_body = n;
    }
    if let Some(n) = settings.max_stored_response {
        route.max_stored_response = n;
    }
    let layer = IdempotencyLayer::new(store)
        .policy(Policy::default().default_policy(route))
        .scope_share(1.0);
    let upstream = CountingUpstream::start_wrapped(|app| app.layer(layer))
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
    Served::new(upstream.url(), upstream)
}

mod suite {
    use super::layer_in_front_of_a_handler;
    idem_testkit::spec_conformance!(layer_in_front_of_a_handler);
}
