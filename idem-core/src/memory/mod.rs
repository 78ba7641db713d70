//! `MemoryStore`: an in-process store for one instance and for tests.
//!
//! # Examples
//!
//! ```
//! use idem_core::memory::MemoryStore;
//! let store = MemoryStore::new().with_capacity(10_000).with_max_bytes(64 << 20);
//! assert_eq!(store.capacity(), 10_000);
//! assert_eq!(store.max_bytes(), 64 << 20);
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{deadline_ms, SharedClock, SystemClock};
use crate::fingerprint::Fingerprint;
use crate::record::{Begin, Fence, Record, StoredResponse};
use crate::scope::StoreKey;
use crate::store::{Store, StoreAdmin, StoreError, StoreFuture, StoreStats};

/// Shards, each a lock and a hash table. A table grows by doubling, which
/// moves all its records at once while its lock is held: on a server with
/// one core every request waits that long. With 1,024 shards a growth
/// moves a thousandth of the records (about 3,000 at three million records,
/// well under a millisecond) instead of a sixty-fourth (p99 of first
/// executions went from 6–16 ms to the handler's own; docs/BENCHMARKS.md).
/// Empty shards cost about 64 KiB in all.
const SHARDS: usize = 1024;

mod slot;

use self::slot::Slot;
pub use self::slot::RECORD_OVERHEAD;

/// A concurrent, TTL-expiring, capacity-bounded store in memory.
///
/// Sharding, not a lock-free map: each operation is a read-modify-write of
/// one record that must be atomic (begin's "create or report"), which a
/// per-shard `std::sync::Mutex` gives directly. Critical sections are a hash
/// lookup and never span an `.await`, so a blocking mutex is cheaper than an
/// async one (mini-redis makes the same choice), and 1,024 shards keyed by the
/// HMAC (uniformly distributed) keep contention negligible at any core count
/// this process is likely to have.
///
/// Two hard bounds keep its memory finite, and neither is kept by evicting
/// a live record (evicting an `in_progress` or unexpired `completed` record
/// would let a retry execute twice):
///
/// - **records** ([`with_capacity`](Self::with_capacity)): a new key beyond
///   it is refused with [`StoreError::CapacityExceeded`] after expired
///   records have been purged;
/// - **bytes** ([`with_max_bytes`](Self::with_max_bytes)): the bytes the
///   records account for (a fixed [`RECORD_OVERHEAD`] each, plus each stored
///   answer's body and header bytes). A new key is refused with
///   [`StoreError::BytesExceeded`] once the budget is spent, so nothing
///   executes; an answer that arrives when its body would overrun the budget
///   is stored without its body (`body_omitted`, which a replay reports
///   with `Idempotent-Body-Omitted`, as for an answer over the
///   stored-response limit): the execution happened, so its record must be
///   kept, and this way it costs no more than its headers. Accounted bytes
///   therefore never exceed the budget by more than the headers of the
///   answers completing at that moment, like Redis's `maxmemory` with the
///   `noeviction` policy, but without its overshoot by whole values.
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<StoreKey, Slot, KeyHasher>>]>,
    len: AtomicUsize,
    capacity: usize,
    /// Accounted bytes of all records held (see [`record_bytes`]).
    bytes: AtomicUsize,
    max_bytes: usize,
    clock: SharedClock,
    /// When a full purge may run next (ms): a flood of new keys against a full
    /// store must not turn every refused request into an O(n) scan.
    next_full_purge_ms: AtomicU64,
}

/// Store keys are already uniform HMAC output: hashing them again with SipHash
/// is wasted work, so the first 8 bytes are the hash.
#[derive(Clone, Copy, Default)]
pub(crate) struct KeyHasher;

