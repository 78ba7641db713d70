//! The local cache answers replays itself, never past the record's expiry,
//! and stays within its capacity.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{
    Begin, CachedStore, Fingerprint, ManualClock, MemoryStore, Secret, Store, StoreAdmin, StoreKey,
    StoredResponse,
};
use idem_testkit::faulty::Faulty;

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Bytes::from_static(b"paid"),
        body_omitted: None,
    }
}

async fn completed(store: &dyn Store, key: &StoreKey, ttl: Duration) {
    let Ok(Begin::Started(f)) = store
        .begin(key, &Fingerprint([1; 32]), Duration::from_secs(30))
        .await
    else {
        panic!("expected Started");
    };
    assert!(store
        .complete(key, f, &response(), ttl)
        .await
        .unwrap_or(false));
}

#[tokio::test]
async fn replays_come_from_the_cache_until_the_record_expires() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let inner = Arc::new(MemoryStore::new().with_clock(clock.clone()));
    let inner_dyn: Arc<dyn StoreAdmin> = inner.clone();
    let cached = CachedStore::new(inner_dyn, clock.clone());
    let key = StoreKey::derive(&Secret::generate(), None, "hot-key-000001");
    completed(&cached, &key, Duration::from_secs(10)).await;
    // The first replay reads through and fills the cache.
    assert!(matches!(
        cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await,
        Ok(Begin::Completed(_))
    ));
    assert_eq!(cached.len(), 1);
    // Remove the record behind the cache's back: the cache still answers,
    // so the replay did not touch the inner store.
    assert!(inner.delete(&key).await.unwrap_or(false));
    assert!(matches!(
        cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await,
        Ok(Begin::Completed(_))
    ));
    assert!(matches!(
        cached
            .begin(&key, &Fingerprint([2; 32]), Duration::from_secs(30))
            .await,
        Ok(Begin::Mismatch)
    ));
    // Past the record's TTL the entry is gone too: the inner store decides.
    clock.advance(Duration::from_secs(11));
    assert!(matches!(
        cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await,
        Ok(Begin::Started(_))
    ));
}

#[tokio::test]
async fn entries_never_outlive_max_age_and_capacity_holds() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let inner: Arc<dyn StoreAdmin> = Arc::new(MemoryStore::new().with_clock(clock.clone()));
    let cached = CachedStore::new(inner.clone(), clock.clone())
        .capacity(32)
        .max_age(Duration::from_secs(5));
    let secret = Secret::generate();
    for i in 0..200 {
        let key = StoreKey::derive(&secret, None, &format!("key-{i:010}"));
        completed(&cached, &key, Duration::from_secs(3600)).await;
        let _ = cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await;
    }
    assert!(cached.len() <= 32, "{}", cached.len());
    let key = StoreKey::derive(&secret, None, "key-0000000199");
    assert!(inner.delete(&key).await.unwrap_or(false));
    clock.advance(Duration::from_secs(6));
    // max_age passed: the deleted record is not replayed from the cache.
    assert!(matches!(
        cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await,
        Ok(Begin::Started(_))
    ));
}

/// Issue: when `begin` said Completed and the cache's follow-up read of the
/// record failed, the cache answered an error (503, or with fail-open a
/// second execution). A record the store reported completed is replayed,
/// also when the store cannot say when it expires (here a store that keeps
/// `begin_expiring`'s default, whose reads fail besides).
#[tokio::test]
async fn rule_4_a_completed_record_replays_when_the_follow_up_read_fails() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let inner = Faulty::new(MemoryStore::new().with_clock(clock.clone())).get_fails();
    let cached = CachedStore::new(inner, clock.clone());
    let key = StoreKey::derive(&Secret::generate(), None, "blip-key-000001");
    completed(&cached, &key, Duration::from_secs(10)).await;
    for _ in 0..2 {
        match cached
            .begin(&key, &Fingerprint([1; 32]), Duration::from_secs(30))
            .await
        {
            Ok(Begin::Completed(r)) => assert_eq!(r, response()),
            other => panic!("a completed record was not replayed: {other:?}"),
        }
    }
    // Without the record's expiry nothing was cached (an entry could have
    // outlived the record).
    assert_eq!(cached.len(), 0);
}
