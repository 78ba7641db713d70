//! Recovery points on PostgreSQL (`PostgresStore::recovery_point`,
//! `set_recovery_point`, `DATABASE_URL`'s server): an operation run as
//! phases resumes after its last committed phase when a retry takes it
//! over, a stale holder commits nothing, and concurrent retries after a
//! crash resume it once. The same cases as
//! idem-sqlite-store/tests/recovery.rs, and one of PostgreSQL's own: a
//! takeover waits for a phase in progress.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{key, LEASE, TTL};
use idem_core::{
    HeldRecord, ManualClock, Phases, RecoveryPoint, Store, StoreAdmin, StoreError, StoreKey,
};
use idem_postgres_store::PostgresStore;

const TRANSFER: Phases = Phases::new(&["debited", "credited"]);

/// A store in a schema of its own, with a `ledger` table beside idem's.
async fn setup() -> Option<(Arc<PostgresStore>, Arc<ManualClock>)> {
    let (store, clock) = common::setup(
        "CREATE TABLE {schema}.ledger (id bigserial PRIMARY KEY, account text NOT NULL, amount bigint NOT NULL)",
        12,
    )
    .await?;
    Some((Arc::new(store), clock))
}

async fn try_begin(store: &PostgresStore, k: &StoreKey, body: &[u8]) -> Option<HeldRecord> {
    common::try_begin(store, k, &common::fingerprint("/transfers", body)).await
}

async fn begin(store: &PostgresStore, k: &StoreKey) -> HeldRecord {
    try_begin(store, k, b"{}")
        .await
        .unwrap_or_else(|| panic!("the key was not free"))
}

/// The recovery point `held` sees, in a transaction of its own.
async fn point(
    store: &PostgresStore,
    held: &HeldRecord,
) -> Result<Option<RecoveryPoint>, StoreError> {
    let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    store.recovery_point(&tx, held).await
}

/// Phase `phase` when pending: one ledger entry for `account`, committed
/// with the point. Whether it ran.
async fn entry(
    store: &PostgresStore,
    held: &HeldRecord,
    phase: &'static str,
    account: &'static str,
    amount: i64,
) -> Result<bool, StoreError> {
    let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    let done = store.recovery_point(&tx, held).await?;
    if !TRANSFER.pending(done.as_ref(), phase)? {
        return Ok(false);
    }
    let insert = format!(
        "INSERT INTO {}.ledger (account, amount) VALUES ($1, $2)",
        store.schema()
    );
    tx.execute(&insert, &[&account, &amount])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let state = format!("state after {phase}").into_bytes();
    store
        .set_recovery_point(&tx, held, &RecoveryPoint::new(phase, state))
        .await?;
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    Ok(true)
}

