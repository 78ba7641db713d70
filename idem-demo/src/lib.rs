//! `idem demo`: the original design's payments service, on axum, behind the
//! idempotency layer.
//!
//! - `POST /payments` `{"amount": 10.5, "currency": "EUR", "recipient": "acct_1"}`:
//!   `amount` > 0, `currency` defaults to `USD`, `recipient` required. A
//!   validation failure is a 400 that is stored like any answer.
//! - `GET /payments` (count and the latest 100), `GET /payments/{id}`.
//! - `POST /batch/payments` `{"payments": [...]}`: each item runs under the
//!   sub-key `{key}:item:{index}`.
//! - `POST /webhooks/payment-status` `{"payment_id": "...", "status": "..."}`:
//!   keyed by `Webhook-Id`, then `Idempotency-Key`, then SHA-256 of the body.
//! - `POST /transfers` `{"from": "acct_a", "to": "acct_b", "amount": 500}`
//!   (minor units): debit, credit, record, as phases with recovery points
//!   on SQLite and PostgreSQL (`transfers.rs`); `GET /accounts/{id}`.
//!
//! Payments live in the same SQLite file as the idempotency records (or in
//! memory with `--store memory://`).

use std::future::Future;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use idem::{IdempotencyContext, IdempotencyLayer, ItemAnswer, Policy, RoutePolicy, WebhookKeys};
mod payments;
mod transfers;

/// Errors as `application/problem+json`, in the shape of the layer's.
mod problem {
    use axum::http::StatusCode;
    use axum::response::Response;
    pub(crate) use idem_core::problem::service_document as document;

    /// [`document`] as a response.
    pub(crate) fn response(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
        idem_core::problem::service_response(status, code, detail, axum::body::Body::from)
    }
}

pub use payments::Payment;
use payments::Payments;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use idem_stores::{self as stores, StoreUrl};

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Where records (and payments) live. The default is `sqlite://idem.db`.
    pub store: StoreUrl,
    /// A secret file (optional; see [`stores::open`]).
    pub secret_file: Option<std::path::PathBuf>,
    /// The header naming the user. The default is `Authorization`.
    pub scope_header: Option<http::HeaderName>,
    /// How long a payment "takes" at the processor. The default is 0.
    pub processing_delay: Duration,
    /// TTL of stored answers. The default is 24 h.
    pub ttl: Duration,
    /// The lease. The default is 30 s.
    pub lease: Duration,
    /// Wait mode for duplicates (opt-in). The default is off (409 at once).
    pub wait: Option<Duration>,
    /// Entries of the local cache of completed records (0: off). The default is 0.
    pub local_cache: usize,
    /// Serve the same handlers without the layer: a baseline for benchmarks only.
    pub without_layer: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            store: StoreUrl::Sqlite("idem.db".into()),
            secret_file: None,
            scope_header: Some(http::header::AUTHORIZATION),
            processing_delay: Duration::ZERO,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            wait: None,
            local_cache: 0,
            without_layer: false,
        }
    }
}

/// `pay_` + 12 hex digits of milliseconds + 12 random hex digits: unique, and
/// time-ordered so that inserts append to the id index instead of dirtying a
/// random page of it (as ULIDs and KSUIDs do).
fn payment_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let random = idem_core::key::generate_uuid_v4().replace('-', "");
    format!("pay_{ms:012x}{}", &random[..12])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone)]
struct AppState {
    payments: Payments,
    delay: Duration,
    /// `IDEM_DEMO_CRASH_AFTER_COMMIT=1`: abort right after a payment's
    /// commit, before answering (for tests of the window it leaves).
    crash_after_commit: bool,
    /// `IDEM_DEMO_CRASH_AFTER_PHASE=<name>`: abort right after a
    /// transfer's phase `name` committed.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    crash_after_phase: Option<String>,
    /// `IDEM_DEMO_TRANSACTIONAL=0`: store a payment, then let the layer
    /// store its answer (two writes, the window open), as the baseline of
    /// bench/transactional.sh.
    transactional: bool,
    /// Accounts and transfers.
    ledger: transfers::Ledger,
}

/// A handler failure: the store or database failed (a 500, not stored, so a
/// retry executes again).
struct Failure(anyhow::Error);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "demo handler failed");
        crate::problem::response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            self.0.to_string(),
        )
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

/// The request's `currency`: an ISO 4217 code, upper case, `USD` when
/// absent; the error is the 400 body's detail.
fn currency(obj: &serde_json::Map<String, Value>) -> Result<String, String> {
    match obj.get("currency") {
        None | Some(Value::Null) => Ok("USD".to_owned()),
        Some(Value::String(c)) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            Ok(c.to_ascii_uppercase())
        }
        Some(_) => Err("currency must be a 3-letter ISO 4217 code such as USD".into()),
    }
}

