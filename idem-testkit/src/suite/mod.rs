//! The conformance tests, one function per rule; [`store_conformance!`](crate::store_conformance)
//! expands them into `#[tokio::test]`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idem_core::{
    Begin, Clock, Fingerprint, Secret, Store, StoreAdmin, StoreError, StoreKey, StoredResponse,
};

use crate::StoreConfig;

/// A boxed store factory.
pub type Factory =
    dyn Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>> + Sync;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

async fn make<F>(factory: &F, capacity: Option<usize>) -> Option<(Arc<dyn StoreAdmin>, StoreConfig)>
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let config = StoreConfig::new(capacity);
    match factory(config.clone()).await {
        Some(s) => Some((s, config)),
        None => {
            eprintln!("skipped: the store's server is not configured");
            None
        }
    }
}

/// A fresh random key, so tests sharing a server never collide.
pub fn key() -> StoreKey {
    StoreKey::derive(&Secret::generate(), None, "conformance")
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

fn response(body: &'static [u8]) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from_static(body),
        body_omitted: None,
    }
}

async fn start(store: &dyn StoreAdmin, k: &StoreKey, f: Fingerprint) -> idem_core::Fence {
    match store.begin(k, &f, LEASE).await {
        Ok(Begin::Started(fence)) => fence,
        other => panic!("expected Started, got {other:?}"),
    }
}

async fn begin(store: &dyn StoreAdmin, k: &StoreKey, f: Fingerprint) -> Begin {
    store
        .begin(k, &f, LEASE)
        .await
        .unwrap_or_else(|e| panic!("begin failed: {e}"))
}

macro_rules! setup {
    ($factory:expr) => {
        setup!($factory, None)
    };
    ($factory:expr, $cap:expr) => {
        match make(&$factory, $cap).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// Rules 3 and 4: begin, complete, and the same request gets the answer.
pub async fn replay_after_complete<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    let r = response(b"{\"id\":1}");
    assert!(store.complete(&k, fence, &r, TTL).await.unwrap_or(false));
    assert_eq!(begin(&*store, &k, fp(1)).await, Begin::Completed(r.clone()));
    // And again: a replay changes nothing.
    assert_eq!(begin(&*store, &k, fp(1)).await, Begin::Completed(r));
}

/// Rule 3: 64 concurrent racers on one key, exactly one wins.
pub async fn racers_exactly_one_wins<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    for _round in 0..5 {
        let k = key();
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (store, barrier) = (store.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.begin(&k, &fp(1), LEASE).await
            }));
        }
        let mut started = 0;
        let mut in_progress = 0;
        for t in tasks {
            match t.await.unwrap_or_else(|e| panic!("racer panicked: {e}")) {
                Ok(Begin::Started(_)) => started += 1,
                Ok(Begin::InProgress { .. }) => in_progress += 1,
                other => panic!("unexpected racer outcome {other:?}"),
            }
        }
        assert_eq!((started, in_progress), (1, 63));
    }
}

/// Rule 8: after the lease expires another holder takes over; the stale
/// holder's complete, release and renew change nothing.
pub async fn fencing_stale_holder_changes_nothing<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    let old = start(&*store, &k, fp(1)).await;
    cfg.manual.advance(LEASE + Duration::from_millis(1));
    let new = start(&*store, &k, fp(1)).await;
    assert_ne!(old, new, "a takeover must get a new fence");
    assert!(!store.renew(&k, old, LEASE).await.unwrap_or(true));
    assert!(!store
        .complete(&k, old, &response(b"old"), TTL)
        .await
        .unwrap_or(true));
    assert!(!store.release(&k, old).await.unwrap_or(true));
    assert!(matches!(
        begin(&*store, &k, fp(1)).await,
        Begin::InProgress { .. }
    ));
    assert!(store
        .complete(&k, new, &response(b"new"), TTL)
        .await
        .unwrap_or(false));
    assert_eq!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(response(b"new"))
    );
    // A stale holder cannot remove a completed record either.
    assert!(!store.release(&k, old).await.unwrap_or(true));
    assert!(!store.release(&k, new).await.unwrap_or(true));
    assert_eq!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(response(b"new"))
    );
}

/// A renewed lease is not taken over.
pub async fn renewal_keeps_lease<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    for _ in 0..5 {
        cfg.manual.advance(LEASE * 2 / 3);
        assert!(store.renew(&k, fence, LEASE).await.unwrap_or(false));
    }
    cfg.manual.advance(LEASE * 2 / 3);
    assert!(matches!(
        begin(&*store, &k, fp(1)).await,
        Begin::InProgress { .. }
    ));
    assert!(store
        .complete(&k, fence, &response(b"x"), TTL)
        .await
        .unwrap_or(false));
}

