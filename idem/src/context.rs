//! What a handler behind the layer can learn and do: its key, keys for the
//! downstream calls it makes, completing its record inside its own database
//! transaction, and the batch helper.
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
use http::{HeaderMap, Method, StatusCode};
use http_body_util::Full;
use idem_core::{
    Begin, Fence, Fingerprint, FingerprintMode, HeldRecord, IdempotencyKey, StoreError, StoreKey,
    StoredResponse,
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
    store_key: StoreKey,
    fence: Fence,
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

/// An answer the handler stores itself, inside its own database
/// transaction (see [`IdempotencyContext::answer`]).
#[derive(Debug)]
pub struct StoredAnswer {
    stored: StoredResponse,
    headers: HeaderMap,
}

/// Marks a response whose record the handler completed in its own
/// transaction: the layer stores nothing more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnsweredInTransaction;

impl StoredAnswer {
    /// The answer as a store keeps it, for the store's in-transaction
    /// completion (`SqliteStore::complete_with`, `PostgresStore::complete_in`).
    pub fn stored(&self) -> &StoredResponse {
        &self.stored
    }

    /// The response to return once the transaction committed. The layer
    /// sees that the record is already completed and stores nothing more.
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut res = http::Response::new(Full::new(self.stored.body));
        *res.status_mut() = StatusCode::from_u16(self.stored.status).unwrap_or(StatusCode::OK);
        *res.headers_mut() = self.headers;
        res.extensions_mut().insert(AnsweredInTransaction);
        res
    }
}

impl IdempotencyContext {
    pub(crate) fn new(
        route: Route,
        scope: Option<Vec<u8>>,
        key: IdempotencyKey,
        store_key: StoreKey,
        fence: Fence,
    ) -> Self {
        Self {
            route,
            scope: scope.map(Arc::from),
            key,
            store_key,
            fence,
        }
    }

    /// A key for a downstream call this operation makes (`label` names the
    /// call: "charge", "receipt-email"), as a UUID: the same on every retry
    /// of this request, different per label and per key. Pass it as the
    /// downstream API's idempotency key (Stripe's, an internal service's)
    /// so that the call happens once however often this operation runs.
    pub fn derived_key(&self, label: &str) -> String {
        self.store_key.derived_key(label)
    }

    /// This execution's hold on its record: what a store needs to complete
    /// it inside the handler's own transaction.
    pub fn held(&self) -> HeldRecord {
        HeldRecord {
            key: self.store_key,
            fence: self.fence,
            ttl: self.route.policy().ttl,
        }
    }

    /// The answer `status`, `headers`, `body`, for storing inside the
    /// handler's own transaction, together with its business writes: a
    /// crash after the commit then cannot make a retry run the operation
    /// again. Complete the record with [`StoredAnswer::stored`] and the
    /// store's in-transaction completion, commit, then return
    /// [`StoredAnswer::into_response`]:
    ///
    /// ```no_run
    /// # async fn pay(ctx: idem::IdempotencyContext, store: idem_sqlite_store::SqliteStore) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, idem_sqlite_store::SqliteError> {
    /// let answer = ctx.answer(http::StatusCode::CREATED, http::HeaderMap::new(), r#"{"id": 1}"#);
    /// let stored = answer.stored().clone();
    /// store
    ///     .complete_with(ctx.held(), move |conn| {
    ///         conn.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
    ///         Ok(((), stored))
    ///     })
    ///     .await?; // the payment and the answer, in one transaction
    /// Ok(answer.into_response())
    /// # }
    /// ```
    pub fn answer(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> StoredAnswer {
        let stored = StoredResponse {
            status: status.as_u16(),
            headers: crate::protocol::storable_headers(&headers),
            body: body.into(),
            body_omitted: None,
        };
        StoredAnswer { stored, headers }
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
