//! [`Faulty`]: a store that passes every call to another, with the faults a
//! test switches on (a failing read, a slow `complete`, a silent server).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use idem_core::MemoryStore;
//! use idem_testkit::faulty::Faulty;
//!
//! let store = Faulty::new(MemoryStore::new()).complete_delay(Duration::from_millis(500));
//! ```

use std::time::Duration;

use async_trait::async_trait;
use idem_core::{
    Begin, Fence, Fingerprint, Record, Secret, Store, StoreAdmin, StoreError, StoreFuture,
    StoreKey, StoreStats, StoredResponse,
};

/// A store that forwards to `inner`, with faults. Its answers are never
/// ready at once (each is a pending [`StoreFuture`]), so the layer treats it
/// as a remote store: timeouts, retries and boxed futures, as with Redis or
/// PostgreSQL.
pub struct Faulty<S> {
    inner: S,
    get_fails: bool,
    complete_delay: Duration,
    silent: bool,
}

impl<S> Faulty<S> {
    /// `inner` with no fault yet.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            get_fails: false,
            complete_delay: Duration::ZERO,
            silent: false,
        }
    }

    /// `get` fails (a blip between two round trips), and `begin_expiring`
    /// cannot say when a completed record expires.
    pub fn get_fails(mut self) -> Self {
        self.get_fails = true;
        self
    }

    /// `complete` takes this long before it stores the answer.
    pub fn complete_delay(mut self, delay: Duration) -> Self {
        self.complete_delay = delay;
        self
    }

    /// `ping` and `shared_secret` never answer: a server that accepts
    /// connections and says nothing.
    pub fn silent(mut self) -> Self {
        self.silent = true;
        self
    }
}

#[async_trait]
impl<S: Store> Store for Faulty<S> {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        StoreFuture::pending(async move { self.inner.begin(key, fingerprint, lease).await })
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let (begun, expiry) = self.inner.begin_expiring(key, fingerprint, lease).await?;
        // With reads failing, the store cannot say when a record expires.
        Ok((begun, expiry.filter(|_| !self.get_fails)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            if !self.complete_delay.is_zero() {
                tokio::time::sleep(self.complete_delay).await;
            }
            self.inner.complete(key, fence, response, ttl).await
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move { self.inner.release(key, fence).await })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move { self.inner.renew(key, fence, lease).await })
    }

    fn backend(&self) -> &'static str {
        "faulty"
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        if self.silent {
            std::future::pending::<()>().await;
        }
        self.inner.shared_secret().await
    }
}

#[async_trait]
impl<S: StoreAdmin> StoreAdmin for Faulty<S> {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        if self.get_fails {
            return Err(StoreError::Timeout(Duration::from_secs(2)));
        }
        self.inner.get(key).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        self.inner.purge_expired(limit).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.silent {
            std::future::pending::<()>().await;
        }
        self.inner.ping().await
    }
}

/// A store whose every call fails as an unreachable server's would
/// (connection refused): what rule 10 is about. It keeps no shared secret,
/// so a layer over it falls back to its own and the failure shows where
/// requests meet the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unreachable;

impl Unreachable {
    fn refused<T>() -> Result<T, StoreError> {
        Err(StoreError::backend(
            "unreachable",
            std::io::Error::other("connection refused"),
        ))
    }
}

#[async_trait]
impl Store for Unreachable {
    fn begin<'a>(
        &'a self,
        _: &'a StoreKey,
        _: &'a Fingerprint,
        _: Duration,
    ) -> StoreFuture<'a, Begin> {
        StoreFuture::pending(async move { Self::refused() })
    }
    fn complete<'a>(
        &'a self,
        _: &'a StoreKey,
        _: Fence,
        _: &'a StoredResponse,
        _: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move { Self::refused() })
    }
    fn release<'a>(&'a self, _: &'a StoreKey, _: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move { Self::refused() })
    }
    fn renew<'a>(&'a self, _: &'a StoreKey, _: Fence, _: Duration) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move { Self::refused() })
    }
    fn backend(&self) -> &'static str {
        "unreachable"
    }
}