async fn entries(store: &PostgresStore) -> Vec<(String, i64)> {
    let client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let sql = format!(
        "SELECT account, amount FROM {}.ledger ORDER BY id",
        store.schema()
    );
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn both() -> Vec<(String, i64)> {
    vec![("a".to_owned(), -10), ("b".to_owned(), 10)]
}

/// Runs whatever of the transfer is still pending for `held`.
async fn run_pending(store: &PostgresStore, held: &HeldRecord) {
    entry(store, held, "debited", "a", -10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    entry(store, held, "credited", "b", 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn phases_resume_after_the_last_committed_one_when_a_retry_takes_over() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00001");
    let crashed = begin(&store, &k).await;
    assert_eq!(point(&store, &crashed).await.ok(), Some(None));
    assert_eq!(
        entry(&store, &crashed, "debited", "a", -10).await.ok(),
        Some(true)
    );
    // The process dies here; its lease runs out; the retry takes over.
    clock.advance(LEASE * 2);
    let retry = begin(&store, &k).await;
    assert_eq!(
        point(&store, &retry).await.ok(),
        Some(Some(RecoveryPoint::new(
            "debited",
            b"state after debited".to_vec()
        )))
    );
    run_pending(&store, &retry).await;
    assert_eq!(entries(&store).await, both());
}

#[tokio::test]
async fn a_lost_fence_fails_the_phase_and_nothing_commits() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00002");
    let stale = begin(&store, &k).await;
    clock.advance(LEASE * 2);
    let current = begin(&store, &k).await;
    let late = entry(&store, &stale, "debited", "a", -10).await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    // Writing the point without reading it first is fenced too.
    {
        let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
        let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        let write = store
            .set_recovery_point(&tx, &stale, &RecoveryPoint::new("debited", Vec::new()))
            .await;
        assert!(matches!(write, Err(StoreError::LeaseLost)), "{write:?}");
    }
    assert_eq!(entries(&store).await, []);
    assert_eq!(point(&store, &current).await.ok(), Some(None));
}

#[tokio::test]
async fn a_failing_phase_keeps_nothing() {
    let Some((store, _clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00003");
    let held = begin(&store, &k).await;
    {
        let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
        let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
        let insert = format!(
            "INSERT INTO {}.ledger (account, amount) VALUES ('a', -10)",
            store.schema()
        );
        tx.execute(&insert, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .set_recovery_point(&tx, &held, &RecoveryPoint::new("debited", Vec::new()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(tx.execute("SELECT 1/0", &[]).await.is_err());
        // The handler returns its error: the transaction is dropped.
    }
    assert_eq!(entries(&store).await, []);
    assert_eq!(point(&store, &held).await.ok(), Some(None));
}

#[tokio::test]
async fn concurrent_retries_after_a_crash_exactly_one_resumes() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00004");
    let crashed = begin(&store, &k).await;
    assert_eq!(
        entry(&store, &crashed, "debited", "a", -10).await.ok(),
        Some(true)
    );
    clock.advance(LEASE * 2);
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let held = try_begin(&store, &k, b"{}").await;
                if let Some(held) = &held {
                    run_pending(&store, held).await;
                }
                held.is_some()
            })
        })
        .collect();
    let mut resumed = 0;
    for r in retries {
        resumed += usize::from(r.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(resumed, 1, "exactly one retry takes over");
    assert_eq!(entries(&store).await, both());
}

#[tokio::test]
async fn a_released_record_keeps_its_point_for_the_same_request_only() {
    let Some((store, _clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00005");
    let first = begin(&store, &k).await;
    assert_eq!(
        entry(&store, &first, "debited", "a", -10).await.ok(),
        Some(true)
    );
    // The execution answered 5xx after its first phase (rule 7): released.
    assert!(store.release(&k, first.fence).await.unwrap_or(false));
    let retry = begin(&store, &k).await;
    let found = point(&store, &retry).await.ok().flatten();
    assert_eq!(found.map(|p| p.phase), Some("debited".to_owned()));
    assert!(store.release(&k, retry.fence).await.unwrap_or(false));
    // Another request reusing the key once the record is gone starts over.
    let other = try_begin(&store, &k, b"{\"amount\":99}")
        .await
        .unwrap_or_else(|| panic!("the key was not free"));
    assert_eq!(point(&store, &other).await.ok(), Some(None));
}

#[tokio::test]
async fn recovery_points_expire_with_the_ttl_and_are_purged() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00006");
    let first = begin(&store, &k).await;
    assert_eq!(
        entry(&store, &first, "debited", "a", -10).await.ok(),
        Some(true)
    );
    clock.advance(TTL + LEASE);
    let late = begin(&store, &k).await;
    assert_eq!(point(&store, &late).await.ok(), Some(None));
    store
        .purge_expired(100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let sql = format!("SELECT count(*) FROM {}.idem_recovery", store.schema());
    let points: i64 = client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(points, 0);
}

#[tokio::test]
async fn a_takeover_waits_for_a_phase_in_progress_and_resumes_after_it() {
    let Some((store, clock)) = setup().await else {
        return;
    };
    let k = key("pg-phase-key-00007");
    let slow = begin(&store, &k).await;
    let mut client = store.pool().get().await.unwrap_or_else(|e| panic!("{e}"));
    let tx = client.transaction().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.recovery_point(&tx, &slow).await.ok(), Some(None));
    // The phase outlives the lease; a retry arrives meanwhile.
    clock.advance(LEASE * 2);
    let retry = {
        let store = store.clone();
        tokio::spawn(async move { try_begin(&store, &k, b"{}").await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !retry.is_finished(),
        "the takeover did not wait for the phase"
    );
    let insert = format!(
        "INSERT INTO {}.ledger (account, amount) VALUES ('a', -10)",
        store.schema()
    );
    tx.execute(&insert, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .set_recovery_point(&tx, &slow, &RecoveryPoint::new("debited", Vec::new()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let took_over = retry
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the retry did not take over the expired lease"));
    // It resumes after the phase that committed while it waited.
    run_pending(&store, &took_over).await;
    assert_eq!(entries(&store).await, both());
}
