//! idem: make any non-idempotent HTTP operation safe to retry with the
//! `Idempotency-Key` header.
//!
//! Add [`IdempotencyLayer`] to a tower or axum service: the first request
//! with a key executes; every later one with the same key gets the stored
//! answer (`Idempotent-Replayed: true`); a concurrent duplicate gets 409; a
//! key reused for a different request gets 422; and nothing executes twice.
//! The full contract is SPEC.md in the repository.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy};
//!
//! let policy = Policy::default()
//!     .route("/payments", RoutePolicy::default().ttl(Duration::from_secs(24 * 3600)));
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "charged once" }))
//!     .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(policy));
//! ```

pub mod access;
mod context;
pub mod identity;
pub mod layer;
pub mod metrics;
mod protocol;

pub use access::{AccessLine, AccessLog};
pub use context::{IdempotencyContext, ItemAnswer, ItemOutcome, StoredAnswer};
pub use idem_core::{
    clock, fingerprint, headers, json, key, memory, policy, problem, record, scope, signed, store,
    Begin, BodyFields, Clock, Fence, Fingerprint, FingerprintMode, HeldRecord, IdempotencyKey,
    KeyRules, ManualClock, MemoryStore, PathPattern, Policy, Problem, ProblemKind, RoutePolicy,
    Secret, SetCookieReplay, StatusSet, Store, StoreAdmin, StoreError, StoreKey, StoredResponse,
    StreamAnswers, SystemClock, UnknownOutcome, WebhookKeys,
};
pub use identity::{Identify, ScopeSource, Unverified};
#[cfg(feature = "jwt")]
pub use identity::{JwtError, JwtScope};
pub use layer::{
    Idempotency, IdempotencyLayer, OutcomeUnknown, IDEMPOTENT_BODY_LOST, IDEMPOTENT_BODY_OMITTED,
    IDEMPOTENT_REPLAYED, TRAILER_PREFIX,
};
pub use metrics::{Metrics, ValueKind};

/// Errors of the `idem` crate's helpers. Refusals of requests are responses,
/// not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A retried batch changed the content of item `index`.
    #[error("batch item {index} differs from the item stored under the same key; send the same items on a retry, or use a new key")]
    ItemReused {
        /// The item's index.
        index: usize,
    },
    /// Batch item `index` is being executed by another request.
    #[error("batch item {index} is being executed by another request; retry in {retry_after:?}")]
    ItemInProgress {
        /// The item's index.
        index: usize,
        /// The time left on that execution's lease.
        retry_after: std::time::Duration,
    },
}
