//! `StoreFuture`: an in-process store answers at once (ready, no box and no
//! timer for the layer), through a shared handle too, and those answers are
//! the ones its awaited calls give; a cache hit is ready, a miss and a
//! store across a network are pending.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::fingerprint::Fingerprint;
use idem_core::record::{Begin, StoredResponse};
use idem_core::scope::StoreKey;
use idem_core::{CachedStore, ManualClock, MemoryStore, Store, StoreAdmin, StoreFuture};
use idem_testkit::faulty::Faulty;

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);

fn answer() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from_static(b"{\"id\":1}"),
        body_omitted: None,
    }
}

/// The answer of a call that must not wait.
fn now<T>(call: StoreFuture<'_, T>) -> T {
    match call.into_ready() {
        Ok(answer) => answer.unwrap_or_else(|e| panic!("store: {e}")),
        Err(pending) => panic!("{pending:?}: an in-process store answers at once"),
    }
}

#[tokio::test]
async fn a_memory_stores_answers_are_ready_and_agree_with_its_awaited_ones() {
    let store: Arc<dyn StoreAdmin> = Arc::new(MemoryStore::new());
    let (k1, k2) = (StoreKey([1; 32]), StoreKey([2; 32]));
    let fp = Fingerprint([7; 32]);

    // Started at once, seen awaited as in progress.
    let Begin::Started(fence) = now(store.begin(&k1, &fp, LEASE)) else {
        panic!("a new key starts");
    };
    assert!(matches!(
        store.begin(&k1, &fp, LEASE).await.expect("begin"),
        Begin::InProgress { .. }
    ));
    // A wrong fence changes nothing; the right one stores the answer.
    assert!(!now(store.complete(
        &k1,
        idem_core::Fence::generate(),
        &answer(),
        TTL
    )));
    assert!(now(store.complete(&k1, fence, &answer(), TTL)));
    assert_eq!(
        store.begin(&k1, &fp, LEASE).await.expect("begin"),
        Begin::Completed(answer())
    );
    assert_eq!(
        now(store.begin(&k1, &Fingerprint([8; 32]), LEASE)),
        Begin::Mismatch
    );

    // Begun awaited, released at once: the key is free again.
    let Begin::Started(fence) = store.begin(&k2, &fp, LEASE).await.expect("begin") else {
        panic!("a new key starts");
    };
    assert!(now(store.renew(&k2, fence, LEASE)));
    assert!(now(store.release(&k2, fence)));
    assert!(!now(store.release(&k2, fence)));
    assert!(store.get(&k2).await.expect("get").is_none());
    assert!(matches!(
        now(store.begin(&k2, &fp, LEASE)),
        Begin::Started(_)
    ));
}

#[tokio::test]
async fn a_cache_hit_is_ready_and_a_store_that_waits_is_pending() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let remote = Faulty::new(MemoryStore::new().with_clock(clock.clone()));
    let (k, fp) = (StoreKey([3; 32]), Fingerprint([7; 32]));
    // A store across a network: pending, and nothing done until awaited.
    let call = remote.begin(&k, &fp, LEASE);
    assert!(call.into_ready().is_err());
    let cached = CachedStore::new(remote, clock);
    let Begin::Started(fence) = cached.begin(&k, &fp, LEASE).await.expect("begin") else {
        panic!("the dropped call did nothing: a new key starts");
    };
    assert!(cached
        .complete(&k, fence, &answer(), TTL)
        .await
        .expect("complete"));
    // The first replay asks the store (pending) and keeps the answer; the
    // next is a hit, ready at once.
    assert!(cached.begin(&k, &fp, LEASE).into_ready().is_err());
    assert_eq!(
        cached.begin(&k, &fp, LEASE).await.expect("begin"),
        Begin::Completed(answer())
    );
    assert_eq!(
        now(cached.begin(&k, &fp, LEASE)),
        Begin::Completed(answer())
    );
}
