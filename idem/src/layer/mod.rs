//! The idempotency middleware's tower shell: [`IdempotencyLayer`], its
//! service [`Idempotency`], the service's [`ResponseFuture`] and the body
//! types. The protocol it runs for each covered request is `crate::protocol`.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::post, Router};
//! use idem::{IdempotencyLayer, MemoryStore};
//!
//! let app: Router = Router::new()
//!     .route("/orders", post(|| async { "created" }))
//!     .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())));
//! ```

mod body;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::IdempotencyLayer;
pub(crate) use layer::{Admitted, InFlightGuard, Shared};
pub use service::Idempotency;

pub use crate::protocol::{
    OutcomeUnknown, IDEMPOTENT_BODY_LOST, IDEMPOTENT_BODY_OMITTED, IDEMPOTENT_REPLAYED,
    TRAILER_PREFIX,
};
