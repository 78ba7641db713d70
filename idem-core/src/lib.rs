//! The core of idem: key rules, request fingerprints, per-user scoping, the
//! record state machine with leases and fencing, the per-route policy, and the
//! [`Store`](store::Store) trait with its in-memory implementation.
//!
//! This crate has no HTTP server or runtime in it: the `idem` crate adds the
//! tower layer, the store crates add backends.
//!
//! # Examples
//!
//! ```
//! use http::Method;
//! use idem_core::{fingerprint::{Fingerprint, FingerprintMode}, key::KeyRules, scope::{Secret, StoreKey}};
//!
//! let key = KeyRules::default().parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap();
//! let secret = Secret::generate();
//! let store_key = StoreKey::derive(&secret, Some(b"Bearer sk_test_1"), key.as_str());
//! let fp = Fingerprint::compute(FingerprintMode::Json, &Method::POST, "/payments", b"{\"amount\":10}");
//! # let _ = (store_key, fp);
//! ```

pub mod cache;
pub mod clock;
pub mod fingerprint;
pub mod headers;
pub mod json;
pub mod key;
pub mod memory;
pub mod policy;
pub mod problem;
mod random;
pub mod record;
pub mod recovery;
pub mod scope;
pub mod signed;
pub mod store;

pub use cache::CachedStore;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use fingerprint::{Fingerprint, FingerprintMode};
pub use key::{CheckedKey, IdempotencyKey, KeyError, KeyRules};
pub use memory::MemoryStore;
pub use policy::{
    BodyFields, PathPattern, Policy, RoutePolicy, SetCookieReplay, StatusSet, StreamAnswers,
    UnknownOutcome, WebhookKeys,
};
pub use problem::{Problem, ProblemKind};
pub use record::{Begin, DecodeError, Fence, HeldRecord, Record, RecordState, StoredResponse};
pub use recovery::{Phases, RecoveryPoint};
pub use scope::{Secret, StoreKey};
pub use store::{Store, StoreAdmin, StoreError, StoreFuture, StoreStats};
