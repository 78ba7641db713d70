//! Rules 3 to 9: what the store's answer to `begin` means for this request.
//!
//! The store decides atomically (rule 3: one racer wins) and treats an
//! expired lease or TTL as no record (rules 8 and 9); here its answer
//! becomes the next step: execute, replay (4), refuse as in progress (5) or
//! reused (6), nap and ask again (the route's opt-in wait mode), or handle
//! a store failure (10).

use std::time::Duration;

use idem_core::{Begin, Fence, Problem, StoreError, StoredResponse};
use tokio::time::Instant;

use super::refusal;

/// The next step after one `begin`.
pub(super) enum Next {
    /// This request holds the key and executes.
    Execute(Fence),
    /// A completed record with this request's fingerprint.
    Replay(StoredResponse),
    /// In progress with no wait left, or another request's key.
    Refuse(Problem),
    /// In progress, and the route waits: ask again after this long.
    Nap(Duration),
    /// The store failed.
    StoreFailed(StoreError),
}

/// The step `begun` calls for. `wait_until` is the end of the route's wait
/// (none: refuse at once); `poll` is the current back-off between asks.
pub(super) fn next(
    begun: Result<Begin, StoreError>,
    wait_until: Option<Instant>,
    poll: Duration,
) -> Next {
    match begun {
        Ok(Begin::Started(fence)) => Next::Execute(fence),
        Ok(Begin::Completed(stored)) => Next::Replay(stored),
        Ok(Begin::Mismatch) => Next::Refuse(refusal::key_reused()),
        Ok(Begin::InProgress { lease_remaining }) => {
            // Never past the lease (a crashed holder's key is free then)
            // nor past the route's wait.
            let left = wait_until.and_then(|d| d.checked_duration_since(Instant::now()));
            match left {
                Some(left) if !left.is_zero() => Next::Nap(poll.min(lease_remaining).min(left)),
                _ => Next::Refuse(refusal::key_in_use()),
            }
        }
        Err(e) => Next::StoreFailed(e),
    }
}
