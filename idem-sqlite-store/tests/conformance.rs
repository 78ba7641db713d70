//! The store contract, run against `SqliteStore` on a fresh file per test.

use std::sync::Arc;

use idem_core::Store;
use idem_sqlite_store::{SqliteOptions, SqliteStore};
use idem_testkit::StoreConfig;

async fn sqlite(config: StoreConfig) -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("conformance.db");
    // Keep the directory for the test's lifetime: the store outlives this fn.
    std::mem::forget(dir);
    let options = SqliteOptions {
        clock: config.clock,
        capacity: config.capacity.map(|c| c as u64),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options).unwrap_or_else(|e| panic!("{e}"));
    Some(Arc::new(store))
}

idem_testkit::store_conformance!(sqlite);
