//! `MemoryStore`'s byte budget: new keys refused once it is spent, answers
//! that would overrun it kept without their body, and the accounting
//! returning to zero when every record is gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idem_core::clock::ManualClock;
use idem_core::fingerprint::Fingerprint;
use idem_core::memory::RECORD_OVERHEAD;
use idem_core::record::{Begin, Fence, StoredResponse};
use idem_core::scope::StoreKey;
use idem_core::store::StoreError;
use idem_core::{MemoryStore, Store, StoreAdmin};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);
const FP: Fingerprint = Fingerprint([1; 32]);

fn key(n: u8) -> StoreKey {
    let mut k = [0u8; 32];
    k[0] = n;
    k[31] = n;
    StoreKey(k)
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

fn store(max_bytes: usize) -> (MemoryStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = MemoryStore::new()
        .with_clock(clock.clone())
        .with_max_bytes(max_bytes);
    (store, clock)
}

async fn start(store: &MemoryStore, k: &StoreKey) -> Fence {
    match store.begin(k, &FP, LEASE).await {
        Ok(Begin::Started(f)) => f,
        other => panic!("expected Started, got {other:?}"),
    }
}

#[tokio::test]
async fn new_keys_are_refused_once_the_budget_is_spent_and_live_records_stay() {
    // Room for four empty records, and 1 KiB of answers.
    let (store, _) = store(4 * RECORD_OVERHEAD + 1024);
    let a = start(&store, &key(1)).await;
    assert!(store
        .complete(&key(1), a, &answer(1000), TTL)
        .await
        .expect("store"));
    let used = store.bytes();
    assert!(used > RECORD_OVERHEAD + 1000, "accounted {used}");
    start(&store, &key(2)).await;
    start(&store, &key(3)).await;
    // The fourth record no longer fits beside the 1000-byte answer.
    match store.begin(&key(4), &FP, LEASE).await {
        Err(StoreError::BytesExceeded { max_bytes }) => {
            assert_eq!(max_bytes, 4 * RECORD_OVERHEAD + 1024)
        }
        other => panic!("expected BytesExceeded, got {other:?}"),
    }
    let refused = store.begin(&key(4), &FP, LEASE).await.expect_err("refused");
    assert!(
        refused.to_string().contains("--memory-max-bytes"),
        "{refused}"
    );
    // Nothing was evicted: the completed answer still replays in full.
    match store.begin(&key(1), &FP, LEASE).await.expect("store") {
        Begin::Completed(r) => assert_eq!(r, answer(1000)),
        other => panic!("expected the replay, got {other:?}"),
    }
    assert_eq!(store.len(), 3);
    // Deleting the big answer gives its bytes back.
    assert!(store.delete(&key(1)).await.expect("store"));
    assert_eq!(store.bytes(), 2 * RECORD_OVERHEAD);
    start(&store, &key(4)).await;
}

#[tokio::test]
async fn an_answer_that_would_overrun_the_budget_is_kept_without_its_body() {
    let (store, _) = store(2 * RECORD_OVERHEAD + 1000);
    let a = start(&store, &key(1)).await;
    let b = start(&store, &key(2)).await;
    assert!(store
        .complete(&key(1), a, &answer(600), TTL)
        .await
        .expect("store"));
    // 600 more bytes do not fit: the execution happened, so the record is
    // kept (a retry must not execute again), but without the body.
    assert!(store
        .complete(&key(2), b, &answer(600), TTL)
        .await
        .expect("store"));
    match store.begin(&key(2), &FP, LEASE).await.expect("store") {
        Begin::Completed(r) => {
            assert_eq!(r.status, 201);
            assert_eq!(r.headers, answer(600).headers);
            assert!(r.body.is_empty());
            assert_eq!(r.body_omitted, Some(600));
        }
        other => panic!("expected the replay, got {other:?}"),
    }
    // The overshoot is at most the second answer's headers.
    let headers: usize = 72 + "content-type".len() + "application/json".len();
    assert!(
        store.bytes() <= store.max_bytes() + headers,
        "{} > {} + {headers}",
        store.bytes(),
        store.max_bytes()
    );
}

#[tokio::test]
async fn an_empty_answer_is_kept_as_it_is_even_past_the_budget() {
    let (store, _) = store(2 * RECORD_OVERHEAD);
    let a = start(&store, &key(1)).await;
    start(&store, &key(2)).await;
    // The budget is spent; the answer has no body to leave out.
    assert!(store
        .complete(&key(1), a, &answer(0), TTL)
        .await
        .expect("store"));
    match store.begin(&key(1), &FP, LEASE).await.expect("store") {
        Begin::Completed(r) => assert_eq!(r, answer(0)),
        other => panic!("expected the replay, got {other:?}"),
    }
    store.delete(&key(1)).await.expect("store");
    assert_eq!(store.bytes(), RECORD_OVERHEAD);
}

#[tokio::test]
async fn expiry_purge_release_and_takeover_give_bytes_back() {
    let (store, clock) = store(3 * RECORD_OVERHEAD + 4096);
    let a = start(&store, &key(1)).await;
    let b = start(&store, &key(2)).await;
    let c = start(&store, &key(3)).await;
    assert!(store
        .complete(&key(1), a, &answer(2000), TTL)
        .await
        .expect("store"));
    assert!(store
        .complete(&key(2), b, &answer(1000), TTL)
        .await
        .expect("store"));
    assert!(store.release(&key(3), c).await.expect("store"));
    assert_eq!(store.len(), 2);
    let two = store.bytes();
    // A released key's room is reusable.
    let c = start(&store, &key(3)).await;
    // After the TTL, a begin on an expired key replaces it and frees its answer.
    clock.advance(TTL + Duration::from_secs(1));
    let a2 = start(&store, &key(1)).await;
    assert!(store.bytes() < two, "{} !< {two}", store.bytes());
    // The rest goes with a release and a purge.
    store.release(&key(3), c).await.expect("store");
    assert!(store.release(&key(1), a2).await.expect("store"));
    store.purge_expired(usize::MAX).await.expect("store");
    assert_eq!(store.len(), 0);
    assert_eq!(store.bytes(), 0);
}

#[tokio::test]
async fn a_full_store_purges_expired_records_before_refusing() {
    let (store, clock) = store(2 * RECORD_OVERHEAD);
    start(&store, &key(1)).await;
    start(&store, &key(2)).await;
    assert!(matches!(
        store.begin(&key(3), &FP, LEASE).await,
        Err(StoreError::BytesExceeded { .. })
    ));
    clock.advance(LEASE + Duration::from_secs(2));
    start(&store, &key(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_racers_never_overrun_the_budget() {
    let (store, _) = store(100 * RECORD_OVERHEAD);
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for i in 0..50u8 {
                let mut k = [0u8; 32];
                k[0] = t;
                k[1] = i;
                k[31] = i.wrapping_mul(7).wrapping_add(t);
                if let Ok(Begin::Started(_)) = store.begin(&StoreKey(k), &FP, LEASE).await {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.expect("racer");
    }
    assert_eq!(won, 100);
    assert_eq!(store.bytes(), 100 * RECORD_OVERHEAD);
}