/// Rule 5: a live lease is reported with its remaining time.
pub async fn in_progress_reports_lease<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    start(&*store, &k, fp(1)).await;
    cfg.manual.advance(Duration::from_secs(10));
    match begin(&*store, &k, fp(1)).await {
        Begin::InProgress { lease_remaining } => {
            assert!(
                lease_remaining <= Duration::from_secs(20),
                "{lease_remaining:?}"
            );
            assert!(
                lease_remaining >= Duration::from_secs(19),
                "{lease_remaining:?}"
            );
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
}

/// Rule 9: a completed record past its TTL is no record.
pub async fn ttl_expiry<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    // The TTL counts from completion, not from begin.
    cfg.manual.advance(Duration::from_secs(20));
    assert!(store
        .complete(&k, fence, &response(b"x"), Duration::from_secs(10))
        .await
        .unwrap_or(false));
    cfg.manual.advance(Duration::from_secs(9));
    assert!(matches!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(_)
    ));
    assert!(store.get(&k).await.ok().flatten().is_some());
    cfg.manual.advance(Duration::from_millis(1001));
    assert!(store.get(&k).await.ok().flatten().is_none());
    start(&*store, &k, fp(1)).await;
}

/// Rule 6: a live record with another fingerprint, in any state, is a mismatch.
pub async fn mismatch<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    assert_eq!(begin(&*store, &k, fp(2)).await, Begin::Mismatch);
    assert!(store
        .complete(&k, fence, &response(b"x"), TTL)
        .await
        .unwrap_or(false));
    assert_eq!(begin(&*store, &k, fp(2)).await, Begin::Mismatch);
    assert!(matches!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(_)
    ));
}

/// Rules 8 and 9: an expired record of another request is no record.
pub async fn expired_record_with_other_fingerprint_is_no_record<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    start(&*store, &k, fp(1)).await;
    cfg.manual.advance(LEASE + Duration::from_millis(1));
    let fence = start(&*store, &k, fp(2)).await;
    assert!(store
        .complete(&k, fence, &response(b"x"), Duration::from_secs(5))
        .await
        .unwrap_or(false));
    cfg.manual.advance(Duration::from_secs(6));
    start(&*store, &k, fp(3)).await;
}

/// Rule 7: a released key executes again.
pub async fn release_allows_retry<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    assert!(store.release(&k, fence).await.unwrap_or(false));
    assert!(store.get(&k).await.ok().flatten().is_none());
    // After a release even another request may use the key.
    let again = start(&*store, &k, fp(2)).await;
    assert_ne!(fence, again);
}

/// Rule 4: binary bodies and repeated headers come back byte for byte.
pub async fn byte_exact_binary_body_and_repeated_headers<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    let r = StoredResponse {
        status: 299,
        headers: vec![
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("a=1"),
            ),
            (
                HeaderName::from_static("x-empty"),
                HeaderValue::from_static(""),
            ),
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("b=2"),
            ),
            (
                HeaderName::from_static("x-bin"),
                HeaderValue::from_bytes(b"\x80\xff opaque").unwrap_or(HeaderValue::from_static("")),
            ),
        ],
        body: Bytes::from((0..=255u8).cycle().take(4099).collect::<Vec<_>>()),
        body_omitted: None,
    };
    assert!(store.complete(&k, fence, &r, TTL).await.unwrap_or(false));
    assert_eq!(begin(&*store, &k, fp(1)).await, Begin::Completed(r.clone()));
    let omitted = StoredResponse {
        body: Bytes::new(),
        body_omitted: Some(10 << 20),
        ..r
    };
    let k2 = key();
    let fence = start(&*store, &k2, fp(1)).await;
    assert!(store
        .complete(&k2, fence, &omitted, TTL)
        .await
        .unwrap_or(false));
    assert_eq!(begin(&*store, &k2, fp(1)).await, Begin::Completed(omitted));
}

/// The same key in two scopes is two unrelated records.
pub async fn scope_isolation<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let secret = Secret::generate();
    let alice = StoreKey::derive(&secret, Some(b"Bearer alice"), "same-key-0001");
    let bob = StoreKey::derive(&secret, Some(b"Bearer bob"), "same-key-0001");
    let anon = StoreKey::derive(&secret, None, "same-key-0001");
    let fence = start(&*store, &alice, fp(1)).await;
    assert!(store
        .complete(&alice, fence, &response(b"alice"), TTL)
        .await
        .unwrap_or(false));
    start(&*store, &bob, fp(1)).await;
    start(&*store, &anon, fp(2)).await;
    assert_eq!(
        begin(&*store, &alice, fp(1)).await,
        Begin::Completed(response(b"alice"))
    );
}

