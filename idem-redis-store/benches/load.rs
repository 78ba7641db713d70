//! Closed-loop load on `RedisStore` (`REDIS_URL`, or `REDIS_CLUSTER_URL` with
//! `--cluster`), optionally with the local cache (`--local-cache N`). Prints
//! operations per second. See docs/BENCHMARKS.md and bench/stores.sh.

use std::sync::Arc;

use idem_core::{CachedStore, Store, SystemClock};
use idem_redis_store::{RedisOptions, RedisStore};

fn main() {
    let (concurrency, duration, scenario) = idem_testkit::load::args();
    let cluster = std::env::args().any(|a| a == "--cluster");
    let cache: usize = std::env::args()
        .skip_while(|a| a != "--local-cache")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let var = if cluster {
        "REDIS_CLUSTER_URL"
    } else {
        "REDIS_URL"
    };
    let url = std::env::var(var).unwrap_or_else(|_| panic!("set {var}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let rate = rt.block_on(async {
        let options = RedisOptions {
            prefix: format!("idem-bench:{}:", idem_core::key::generate_uuid_v4()),
            ..RedisOptions::default()
        };
        let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn Store> = if cache > 0 {
            Arc::new(CachedStore::new(store, Arc::new(SystemClock)).capacity(cache))
        } else {
            Arc::new(store)
        };
        idem_testkit::load::run(store, scenario, concurrency, duration).await
    });
    println!("{rate:.0}");
}
