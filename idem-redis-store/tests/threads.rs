//! Each thread's store calls run over a connection opened on that thread
//! (`src/local.rs`): a request never waits on a driver task of another
//! runtime, even one that is gone.

use std::time::Duration;

use idem_core::{Begin, Fingerprint, Secret, Store, StoreKey};
use idem_redis_store::{RedisOptions, RedisStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// As the gateway does: the store is connected (and the server checked) at
/// start on one runtime, and requests are served on others. Here the first
/// runtime is gone before the requests come: with one shared connection,
/// its driver went with that runtime and every command failed.
#[test]
fn requests_on_another_runtime_do_not_use_the_first_runtimes_connection() {
    let Some(url) = idem_testkit::server_url("REDIS_URL") else {
        return;
    };
    let options = RedisOptions {
        prefix: format!("idem-test:{}:", idem_core::key::generate_uuid_v4()),
        response_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    runtime()
        .block_on(store.connect())
        .unwrap_or_else(|e| panic!("{e}"));
    // The runtime that connected is dropped here, its tasks with it.
    let serving = std::thread::spawn(move || {
        runtime().block_on(async {
            let key = StoreKey::derive(&Secret::generate(), None, "threads");
            let fp = Fingerprint([3; 32]);
            let begun = store.begin(&key, &fp, Duration::from_secs(30)).await;
            assert!(matches!(begun, Ok(Begin::Started(_))), "{begun:?}");
            let again = store.begin(&key, &fp, Duration::from_secs(30)).await;
            assert!(matches!(again, Ok(Begin::InProgress { .. })), "{again:?}");
        })
    });
    serving
        .join()
        .unwrap_or_else(|_| panic!("the serving thread panicked"));
}

/// A thread whose connection outlived a Redis restart unused gets a new one
/// once another thread has found the server gone, even when that thread
/// found it while connecting (it had no connection yet, so no command of
/// its failed): the application's next command on the first thread works.
/// Before, only a failed command renewed connections, and the demo's
/// first write after a restart failed with `broken pipe` (a 500) about one
/// run in a hundred of `redis_restart_gives_503_then_recovers_…`.
#[test]
fn a_thread_that_cannot_connect_renews_the_other_threads_connections() {
    use idem_testkit::process::{free_port, private_redis};
    if idem_testkit::server_url("REDIS_URL").is_none() {
        return; // no Redis here, so no redis-server to start either
    }
    let port = free_port();
    let redis = private_redis(port);
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    let key = StoreKey::derive(&Secret::generate(), None, "renewed");
    let fp = Fingerprint([4; 32]);
    // This thread's runtime lives through the test: its connection is the
    // one that must be renewed.
    let here = runtime();
    here.block_on(async {
        let begun = store.begin(&key, &fp, Duration::from_secs(30)).await;
        assert!(matches!(begun, Ok(Begin::Started(_))), "{begun:?}");
    });

    drop(redis);
    let other = store.clone();
    std::thread::spawn(move || {
        runtime().block_on(async {
            let refused = other.begin(&key, &fp, Duration::from_secs(30)).await;
            assert!(refused.is_err(), "Redis is down: {refused:?}");
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("the other thread panicked"));
    let _redis = private_redis(port);

    here.block_on(async {
        let mut conn = store.connection().await.unwrap_or_else(|e| panic!("{e}"));
        let pong: Result<String, _> = idem_redis_store::redis::cmd("PING")
            .query_async(&mut conn)
            .await;
        assert_eq!(pong.as_deref().ok(), Some("PONG"), "{pong:?}");
        let begun = store.begin(&key, &fp, Duration::from_secs(30)).await;
        assert!(matches!(begun, Ok(Begin::Started(_))), "{begun:?}");
    });
}
