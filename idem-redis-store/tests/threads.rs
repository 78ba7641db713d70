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
