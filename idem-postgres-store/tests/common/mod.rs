//! What the transactional and recovery-point tests share: a store in a
//! schema of its own on a manual clock (`DATABASE_URL`'s server), with an
//! application table beside idem's, keys, and the record an execution holds.

#![allow(dead_code)] // each test file uses its part

use std::sync::Arc;
use std::time::Duration;

use idem_core::{Fingerprint, HeldRecord, ManualClock, StoreKey};
use idem_postgres_store::{PostgresOptions, PostgresStore};

pub(crate) const TTL: Duration = Duration::from_secs(3600);
pub(crate) const LEASE: Duration = Duration::from_secs(5);

/// A store in a fresh schema on a manual clock, with the application's
/// table made by `ddl` (`{schema}` stands for the schema); `None` without
/// a server.
pub(crate) async fn setup(
    ddl: &str,
    pool_size: usize,
) -> Option<(PostgresStore, Arc<ManualClock>)> {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = store_with(PostgresOptions {
        clock: Some(clock.clone()),
        pool_size,
        ..PostgresOptions::default()
    })
    .await?;
    let client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    client
        .batch_execute(&ddl.replace("{schema}", store.schema()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Some((store, clock))
}

/// A store with `options` in a fresh schema, connected; `None` without a
/// server.
pub(crate) async fn store_with(options: PostgresOptions) -> Option<PostgresStore> {
    let url = idem_testkit::server_url("DATABASE_URL")?;
    let schema = format!(
        "idem_app_{}",
        idem_core::key::generate_uuid_v4().replace('-', "_")
    );
    let options = PostgresOptions { schema, ..options };
    let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
    store
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    Some(store)
}

pub(crate) use idem_testkit::held::{fingerprint, key};

/// The record `k` as this execution holds it, when `begin` started one.
pub(crate) async fn try_begin(
    store: &PostgresStore,
    k: &StoreKey,
    fp: &Fingerprint,
) -> Option<HeldRecord> {
    idem_testkit::held::try_begin(store, k, fp, LEASE, TTL).await
}
