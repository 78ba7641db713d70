//! The window between the business commit and the stored answer, closed:
//! `idem demo` on SQLite and on PostgreSQL commits a payment and its answer
//! in one transaction. Started with `IDEM_DEMO_CRASH_AFTER_COMMIT=1` it
//! aborts right after that commit, before answering; restarted, the retry
//! with the same key replays the 201 and one payment exists.

mod common;

use common::{client, demo, demo_with_env, post, send, FreshDatabase};
use http::Method;

const PAYMENT: &str = r#"{"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}"#;

/// Pays with `key` on a demo that crashes after its commit, then again on
/// a demo restarted on the same store: the replay, and one payment.
async fn crash_after_commit_then_replay(store: &str) {
    let c = client();
    let key = "tx-crash-key-00001";
    {
        let (_crashing, url) = demo_with_env(
            &[("IDEM_DEMO_CRASH_AFTER_COMMIT", "1")],
            &["--store", store],
        );
        let req = http::Request::post(format!("{url}/payments"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                PAYMENT.as_bytes(),
            )))
            .unwrap_or_else(|e| panic!("{e}"));
        // The process aborts before answering: no answer comes.
        assert!(c.request(req).await.is_err(), "the crashing demo answered");
    }
    let (_demo, url) = demo(&["--store", store]);
    let retry = post(&c, &format!("{url}/payments"), Some(key), PAYMENT).await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert!(retry.replayed(), "the retry paid again: {}", retry.text());
    let listed = send(&c, Method::GET, &format!("{url}/payments"), &[], "").await;
    assert_eq!(listed.json()["count"], 1, "{}", listed.text());
    // The replayed payment is the one that was committed.
    let id = retry.json()["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        listed.json()["data"][0]["id"],
        id.as_str(),
        "{}",
        listed.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_crash_after_the_commit_is_replayed_after_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}", dir.path().join("demo.db").display());
    crash_after_commit_then_replay(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_crash_after_the_commit_is_replayed_after_restart() {
    let Some(db) = FreshDatabase::create("idem_tx_crash").await else {
        return;
    };
    crash_after_commit_then_replay(&db.url).await;
    db.drop_now().await;
}
