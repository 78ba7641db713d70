//! The store contract on Redis: standalone (`REDIS_URL`) and Cluster
//! (`REDIS_CLUSTER_URL`, `redis+cluster://HOST:PORT,…`). Each test uses its
//! own key prefix, so tests never see each other's records.

use std::sync::Arc;

use idem_core::Store;
use idem_redis_store::{RedisOptions, RedisStore};
use idem_testkit::StoreConfig;

async fn store_at(var: &str, config: StoreConfig) -> Option<Arc<dyn Store>> {
    let Ok(url) = std::env::var(var) else {
        eprintln!("skipped: {var} not set");
        return None;
    };
    let options = RedisOptions {
        prefix: format!("idem-test:{}:", idem_core::key::generate_uuid_v4()),
        clock: config.clock,
        ..RedisOptions::default()
    };
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    // The test command requires the server: unreachable is a failure.
    store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{var}={url} is set but Redis cannot be reached: {e}"));
    Some(Arc::new(store))
}

mod standalone {
    use super::*;

    async fn redis(config: StoreConfig) -> Option<Arc<dyn Store>> {
        store_at("REDIS_URL", config).await
    }

    idem_testkit::store_conformance!(redis, no_capacity);
}

mod cluster {
    use super::*;

    async fn redis_cluster(config: StoreConfig) -> Option<Arc<dyn Store>> {
        store_at("REDIS_CLUSTER_URL", config).await
    }

    idem_testkit::store_conformance!(redis_cluster, no_capacity);
}
