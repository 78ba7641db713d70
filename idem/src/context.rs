//! What a handler behind the layer can learn and do: its key, and the batch
//! helper.
//!
//! # Examples
//!
//! ```
//! use axum::{Extension, Json};
//! use idem::IdempotencyContext;
//!
//! async fn batch(Extension(ctx): Extension<IdempotencyContext>, Json(items): Json<Vec<serde_json::Value>>) -> String {
//!     let mut answers = Vec::new();
//!     for (i, item) in items.iter().enumerate() {
//!         let bytes = serde_json::to_vec(item).unwrap_or_default();
//!         let outcome = ctx
//!             .batch_item(i, &bytes, || async { idem::ItemAnswer::new(201, "done") })
//!             .await;
//!         answers.push(format!("{:?}", outcome.map(|o| o.status)));
//!     }
//!     answers.join(",")
//! }
//! ```

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use idem_core::{
    Begin, Fingerprint, FingerprintMode, IdempotencyKey, StoreError, StoreKey, StoredResponse,
};

use crate::protocol::Route;
use crate::Error;

/// Put in the request's extensions by the layer when a covered request
/// executes; extract it with `Extension<IdempotencyContext>`.
#[derive(Clone)]
pub struct IdempotencyContext {
    route: Route,
    scope: Option<Arc<[u8]>>,
    key: IdempotencyKey,
}

impl std::fmt::Debug for IdempotencyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyContext")
            .field("route", &self.route.name())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What one batch item's execution answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemAnswer {
    /// Its status.
    pub status: u16,
    /// Its body.
    pub body: Bytes,
}

impl ItemAnswer {
    /// An answer of `status` with `body`.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

/// What [`IdempotencyContext::batch_item`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOutcome {
    /// The item's status.
    pub status: u16,
    /// The item's body.
    pub body: Bytes,
    /// Whether this is a stored answer from an earlier try (nothing executed).
    pub replayed: bool,
}

impl IdempotencyContext {
    pub(crate) fn new(route: Route, scope: Option<Vec<u8>>, key: IdempotencyKey) -> Self {
        Self {
            route,
            scope: scope.map(Arc::from),
            key,
        }
    }

    /// The request's idempotency key (for webhooks, the delivery id or body hash).
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The route pattern whose policy applies (`*` for the default).
    pub fn route(&self) -> &str {
        self.route.name()
    }

    /// Executes batch item `index` at most once, under the sub-key
    /// `{key}:item:{index}`: a retried batch (after the batch answered a
    /// status that is not stored) re-executes only the items with no stored
    /// answer, and gets the stored answer of the others.
    ///
    /// `item` is the item's content; a retry that changes item `index`
    /// gets [`Error::ItemReused`].
    pub async fn batch_item<F, Fut>(
        &self,
        index: usize,
        item: &[u8],
        run: F,
    ) -> Result<ItemOutcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ItemAnswer>,
    {
        let shared = &self.route.shared;
        let policy = self.route.policy();
        let sub_key = format!("{}:item:{index}", self.key);
        let store_key = StoreKey::derive(shared.secret().await?, self.scope.as_deref(), &sub_key);
        let fingerprint =
            Fingerprint::compute(FingerprintMode::Json, &Method::POST, &sub_key, item);
        let timeout = shared.store_timeout;
        let store = &shared.store;
        match call(timeout, store.begin(&store_key, &fingerprint, policy.lease)).await? {
            Begin::Completed(stored) => Ok(ItemOutcome {
                status: stored.status,
                body: stored.body,
                replayed: true,
            }),
            Begin::Mismatch => Err(Error::ItemReused { index }),
            Begin::InProgress { lease_remaining } => Err(Error::ItemInProgress {
                index,
                retry_after: lease_remaining,
            }),
            Begin::Started(fence) => {
                let answer = run().await;
                if policy.no_store.contains(answer.status) {
                    crate::protocol::release(&self.route, &store_key, fence).await;
                } else {
                    let stored = StoredResponse {
                        status: answer.status,
                        headers: Vec::new(),
                        body: answer.body.clone(),
                        body_omitted: None,
                    };
                    call(
                        timeout,
                        store.complete(&store_key, fence, &stored, policy.ttl),
                    )
                    .await?;
                }
                Ok(ItemOutcome {
                    status: answer.status,
                    body: answer.body,
                    replayed: false,
                })
            }
        }
    }
}

async fn call<T>(
    timeout: std::time::Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or(Err(StoreError::Timeout(timeout)))
}
