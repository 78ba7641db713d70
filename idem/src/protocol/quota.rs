//! One scope's share of a bounded store: a client flooding new keys (the
//! anonymous scope included) must not fill the store for everyone. Past its
//! share a scope's new keys get 429 `idempotency-scope-full`; its replays,
//! and every other scope's requests, go on as before.
//!
//! Counted by the layer, per instance: the store sees only HMACs of (scope,
//! key), so it cannot tell scopes apart. A record counts from the `begin`
//! that made it until its key is released or its TTL ends (when the TTL
//! ends is known here: the answer was stored with the route's TTL).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Scope tags: hashes of the scope's bytes under a per-process random key.
/// Two scopes that collide share a count (one chance in 2^64), and the tags
/// say nothing about the scopes (often credentials).
pub(super) struct ScopeTags {
    hasher: RandomState,
    /// Most requests carry no scope: its tag is hashed once, not per request.
    anonymous: u64,
}

impl ScopeTags {
    pub(super) fn new() -> Self {
        let hasher = RandomState::new();
        let anonymous = hasher.hash_one(0u8);
        Self { hasher, anonymous }
    }

    /// The tag of `scope` (`None`: the anonymous scope, which no header
    /// value can collide with by construction).
    pub(super) fn tag(&self, scope: Option<&[u8]>) -> u64 {
        match scope {
            None => self.anonymous,
            Some(s) => self.hasher.hash_one((1u8, s)),
        }
    }
}

/// Maps keyed by tags hash them as they are: a tag is already a keyed hash,
/// so hashing it again (SipHash, ~140 instructions per lookup) adds nothing,
/// and without the key a client cannot aim tags at one bucket.
pub(super) type TagMap<V> = HashMap<u64, V, BuildHasherDefault<TagHasher>>;

#[derive(Default)]
pub(super) struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps any other input sound.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Records per scope, and when each completed one stops counting.
pub(crate) struct ScopeQuota {
    /// The most records one scope may hold.
    max: usize,
    tags: ScopeTags,
    started: Instant,
    // One lock: held for a map update, never across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: TagMap<usize>,
    /// Second (since `started`) → the tags whose records stop counting then.
    expiring: BTreeMap<u64, Vec<u64>>,
}

impl ScopeQuota {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            tags: ScopeTags::new(),
            started: Instant::now(),
            state: Mutex::default(),
        }
    }

    /// The most records one scope may hold.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The tag of `scope` (`None`: the anonymous scope).
    pub(crate) fn tag(&self, scope: Option<&[u8]>) -> u64 {
        self.tags.tag(scope)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_s(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.started)
            .as_secs()
    }

    /// Counts one more record for `tag`; `false` (and nothing counted) when
    /// the scope already holds its share.
    pub(crate) fn take(&self, tag: u64) -> bool {
        let now = self.now_s();
        let mut state = self.lock();
        state.expire(now);
        let held = state.held.entry(tag).or_default();
        if *held >= self.max {
            return false;
        }
        *held += 1;
        true
    }

    /// A record of `tag` is gone (its key was released).
    pub(crate) fn give_back(&self, tag: u64) {
        self.lock().forget(tag);
    }

    /// A record of `tag` was completed: it counts until `ttl` from now.
    pub(crate) fn expire_after(&self, tag: u64, ttl: Duration) {
        // Rounded up: a record never stops counting before its TTL ends.
        let at = self.now_s().saturating_add(ttl.as_secs()).saturating_add(1);
        self.lock().expiring.entry(at).or_default().push(tag);
    }
}

impl State {
    fn forget(&mut self, tag: u64) {
        if let Some(n) = self.held.get_mut(&tag) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&tag);
            }
        }
    }

    fn expire(&mut self, now_s: u64) {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > now_s {
                break;
            }
            for tag in entry.remove() {
                self.forget(tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ScopeQuota;

    #[tokio::test(start_paused = true)]
    async fn a_scope_holds_its_share_until_its_records_go() {
        let q = ScopeQuota::new(2);
        let (a, b) = (q.tag(Some(b"alice")), q.tag(None));
        assert_ne!(a, b);
        assert!(q.take(a) && q.take(a));
        assert!(!q.take(a), "a third record for alice");
        assert!(q.take(b), "another scope is not affected");
        q.give_back(a);
        assert!(q.take(a), "a released key gives its place back");
        q.expire_after(a, Duration::from_secs(10));
        assert!(!q.take(a));
        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(q.take(a), "an expired record gives its place back");
    }
}
