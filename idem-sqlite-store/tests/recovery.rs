//! Recovery points on SQLite (`SqliteStore::recovery_point`, `phase_with`):
//! an operation run as phases resumes after its last committed phase when
//! a retry takes it over, a stale holder commits nothing, and concurrent
//! retries after a crash resume it once. The same cases as
//! idem-postgres-store/tests/recovery.rs.

mod common;

use std::sync::Arc;

use common::{key, LEASE, TTL};
use idem_core::{HeldRecord, ManualClock, Phases, RecoveryPoint, Store, StoreAdmin, StoreKey};
use idem_sqlite_store::rusqlite::params;
use idem_sqlite_store::{SqliteError, SqliteStore};

const TRANSFER: Phases = Phases::new(&["debited", "credited"]);

async fn setup() -> (SqliteStore, Arc<ManualClock>, tempfile::TempDir) {
    common::setup(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL)",
    )
    .await
}

async fn try_begin(store: &SqliteStore, k: &StoreKey, body: &[u8]) -> Option<HeldRecord> {
    common::try_begin(store, k, &common::fingerprint("/transfers", body)).await
}

async fn begin(store: &SqliteStore, k: &StoreKey) -> HeldRecord {
    try_begin(store, k, b"{}")
        .await
        .unwrap_or_else(|| panic!("the key was not free"))
}

/// Phase `phase`: one ledger entry for `account`, state = the phase's name.
async fn entry(
    store: &SqliteStore,
    held: HeldRecord,
    phase: &'static str,
    account: &'static str,
    amount: i64,
) -> Result<(), SqliteError> {
    store
        .phase_with(held, phase, move |c| {
            c.execute(
                "INSERT INTO ledger (account, amount) VALUES (?1, ?2)",
                params![account, amount],
            )?;
            Ok(((), format!("state after {phase}").into_bytes()))
        })
        .await
}

async fn entries(store: &SqliteStore) -> Vec<(String, i64)> {
    store
        .call(|c| {
            let mut s = c.prepare("SELECT account, amount FROM ledger ORDER BY id")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs whatever of the transfer is still pending for `held`.
async fn run_pending(store: &SqliteStore, held: HeldRecord) {
    let done = store
        .recovery_point(held)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if TRANSFER
        .pending(done.as_ref(), "debited")
        .unwrap_or_else(|e| panic!("{e}"))
    {
        entry(store, held, "debited", "a", -10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    if TRANSFER
        .pending(done.as_ref(), "credited")
        .unwrap_or_else(|e| panic!("{e}"))
    {
        entry(store, held, "credited", "b", 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn phases_resume_after_the_last_committed_one_when_a_retry_takes_over() {
    let (store, clock, _dir) = setup().await;
    let k = key("phase-key-00000001");
    let crashed = begin(&store, &k).await;
    assert_eq!(store.recovery_point(crashed).await.ok(), Some(None));
    entry(&store, crashed, "debited", "a", -10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The process dies here; its lease runs out; the retry takes over.
    clock.advance(LEASE * 2);
    let retry = begin(&store, &k).await;
    assert_eq!(
        store.recovery_point(retry).await.ok(),
        Some(Some(RecoveryPoint::new(
            "debited",
            b"state after debited".to_vec()
        )))
    );
    run_pending(&store, retry).await;
    assert_eq!(
        entries(&store).await,
        [("a".to_owned(), -10), ("b".to_owned(), 10)]
    );
}

#[tokio::test]
async fn a_lost_fence_fails_the_phase_and_nothing_commits() {
    let (store, clock, _dir) = setup().await;
    let k = key("phase-key-00000002");
    let stale = begin(&store, &k).await;
    clock.advance(LEASE * 2);
    let current = begin(&store, &k).await;
    let late = entry(&store, stale, "debited", "a", -10).await;
    assert!(matches!(late, Err(SqliteError::LeaseLost)), "{late:?}");
    assert!(matches!(
        store.recovery_point(stale).await,
        Err(SqliteError::LeaseLost)
    ));
    assert_eq!(entries(&store).await, []);
    // The holder's point is untouched by the stale attempt.
    assert_eq!(store.recovery_point(current).await.ok(), Some(None));
}

#[tokio::test]
async fn a_failing_phase_keeps_nothing() {
    let (store, _clock, _dir) = setup().await;
    let k = key("phase-key-00000003");
    let held = begin(&store, &k).await;
    let failed = store
        .phase_with(held, "debited", |c| {
            c.execute("INSERT INTO ledger (account, amount) VALUES ('a', -10)", [])?;
            c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(((), Vec::new()))
        })
        .await;
    assert!(matches!(failed, Err(SqliteError::Sql(_))), "{failed:?}");
    assert_eq!(entries(&store).await, []);
    assert_eq!(store.recovery_point(held).await.ok(), Some(None));
}

#[tokio::test]
async fn concurrent_retries_after_a_crash_exactly_one_resumes() {
    let (store, clock, _dir) = setup().await;
    let k = key("phase-key-00000004");
    let crashed = begin(&store, &k).await;
    entry(&store, crashed, "debited", "a", -10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    clock.advance(LEASE * 2);
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let held = try_begin(&store, &k, b"{}").await;
                if let Some(held) = held {
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
    assert_eq!(
        entries(&store).await,
        [("a".to_owned(), -10), ("b".to_owned(), 10)]
    );
}

#[tokio::test]
async fn a_released_record_keeps_its_point_for_the_same_request_only() {
    let (store, _clock, _dir) = setup().await;
    let k = key("phase-key-00000005");
    let first = begin(&store, &k).await;
    entry(&store, first, "debited", "a", -10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The execution answered 5xx after its first phase (rule 7): released.
    assert!(store.release(&k, first.fence).await.unwrap_or(false));
    let retry = begin(&store, &k).await;
    let point = store.recovery_point(retry).await.ok().flatten();
    assert_eq!(point.map(|p| p.phase), Some("debited".to_owned()));
    assert!(store.release(&k, retry.fence).await.unwrap_or(false));
    // Another request reusing the key once the record is gone starts over.
    let other = try_begin(&store, &k, b"{\"amount\":99}")
        .await
        .unwrap_or_else(|| panic!("the key was not free"));
    assert_eq!(store.recovery_point(other).await.ok(), Some(None));
}

#[tokio::test]
async fn recovery_points_expire_with_the_ttl_and_are_purged() {
    let (store, clock, _dir) = setup().await;
    let k = key("phase-key-00000006");
    let first = begin(&store, &k).await;
    entry(&store, first, "debited", "a", -10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    clock.advance(TTL + LEASE);
    let late = begin(&store, &k).await;
    assert_eq!(store.recovery_point(late).await.ok(), Some(None));
    store
        .purge_expired(100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let points: i64 = store
        .call(|c| c.query_row("SELECT count(*) FROM idem_recovery", [], |r| r.get(0)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(points, 0);
}