impl BuildHasher for KeyHasher {
    type Hasher = PrefixHasher;
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

pub(crate) struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // StoreKey derives Hash as a [u8; 32] which writes a length prefix,
        // then the bytes; keep the first 8 bytes of the key itself.
        if bytes.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store on the system clock. The default capacity is 1,000,000
    /// records; bytes are not bounded unless [`with_max_bytes`](Self::with_max_bytes)
    /// sets a budget.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
            capacity: 1_000_000,
            bytes: AtomicUsize::new(0),
            max_bytes: usize::MAX,
            clock: Arc::new(SystemClock),
            next_full_purge_ms: AtomicU64::new(0),
        }
    }

    /// Sets the capacity in records. The default is 1,000,000.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the budget of accounted bytes (see the type's documentation).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Uses `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The capacity in records.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The budget of accounted bytes (`usize::MAX`: none).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes the records held account for, expired ones not yet purged
    /// included.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, HashMap<StoreKey, Slot, KeyHasher>> {
        // The last two bytes pick the shard; the first eight are the hash
        // within it (`KeyHasher`), so the two stay independent.
        let i = u16::from_le_bytes([key.0[30], key.0[31]]) as usize % SHARDS;
        // A poisoned shard only means a panic elsewhere while holding it; the
        // map itself is never left half-updated by our code, so keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for one more record, or says which bound is reached.
    fn reserve(&self) -> Result<(), StoreError> {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| StoreError::CapacityExceeded {
                capacity: self.capacity,
            })?;
        let bytes = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(RECORD_OVERHEAD)
                    .filter(|&n| n <= self.max_bytes)
            });
        if bytes.is_err() {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::BytesExceeded {
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Forgets a record that was removed from its shard.
    fn forget(&self, r: &Slot) {
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(r.bytes(), Ordering::AcqRel);
    }

    fn purge_all(&self, now: u64, limit: usize) -> u64 {
        let mut removed = 0u64;
        for shard in self.shards.iter() {
            if removed as usize >= limit {
                break;
            }
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            let mut budget = limit - removed as usize;
            let mut freed = 0usize;
            map.retain(|_, r| {
                if budget > 0 && !r.is_live(now) {
                    budget -= 1;
                    freed += r.bytes();
                    false
                } else {
                    true
                }
            });
            let n = before - map.len();
            self.len.fetch_sub(n, Ordering::AcqRel);
            self.bytes.fetch_sub(freed, Ordering::AcqRel);
            removed += n as u64;
        }
        removed
    }
}

/// The hot path, answered at once: what [`Store`]'s methods return as
/// ready [`StoreFuture`]s, for callers with no runtime (examples, tests).
impl MemoryStore {
    /// [`Store::begin`], answered at once.
    pub fn begin_now(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let now = self.clock.now_ms();
        // A fence only for a new record: a replay or a duplicate takes none.
        let new_record = || {
            let fence = Fence::generate();
            let slot = Slot::in_progress(*fingerprint, fence, deadline_ms(now, lease));
            (slot, Begin::Started(fence))
        };
        for attempt in 0..2 {
            let mut map = self.shard(key);
            if let Some(existing) = map.get_mut(key) {
                if existing.is_live(now) {
                    return Ok(existing.to_record()?.into_begin(fingerprint, now));
                }
                // Expired lease or TTL: treated as no record (rules 8, 9).
                // Replacing it takes no new room, and frees its answer's.
                self.bytes
                    .fetch_sub(existing.bytes() - RECORD_OVERHEAD, Ordering::AcqRel);
                let (slot, started) = new_record();
                *existing = slot;
                return Ok(started);
            }
            let full = match self.reserve() {
                Ok(()) => {
                    let (slot, started) = new_record();
                    map.insert(*key, slot);
                    return Ok(started);
                }
                Err(full) => full,
            };
            drop(map);
            // Full: purge expired records once (throttled), then try again.
            let next = self.next_full_purge_ms.load(Ordering::Acquire);
            if attempt == 0 && now >= next {
                self.next_full_purge_ms
                    .store(now.saturating_add(1000), Ordering::Release);
                self.purge_all(now, usize::MAX);
                continue;
            }
            return Err(full);
        }
        unreachable!("the second attempt returns")
    }

    /// [`Store::complete`], answered at once.
    pub fn complete_now(
        &self,
        key: &StoreKey,
        fence: Fence,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        // Encoded in an allocation of its own: the slot keeps one allocation
        // per answer, and nothing else alive (a header value sliced from the
        // buffer the body was read into would keep a dropped body's bytes).
        // Before the shard's lock: copying a large body must not hold it.
        let mut answer = slot::encode(response);
        let mut map = self.shard(key);
        match map.get_mut(key) {
            Some(r) if r.fence() == Some(fence) => {
                let body = response.body.len();
                let head = answer.len() - body;
                // Take the answer's bytes from the budget; when its body does
                // not fit, keep the answer without it (see the type's docs).
                let fits = self
                    .bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                        b.checked_add(answer.len()).filter(|&n| n <= self.max_bytes)
                    })
                    .is_ok();
                // An answer with no body has nothing to leave out.
                if !fits && body > 0 {
                    answer = slot::encode(&StoredResponse {
                        status: response.status,
                        headers: response.headers.clone(),
                        body: bytes::Bytes::new(),
                        body_omitted: Some(response.body_omitted.unwrap_or(body as u64)),
                    });
                }
                if !fits {
                    // The head is kept whatever the budget says.
                    self.bytes.fetch_add(answer.len(), Ordering::AcqRel);
                }
                debug_assert!(fits || answer.len() <= head + 8);
                r.complete(answer, deadline_ms(now, ttl));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// [`Store::release`], answered at once.
    pub fn release_now(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let mut map = self.shard(key);
        match map.get(key) {
            Some(r) if r.fence() == Some(fence) => {
                if let Some(r) = map.remove(key) {
                    self.forget(&r);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        StoreFuture::ready(self.begin_now(key, fingerprint, lease))
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let begun = self.begin_now(key, fingerprint, lease)?;
        // Read again only for a replay; a record gone in between gives no
        // expiry, and its answer is replayed all the same.
        let expiry = match begun {
            Begin::Completed(_) => StoreAdmin::get(self, key)
                .await
                .ok()
                .flatten()
                .map(|r| r.deadline_ms()),
            _ => None,
        };
        Ok((begun, expiry))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::ready(self.complete_now(key, fence, response, ttl))
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::ready(self.release_now(key, fence))
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = self.clock.now_ms();
        let mut map = self.shard(key);
        StoreFuture::ready(Ok(map
            .get_mut(key)
            .is_some_and(|r| r.renew(fence, deadline_ms(now, lease)))))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.capacity as u64)
    }
}

#[async_trait]
impl StoreAdmin for MemoryStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let now = self.clock.now_ms();
        let slot = self.shard(key);
        Ok(slot
            .get(key)
            .filter(|r| r.is_live(now))
            .map(Slot::to_record)
            .transpose()?)
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let removed = self.shard(key).remove(key);
        if let Some(r) = &removed {
            self.forget(r);
        }
        Ok(removed.is_some())
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        Ok(self.purge_all(self.clock.now_ms(), limit))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let now = self.clock.now_ms();
        let mut s = StoreStats::default();
        for shard in self.shards.iter() {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for r in map.values() {
                s.count(r.fence().is_some(), r.is_live(now), 1);
            }
        }
        Ok(s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::MemoryStore;
    use crate::fingerprint::{Fingerprint, FingerprintMode};
    use crate::scope::{Secret, StoreKey};

    /// A table grows by moving all its records while its shard's lock is
    /// held; on a one-core server every request waits that long (p99 of
    /// first executions reached 16 ms at three million records with 64
    /// shards). No shard may hold much more than its share.
    #[test]
    fn a_shard_holds_about_a_thousandth_of_the_records() {
        let store = MemoryStore::new();
        let secret = Secret::from_bytes(b"shard-test-secret-0123456789abcdef".to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        let fp = Fingerprint::compute(FingerprintMode::Exact, &http::Method::POST, "/", b"");
        let n = 200_000;
        for i in 0..n {
            let key = StoreKey::derive(&secret, None, &format!("key-{i}"));
            store
                .begin_now(&key, &fp, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let largest = store
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .max()
            .unwrap_or(0);
        assert!(
            largest * 700 <= n,
            "the largest shard holds {largest} of {n} records"
        );
    }
}
