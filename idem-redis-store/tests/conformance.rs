//! The store contract on Redis: standalone (`REDIS_URL`), Cluster
//! (`REDIS_CLUSTER_URL`, `redis+cluster://HOST:PORT,…`), and a standalone
//! server started under `LC_ALL=en_US.UTF-8` (`REDIS_LOCALE_URL`), whose Lua
//! compares strings by that locale's collation. Each test uses its own key
//! prefix, so tests never see each other's records.

use std::sync::Arc;

use idem_core::StoreAdmin;
use idem_redis_store::{RedisOptions, RedisStore};
use idem_testkit::StoreConfig;

async fn store_at(var: &str, config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
    store_with_ca(var, None, config).await
}

/// [`store_at`], trusting the CA in `ca_file` (for `rediss://`).
async fn store_with_ca(
    var: &str,
    ca_file: Option<String>,
    config: StoreConfig,
) -> Option<Arc<dyn StoreAdmin>> {
    let store = connected(var, Some(config.clock), ca_file).await?;
    Some(Arc::new(store))
}

/// A store with a prefix of its own on the server `var` names, connected
/// (`clock: None`: the server's own).
async fn connected(
    var: &str,
    clock: Option<idem_core::SharedClock>,
    ca_file: Option<String>,
) -> Option<RedisStore> {
    let url = idem_testkit::server_url(var)?;
    let options = RedisOptions {
        prefix: format!("idem-test:{}:", idem_core::key::generate_uuid_v4()),
        clock,
        ca_file: ca_file.map(Into::into),
        ..RedisOptions::default()
    };
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    // The test command requires the server: unreachable is a failure.
    store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{var}={url} is set but Redis cannot be reached: {e}"));
    Some(store)
}

mod standalone {
    use super::*;

    async fn redis(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        store_at("REDIS_URL", config).await
    }

    idem_testkit::store_conformance!(redis, no_capacity);
}

mod cluster {
    use super::*;

    async fn redis_cluster(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        store_at("REDIS_CLUSTER_URL", config).await
    }

    idem_testkit::store_conformance!(redis_cluster, no_capacity);
}

/// TLS only (`REDIS_TLS_URL`, `rediss://`), the server's certificate
/// checked against the tests' CA (`IDEM_TEST_CA`).
mod over_tls {
    use super::*;

    async fn redis_tls(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let ca = idem_testkit::server_url("IDEM_TEST_CA")?;
        store_with_ca("REDIS_TLS_URL", Some(ca), config).await
    }

    idem_testkit::store_conformance!(redis_tls, no_capacity);
}

/// A Cluster serving TLS only (`REDIS_TLS_CLUSTER_URL`,
/// `rediss+cluster://`), its nodes' certificates checked as above.
mod cluster_over_tls {
    use super::*;

    async fn redis_tls_cluster(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let ca = idem_testkit::server_url("IDEM_TEST_CA")?;
        store_with_ca("REDIS_TLS_CLUSTER_URL", Some(ca), config).await
    }

    idem_testkit::store_conformance!(redis_tls_cluster, no_capacity);
}

mod en_us_locale {
    use super::*;

    async fn redis_en_us(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let store = store_at("REDIS_LOCALE_URL", config).await?;
        assert_collates_by_locale().await;
        Some(store)
    }

    /// Fails unless the server really orders Lua strings by a locale (else
    /// these tests could not catch a script comparing bytes with `<`).
    async fn assert_collates_by_locale() {
        let url = std::env::var("REDIS_LOCALE_URL").unwrap_or_default();
        let store =
            RedisStore::new(&url, RedisOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut conn = store.connection().await.unwrap_or_else(|e| panic!("{e}"));
        let ordered: String = idem_redis_store::redis::cmd("EVAL")
            .arg("return tostring(string.char(0x9a, 0) < string.char(0x99, 0xff))")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ordered, "true",
            "REDIS_LOCALE_URL={url} orders strings bytewise: start that Redis with LC_ALL=en_US.UTF-8"
        );
    }

    idem_testkit::store_conformance!(redis_en_us, no_capacity);
}

/// The rules that need no clock moved by hand, on the server's clock (no
/// clock configured, as deployments run): `begin` is plain commands there
/// (Redis 7 and later), so they run again on that path, standalone, under
/// the locale and on a Cluster.
mod servers_clock {
    use super::*;

    async fn on(var: &str) -> Option<Arc<dyn StoreAdmin>> {
        let store = connected(var, None, None).await?;
        assert_eq!(
            store.begins_with_plain_commands(),
            Some(true),
            "{var}: Redis 7 on its own clock, yet begin runs its script"
        );
        Some(Arc::new(store))
    }

