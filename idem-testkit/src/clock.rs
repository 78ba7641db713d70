//! [`TokioClock`]: wall-clock time that follows tokio's clock, so a test on
//! a paused runtime (`#[tokio::test(start_paused = true)]`) moves a store's
//! leases and TTLs with its timers: leases renewed every third of their
//! length, a slow `complete`, a sleeping handler all run in virtual time,
//! in order, and take no real time at all.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use idem_core::{Clock, MemoryStore};
//! use idem_testkit::clock::TokioClock;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let clock = Arc::new(TokioClock::new());
//! let store = MemoryStore::new().with_clock(clock.clone());
//! let before = clock.now_ms();
//! tokio::time::sleep(Duration::from_secs(60)).await; // at once, paused
//! assert_eq!(clock.now_ms() - before, 60_000);
//! # });
//! ```

use idem_core::Clock;

/// Milliseconds since the epoch: a fixed start plus what tokio's clock has
/// moved since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock at an arbitrary fixed instant (2025-11-24) now. Call it on
    /// the runtime whose clock it follows.
    pub fn new() -> Self {
        Self {
            epoch_ms: 1_764_000_000_000,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let moved = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.epoch_ms.saturating_add(moved)
    }
}
