//! The store contract, in two traits as tower-sessions splits its own:
//! [`Store`], the atomic phases a request runs (begin, complete, release,
//! renew), which is all the layer needs; and [`StoreAdmin`], what operators
//! and the conformance suite use besides (read, delete, count, purge, ping).
//!
//! # A store of your own
//!
//! A complete store in one mutex-guarded map. Each method is one atomic
//! step on one key; whether a live record means replay, in progress or
//! mismatch is decided by [`Record::into_begin`], not by the store; the
//! holder's fence guards `complete`, `release` and `renew`; time comes from
//! the [`Clock`](crate::Clock) the store is given. The example then runs part
//! of the conformance suite on it (`idem_testkit::store_conformance!` runs
//! all of it, as each of idem's stores does in its tests).
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex, MutexGuard};
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use idem_core::clock::deadline_ms;
//! use idem_core::{
//!     Begin, Fence, Fingerprint, Record, RecordState, SharedClock, Store, StoreAdmin,
//!     StoreError, StoreFuture, StoreKey, StoreStats, StoredResponse,
//! };
//!
//! struct MapStore {
//!     clock: SharedClock,
//!     records: Mutex<HashMap<StoreKey, Record>>,
//! }
//!
//! impl MapStore {
//!     fn map(&self) -> MutexGuard<'_, HashMap<StoreKey, Record>> {
//!         // A panic elsewhere never leaves the map half-updated.
//!         self.records.lock().unwrap_or_else(|e| e.into_inner())
//!     }
//!
//!     /// The record `key` holds with `fence`, if that fence still holds it.
//!     fn held<'a>(map: &'a mut HashMap<StoreKey, Record>, key: &StoreKey, fence: Fence) -> Option<&'a mut Record> {
//!         map.get_mut(key)
//!             .filter(|r| matches!(r.state, RecordState::InProgress { fence: f, .. } if f == fence))
//!     }
//! }
//!
//! // Each call answers at once: `StoreFuture::ready`, no box and no timer.
//! // A store across a network wraps its round trip in `StoreFuture::pending`.
//! impl Store for MapStore {
//!     fn begin<'a>(&'a self, key: &'a StoreKey, fingerprint: &'a Fingerprint, lease: Duration) -> StoreFuture<'a, Begin> {
//!         let now = self.clock.now_ms();
//!         let mut map = self.map();
//!         StoreFuture::ready(Ok(match map.get(key) {
//!             // A live record: the one decision every store shares (rules 4, 5, 6).
//!             Some(r) if r.is_live(now) => r.clone().into_begin(fingerprint, now),
//!             // None, or an expired lease or TTL, which counts as none (rules 8, 9).
//!             _ => {
//!                 let fence = Fence::generate();
//!                 let state = RecordState::InProgress { fence, lease_until_ms: deadline_ms(now, lease) };
//!                 map.insert(*key, Record { fingerprint: *fingerprint, state });
//!                 Begin::Started(fence)
//!             }
//!         }))
//!     }
//!
//!     fn complete<'a>(&'a self, key: &'a StoreKey, fence: Fence, response: &'a StoredResponse, ttl: Duration) -> StoreFuture<'a, bool> {
//!         let expires_at_ms = deadline_ms(self.clock.now_ms(), ttl);
//!         let mut map = self.map();
//!         StoreFuture::ready(Ok(Self::held(&mut map, key, fence)
//!             .map(|r| r.state = RecordState::Completed { response: response.clone(), expires_at_ms })
//!             .is_some()))
//!     }
//!
//!     fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
//!         let mut map = self.map();
//!         let held = Self::held(&mut map, key, fence).is_some();
//!         if held {
//!             map.remove(key);
//!         }
//!         StoreFuture::ready(Ok(held))
//!     }
//!
//!     fn renew<'a>(&'a self, key: &'a StoreKey, fence: Fence, lease: Duration) -> StoreFuture<'a, bool> {
//!         let until = deadline_ms(self.clock.now_ms(), lease);
//!         let mut map = self.map();
//!         StoreFuture::ready(Ok(Self::held(&mut map, key, fence)
//!             .map(|r| r.state = RecordState::InProgress { fence, lease_until_ms: until })
//!             .is_some()))
//!     }
//!
//!     fn backend(&self) -> &'static str {
//!         "map"
//!     }
//! }
//!
//! // What operators and the conformance suite use besides the hot path.
//! #[async_trait]
//! impl StoreAdmin for MapStore {
//!     async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
//!         let now = self.clock.now_ms();
//!         Ok(self.map().get(key).filter(|r| r.is_live(now)).cloned())
//!     }
//!
//!     async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
//!         Ok(self.map().remove(key).is_some())
//!     }
//!
//!     async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
//!         let now = self.clock.now_ms();
//!         let mut map = self.map();
//!         let expired: Vec<StoreKey> =
//!             map.iter().filter(|(_, r)| !r.is_live(now)).map(|(k, _)| *k).take(limit).collect();
//!         for k in &expired {
//!             map.remove(k);
//!         }
//!         Ok(expired.len() as u64)
//!     }
//!
//!     async fn stats(&self) -> Result<StoreStats, StoreError> {
//!         let now = self.clock.now_ms();
//!         let mut stats = StoreStats::default();
//!         for r in self.map().values() {
//!             stats.count(matches!(r.state, RecordState::InProgress { .. }), r.is_live(now), 1);
//!         }
//!         Ok(stats)
//!     }
//!
//!     async fn ping(&self) -> Result<(), StoreError> {
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use idem_testkit::{suite, StoreConfig};
//! type Made = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Arc<dyn StoreAdmin>>> + Send>>;
//! let factory = |c: StoreConfig| -> Made {
//!     Box::pin(async move {
//!         let store = MapStore { clock: c.clock, records: Mutex::default() };
//!         Some(Arc::new(store) as Arc<dyn StoreAdmin>)
//!     })
//! };
//! suite::replay_after_complete(factory).await;
//! suite::racers_exactly_one_wins(factory).await;
//! suite::fencing_stale_holder_changes_nothing(factory).await;
//! suite::renewal_keeps_lease(factory).await;
//! suite::ttl_expiry(factory).await;
//! suite::mismatch(factory).await;
//! suite::release_allows_retry(factory).await;
//! suite::model_interleavings(factory).await;
//! # });
//! ```
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use idem_core::{fingerprint::Fingerprint, memory::MemoryStore, record::Begin, scope::StoreKey, store::Store};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let key = StoreKey([7; 32]);
//! let fp = Fingerprint([1; 32]);
//! let Begin::Started(fence) = store.begin(&key, &fp, Duration::from_secs(30)).await.unwrap() else { panic!() };
//! assert!(matches!(store.begin(&key, &fp, Duration::from_secs(30)).await.unwrap(), Begin::InProgress { .. }));
//! assert!(store.release(&key, fence).await.unwrap());
//! # });
//! ```

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use crate::fingerprint::Fingerprint;
use crate::record::{Begin, DecodeError, Fence, Record, StoredResponse};
use crate::scope::{Secret, StoreKey};

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What can go wrong in a store. The layer answers all of them with 503
/// (SPEC rule 10) unless fail-open is configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A new key was refused because the store holds its maximum of records.
    /// Live records are never evicted to make room.
    #[error("the idempotency store is full ({capacity} live records); raise its capacity or shorten record TTLs")]
    CapacityExceeded {
        /// The configured capacity.
        capacity: usize,
    },
    /// A new key was refused because the answers a store holds in memory
    /// reached its byte budget. Live records are never evicted to make room.
    #[error("the idempotency store is full ({max_bytes} bytes of records); raise its byte budget (--memory-max-bytes) or shorten record TTLs")]
    BytesExceeded {
        /// The configured budget.
        max_bytes: usize,
    },
    /// The backend could not be reached or failed.
    #[error("the {backend} idempotency store failed: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// A stored record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    /// The store did not answer within the configured time.
    #[error("the idempotency store did not answer within {0:?}")]
    Timeout(Duration),
    /// A completion inside the caller's transaction found the record no
    /// longer held by this execution (its lease ended and a retry took it
    /// over): the transaction must not commit, or the operation would count
    /// twice.
    #[error("this execution no longer holds its idempotency key (its lease ended and a retry took it over); roll the transaction back")]
    LeaseLost,
    /// A recovery point names a phase the operation does not list, or an
    /// operation asked about a phase it does not list.
    #[error("the recovery point names phase `{phase}`, which this operation does not list ({known}); deploy code that knows it, or delete the key (idem keys delete) to run the operation from its start")]
    UnknownPhase {
        /// The phase named.
        phase: String,
        /// The phases the operation lists.
        known: String,
    },
}

