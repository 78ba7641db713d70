//! After the execution: its answer stored (`complete`) or its key released
//! (rule 7), in a store of this process at once, or in a remote store with
//! brief retries so that a blip does not leave the key in progress.

use std::time::Duration;

use http::Response;
use idem_core::{Fence, LocalStore, StoreKey, StoredResponse};

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

/// Stores the answer in a store of this process: nothing to wait for and
/// no blip to retry past; the answer moves into the store.
pub(super) fn complete_local(
    route: &Route,
    local: &dyn LocalStore,
    key: &StoreKey,
    fence: Fence,
    stored: StoredResponse,
    started: std::time::Instant,
) {
    let done = local.complete_now(key, fence, stored, route.policy().ttl);
    route.metrics().store(StoreOp::Complete, started.elapsed());
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

/// Removes the record in a store of this process (rule 7). Not retried: with
/// nothing in between to recover, a second try would fail the same way, and
/// the lease frees the key in the end.
pub(super) fn release_local(route: &Route, local: &dyn LocalStore, key: &StoreKey, fence: Fence) {
    let started = std::time::Instant::now();
    let done = local.release_now(key, fence);
    route.metrics().store(StoreOp::Release, started.elapsed());
    if let Err(e) = done {
        tracing::warn!(key = %key.short(), route = route.name(), error = %e, "releasing the key failed; it is freed when its lease ends");
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
    if let Some(local) = shared.store.local() {
        return complete_local(route, local, key, fence, stored, started);
    }
    let stored = &stored;
    for attempt in 0..3u32 {
        if attempt > 0 {
            started = std::time::Instant::now();
        }
        let done = tokio::time::timeout(
            shared.store_timeout,
            shared.store.complete(key, fence, stored, ttl),
        )
        .await;
        route.metrics().store(StoreOp::Complete, started.elapsed());
        match done {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) => {
                route.metrics().lease_lost();
                tracing::warn!(key = %key.short(), route = route.name(), "execution finished after its lease was taken over; its answer was not stored");
                return;
            }
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
    if let Some(local) = shared.store.local() {
        return release_local(route, local, key, fence);
    }
    for attempt in 0..3u32 {
        let started = std::time::Instant::now();
        let done =
            tokio::time::timeout(shared.store_timeout, shared.store.release(key, fence)).await;
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
