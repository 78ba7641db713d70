//! Time, injectable so that TTL and lease tests advance time instead of sleeping.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use idem_core::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance(Duration::from_secs(2));
//! assert_eq!(clock.now_ms(), 3_000);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Stores compare record deadlines with it; deadlines are absolute so that
/// several processes sharing one store agree on them (to within clock skew).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `ms`.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the clock (backwards too).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The latest deadline a store keeps, in ms since the epoch: 2^53 - 1,
/// about 285,000 years from now. Every lease and TTL ends by then, however
/// long it was configured: a signed 64-bit column (SQLite, PostgreSQL)
/// holds it, Redis's `PX` takes it, and a Lua script's doubles hold every
/// integer up to it exactly.
pub const MAX_DEADLINE_MS: u64 = (1 << 53) - 1;

/// `Duration` to whole milliseconds, at most [`MAX_DEADLINE_MS`].
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_DEADLINE_MS)
}

/// The deadline `d` after `now_ms`, at most [`MAX_DEADLINE_MS`]: what every
/// store writes for a lease or a TTL. It fits an `i64`.
pub fn deadline_ms(now_ms: u64, d: Duration) -> u64 {
    now_ms.saturating_add(millis(d)).min(MAX_DEADLINE_MS)
}

/// [`deadline_ms`] as the `i64` a SQL column takes (never negative).
pub fn deadline_i64(now_ms: u64, d: Duration) -> i64 {
    i64::try_from(deadline_ms(now_ms, d)).unwrap_or(i64::MAX)
}
