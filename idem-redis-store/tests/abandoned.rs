//! A `begin` its caller gave up on before the answer came (the layer's
//! store timeout) still runs in Redis; the store then releases the record
//! it made, so the client told `503` is not refused with `409` for the
//! rest of the lease (`src/abandoned.rs`).

use std::sync::Arc;
use std::time::Duration;

use idem_core::{Begin, Fingerprint, ManualClock, Secret, Store, StoreKey};
use idem_redis_store::{redis, RedisOptions, RedisStore};
use idem_testkit::process::{free_port, private_redis};

/// Redis holds every writing command for `ms` (`CLIENT PAUSE … WRITE`):
/// a `begin` sent meanwhile runs when the pause ends.
async fn pause_writes(url: &str, ms: u64) {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn given_up_begin_leaves_the_key_free(options: RedisOptions) {
    let port = free_port();
    let _redis = private_redis(port);
    let url = format!("redis://127.0.0.1:{port}/");
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    let key = StoreKey::derive(&Secret::generate(), None, "given-up");
    let fp = Fingerprint([5; 32]);
    let lease = Duration::from_secs(30);
    // Connected, so the begin below is sent at once.
    let other = StoreKey::derive(&Secret::generate(), None, "warm");
    let warm = store.begin(&other, &fp, lease).await;
    assert!(matches!(warm, Ok(Begin::Started(_))), "{warm:?}");

    pause_writes(&url, 400).await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), store.begin(&key, &fp, lease)).await;
    assert!(
        gave_up.is_err(),
        "the begin answered during the pause: {gave_up:?}"
    );
    // The pause ends; the begin runs, then its release.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let again = store.begin(&key, &fp, lease).await;
    assert!(
        matches!(again, Ok(Begin::Started(_))),
        "the key is still held by the begin given up on: {again:?}"
    );
}

#[tokio::test]
async fn a_begin_given_up_before_its_answer_leaves_the_key_free() {
    if idem_testkit::server_url("REDIS_URL").is_none() {
        return; // no Redis here, so no redis-server to start either
    }
    given_up_begin_leaves_the_key_free(RedisOptions::default()).await;
}

/// The same through the `begin` script (a configured clock, as tests run).
#[tokio::test]
async fn a_scripted_begin_given_up_before_its_answer_leaves_the_key_free() {
    if idem_testkit::server_url("REDIS_URL").is_none() {
        return;
    }
    let clock = Arc::new(ManualClock::new(1_000_000));
    given_up_begin_leaves_the_key_free(RedisOptions {
        clock: Some(clock),
        ..RedisOptions::default()
    })
    .await;
}
