//! The store contract, run against `SqliteStore` on a fresh file per test.

use std::sync::Arc;

use idem_core::{Store, StoreAdmin};
use idem_sqlite_store::{SqliteOptions, SqliteStore};
use idem_testkit::StoreConfig;

async fn sqlite(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
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

/// Issue: the database and its `-wal`/`-shm` files hold full responses and
/// were created readable by every user of the machine (0644).
#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_wal_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("idem.db");
    let store = SqliteStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let key = idem_testkit::suite::key();
    store
        .begin(
            &key,
            &idem_core::Fingerprint([1; 32]),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("idem.db{suffix}"));
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is mode {:o}",
            file.display(),
            mode & 0o777
        );
    }
}
