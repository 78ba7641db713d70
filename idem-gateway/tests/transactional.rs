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

const TRANSFER: &str = r#"{"from": "acct_a", "to": "acct_b", "amount": 500, "currency": "EUR"}"#;

/// The balance and number of entries of `account`.
async fn account(c: &common::HttpClient, url: &str, account: &str) -> (i64, usize) {
    let got = send(
        c,
        Method::GET,
        &format!("{url}/accounts/{account}"),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    (
        v["balance"].as_i64().unwrap_or(i64::MIN),
        v["entries"].as_array().map_or(0, Vec::len),
    )
}

/// A transfer on a demo that aborts right after its phase `phase`
/// committed; then, on a demo restarted on the same store, eight
/// concurrent retries once the crashed execution's lease ran out: exactly
/// one takes the key over and resumes after `phase` (the others are told
/// it is in progress, or replay), and the accounts hold one debit and one
/// credit.
async fn crash_after_phase_then_resume(store: &str, phase: &str) {
    let c = client();
    let key = format!("tx-phase-key-{phase}");
    let lease = ["--lock-timeout", "1s"];
    {
        let (_crashing, url) = demo_with_env(
            &[("IDEM_DEMO_CRASH_AFTER_PHASE", phase)],
            &["--store", store, lease[0], lease[1]],
        );
        let req = http::Request::post(format!("{url}/transfers"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                TRANSFER.as_bytes(),
            )))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.request(req).await.is_err(), "the crashing demo answered");
    }
    let (_demo, url) = demo(&["--store", store, lease[0], lease[1]]);
    // The crashed execution's lease (1 s) runs out.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let (c, url, key) = (c.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                post(&c, &format!("{url}/transfers"), Some(&key), TRANSFER).await
            })
        })
        .collect();
    let mut executed = 0;
    for r in retries {
        let a = r.await.unwrap_or_else(|e| panic!("{e}"));
        match a.status.as_u16() {
            201 if !a.replayed() => executed += 1,
            201 | 409 => {}
            other => panic!("{other}: {}", a.text()),
        }
    }
    assert_eq!(executed, 1, "exactly one retry resumes the transfer");
    let replay = post(&c, &format!("{url}/transfers"), Some(&key), TRANSFER).await;
    assert_eq!(replay.status, 201, "{}", replay.text());
    assert!(replay.replayed(), "{}", replay.text());
    assert_eq!(account(&c, &url, "acct_a").await, (-500, 1), "one debit");
    assert_eq!(account(&c, &url, "acct_b").await, (500, 1), "one credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_transfer_aborted_after_its_debit_resumes_on_retry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}", dir.path().join("demo.db").display());
    crash_after_phase_then_resume(&store, "debited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_transfer_aborted_after_its_credit_resumes_on_retry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}", dir.path().join("demo.db").display());
    crash_after_phase_then_resume(&store, "credited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_transfer_aborted_after_its_debit_resumes_on_retry() {
    let Some(db) = FreshDatabase::create("idem_tx_phase").await else {
        return;
    };
    crash_after_phase_then_resume(&db.url, "debited").await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_transfer_runs_once_and_replays() {
    let c = client();
    let (_demo, url) = demo(&["--store", "memory://"]);
    let first = post(
        &c,
        &format!("{url}/transfers"),
        Some("tx-memory-key-01"),
        TRANSFER,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    let again = post(
        &c,
        &format!("{url}/transfers"),
        Some("tx-memory-key-01"),
        TRANSFER,
    )
    .await;
    assert!(again.replayed(), "{}", again.text());
    assert_eq!(account(&c, &url, "acct_a").await, (-500, 1));
    let bad = post(
        &c,
        &format!("{url}/transfers"),
        Some("tx-memory-key-02"),
        r#"{"from": "a", "to": "a", "amount": 1}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}
