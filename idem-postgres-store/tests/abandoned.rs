//! A `begin` its caller gave up on before the answer came (the layer's
//! store timeout) still runs in PostgreSQL; the store then releases the
//! record it made, so the client told `503` is not refused with `409` for
//! the rest of the lease (`src/abandoned.rs`).

mod common;

use std::time::Duration;

use common::{fingerprint, key, LEASE};
use idem_core::{Begin, Store};

#[tokio::test]
async fn a_begin_given_up_before_its_answer_leaves_the_key_free() {
    let Some((store, _clock)) = common::setup("SELECT 1", 4).await else {
        return;
    };
    let k = key("given-up");
    let fp = fingerprint("/payments", b"{}");
    // Another connection holds the records table: the begin waits for it.
    let mut locker = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = locker.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    let lock = format!(
        "LOCK TABLE {}.idem_records IN EXCLUSIVE MODE",
        store.schema()
    );
    tx.batch_execute(&lock)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), store.begin(&k, &fp, LEASE)).await;
    assert!(
        gave_up.is_err(),
        "the begin answered under the lock: {gave_up:?}"
    );
    // The lock goes; the begin runs, then its release.
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let again = store.begin(&k, &fp, LEASE).await;
    assert!(
        matches!(again, Ok(Begin::Started(_))),
        "the key is still held by the begin given up on: {again:?}"
    );
}
