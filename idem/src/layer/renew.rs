//! Lease renewal for every running execution of a layer, by one task.
//!
//! A timer per execution would be simpler, but registering and cancelling
//! a timer on every request showed up in the gateway benchmark (about a
//! tenth of first-execution throughput): most executions finish long before
//! their first renewal is due. Registering here is a lock and a map insert;
//! one task wakes every few hundred milliseconds and renews what is due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use idem_core::{Fence, StoreKey};
use tokio::time::Instant;

use super::service::Route;
use crate::metrics::StoreOp;

struct Entry {
    route: Route,
    key: StoreKey,
    fence: Fence,
    period: Duration,
    due: Instant,
}

/// The executions whose leases are kept alive.
#[derive(Default)]
pub(crate) struct Renewals {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    running: AtomicBool,
}

/// Keeps an execution's lease renewed until dropped.
pub(crate) struct Registration {
    renewals: Arc<Renewals>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.renewals.lock().remove(&self.id);
    }
}

/// Resets `running` when the renewal task ends, even when its runtime drops
/// it, so the next registration starts another.
struct RunningFlag(Weak<Renewals>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        if let Some(r) = self.0.upgrade() {
            r.running.store(false, Ordering::SeqCst);
        }
    }
}

impl Renewals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews `key`'s lease every third of it until the registration is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        route: &Route,
        key: StoreKey,
        fence: Fence,
    ) -> Registration {
        let lease = route.policy().lease;
        let period = (lease / 3).max(Duration::from_millis(10));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                route: route.clone(),
                key,
                fence,
                period,
                due: Instant::now() + period,
            },
        );
        if !self.running.swap(true, Ordering::SeqCst) {
            let tick = route.shared.renewal_tick();
            tokio::spawn(run(Arc::downgrade(self), tick));
        }
        Registration {
            renewals: self.clone(),
            id,
        }
    }
}

async fn run(renewals: Weak<Renewals>, tick: Duration) {
    let _flag = RunningFlag(renewals.clone());
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(r) = renewals.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<(u64, Route, StoreKey, Fence)> = r
            .lock()
            .iter_mut()
            .filter(|(_, e)| e.due <= now)
            .map(|(id, e)| {
                e.due = now + e.period;
                (*id, e.route.clone(), e.key, e.fence)
            })
            .collect();
        for (id, route, key, fence) in due {
            // Each in a task of its own: a slow store must not delay the others.
            let renewals = renewals.clone();
            tokio::spawn(async move { renew(renewals, id, route, key, fence).await });
        }
    }
}

async fn renew(renewals: Weak<Renewals>, id: u64, route: Route, key: StoreKey, fence: Fence) {
    let shared = &route.shared;
    let lease = route.policy().lease;
    let started = std::time::Instant::now();
    let renewed =
        tokio::time::timeout(shared.store_timeout, shared.store.renew(&key, fence, lease)).await;
    route.metrics().store(StoreOp::Renew, started.elapsed());
    match renewed {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::warn!(key = %key.short(), "lease lost: another request took this key over; this execution's answer will not be stored");
            if let Some(r) = renewals.upgrade() {
                r.lock().remove(&id);
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(key = %key.short(), error = %e, "lease renewal failed; retrying")
        }
        Err(_) => tracing::warn!(key = %key.short(), "lease renewal timed out; retrying"),
    }
}