/// Validates a payment request; the error is the 400 body's detail.
fn validate(v: &Value) -> Result<(serde_json::Number, String, String), String> {
    let obj = v.as_object().ok_or("the body must be a JSON object")?;
    let amount = match obj.get("amount") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|a| a > 0.0 && a.is_finite()) => n.clone(),
        Some(_) => return Err("amount must be a number greater than 0".into()),
        None => return Err("amount is required".into()),
    };
    let currency = currency(obj)?;
    let recipient = match obj.get("recipient") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.clone(),
        Some(_) => return Err("recipient must be a non-empty string".into()),
        None => return Err("recipient is required".into()),
    };
    Ok((amount, currency, recipient))
}

fn invalid(detail: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        crate::problem::document(StatusCode::BAD_REQUEST, "validation_failed", detail),
    )
}

/// Validates and processes a payment request: the payment to record, or
/// the 400 to answer.
async fn process(state: &AppState, v: &Value) -> Result<Payment, (StatusCode, Value)> {
    let (amount, currency, recipient) = validate(v).map_err(invalid)?;
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    Ok(Payment {
        id: payment_id(),
        amount,
        currency,
        recipient,
        status: "succeeded".into(),
        created: unix_now(),
    })
}

/// Creates one payment: the work that must happen once per key. The layer
/// stores the answer after this returns.
async fn charge(state: &AppState, v: &Value) -> Result<(StatusCode, Value), Failure> {
    match process(state, v).await {
        Ok(payment) => record(state, payment).await,
        Err(refused) => Ok(refused),
    }
}

/// Records a payment; the 201 to answer.
async fn record(state: &AppState, payment: Payment) -> Result<(StatusCode, Value), Failure> {
    let body = serde_json::to_value(&payment)?;
    state.payments.insert(payment).await?;
    crash_if_asked(state);
    Ok((StatusCode::CREATED, body))
}

/// Creates one payment and stores its answer in the same transaction, where
/// the backend is a database the records share: the committed answer, or
/// `None` (nothing written) where it cannot.
async fn charge_in_transaction(
    state: &AppState,
    ctx: &IdempotencyContext,
    payment: Payment,
) -> Result<Option<idem::StoredAnswer>, Failure> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&payment)?;
    let answer = ctx.answer(StatusCode::CREATED, headers, body);
    let stored = answer.stored().clone();
    if !state
        .payments
        .insert_answered(payment, ctx.held(), stored)
        .await?
    {
        return Ok(None);
    }
    crash_if_asked(state);
    Ok(Some(answer))
}

fn crash_if_asked(state: &AppState) {
    if state.crash_after_commit {
        tracing::error!(
            "IDEM_DEMO_CRASH_AFTER_COMMIT=1: aborting after the commit, before answering"
        );
        std::process::abort();
    }
}

async fn create_payment(
    State(state): State<AppState>,
    ctx: Option<Extension<IdempotencyContext>>,
    body: Bytes,
) -> Result<Response, Failure> {
    let (status, v) = match serde_json::from_slice::<Value>(&body) {
        Err(e) => invalid(format!("the body is not valid JSON: {e}")),
        Ok(v) => match ctx {
            // With the layer: on SQLite and PostgreSQL, the payment and its
            // answer commit together.
            Some(Extension(ctx)) if state.transactional => match process(&state, &v).await {
                Err(refused) => refused,
                Ok(payment) => {
                    if let Some(answer) =
                        charge_in_transaction(&state, &ctx, payment.clone()).await?
                    {
                        return Ok(answer.into_response().into_response());
                    }
                    record(&state, payment).await?
                }
            },
            _ => charge(&state, &v).await?,
        },
    };
    let mut res = (status, axum::Json(v)).into_response();
    if status.is_client_error() {
        // `invalid`'s problem document.
        res.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(idem_core::problem::PROBLEM_JSON),
        );
    }
    Ok(res)
}

async fn get_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    Ok(match state.payments.get(id.clone()).await? {
        Some(p) => axum::Json(p).into_response(),
        None => crate::problem::response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no payment {id}"),
        ),
    })
}

async fn list_payments(State(state): State<AppState>) -> Result<Response, Failure> {
    let (count, latest) = state.payments.list().await?;
    Ok(axum::Json(json!({"count": count, "data": latest})).into_response())
}