impl StoreError {
    /// Wraps a backend error, keeping it as the source.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }
}

/// Counts of records by state, for `idem keys stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live `in_progress` records.
    pub in_progress: u64,
    /// Live `completed` records.
    pub completed: u64,
    /// Records past their deadline, not yet purged.
    pub expired: u64,
}

impl StoreStats {
    /// Counts `n` records that are in progress (or completed) and live (or
    /// past their deadline).
    pub fn count(&mut self, in_progress: bool, live: bool, n: u64) {
        match (in_progress, live) {
            (_, false) => self.expired += n,
            (true, true) => self.in_progress += n,
            (false, true) => self.completed += n,
        }
    }
}

/// A place to keep idempotency records.
///
/// Each method is one atomic operation on one key. `begin` in particular is a
/// single step that either creates an `in_progress` record or reports the live
/// one: never a check followed by an act, so exactly one of many concurrent
/// callers can win. `complete`, `release` and `renew` take the holder's fence
/// and change nothing when it is stale (the lease expired and someone else
/// took over: SPEC rule 8).
///
/// [`idem_testkit::store_conformance!`] is the executable definition of this
/// contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Starts an execution for `key`, or reports the live record.
    ///
    /// No live record (none, an expired lease, or an expired TTL): create one
    /// `in_progress` with a new fence and a lease of `lease`, return `Started`.
    /// A live record with another fingerprint: `Mismatch`. A live one with the
    /// same fingerprint: `InProgress` or `Completed`.
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin>;

    /// [`begin`](Self::begin), with the record's expiry (ms since the epoch)
    /// when it reports one `Completed`: what a cache in front of the store
    /// needs so that its entry never outlives the record.
    ///
    /// The default gives no expiry: a [`CachedStore`](crate::cache::CachedStore)
    /// in front replays such an answer all the same and just does not keep
    /// it. A store that reads the record's deadline in `begin` returns it
    /// from that one read.
    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        Ok((self.begin(key, fingerprint, lease).await?, None))
    }

    /// Stores the response of the holder of `fence`, kept for `ttl` from now.
    /// Returns `false` (changing nothing) when `fence` no longer holds the key.
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Removes the record held by `fence`, so a retry executes again.
    /// Returns `false` (changing nothing) when `fence` no longer holds the key.
    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool>;

    /// Extends the lease of the holder of `fence` to `lease` from now.
    /// Returns `false` when `fence` no longer holds the key.
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool>;

    /// The backend's name for metrics and logs: `memory`, `sqlite`, ….
    fn backend(&self) -> &'static str;

    /// The most records this store holds, when it is bounded (memory,
    /// SQLite); `None` (the default) for stores bounded by their server.
    /// The layer keeps one scope from taking more than its share of it.
    fn capacity(&self) -> Option<u64> {
        None
    }

    /// A secret kept in the store itself, created by the first instance that
    /// asks and read by every other, so instances sharing a store agree on
    /// store keys without configuration. `None` (the default) for stores that
    /// keep none. A configured secret file is the better choice in
    /// production: it keeps the secret away from the records it protects.
    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        Ok(None)
    }
}

