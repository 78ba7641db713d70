//! Completing a record inside the application's transaction
//! (`SqliteStore::complete_with`): the business write and the stored answer
//! commit together, and a lost fence keeps neither.

mod common;

use idem_testkit::held::answer;

use common::{fingerprint, key, try_begin, LEASE};
use idem_core::{HeldRecord, ManualClock, RecordState, StoreAdmin};
use idem_sqlite_store::{SqliteError, SqliteStore};
use std::sync::Arc;

async fn setup() -> (SqliteStore, Arc<ManualClock>, tempfile::TempDir) {
    common::setup("CREATE TABLE payments (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)").await
}

async fn begin(store: &SqliteStore, k: &idem_core::StoreKey) -> HeldRecord {
    try_begin(store, k, &fingerprint("/payments", b"{}"))
        .await
        .unwrap_or_else(|| panic!("the key was not free"))
}

async fn payments(store: &SqliteStore) -> i64 {
    store
        .call(|c| c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_business_write_and_the_answer_commit_together() {
    let (store, _clock, _dir) = setup().await;
    let k = key("tx-key-000000001");
    let held = begin(&store, &k).await;
    let stored = answer(r#"{"id": 1}"#);
    let id = store
        .complete_with(held, move |c| {
            c.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
            Ok((c.last_insert_rowid(), stored))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id, 1);
    assert_eq!(payments(&store).await, 1);
    let record = store
        .get(&k)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a record");
    match record.state {
        RecordState::Completed { response, .. } => assert_eq!(response, answer(r#"{"id": 1}"#)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_lost_fence_keeps_nothing_of_the_transaction() {
    let (store, clock, _dir) = setup().await;
    let k = key("tx-key-000000002");
    let stale = begin(&store, &k).await;
    // The lease ends and a retry takes the key over (rule 8).
    clock.advance(LEASE * 2);
    let current = begin(&store, &k).await;
    assert_ne!(stale.fence, current.fence);
    let late = store
        .complete_with(stale, |c| {
            c.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
            Ok(((), answer("late")))
        })
        .await;
    assert!(matches!(late, Err(SqliteError::LeaseLost)), "{late:?}");
    assert_eq!(
        payments(&store).await,
        0,
        "the stale execution's write was kept"
    );
    // The takeover completes as usual.
    store
        .complete_with(current, |c| {
            c.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
            Ok(((), answer("current")))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(payments(&store).await, 1);
}

#[tokio::test]
async fn a_failing_business_write_keeps_nothing_and_leaves_the_key_held() {
    let (store, _clock, _dir) = setup().await;
    let k = key("tx-key-000000003");
    let held = begin(&store, &k).await;
    let failed = store
        .complete_with(held, |c| {
            c.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
            c.execute("INSERT INTO payments (amount) VALUES (NULL)", [])?;
            Ok(((), answer("never")))
        })
        .await;
    assert!(matches!(failed, Err(SqliteError::Sql(_))), "{failed:?}");
    assert_eq!(payments(&store).await, 0);
    let record = store
        .get(&k)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a record");
    assert!(
        matches!(record.state, RecordState::InProgress { .. }),
        "{:?}",
        record.state
    );
}