async fn batch_payments(
    State(state): State<AppState>,
    ctx: Option<Extension<IdempotencyContext>>,
    body: Bytes,
) -> Result<Response, Failure> {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(crate::problem::response(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                format!("the body is not valid JSON: {e}"),
            ))
        }
    };
    let Some(items) = v.get("payments").and_then(Value::as_array) else {
        return Ok(crate::problem::response(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "the body must be {\"payments\": [ ... ]}",
        ));
    };
    let mut results = Vec::with_capacity(items.len());
    let mut any_failed = false;
    for (i, item) in items.iter().enumerate() {
        let item_bytes = serde_json::to_vec(item)?;
        let answer = match &ctx {
            Some(Extension(ctx)) => {
                let outcome = ctx
                    .batch_item(i, &item_bytes, || async {
                        match charge(&state, item).await {
                            Ok((s, b)) => ItemAnswer::new(
                                s.as_u16(),
                                serde_json::to_vec(&b).unwrap_or_default(),
                            ),
                            Err(f) => ItemAnswer::new(500, f.0.to_string()),
                        }
                    })
                    .await;
                match outcome {
                    Ok(o) => (
                        o.status,
                        serde_json::from_slice(&o.body).unwrap_or(Value::Null),
                        o.replayed,
                    ),
                    Err(e) => (
                        503,
                        crate::problem::document(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "item_unavailable",
                            e.to_string(),
                        ),
                        false,
                    ),
                }
            }
            // Without the layer (benchmark baseline) there are no sub-keys.
            None => {
                let (s, b) = charge(&state, item).await?;
                (s.as_u16(), b, false)
            }
        };
        any_failed |= answer.0 >= 500;
        results
            .push(json!({"index": i, "status": answer.0, "replayed": answer.2, "body": answer.1}));
    }
    // An item that failed (5xx) makes the batch a 500: not stored, so the
    // client's retry re-executes only the items without a stored answer.
    let status = if any_failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({"results": results}))).into_response())
}

async fn payment_status_webhook(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, Failure> {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(id), Some(status)) = (
        v.get("payment_id").and_then(Value::as_str),
        v.get("status").and_then(Value::as_str),
    ) else {
        return Ok(crate::problem::response(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "the body must be {\"payment_id\": \"pay_...\", \"status\": \"...\"}",
        ));
    };
    if state
        .payments
        .set_status(id.to_owned(), status.to_owned())
        .await?
    {
        Ok(
            axum::Json(json!({"received": true, "payment_id": id, "status": status}))
                .into_response(),
        )
    } else {
        Ok(crate::problem::response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no payment {id}"),
        ))
    }
}

/// The demo's policy: the original design's TTL for payments, webhook mode on
/// the webhook route.
pub fn policy(config: &DemoConfig) -> Policy {
    let base = RoutePolicy::default()
        .ttl(config.ttl)
        .lease(config.lease)
        .wait(config.wait);
    Policy::default()
        .route("/payments", base.clone())
        .route("/batch/payments", base.clone())
        .route("/transfers", base.clone())
        .route(
            "/webhooks/**",
            base.clone().webhook(Some(WebhookKeys::default())),
        )
        .default_policy(base)
}

/// Builds the demo's router (with the layer unless `without_layer`).
pub async fn router(config: &DemoConfig) -> anyhow::Result<Router> {
    let opened = stores::open(
        &config.store,
        config.secret_file.as_deref(),
        config.local_cache,
    )?;
    let payments = Payments::open(&opened.backend).await?;
    let ledger = transfers::Ledger::open(&opened.backend).await?;
    let state = AppState {
        payments,
        ledger,
        transactional: std::env::var("IDEM_DEMO_TRANSACTIONAL").map_or(true, |v| v != "0"),
        crash_after_phase: std::env::var("IDEM_DEMO_CRASH_AFTER_PHASE")
            .ok()
            .filter(|v| !v.is_empty()),
        delay: config.processing_delay,
        crash_after_commit: std::env::var("IDEM_DEMO_CRASH_AFTER_COMMIT").is_ok_and(|v| v == "1"),
    };
    let app = Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{id}", get(get_payment))
        .route("/batch/payments", post(batch_payments))
        .route("/webhooks/payment-status", post(payment_status_webhook))
        .route("/transfers", post(transfers::create_transfer))
        .route("/accounts/{id}", get(transfers::get_account))
        .with_state(state);
    let metrics = idem::Metrics::new();
    metrics.register_process(&stores::BUILT_WITH.join(","));
    let app = if config.without_layer {
        app
    } else {
        let layer = IdempotencyLayer::new(opened.store).metrics(metrics.clone());
        let layer = match opened.secret {
            Some(secret) => layer.secret(secret),
            None => layer.secret_from_store(),
        };
        app.layer(
            layer
                .scope_header(config.scope_header.clone())
                .policy(policy(config)),
        )
    };
    // As the original Flask service did: metrics beside the API.
    let metrics = get(move || {
        let text = metrics.render();
        async move {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
        }
    });
    Ok(app
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", metrics))
}

/// Serves the demo on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn run(
    listener: TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(&config).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "idem demo listening on http://{addr} (store: {}{})",
        config.store,
        if config.without_layer {
            ", WITHOUT the idempotency layer"
        } else {
            ""
        }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
