//! A `begin` its caller gave up on before the writer reached it (the
//! layer's store timeout, while another process held the database) is not
//! run: run, its record would hold the key in progress for the whole lease,
//! and the client told `503` would get `409` on each retry meanwhile.

mod common;

use std::time::Duration;

use common::{fingerprint, key, LEASE};
use idem_core::{Begin, Store};
use idem_sqlite_store::rusqlite::Connection;

#[tokio::test]
async fn a_begin_given_up_before_the_writer_reached_it_leaves_the_key_free() {
    let (store, _clock, dir) = common::setup("SELECT 1").await;
    let k = key("given-up");
    let fp = fingerprint("/payments", b"{}");
    // Another process's transaction holds the database: the writer waits.
    let other = Connection::open(dir.path().join("app.db")).unwrap_or_else(|e| panic!("{e}"));
    other
        .execute_batch("BEGIN EXCLUSIVE")
        .unwrap_or_else(|e| panic!("{e}"));
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), store.begin(&k, &fp, LEASE)).await;
    assert!(
        gave_up.is_err(),
        "the begin answered under the lock: {gave_up:?}"
    );
    other
        .execute_batch("COMMIT")
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let again = store.begin(&k, &fp, LEASE).await;
    assert!(
        matches!(again, Ok(Begin::Started(_))),
        "the key is still held by the begin given up on: {again:?}"
    );
}
