//! What the transactional and recovery-point tests share: a store on a
//! manual clock with an application table beside idem's, keys, and the
//! record an execution holds.

#![allow(dead_code)] // each test file uses its part

use std::sync::Arc;
use std::time::Duration;

use idem_core::{Fingerprint, HeldRecord, ManualClock, StoreKey};
use idem_sqlite_store::{SqliteOptions, SqliteStore};

pub(crate) const TTL: Duration = Duration::from_secs(3600);
pub(crate) const LEASE: Duration = Duration::from_secs(5);

/// A store in a fresh file on a manual clock, with the application's
/// table `ddl` made beside idem's.
pub(crate) async fn setup(ddl: &'static str) -> (SqliteStore, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = SqliteOptions {
        clock: clock.clone(),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path().join("app.db"), options)
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .call(move |c| c.execute_batch(ddl))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (store, clock, dir)
}

pub(crate) use idem_testkit::held::{fingerprint, key};

/// The record `k` as this execution holds it, when `begin` started one.
pub(crate) async fn try_begin(
    store: &SqliteStore,
    k: &StoreKey,
    fp: &Fingerprint,
) -> Option<HeldRecord> {
    idem_testkit::held::try_begin(store, k, fp, LEASE, TTL).await
}
