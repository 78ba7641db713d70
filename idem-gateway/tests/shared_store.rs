//! Many `idem demo` processes sharing one Redis, then one PostgreSQL:
//! concurrent duplicates spread across them execute exactly once. And a Redis
//! restart mid-run: 503 while it is down, success after, without restarting idem.

mod common;

use std::time::Duration;

use common::{client, demo, free_port, post, post_until_store_answers, send};
use http::Method;
use idem_testkit::storm::Storm;

/// 64 concurrent duplicates of each of 100 keys, round-robin over `bases`:
/// every instance replays one payment per key, and 100 payments exist.
async fn storm(bases: &[String]) {
    let answers = idem_testkit::storm::storm(
        bases,
        &Storm {
            path: "/payments",
            key_prefix: "storm-key",
            body: |k| format!(r#"{{"amount": {}, "recipient": "acct_storm"}}"#, k + 1),
            headers: &[],
        },
    )
    .await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
            v["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 100);
    let c = client();
    for base in bases {
        let list = send(&c, Method::GET, &format!("{base}/payments"), &[], "").await;
        assert_eq!(list.json()["count"], 100, "exactly 100 payments exist");
    }
}

/// Three demos on the Redis at `db_url`.
async fn three_instances_on_redis(db_url: &str) {
    let instances: Vec<_> = (0..3)
        .map(|_| demo(&["--store", db_url, "--processing-delay", "20ms"]))
        .collect();
    let bases: Vec<String> = instances.iter().map(|(_, b)| b.clone()).collect();
    storm(&bases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_execute_each_key_once() {
    if let Some(url) = common::redis_db("REDIS_URL", 11) {
        three_instances_on_redis(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_under_en_us_locale_execute_each_key_once() {
    if let Some(url) = common::redis_db("REDIS_LOCALE_URL", 11) {
        three_instances_on_redis(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_execute_each_key_once() {
    let Some(db) = common::FreshDatabase::create("idem_storm").await else {
        return;
    };
    let db_url = db.url.clone();
    let instances: Vec<_> = (0..3)
        .map(|_| demo(&["--store", &db_url, "--processing-delay", "20ms"]))
        .collect();
    let bases: Vec<String> = instances.iter().map(|(_, b)| b.clone()).collect();
    storm(&bases).await;
    drop(instances);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_503_then_recovers_without_restarting_idem() {
    if idem_testkit::server_url("REDIS_URL").is_none() {
        return;
    }
    let port = free_port();
    let start_redis = || common::private_redis(port);
    let redis = start_redis();
    let (_demo, base) = demo(&["--store", &format!("redis://127.0.0.1:{port}/")]);
    let c = client();
    let url = format!("{base}/payments");
    let body = r#"{"amount": 5, "recipient": "acct_restart"}"#;
    assert_eq!(
        post(&c, &url, Some("restart-key-00001"), body).await.status,
        201
    );

    drop(redis); // the server goes away
    let down = post(&c, &url, Some("restart-key-00002"), body).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.problem_slug(), "idempotency-store-unavailable");

    let _redis = start_redis();
    // The connection comes back on its own: retry until it does (bounded).
    let answer =
        post_until_store_answers(&c, &url, "restart-key-00002", body, Duration::from_secs(10))
            .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(!answer.replayed());
    assert!(post(&c, &url, Some("restart-key-00002"), body)
        .await
        .replayed());
    // The restarted Redis kept nothing; exactly one payment since, so the
    // refused request never executed.
    let list = send(&c, Method::GET, &url, &[], "").await;
    assert_eq!(list.json()["count"], 1);
}
