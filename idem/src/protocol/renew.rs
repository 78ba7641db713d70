//! Lease renewal for every running execution of a layer, by one task.
//!
//! A timer per execution would be simpler, but registering and cancelling
//! a timer on every request showed up in the gateway benchmark
//! (docs/BENCHMARKS.md): most executions finish long before
//! their first renewal is due. Registering here is a lock and a slot in a
//! slab (no hashing); one task wakes every few hundred milliseconds and
//! renews what is due.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use idem_core::{Fence, StoreKey};
use tokio::time::Instant;

use super::Route;
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
    entries: Mutex<Slab<Entry>>,
    next_id: AtomicU64,
    running: AtomicBool,
}

/// Entries in reusable slots, each with the id of its registration: a slot
/// is reused, an id never is, so a stale removal cannot take a newer entry.
struct Slab<T> {
    slots: Vec<Option<(u64, T)>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, id: u64, entry: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((id, entry));
                i
            }
            None => {
                self.slots.push(Some((id, entry)));
                self.slots.len() - 1
            }
        }
    }

    /// Removes the entry in `slot` if it is still registration `id`'s.
    fn remove(&mut self, slot: usize, id: u64) -> bool {
        match self.slots.get_mut(slot) {
            Some(s) if s.as_ref().is_some_and(|(i, _)| *i == id) => {
                *s = None;
                self.free.push(slot);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// Keeps an execution's lease renewed until dropped.
pub(crate) struct Registration {
    renewals: Arc<Renewals>,
    slot: usize,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.renewals.lock().remove(self.slot, self.id);
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews `key`'s lease, begun at `begun_at`, every third of it until
    /// the registration is dropped. (The caller's clock reading: one fewer
    /// per execution, a measurable share of a first execution's cost on
    /// machines whose clock reads are slow, as virtual machines' often are.)
    pub(crate) fn register(
        self: &Arc<Self>,
        route: &Route,
        key: StoreKey,
        fence: Fence,
        begun_at: std::time::Instant,
    ) -> Registration {
        let lease = route.policy().lease;
        let period = (lease / 3).max(Duration::from_millis(10));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = self.lock().insert(
            id,
            Entry {
                route: route.clone(),
                key,
                fence,
                period,
                due: Instant::from_std(begun_at) + period,
            },
        );
        if !self.running.swap(true, Ordering::SeqCst) {
            let tick = route.shared.renewal_tick();
            tokio::spawn(run(Arc::downgrade(self), tick));
        }
        Registration {
            renewals: self.clone(),
            slot,
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
        let due: Vec<(usize, u64, Route, StoreKey, Fence)> = r
            .lock()
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, e)| e.as_mut().map(|(id, e)| (slot, *id, e)))
            .filter(|(_, _, e)| e.due <= now)
            .map(|(slot, id, e)| {
                e.due = now + e.period;
                (slot, id, e.route.clone(), e.key, e.fence)
            })
            .collect();
        for (slot, id, route, key, fence) in due {
            // Each in a task of its own: a slow store must not delay the others.
            let renewals = renewals.clone();
            tokio::spawn(async move { renew(renewals, slot, id, route, key, fence).await });
        }
    }
}

async fn renew(
    renewals: Weak<Renewals>,
    slot: usize,
    id: u64,
    route: Route,
    key: StoreKey,
    fence: Fence,
) {
    let shared = &route.shared;
    let lease = route.policy().lease;
    let started = std::time::Instant::now();
    let renewed =
        tokio::time::timeout(shared.store_timeout, shared.store.renew(&key, fence, lease)).await;
    route.metrics().store(StoreOp::Renew, started.elapsed());
    match renewed {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            // Still registered: the key was taken over. Gone: the answer was
            // stored (or the key released) while this renewal was on its way.
            let registered = renewals
                .upgrade()
                .is_some_and(|r| r.lock().remove(slot, id));
            if registered {
                tracing::warn!(key = %key.short(), route = route.name(), "lease lost: another request took this key over; this execution's answer will not be stored");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(key = %key.short(), route = route.name(), error = %e, "lease renewal failed; retrying")
        }
        Err(_) => {
            tracing::warn!(key = %key.short(), route = route.name(), "lease renewal timed out; retrying")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn a_slot_is_reused_and_a_stale_removal_leaves_its_new_entry() {
        let mut slab = Slab::default();
        let a = slab.insert(1, "a");
        let b = slab.insert(2, "b");
        assert_ne!(a, b);
        assert!(slab.remove(a, 1));
        assert!(!slab.remove(a, 1), "removed twice");
        let c = slab.insert(3, "c");
        assert_eq!(c, a, "the free slot is reused");
        assert!(
            !slab.remove(c, 1),
            "registration 1's removal must not take 3's entry"
        );
        assert_eq!(slab.len(), 2);
        assert!(slab.remove(c, 3) && slab.remove(b, 2));
        assert_eq!(slab.len(), 0);
        assert!(!slab.remove(99, 9), "an unknown slot is ignored");
    }
}
