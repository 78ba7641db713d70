//! Test helpers for idem: the store conformance suite, the store load
//! generator, and a counting upstream for gateway tests.
//!
//! The suite is the definition of a store: a backend is done when
//! [`store_conformance!`] passes on it, concurrency races included.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use idem_core::{MemoryStore, StoreAdmin};
//! use idem_testkit::StoreConfig;
//!
//! async fn memory(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
//!     let mut store = MemoryStore::new().with_clock(config.clock);
//!     if let Some(c) = config.capacity {
//!         store = store.with_capacity(c);
//!     }
//!     Some(Arc::new(store))
//! }
//!
//! idem_testkit::store_conformance!(memory);
//! ```

pub mod broken;
pub mod clock;
pub mod faulty;
pub mod grpc;
pub mod held;
pub mod http;
pub mod jwt;
pub mod load;
pub mod model;
pub mod net;
pub mod process;
pub mod spec_suite;
pub mod sse;
pub mod storm;
pub mod suite;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

use idem_core::{ManualClock, SharedClock};

/// The address of a test server from the environment variable `var`
/// (`DATABASE_URL`, `REDIS_URL`, …), or `None` after a "skipped" line: a
/// test without its server passes and says why. The project's test command
/// sets every variable, so there every test runs.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: {var} not set");
            None
        }
    }
}

/// What the suite asks of a store under test.
#[derive(Clone)]
pub struct StoreConfig {
    /// The clock the store must read time from; the suite advances it.
    pub clock: SharedClock,
    /// A capacity in records to enforce, when the test needs one.
    pub capacity: Option<usize>,
    /// The manual clock behind `clock`, for the suite itself.
    pub manual: Arc<ManualClock>,
}

impl StoreConfig {
    /// A config with a manual clock at a fixed, realistic instant.
    pub fn new(capacity: Option<usize>) -> Self {
        let manual = Arc::new(ManualClock::new(1_764_000_000_000));
        Self {
            clock: manual.clone(),
            capacity,
            manual,
        }
    }
}

/// Expands to one `#[tokio::test]` per rule of the store contract, each
/// building its store with `$factory`, an `async fn(StoreConfig) ->
/// Option<Arc<dyn StoreAdmin>>`. A factory returning `None` (its server is not
/// configured) makes each test print why and pass; the project's test command
/// always configures servers, so there they run.
///
/// `store_conformance!(factory, no_capacity)` leaves out the capacity test for
/// backends whose capacity is the server's own (Redis `maxmemory`).
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@tests $factory,
            replay_after_complete, racers_exactly_one_wins, fencing_stale_holder_changes_nothing,
            renewal_keeps_lease, in_progress_reports_lease, ttl_expiry, mismatch,
            expired_record_with_other_fingerprint_is_no_record, release_allows_retry,
            byte_exact_binary_body_and_repeated_headers, scope_isolation, capacity_refusal,
            admin_get_delete_stats_purge, large_body, complete_twice_is_stale,
            many_keys_concurrently, shared_secret_is_stable, deadlines_order_as_numbers_at_any_instant,
            huge_lease_and_ttl_are_kept, begin_expiring_gives_the_ttl_end,
            model_interleavings);
    };
    ($factory:path, no_capacity) => {
        $crate::store_conformance!(@tests $factory,
            replay_after_complete, racers_exactly_one_wins, fencing_stale_holder_changes_nothing,
            renewal_keeps_lease, in_progress_reports_lease, ttl_expiry, mismatch,
            expired_record_with_other_fingerprint_is_no_record, release_allows_retry,
            byte_exact_binary_body_and_repeated_headers, scope_isolation,
            admin_get_delete_stats_purge, large_body, complete_twice_is_stale,
            many_keys_concurrently, shared_secret_is_stable, deadlines_order_as_numbers_at_any_instant,
            huge_lease_and_ttl_are_kept, begin_expiring_gives_the_ttl_end,
            model_interleavings);
    };
    (@tests $factory:path, $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $crate::suite::$test(|c| Box::pin($factory(c))).await;
            }
        )*
    };
}
