//! Transactional completion through the layer (issue: a crash between the
//! business commit and the stored answer ran the operation again on
//! retry). The handler stores its answer with its payment, in one SQLite
//! transaction (`IdempotencyContext::answer`, `SqliteStore::complete_with`);
//! here it then "dies" (panics) before answering, and the retry replays the
//! 201 instead of paying twice. Derived keys for downstream calls are the
//! same on every retry.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use http::Request;
use http_body_util::BodyExt;
use idem::{IdempotencyContext, IdempotencyLayer};
use idem_sqlite_store::SqliteStore;
use tower::ServiceExt;

async fn pay(
    State(store): State<Arc<SqliteStore>>,
    Extension(ctx): Extension<IdempotencyContext>,
    headers: HeaderMap,
) -> Response {
    let mut out = HeaderMap::new();
    out.insert("content-type", "application/json".parse().expect("value"));
    let charge = ctx.derived_key("charge");
    let body = format!(r#"{{"charge_key": "{charge}"}}"#);
    if headers.contains_key("x-unavailable") {
        // A downstream failure: 503, not stored, so the retry runs again.
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let answer = ctx.answer(StatusCode::CREATED, out, body);
    let stored = answer.stored().clone();
    let committed = store
        .complete_with(ctx.held(), move |conn| {
            conn.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
            Ok(((), stored))
        })
        .await;
    if let Err(e) = committed {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    if headers.contains_key("x-crash-after-commit") {
        // The process dies after the commit, before the answer leaves.
        panic!("crashed after the commit");
    }
    answer.into_response().into_response()
}

async fn setup() -> (Router, Arc<SqliteStore>, tempfile::TempDir) {
    let (app, store, dir, _) = setup_metered().await;
    (app, store, dir)
}

async fn setup_metered() -> (Router, Arc<SqliteStore>, tempfile::TempDir, idem::Metrics) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("pay.db")).expect("store"));
    store
        .call(|c| c.execute_batch("CREATE TABLE payments (id INTEGER PRIMARY KEY, amount INTEGER)"))
        .await
        .expect("table");
    let metrics = idem::Metrics::new();
    let app = Router::new()
        .route("/payments", post(pay))
        .with_state(store.clone())
        .layer(IdempotencyLayer::new(store.clone()).metrics(metrics.clone()));
    (app, store, dir, metrics)
}

async fn send(app: &Router, key: &str, crash: bool) -> (u16, bool, String) {
    send_with(
        app,
        key,
        if crash {
            Some("x-crash-after-commit")
        } else {
            None
        },
    )
    .await
}

async fn send_with(app: &Router, key: &str, flag: Option<&str>) -> (u16, bool, String) {
    let mut req = Request::post("/payments")
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    if let Some(flag) = flag {
        req = req.header(flag, "1");
    }
    let res = app
        .clone()
        .oneshot(
            req.body(axum::body::Body::from("{\"amount\": 42}"))
                .expect("request"),
        )
        .await
        .expect("call");
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn payments(store: &SqliteStore) -> i64 {
    store
        .call(|c| c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0)))
        .await
        .expect("count")
}

#[tokio::test]
async fn a_crash_after_the_commit_is_replayed_not_run_again() {
    let (app, store, _dir) = setup().await;
    let (status, _, _) = send(&app, "tx-layer-key-0001", true).await;
    assert_eq!(status, 500, "the first client saw the crash");
    assert_eq!(payments(&store).await, 1);
    // The retry finds the answer that committed with the payment.
    let (status, replayed, body) = send(&app, "tx-layer-key-0001", false).await;
    assert_eq!((status, replayed), (201, true), "{body}");
    assert!(body.contains("charge_key"), "{body}");
    assert_eq!(payments(&store).await, 1, "the payment ran twice");
}

#[tokio::test]
async fn an_answer_stored_in_the_transaction_is_not_stored_again_and_replays() {
    let (app, store, _dir, metrics) = setup_metered().await;
    let first = send(&app, "tx-layer-key-0002", false).await;
    assert_eq!((first.0, first.1), (201, false));
    let again = send(&app, "tx-layer-key-0002", false).await;
    assert_eq!((again.0, again.1), (201, true));
    assert_eq!(again.2, first.2, "the replay is the stored answer");
    assert_eq!(payments(&store).await, 1);
    // The layer did not try to store it again (that `complete` would find the
    // record completed, and count a lost lease).
    let text = metrics.render();
    let lost: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("idempotency_leases_lost_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    assert!(text.contains("idempotency_cache_misses_total{"), "{text}");
}

#[tokio::test]
async fn derived_keys_are_the_same_on_every_retry_and_differ_per_key() {
    let (app, store, _dir) = setup().await;
    let uuid = |s: &str| s.split('"').nth(3).map(str::to_owned).unwrap_or_default();
    // The first try fails downstream (503, released); the retry runs again
    // and derives the same key for its downstream call.
    let failed = send_with(&app, "tx-layer-key-0003", Some("x-unavailable")).await;
    assert_eq!(failed.0, 503);
    let retried = send(&app, "tx-layer-key-0003", false).await;
    assert_eq!((retried.0, retried.1), (201, false));
    assert_eq!(uuid(&failed.2), uuid(&retried.2));
    assert!(idem::key::is_uuid(&uuid(&retried.2)), "{}", retried.2);
    let other = send(&app, "tx-layer-key-0004", false).await;
    assert_ne!(uuid(&other.2), uuid(&retried.2));
    assert_eq!(payments(&store).await, 2);
}
