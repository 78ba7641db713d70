//! Streamed answers (`RoutePolicy::stream`) and echoed keys
//! (`RoutePolicy::echo_key`) through the layer. A streamed answer reaches
//! the client as the handler produces it and is stored as it streams;
//! rules 4 (replay byte for byte), 5 (in progress while it streams), 12 (a
//! client leaving cancels nothing) and 13 (a body that breaks off) hold for
//! it as for a buffered one. Time is tokio's paused clock: the events'
//! gaps pass at once, and "before the second event" is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy, StreamAnswers};
use idem_testkit::sse::Events;
use tokio::time::Instant;
use tower::ServiceExt;

const GAP: Duration = Duration::from_millis(200);

/// `/events` answers five events 200 ms apart (or, with `x-break: 2`,
/// breaks off after two); `/json` answers JSON. Each execution is counted.
fn app(route: RoutePolicy, runs: Arc<AtomicUsize>) -> Router {
    let policy = Policy::default()
        .route("/events", route.clone())
        .route("/json", route);
    let events = {
        let runs = runs.clone();
        move |headers: http::HeaderMap| {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let mut events = Events::new(n.to_string(), 5, GAP);
            if let Some(k) = headers.get("x-break").and_then(|v| v.to_str().ok()) {
                events = events.breaking_after(k.parse().unwrap_or(0));
            }
            async move { ([("content-type", "text/event-stream")], Body::new(events)).into_response() }
        }
    };
    let json = move || {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            (
                [("content-type", "application/json")],
                format!("{{\"run\": {n}}}"),
            )
        }
    };
    Router::new()
        .route("/events", post(events))
        .route("/json", post(json))
        .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(policy))
}

async fn send(app: &Router, path: &str, key: &str, extra: Option<(&str, &str)>) -> Response {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    if let Some((n, v)) = extra {
        req = req.header(n, v);
    }
    app.clone()
        .oneshot(req.body(Body::from("{}")).expect("request"))
        .await
        .expect("call")
}

fn all_events(tag: &str, n: u32) -> String {
    (1..=n).map(|i| Events::event(tag, i)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_stream_reaches_the_client_as_produced_and_replays_byte_for_byte() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(RoutePolicy::default(), runs.clone());
    let started = Instant::now();
    let res = send(&app, "/events", "sse-key-000001", None).await;
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    let mut body = res.into_body();
    let first = body
        .frame()
        .await
        .expect("a first event")
        .expect("no error")
        .into_data()
        .expect("data");
    assert_eq!(first, Bytes::from(Events::event("1", 1)));
    assert!(
        started.elapsed() < GAP / 2,
        "the first event waited {:?}: it was held back",
        started.elapsed()
    );

    // Rule 5 while it streams: a duplicate is told the key is in use.
    let during = send(&app, "/events", "sse-key-000001", None).await;
    assert_eq!(during.status(), 409);

    let mut seen = first.to_vec();
    seen.extend_from_slice(&body.collect().await.expect("the rest").to_bytes());
    assert_eq!(String::from_utf8_lossy(&seen), all_events("1", 5));
    assert!(started.elapsed() >= GAP * 4);

    // Rule 4: the replay, at once and byte for byte; nothing ran again.
    let replay = send(&app, "/events", "sse-key-000001", None).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["content-type"], "text/event-stream");
    let again = replay
        .into_body()
        .collect()
        .await
        .expect("replay")
        .to_bytes();
    assert_eq!(again, Bytes::from(seen));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rule_12_a_client_leaving_mid_stream_cancels_nothing() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(RoutePolicy::default(), runs.clone());
    let res = send(&app, "/events", "sse-key-000002", None).await;
    let mut body = res.into_body();
    body.frame().await.expect("first").expect("no error");
    drop(body);
    // The rest is read and stored without anyone receiving it.
    tokio::time::sleep(GAP * 6).await;
    let replay = send(&app, "/events", "sse-key-000002", None).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let bytes = replay
        .into_body()
        .collect()
        .await
        .expect("replay")
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&bytes), all_events("1", 5));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rule_13_a_stream_that_breaks_off_is_kept_marked_never_run_again() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(RoutePolicy::default(), runs.clone());
    let res = send(&app, "/events", "sse-key-000003", Some(("x-break", "2"))).await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut got = Vec::new();
    let broke = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap_or_default()),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(broke.is_some(), "the client's stream ends with the error");
    assert_eq!(String::from_utf8_lossy(&got), all_events("1", 2));

    let replay = send(&app, "/events", "sse-key-000003", Some(("x-break", "2"))).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["idempotent-body-lost"], "true");
    let received = got.len().to_string();
    assert_eq!(
        replay.headers()["idempotent-body-omitted"],
        received.as_str()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_past_the_stored_response_limit_is_sent_whole_and_stored_without_its_body() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        RoutePolicy::default().max_stored_response(100),
        runs.clone(),
    );
    let res = send(&app, "/events", "sse-key-000004", None).await;
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&bytes), all_events("1", 5));
    let replay = send(&app, "/events", "sse-key-000004", None).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let len = bytes.len().to_string();
    assert_eq!(replay.headers()["idempotent-body-omitted"], len.as_str());
    assert!(!replay.headers().contains_key("idempotent-body-lost"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stream_never_reads_the_whole_answer_before_sending_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        RoutePolicy::default().stream(StreamAnswers::Never),
        runs.clone(),
    );
    let started = Instant::now();
    let res = send(&app, "/events", "sse-key-000005", None).await;
    // The answer is read in full (four gaps) before its status is sent.
    assert!(started.elapsed() >= GAP * 4, "{:?}", started.elapsed());
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&bytes), all_events("1", 5));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stream_always_stores_every_answer_as_it_streams() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        RoutePolicy::default().stream(StreamAnswers::Always),
        runs.clone(),
    );
    let res = send(&app, "/json", "json-key-000001", None).await;
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(bytes, Bytes::from_static(b"{\"run\": 1}"));
    let replay = send(&app, "/json", "json-key-000001", None).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let again = replay.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(again, bytes);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn echo_key_every_answer_carries_the_key_back() {
    let runs = Arc::new(AtomicUsize::new(0));
    let echoing = app(RoutePolicy::default().echo_key(true), runs.clone());
    let first = send(&echoing, "/json", "echo-key-000001", None).await;
    assert_eq!(first.headers()["idempotency-key"], "echo-key-000001");
    let replay = send(&echoing, "/json", "echo-key-000001", None).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["idempotency-key"], "echo-key-000001");
    // A refusal of a valid key carries it too (422: another payload).
    let other = Request::post("/json")
        .header("content-type", "application/json")
        .header("idempotency-key", "echo-key-000001")
        .body(Body::from("{\"other\": true}"))
        .expect("request");
    let mismatch = echoing.clone().oneshot(other).await.expect("call");
    assert_eq!(mismatch.status(), 422);
    assert_eq!(mismatch.headers()["idempotency-key"], "echo-key-000001");
    // A key that is not valid is not echoed.
    let bad = send(&echoing, "/json", "no spaces allowed", None).await;
    assert_eq!(bad.status(), 400);
    assert!(!bad.headers().contains_key("idempotency-key"));

    // Off by default.
    let quiet = app(RoutePolicy::default(), runs);
    let res = send(&quiet, "/json", "echo-key-000002", None).await;
    assert!(!res.headers().contains_key("idempotency-key"));
}
