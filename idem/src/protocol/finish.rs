//! After the execution: its answer stored (`complete`) or its key released
//! (rule 7), at once when the store answers at once (a store of this
//! process), or with brief retries when it waits (a store across a network)
//! so that a blip does not leave the key in progress.

use std::time::Duration;

use http::Response;
use idem_core::{Fence, StoreError, StoreKey, StoredResponse};

use super::execute::Answer;
use super::renew::Registration;
use super::Route;
use crate::layer::ResponseBody;
use crate::metrics::StoreOp;

/// Stores the answer in a remote store, or releases the key; returns the
/// client's response.
pub(super) async fn finish_remote<B, E>(
    route: Route,
    key: StoreKey,
    fence: Fence,
    answer: Answer<B, E>,
    finished: std::time::Instant,
    renewed: Registration,
) -> Result<Response<ResponseBody<B>>, E> {
    // The lease stays renewed until the store has the answer (or the key is
    // released): `complete`'s retries may outlast a short lease.
    let _renewed = renewed;
    match answer {
        Answer::Store(stored, res) => {
            complete(&route, &key, fence, stored, finished).await;
            Ok(res)
        }
        Answer::Release(result) => {
            release(&route, &key, fence).await;
            result
        }
        Answer::Stored(res) => Ok(res),
    }
}

/// The store's answer to `complete`, counted and logged.
fn completed(route: &Route, key: &StoreKey, done: Result<bool, StoreError>) {
    match done {
        Ok(true) => {}
        Ok(false) => {
            route.metrics().lease_lost();
            tracing::warn!(key = %key.short(), route = route.name(), "execution finished after its lease was taken over; its answer was not stored")
        }
        Err(e) => {
            route.metrics().answer_not_stored();
            tracing::error!(key = %key.short(), route = route.name(), error = %e, "could not store the answer; the key stays in progress until its lease ends")
        }
    }
}

/// Stores the answer when the store answers at once (an in-process store);
/// `false` when it would wait, and the caller then finishes with
/// [`finish_remote`], which can retry. Not retried here: with nothing in
/// between to recover, a second try would fail the same way.
pub(super) fn complete_at_once(
    route: &Route,
    key: &StoreKey,
    fence: Fence,
    stored: &StoredResponse,
    started: std::time::Instant,
) -> bool {
    let ttl = route.policy().ttl;
    match route
        .shared
        .store
        .complete(key, fence, stored, ttl)
        .into_ready()
    {
        Ok(done) => {
            route.metrics().store(StoreOp::Complete, started.elapsed());
            completed(route, key, done);
            true
        }
        // Dropped unpolled: `finish_remote` calls again where it can wait.
        Err(_pending) => false,
    }
}

/// The store's answer to a `release` made at once, logged when it failed.
fn released(route: &Route, key: &StoreKey, done: Result<bool, StoreError>) {
    if let Err(e) = done {
        tracing::warn!(key = %key.short(), route = route.name(), error = %e, "releasing the key failed; it is freed when its lease ends");
    }
}

/// Releases the key when the store answers at once; `false` when it would
/// wait (the caller then runs [`release`]). Not retried, as above: the
/// lease frees the key in the end.
pub(super) fn release_at_once(route: &Route, key: &StoreKey, fence: Fence) -> bool {
    let started = std::time::Instant::now();
    match route.shared.store.release(key, fence).into_ready() {
        Ok(done) => {
            route.metrics().store(StoreOp::Release, started.elapsed());
            released(route, key, done);
            true
        }
        Err(_pending) => false,
    }
}

/// Stores the answer, retrying briefly: a store blip here must not leave the
/// key in progress until its lease ends. `started` is when the execution
/// ended (one clock reading serves both).
pub(super) async fn complete(
    route: &Route,
    key: &StoreKey,
    fence: Fence,
    stored: StoredResponse,
    mut started: std::time::Instant,
) {
    let shared = &route.shared;
    let ttl = route.policy().ttl;
    let stored = &stored;
    for attempt in 0..3u32 {
        if attempt > 0 {
            started = std::time::Instant::now();
        }
        let done = match shared.store.complete(key, fence, stored, ttl).into_ready() {
            // At once: the answer is final (see `complete_at_once`).
            Ok(done) => {
                route.metrics().store(StoreOp::Complete, started.elapsed());
                return completed(route, key, done);
            }
            Err(pending) => tokio::time::timeout(shared.store_timeout, pending).await,
        };
        route.metrics().store(StoreOp::Complete, started.elapsed());
        match done {
            Ok(Ok(stored)) => return completed(route, key, Ok(stored)),
            Ok(Err(e)) => {
                tracing::warn!(key = %key.short(), route = route.name(), error = %e, attempt, "storing the answer failed")
            }
            Err(_) => {
                tracing::warn!(key = %key.short(), route = route.name(), attempt, "storing the answer timed out")
            }
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
    route.metrics().answer_not_stored();
    tracing::error!(key = %key.short(), route = route.name(), "could not store the answer; the key stays in progress until its lease ends");
}

/// Removes the record so a retry executes again (rule 7), retrying briefly;
/// if the store stays down the lease ends on its own.
pub(crate) async fn release(route: &Route, key: &StoreKey, fence: Fence) {
    let shared = &route.shared;
    for attempt in 0..3u32 {
        let started = std::time::Instant::now();
        let done = match shared.store.release(key, fence).into_ready() {
            // At once: the answer is final (see `release_at_once`).
            Ok(done) => {
                route.metrics().store(StoreOp::Release, started.elapsed());
                return released(route, key, done);
            }
            Err(pending) => tokio::time::timeout(shared.store_timeout, pending).await,
        };
        route.metrics().store(StoreOp::Release, started.elapsed());
        match done {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::warn!(key = %key.short(), route = route.name(), error = %e, attempt, "releasing the key failed")
            }
            Err(_) => {
                tracing::warn!(key = %key.short(), route = route.name(), attempt, "releasing the key timed out")
            }
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
}
