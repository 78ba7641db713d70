//! Completing a record inside the application's transaction
//! (`PostgresStore::complete_in`, `DATABASE_URL`'s server): the business
//! write and the stored answer commit together, a lost fence fails the
//! transaction, and a retry arriving during the transaction never starts a
//! second execution.

mod common;

use idem_testkit::held::answer;

use std::sync::Arc;
use std::time::Duration;

use common::{key, LEASE};
use idem_core::{Begin, Fingerprint, HeldRecord, ManualClock, Store, StoreError};
use idem_postgres_store::PostgresStore;

/// A store in a schema of its own, with a `payments` table beside idem's.
async fn setup() -> Option<(PostgresStore, Arc<ManualClock>)> {
    common::setup(
        "CREATE TABLE {schema}.payments (id bigserial PRIMARY KEY, amount bigint NOT NULL)",
        4,
    )
    .await
}

fn fingerprint() -> Fingerprint {
    common::fingerprint("/payments", b"{}")
}

async fn begin(store: &PostgresStore, k: &idem_core::StoreKey) -> HeldRecord {
    common::try_begin(store, k, &fingerprint())
        .await
        .unwrap_or_else(|| panic!("the key was not free"))
}

/// The business write: one payment, inside `tx`.
async fn pay(tx: &idem_postgres_store::tokio_postgres::Transaction<'_>, store: &PostgresStore) {
    let insert = format!(
        "INSERT INTO {}.payments (amount) VALUES (42)",
        store.schema()
    );
    tx.execute(&insert, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn payments(store: &PostgresStore) -> i64 {
    let client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let sql = format!("SELECT count(*) FROM {}.payments", store.schema());
    client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0)
}

#[tokio::test]
async fn the_business_write_and_the_answer_commit_together_and_a_retry_waits_for_them() {
    let Some((store, _clock)) = setup().await else {
        return;
    };
    let store = Arc::new(store);
    let k = key("pg-tx-key-0000001");
    let held = begin(&store, &k).await;
    let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    pay(&tx, &store).await;
    store
        .complete_in(&tx, &held, &answer(r#"{"id": 1}"#))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Not committed yet: a retry waits on the record's row, locked by the
    // transaction, and is then told the key is in progress (its statement
    // reads the row as it was when it started); it never starts a second
    // execution. The next retry replays.
    let retry = {
        let store = store.clone();
        tokio::spawn(async move { store.begin(&k, &fingerprint(), LEASE).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !retry.is_finished(),
        "the retry did not wait for the transaction"
    );
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    match retry.await.unwrap_or_else(|e| panic!("{e}")) {
        Ok(Begin::InProgress { .. }) => {}
        Ok(Begin::Completed(stored)) => assert_eq!(stored, answer(r#"{"id": 1}"#)),
        other => panic!("{other:?}"),
    }
    match store.begin(&k, &fingerprint(), LEASE).await {
        Ok(Begin::Completed(stored)) => assert_eq!(stored, answer(r#"{"id": 1}"#)),
        other => panic!("{other:?}"),
    }
    assert_eq!(payments(&store).await, 1);
}

#[tokio::test]
async fn a_lost_fence_fails_the_transaction_and_nothing_commits() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-tx-key-0000002");
    let stale = begin(&store, &k).await;
    clock.advance(LEASE * 2);
    let current = begin(&store, &k).await;
    assert_ne!(stale.fence, current.fence);
    {
        let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
        let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        pay(&tx, &store).await;
        let late = store.complete_in(&tx, &stale, &answer("late")).await;
        assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
        // The handler returns the error: the transaction is dropped, rolled back.
    }
    assert_eq!(payments(&store).await, 0);
    let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    store
        .complete_in(&tx, &current, &answer("current"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}