/// A full store refuses new keys and never evicts live records.
pub async fn capacity_refusal<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory, Some(3));
    let keys = [key(), key(), key()];
    let mut fences = Vec::new();
    for k in &keys {
        fences.push(start(&*store, k, fp(1)).await);
    }
    match store.begin(&key(), &fp(1), LEASE).await {
        Err(StoreError::CapacityExceeded { capacity: 3 }) => {}
        other => panic!("expected CapacityExceeded, got {other:?}"),
    }
    // Existing keys still answer, and completing takes no new room.
    assert!(matches!(
        begin(&*store, &keys[0], fp(1)).await,
        Begin::InProgress { .. }
    ));
    assert!(store
        .complete(&keys[0], fences[0], &response(b"x"), Duration::from_secs(5))
        .await
        .unwrap_or(false));
    assert!(store.release(&keys[1], fences[1]).await.unwrap_or(false));
    // A released key made room.
    start(&*store, &key(), fp(1)).await;
    assert!(matches!(
        store.begin(&key(), &fp(1), LEASE).await,
        Err(StoreError::CapacityExceeded { .. })
    ));
    // Expired records make room too.
    cfg.manual.advance(LEASE + Duration::from_secs(1));
    start(&*store, &key(), fp(1)).await;
}

/// get, delete, stats and purge_expired.
pub async fn admin_get_delete_stats_purge<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let before = store.stats().await.unwrap_or_else(|e| panic!("{e}"));
    let (a, b, c) = (key(), key(), key());
    let fa = start(&*store, &a, fp(1)).await;
    assert!(store
        .complete(&a, fa, &response(b"a"), Duration::from_secs(10))
        .await
        .unwrap_or(false));
    let fb = start(&*store, &b, fp(1)).await;
    assert!(store
        .complete(&b, fb, &response(b"b"), Duration::from_secs(100_000))
        .await
        .unwrap_or(false));
    start(&*store, &c, fp(1)).await;
    let s = store.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.completed - before.completed, 2);
    assert_eq!(s.in_progress - before.in_progress, 1);
    let rec = store
        .get(&a)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("a is live"));
    assert_eq!(rec.fingerprint, fp(1));
    cfg.manual.advance(Duration::from_secs(11));
    // a (TTL 10 s) expired; c's lease (30 s) did not.
    let s = store.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(s.expired > before.expired, "{s:?}");
    let mut purged = 0;
    loop {
        let n = store
            .purge_expired(1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        purged += n;
        if n == 0 {
            break;
        }
    }
    assert!(purged >= 1);
    assert!(store.get(&a).await.ok().flatten().is_none());
    assert!(store.get(&b).await.ok().flatten().is_some());
    assert!(store.get(&c).await.ok().flatten().is_some());
    assert!(store.delete(&b).await.unwrap_or(false));
    assert!(!store.delete(&b).await.unwrap_or(true));
    assert!(store.get(&b).await.ok().flatten().is_none());
    store.ping().await.unwrap_or_else(|e| panic!("{e}"));
}

/// A 1 MiB body round-trips.
pub async fn large_body<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    let r = StoredResponse {
        body: Bytes::from(vec![0xabu8; 1 << 20]),
        ..response(b"")
    };
    assert!(store.complete(&k, fence, &r, TTL).await.unwrap_or(false));
    assert_eq!(begin(&*store, &k, fp(1)).await, Begin::Completed(r));
}

/// Completing twice with one fence: the second changes nothing.
pub async fn complete_twice_is_stale<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let k = key();
    let fence = start(&*store, &k, fp(1)).await;
    assert!(store
        .complete(&k, fence, &response(b"1"), TTL)
        .await
        .unwrap_or(false));
    assert!(!store
        .complete(&k, fence, &response(b"2"), TTL)
        .await
        .unwrap_or(true));
    assert!(!store.renew(&k, fence, LEASE).await.unwrap_or(true));
    assert_eq!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(response(b"1"))
    );
}

/// Many keys with racers each: one winner per key.
pub async fn many_keys_concurrently<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let keys: Vec<StoreKey> = (0..32).map(|_| key()).collect();
    let mut tasks = Vec::new();
    for k in &keys {
        for _ in 0..8 {
            let (store, k) = (store.clone(), *k);
            tasks.push(tokio::spawn(async move {
                match store.begin(&k, &fp(1), LEASE).await {
                    Ok(Begin::Started(f)) => {
                        let done = store.complete(&k, f, &response(b"ok"), TTL).await;
                        assert!(done.unwrap_or(false));
                        1
                    }
                    Ok(Begin::InProgress { .. } | Begin::Completed(_)) => 0,
                    other => panic!("unexpected {other:?}"),
                }
            }));
        }
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(wins, keys.len());
}

/// A store's shared secret, when it keeps one, is the same on every call.
pub async fn shared_secret_is_stable<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, _) = setup!(factory);
    let first = store
        .shared_secret()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = store
        .shared_secret()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.as_ref().map(|s| s.as_bytes().to_vec()),
        second.as_ref().map(|s| s.as_bytes().to_vec())
    );
    // It is not a record: admin counts do not see it.
    let stats = store.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats, idem_core::StoreStats::default());
}

mod time;
pub use self::time::*;