/// What operators and tests do to a store besides the hot path: read a
/// record, delete one, count them, purge the expired, check the store
/// answers. The gateway's admin API, `idem keys`, the sweeper and the
/// readiness probe use it; the layer never does.
///
/// A `StoreAdmin` is a [`Store`], so one `Arc<dyn StoreAdmin>` serves both:
/// `Arc<dyn StoreAdmin>` coerces to `Arc<dyn Store>` where the layer wants
/// one.
#[async_trait]
pub trait StoreAdmin: Store {
    /// The live record for `key`, if any.
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError>;

    /// Removes the record for `key` whatever its state (admin use).
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError>;

    /// Removes up to `limit` expired records; returns how many were removed.
    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError>;

    /// Counts records by state.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Checks that the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a hot-path call of a [`Store`] gives back: the answer itself, when
/// the store had it at once (an in-process store such as
/// [`MemoryStore`](crate::memory::MemoryStore), a cache hit), or a future
/// to await (a store across a network).
///
/// One type for both, so the layer awaits every store the same way and a
/// store that answers at once costs neither a boxed future nor a timer:
/// [`into_ready`](Self::into_ready) takes such an answer without polling.
///
/// The layer may drop a pending answer unpolled and make the same call
/// again from a task of its own, where it can wait and retry: keep the
/// store's work inside the future (an `async` block, as
/// [`StoreFuture::pending`] takes, does nothing until polled), and what is
/// done before returning it safe to repeat.
///
/// # Examples
///
/// ```
/// use idem_core::{StoreError, StoreFuture};
///
/// let at_once: StoreFuture<'_, bool> = StoreFuture::ready(Ok(true));
/// assert!(matches!(at_once.into_ready(), Ok(Ok(true))));
///
/// let later: StoreFuture<'_, bool> = StoreFuture::pending(async { Ok(false) });
/// assert!(later.into_ready().is_err());
/// ```
#[must_use = "a store call does nothing until it is awaited"]
pub struct StoreFuture<'a, T>(Inner<'a, T>);

