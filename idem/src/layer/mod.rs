//! The idempotency middleware: [`IdempotencyLayer`] and its service.
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
mod renew;
mod service;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::IdempotencyLayer;
pub(crate) use layer::Shared;
pub(crate) use service::{release, Route};
pub use service::{Idempotency, IDEMPOTENT_BODY_OMITTED, IDEMPOTENT_REPLAYED};
