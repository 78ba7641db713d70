//! `CachedStore`: a bounded local cache of completed records in front of a
//! remote store, so replays of hot keys skip the network.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use idem_core::{cache::CachedStore, MemoryStore, SystemClock};
//!
//! // In practice the inner store is Redis or PostgreSQL.
//! let store = CachedStore::new(MemoryStore::new(), Arc::new(SystemClock))
//!     .capacity(10_000)
//!     .max_age(Duration::from_secs(60));
//! ```
//!
//! Only completed records are cached: they never change until they expire,
//! so a cached answer is the stored answer. An entry is dropped at the
//! record's own expiry, at `max_age` (whichever is first), when this instance
//! releases or deletes the key, and when the cache is full (an arbitrary
//! entry makes room: a miss only costs a round trip). A record deleted through
//! *another* instance can still be replayed here until `max_age` runs out;
//! keep `max_age` short where admin deletes must take effect at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{deadline_ms, SharedClock};
use crate::fingerprint::Fingerprint;
use crate::memory::KeyHasher;
use crate::record::{Begin, Fence, Record, RecordState, StoredResponse};
use crate::scope::{Secret, StoreKey};
use crate::store::{Store, StoreAdmin, StoreError, StoreFuture, StoreStats};

const SHARDS: usize = 64;

/// A store wrapped with a local cache of completed records.
pub struct CachedStore<S> {
    inner: S,
    clock: SharedClock,
    // Keyed like MemoryStore: store keys are uniform HMAC output, so their
    // first bytes are the hash (no SipHash on the replay path).
    shards: Box<[Mutex<HashMap<StoreKey, Record, KeyHasher>>]>,
    /// Entries held, across shards; reserved before an insert so the total
    /// never passes `capacity`.
    len: AtomicUsize,
    /// Requests answered from the cache, for metrics.
    hits: AtomicU64,
    capacity: usize,
    max_age: Duration,
    max_body: usize,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("capacity", &self.capacity)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<S: Store> CachedStore<S> {
    /// Caches `inner`'s completed records, reading time from `clock` (the
    /// same clock as the store's). The default capacity is 10,000 entries, the
    /// default max age 60 s, and bodies over 64 KiB are not cached.
    pub fn new(inner: S, clock: SharedClock) -> Self {
        Self {
            inner,
            clock,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            capacity: 10_000,
            max_age: Duration::from_secs(60),
            max_body: 64 << 10,
        }
    }

    /// Sets the most entries held. The default is 10,000.
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Sets the longest an entry is kept. The default is 60 s.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets the largest body cached, in bytes. The default is 64 KiB.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Requests answered from the cache so far (never counted twice, never
    /// reset).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &StoreKey) -> &Mutex<HashMap<StoreKey, Record, KeyHasher>> {
        &self.shards[key.0[31] as usize % SHARDS]
    }

    fn forget(&self, key: &StoreKey) {
        if lock(self.shard(key)).remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn remember(&self, key: &StoreKey, record: Record, now: u64) {
        let RecordState::Completed {
            response,
            expires_at_ms,
        } = record.state
        else {
            return;
        };
        if response.body.len() > self.max_body {
            return;
        }
        let until_ms = expires_at_ms.min(deadline_ms(now, self.max_age));
        let mut shard = lock(self.shard(key));
        if !shard.contains_key(key) && !self.reserve() {
            // Full: drop this shard's expired entries, else one entry of it
            // (a miss only costs a round trip), and take its place.
            let before = shard.len();
            shard.retain(|_, e| e.is_live(now));
            if shard.len() == before {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
            let freed = before - shard.len();
            if freed == 0 {
                return; // nothing of this shard to give up: do not cache
            }
            // One freed slot is taken by this entry.
            self.len.fetch_sub(freed - 1, Ordering::AcqRel);
        }
        shard.insert(
            *key,
            Record {
                fingerprint: record.fingerprint,
                state: RecordState::Completed {
                    response,
                    expires_at_ms: until_ms,
                },
            },
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Never left half-updated by a panic here: keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: Store> CachedStore<S> {
    /// The cached answer for `key`, with its expiry when it is a replay;
    /// `None` on a miss (an expired entry is dropped on the way).
    fn lookup(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> Option<(Begin, Option<u64>)> {
        let mut shard = lock(self.shard(key));
        match shard.get(key) {
            Some(e) if e.is_live(now) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let begun = e.clone().into_begin(fingerprint, now);
                let expiry = matches!(begun, Begin::Completed(_)).then(|| e.deadline_ms());
                Some((begun, expiry))
            }
            Some(_) => {
                shard.remove(key);
                self.len.fetch_sub(1, Ordering::AcqRel);
                None
            }
            None => None,
        }
    }

    /// Asks the store, and keeps a completed answer until the record's own
    /// expiry.
    ///
    /// Without an expiry (the store could not say), the answer is replayed
    /// all the same and just not cached: a record the store reported
    /// completed never executes again, and a failed follow-up read is not
    /// an error (which fail-open would have executed).
    async fn miss(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        now: u64,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let (outcome, expiry) = self.inner.begin_expiring(key, fingerprint, lease).await?;
        if let (Begin::Completed(response), Some(expires_at_ms)) = (&outcome, expiry) {
            let record = Record {
                fingerprint: *fingerprint,
                state: RecordState::Completed {
                    response: response.clone(),
                    expires_at_ms,
                },
            };
            self.remember(key, record, now);
        }
        Ok((outcome, expiry))
    }
}

#[async_trait]
impl<S: Store> Store for CachedStore<S> {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        // A hit answers at once (no box, no timer): the replay of a hot key
        // costs a shard lock and a clone.
        let now = self.clock.now_ms();
        if let Some(hit) = self.lookup(key, fingerprint, now) {
            return StoreFuture::ready(Ok(hit.0));
        }
        StoreFuture::pending(async move { Ok(self.miss(key, fingerprint, lease, now).await?.0) })
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let now = self.clock.now_ms();
        match self.lookup(key, fingerprint, now) {
            Some(hit) => Ok(hit),
            None => self.miss(key, fingerprint, lease, now).await,
        }
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.complete(key, fence, response, ttl)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        self.forget(key);
        self.inner.release(key, fence)
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.renew(key, fence, lease)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capacity(&self) -> Option<u64> {
        self.inner.capacity()
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        self.inner.shared_secret().await
    }
}

#[async_trait]
impl<S: StoreAdmin> StoreAdmin for CachedStore<S> {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.forget(key);
        self.inner.delete(key).await
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, e| e.is_live(now));
            self.len.fetch_sub(before - shard.len(), Ordering::AcqRel);
        }
        self.inner.purge_expired(limit).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