enum Inner<'a, T> {
    /// The answer, taken by the first poll.
    Ready(Option<Result<T, StoreError>>),
    /// The store's work, boxed: trait objects need one future type.
    Pending(Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// An answer the store has already.
    pub fn ready(answer: Result<T, StoreError>) -> Self {
        Self(Inner::Ready(Some(answer)))
    }

    /// Work still to do, such as a round trip to a server.
    pub fn pending(work: impl Future<Output = Result<T, StoreError>> + Send + 'a) -> Self {
        Self(Inner::Pending(Box::pin(work)))
    }

    /// The answer when the store had it at once; otherwise the future
    /// back, not yet polled.
    pub fn into_ready(self) -> Result<Result<T, StoreError>, Self> {
        match self.0 {
            Inner::Ready(Some(answer)) => Ok(answer),
            inner => Err(Self(inner)),
        }
    }
}

// Neither variant is self-referential: the answer sits in an `Option`, the
// pending work behind a pinned box.
impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Ready(answer) => match answer.take() {
                Some(answer) => Poll::Ready(answer),
                None => panic!("a StoreFuture was polled after it answered"),
            },
            Inner::Pending(work) => work.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Ready(_) => "StoreFuture::Ready",
            Inner::Pending(_) => "StoreFuture::Pending",
        })
    }
}

/// A shared store is a store, so wrappers such as
/// [`CachedStore`](crate::cache::CachedStore) take one.
#[async_trait]
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fp: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        (**self).begin(key, fp, lease)
    }
    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        (**self).begin_expiring(key, fp, lease).await
    }
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        r: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).complete(key, fence, r, ttl)
    }
    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        (**self).release(key, fence)
    }
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).renew(key, fence, lease)
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn capacity(&self) -> Option<u64> {
        (**self).capacity()
    }
    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        (**self).shared_secret().await
    }
}

#[async_trait]
impl<T: StoreAdmin + ?Sized> StoreAdmin for std::sync::Arc<T> {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        (**self).get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        (**self).delete(key).await
    }
    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        (**self).purge_expired(limit).await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        (**self).stats().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        (**self).ping().await
    }
}