    macro_rules! on_servers_clock {
        ($($name:ident: $var:literal),*) => {$(
            mod $name {
                use super::*;

                async fn store(_: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
                    on($var).await
                }

                idem_testkit::store_conformance!(@tests store,
                    replay_after_complete, racers_exactly_one_wins, mismatch,
                    release_allows_retry, byte_exact_binary_body_and_repeated_headers,
                    scope_isolation, large_body, complete_twice_is_stale,
                    many_keys_concurrently);
            }
        )*};
    }

    on_servers_clock!(standalone: "REDIS_URL", en_us: "REDIS_LOCALE_URL", cluster: "REDIS_CLUSTER_URL");
}

/// A record Redis keeps without `PX` (written by hand or by another tool)
/// is judged by its deadline field: `begin`'s plain commands hand it to the
/// script, which takes it over once past its deadline and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_px_is_judged_by_its_deadline() {
    use idem_core::{Begin, Clock, Fingerprint, Secret, Store, StoreKey, SystemClock};
    let Some(url) = idem_testkit::server_url("REDIS_URL") else {
        return;
    };
    let prefix = format!("idem-test:{}:", idem_core::key::generate_uuid_v4());
    let options = RedisOptions {
        prefix: prefix.clone(),
        ..RedisOptions::default()
    };
    let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = store.connection().await.unwrap_or_else(|e| panic!("{e}"));
    let now = SystemClock.now_ms();
    let fp = Fingerprint([7; 32]);
    for (deadline, live) in [(now + 60_000, true), (now - 1_000, false)] {
        let key = StoreKey::derive(&Secret::generate(), None, "no-px");
        let mut record = vec![b'P'];
        record.extend_from_slice(&42u64.to_be_bytes());
        record.extend_from_slice(&deadline.to_be_bytes());
        record.extend_from_slice(&fp.0);
        let mut raw_key = prefix.as_bytes().to_vec();
        raw_key.extend_from_slice(&key.0);
        let () = idem_redis_store::redis::cmd("SET")
            .arg(&raw_key)
            .arg(record)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let begun = store
            .begin(&key, &fp, std::time::Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match (live, begun) {
            (true, Begin::InProgress { lease_remaining }) => {
                assert!(
                    lease_remaining > std::time::Duration::from_secs(50),
                    "{lease_remaining:?}"
                )
            }
            (false, Begin::Started(_)) => {}
            (live, other) => panic!("live {live}: {other:?}"),
        }
    }
}

/// A record begun with plain commands holds no deadline of its own: a
/// reader that judges the record's deadline field by another clock (an
/// older idem's `begin` script during a rollout, modelled here by a store
/// whose clock runs 60 s ahead) sees the lease live until Redis drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_begun_lease_is_live_to_a_reader_with_another_clock() {
    use idem_core::{Begin, Clock, Fingerprint, ManualClock, Secret, Store, StoreKey, SystemClock};
    let Some(url) = idem_testkit::server_url("REDIS_URL") else {
        return;
    };
    let prefix = format!("idem-test:{}:", idem_core::key::generate_uuid_v4());
    let plain = RedisStore::new(
        &url,
        RedisOptions {
            prefix: prefix.clone(),
            ..RedisOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    plain.connect().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plain.begins_with_plain_commands(), Some(true));
    let ahead = Arc::new(ManualClock::new(SystemClock.now_ms() + 60_000));
    let other = RedisStore::new(
        &url,
        RedisOptions {
            prefix,
            clock: Some(ahead),
            ..RedisOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let key = StoreKey::derive(&Secret::generate(), None, "rollout");
    let fp = Fingerprint([5; 32]);
    let lease = std::time::Duration::from_secs(30);
    let begun = plain.begin(&key, &fp, lease).await;
    assert!(matches!(begun, Ok(Begin::Started(_))), "{begun:?}");
    match other.begin(&key, &fp, lease).await {
        Ok(Begin::InProgress { .. }) => {}
        other => {
            panic!("a live lease was taken over by a reader whose clock runs ahead: {other:?}")
        }
    }
}

/// With no clock configured (the default, as the gateway runs it), the
/// scripts read Redis's own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_clock_times_leases_and_ttls() {
    for var in ["REDIS_URL", "REDIS_LOCALE_URL", "REDIS_CLUSTER_URL"] {
        let Some(url) = idem_testkit::server_url(var) else {
            continue;
        };
        let options = RedisOptions {
            prefix: format!("idem-test:{}:", idem_core::key::generate_uuid_v4()),
            ..RedisOptions::default()
        };
        let store = RedisStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
        idem_testkit::suite::server_clock_times_leases_and_ttls(Arc::new(store)).await;
    }
}
