//! Issue 17 item 8: a SQLite store bounded like the memory store, in records
//! and in bytes. New keys past a bound get an error (503 store-full through
//! the layer); live records are never evicted; an answer that would overrun
//! the byte budget is kept without its body, since the operation ran.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idem_core::clock::ManualClock;
use idem_core::{
    Begin, Fence, Fingerprint, FingerprintMode, Store, StoreAdmin, StoreError, StoreKey,
    StoredResponse,
};
use idem_sqlite_store::{SqliteOptions, SqliteStore, ROW_OVERHEAD};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(60);

fn key(n: u8) -> StoreKey {
    StoreKey([n; 32])
}

fn fp() -> Fingerprint {
    Fingerprint::compute(FingerprintMode::Exact, &http::Method::POST, "/p", b"{}")
}

fn answer(body: usize) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from(vec![b'x'; body]),
        body_omitted: None,
    }
}

fn open(
    capacity: Option<u64>,
    max_bytes: Option<u64>,
) -> (SqliteStore, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    let options = SqliteOptions {
        clock: clock.clone(),
        capacity,
        max_bytes,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path().join("budget.db"), options)
        .unwrap_or_else(|e| panic!("{e}"));
    (store, clock, dir)
}

async fn start(store: &SqliteStore, k: &StoreKey) -> Fence {
    match store.begin(k, &fp(), LEASE).await {
        Ok(Begin::Started(f)) => f,
        other => panic!("expected Started, got {other:?}"),
    }
}

#[tokio::test]
async fn new_keys_are_refused_once_the_byte_budget_is_spent_and_live_records_stay() {
    let (store, _clock, _dir) = open(None, Some(2 * ROW_OVERHEAD + 1_000));
    for n in 1..=2 {
        let f = start(&store, &key(n)).await;
        assert!(store
            .complete(&key(n), f, &answer(400), TTL)
            .await
            .unwrap_or(false));
    }
    // Two rows and two answers of about 430 bytes: one more row does not fit.
    match store.begin(&key(3), &fp(), LEASE).await {
        Err(StoreError::BytesExceeded { .. }) => {}
        other => panic!("expected BytesExceeded, got {other:?}"),
    }
    // The live records are untouched and still replay.
    match store.begin(&key(1), &fp(), LEASE).await {
        Ok(Begin::Completed(r)) => assert_eq!(r.body.len(), 400),
        other => panic!("expected the replay, got {other:?}"),
    }
    // Deleting one gives its bytes back.
    assert!(store.delete(&key(2)).await.unwrap_or(false));
    start(&store, &key(3)).await;
}

#[tokio::test]
async fn an_answer_that_would_overrun_the_byte_budget_is_kept_without_its_body() {
    let (store, _clock, _dir) = open(None, Some(2 * ROW_OVERHEAD + 100));
    let f = start(&store, &key(1)).await;
    assert!(store
        .complete(&key(1), f, &answer(5_000), TTL)
        .await
        .unwrap_or(false));
    match store.begin(&key(1), &fp(), LEASE).await {
        Ok(Begin::Completed(r)) => {
            assert_eq!(r.status, 201);
            assert!(r.body.is_empty());
            assert_eq!(r.body_omitted, Some(5_000));
        }
        other => panic!("expected the replay without its body, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_records_make_room_before_a_new_key_is_refused() {
    let (store, clock, _dir) = open(Some(2), Some(1 << 20));
    for n in 1..=2 {
        let f = start(&store, &key(n)).await;
        assert!(store
            .complete(&key(n), f, &answer(10), TTL)
            .await
            .unwrap_or(false));
    }
    // Reported, so that the layer can keep one scope to its share of it.
    assert_eq!(store.capacity(), Some(2));
    match store.begin(&key(3), &fp(), LEASE).await {
        Err(StoreError::CapacityExceeded { capacity: 2 }) => {}
        other => panic!("expected CapacityExceeded, got {other:?}"),
    }
    clock.advance(TTL + Duration::from_secs(1));
    start(&store, &key(3)).await;
}

#[tokio::test]
async fn the_budget_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("reopen.db");
    let options = |max| SqliteOptions {
        max_bytes: Some(max),
        ..SqliteOptions::default()
    };
    let max = 3 * ROW_OVERHEAD + 500;
    {
        let store = SqliteStore::open_with(&path, options(max)).unwrap_or_else(|e| panic!("{e}"));
        let f = start(&store, &key(1)).await;
        assert!(store
            .complete(&key(1), f, &answer(500), TTL)
            .await
            .unwrap_or(false));
        start(&store, &key(2)).await;
    }
    // Reopened, it counts what the file holds: 2 rows and a 530-byte answer.
    let store = SqliteStore::open_with(&path, options(max)).unwrap_or_else(|e| panic!("{e}"));
    match store.begin(&key(3), &fp(), LEASE).await {
        Err(StoreError::BytesExceeded { .. }) => {}
        other => panic!("expected BytesExceeded, got {other:?}"),
    }
}
