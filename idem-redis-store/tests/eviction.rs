//! A Redis that may evict keys (`REDIS_EVICTING_URL`: `maxmemory-policy
//! allkeys-lru`) silently drops records, and their retries execute again:
//! the store refuses it unless told to accept the risk.

use std::time::Duration;

use idem_core::{Begin, Fingerprint, Store, StoreAdmin, StoreKey};
use idem_redis_store::{RedisOptions, RedisStore, RedisStoreError};

fn store(url: &str, allow_eviction: bool) -> RedisStore {
    let options = RedisOptions {
        prefix: format!("idem-test:{}:", idem_core::key::generate_uuid_v4()),
        allow_eviction,
        ..RedisOptions::default()
    };
    RedisStore::new(url, options).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_redis_that_may_evict_is_refused_unless_allowed() {
    let Some(url) = idem_testkit::server_url("REDIS_EVICTING_URL") else {
        return;
    };
    let refused = store(&url, false);
    match refused.connect().await {
        Err(e @ RedisStoreError::Evicting { .. }) => {
            let text = e.to_string();
            for expected in ["allkeys-lru", "noeviction", "redis_allow_eviction"] {
                assert!(text.contains(expected), "{expected:?} not in: {text}");
            }
        }
        other => panic!("expected the eviction policy to be refused, got {other:?}"),
    }
    // Every operation says so (a request gets 503), and so does readiness.
    let key = StoreKey([3; 32]);
    let fp = Fingerprint([4; 32]);
    let lease = Duration::from_secs(30);
    let err = refused.begin(&key, &fp, lease).await.expect_err("refused");
    assert!(err.to_string().contains("allkeys-lru"), "{err}");
    assert!(refused.ping().await.is_err());

    let allowed = store(&url, true);
    allowed.connect().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        allowed.begin(&key, &fp, lease).await,
        Ok(Begin::Started(_))
    ));
    assert!(allowed.ping().await.is_ok());
}

#[tokio::test]
async fn a_redis_that_never_evicts_is_used_as_is() {
    let Some(url) = idem_testkit::server_url("REDIS_URL") else {
        return;
    };
    let s = store(&url, false);
    s.connect().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(s.ping().await.is_ok());
}
