//! The rules about time: deadlines compared as numbers, extreme leases and
//! TTLs, the TTL's end reported by `begin_expiring`, interleavings against
//! the model, and the server's clock deciding on shared stores.

use super::*;

/// Rules 5, 8 and 9 at 100 instants spread over the coming decades: a lease
/// or TTL is alive until its deadline and over after it, whatever the bytes
/// of the two times. A store that compares encoded times other than as
/// numbers (Lua's `<` on strings follows the server's `LC_COLLATE`) fails here.
pub async fn deadlines_order_as_numbers_at_any_instant<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    // A fixed xorshift sequence: the same instants on every run, ascending so
    // that no store sees its clock go back.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut instants: Vec<u64> = (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1_700_000_000_000 + x % 2_500_000_000_000
        })
        .collect();
    instants.sort_unstable();
    let ttl = Duration::from_secs(10);
    for t in instants {
        cfg.manual.set(t);
        let k = key();
        let fence = start(&*store, &k, fp(1)).await;
        cfg.manual.advance(LEASE - Duration::from_millis(1));
        match begin(&*store, &k, fp(1)).await {
            Begin::InProgress { .. } => {}
            other => panic!("at {t} ms a live lease was not in progress: {other:?}"),
        }
        assert!(
            store
                .complete(&k, fence, &response(b"t"), ttl)
                .await
                .unwrap_or(false),
            "at {t} ms the holder could not complete"
        );
        cfg.manual.advance(ttl - Duration::from_millis(1));
        match begin(&*store, &k, fp(1)).await {
            Begin::Completed(_) => {}
            other => panic!("at {t} ms a live record was not replayed: {other:?}"),
        }
        cfg.manual.advance(Duration::from_millis(2));
        match begin(&*store, &k, fp(1)).await {
            Begin::Started(_) => {}
            other => panic!("at {t} ms a record past its TTL was still live: {other:?}"),
        }
    }
}

/// Rules 5 and 9 with the longest durations a configuration can name
/// (`Duration::MAX`): the lease holds and the answer replays. A store that
/// turned such a deadline into a negative number (a cast to `i64`) or a
/// server error (Redis `PX` past its range) would take the key over or fail.
pub async fn huge_lease_and_ttl_are_kept<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    let fence = match store.begin(&k, &fp(1), Duration::MAX).await {
        Ok(Begin::Started(fence)) => fence,
        other => panic!("expected Started, got {other:?}"),
    };
    match store.begin(&k, &fp(1), Duration::MAX).await {
        Ok(Begin::InProgress { .. }) => {}
        other => panic!("a lease of Duration::MAX was not in progress: {other:?}"),
    }
    assert!(
        store.renew(&k, fence, Duration::MAX).await.unwrap_or(false),
        "renewing with Duration::MAX failed"
    );
    assert!(
        store
            .complete(&k, fence, &response(b"kept"), Duration::MAX)
            .await
            .unwrap_or(false),
        "completing with a TTL of Duration::MAX failed"
    );
    cfg.manual.advance(Duration::from_secs(100 * 365 * 86_400));
    // The sweeper must not see it as expired either.
    store
        .purge_expired(1000)
        .await
        .unwrap_or_else(|e| panic!("purge failed: {e}"));
    assert_eq!(
        begin(&*store, &k, fp(1)).await,
        Begin::Completed(response(b"kept"))
    );
    assert!(store.get(&k).await.ok().flatten().is_some());
}

/// `begin_expiring` gives a completed record's expiry (what a local cache
/// keeps its entry until), and none for any other answer.
pub async fn begin_expiring_gives_the_ttl_end<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let (store, cfg) = setup!(factory);
    let k = key();
    let fence = match store.begin_expiring(&k, &fp(1), LEASE).await {
        Ok((Begin::Started(fence), None)) => fence,
        other => panic!("expected Started without an expiry, got {other:?}"),
    };
    match store.begin_expiring(&k, &fp(1), LEASE).await {
        Ok((Begin::InProgress { .. }, None)) => {}
        other => panic!("expected InProgress without an expiry, got {other:?}"),
    }
    cfg.manual.advance(Duration::from_secs(3));
    let completed_at = cfg.manual.now_ms();
    assert!(store
        .complete(&k, fence, &response(b"e"), Duration::from_secs(10))
        .await
        .unwrap_or(false));
    match store.begin_expiring(&k, &fp(1), LEASE).await {
        Ok((Begin::Completed(r), Some(expiry))) => {
            assert_eq!(r, response(b"e"));
            assert_eq!(expiry, completed_at + 10_000);
        }
        other => panic!("expected Completed with its expiry, got {other:?}"),
    }
    match store.begin_expiring(&k, &fp(2), LEASE).await {
        Ok((Begin::Mismatch, None)) => {}
        other => panic!("expected Mismatch without an expiry, got {other:?}"),
    }
}

/// Random interleavings of every operation by several actors agree with the
/// reference model ([`crate::model`]).
pub async fn model_interleavings<F>(factory: F)
where
    F: Fn(StoreConfig) -> Pin<Box<dyn Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>,
{
    let Some((store, config)) = make(&factory, None).await else {
        return;
    };
    crate::model::model_interleavings(store, config).await;
}

/// For a store that keeps time by its server's clock (Redis, PostgreSQL by
/// default): leases and TTLs run out in real time, read from the server,
/// and each is alive until then. Takes about 2.5 s of real time.
pub async fn server_clock_times_leases_and_ttls(store: Arc<dyn StoreAdmin>) {
    let short = Duration::from_millis(800);
    let k = key();
    let fence = match store.begin(&k, &fp(1), short).await {
        Ok(Begin::Started(fence)) => fence,
        other => panic!("expected Started, got {other:?}"),
    };
    match begin_for(&*store, &k, short).await {
        Begin::InProgress { lease_remaining } => {
            assert!(lease_remaining <= short, "{lease_remaining:?}");
            assert!(lease_remaining > short / 2, "{lease_remaining:?}");
        }
        other => panic!("a live lease was not in progress: {other:?}"),
    }
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    // Past the lease: taken over, and the old holder changes nothing.
    let new = match store.begin(&k, &fp(1), short).await {
        Ok(Begin::Started(f)) => f,
        other => panic!("an expired lease was not taken over: {other:?}"),
    };
    assert!(!store
        .complete(&k, fence, &response(b"old"), TTL)
        .await
        .unwrap_or(true));
    assert!(store
        .complete(&k, new, &response(b"new"), short)
        .await
        .unwrap_or(false));
    match store.begin_expiring(&k, &fp(1), short).await {
        Ok((Begin::Completed(r), Some(_))) => assert_eq!(r, response(b"new")),
        other => panic!("a live answer was not replayed: {other:?}"),
    }
    assert!(store.get(&k).await.ok().flatten().is_some());
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    assert!(store.get(&k).await.ok().flatten().is_none());
    match store.begin(&k, &fp(2), short).await {
        Ok(Begin::Started(_)) => {}
        other => panic!("an answer past its TTL was still live: {other:?}"),
    }
}

async fn begin_for(store: &dyn StoreAdmin, k: &StoreKey, lease: Duration) -> Begin {
    store
        .begin(k, &fp(1), lease)
        .await
        .unwrap_or_else(|e| panic!("begin failed: {e}"))
}
