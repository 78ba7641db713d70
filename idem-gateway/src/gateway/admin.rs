//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is
//! up), `/readyz` (the store answers and the gateway is not draining), and
//! the admin API under `/admin/` (docs/admin-openapi.yaml), which needs
//! `Authorization: Bearer <token>` with the token from `--admin-token-file`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem::{Metrics, Store};
use serde::Deserialize;
use serde_json::json;

use crate::keys::KeyAdmin;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) keys: KeyAdmin,
    /// The bearer token of the admin API; `None`: the API is off.
    pub(crate) token: Option<Arc<str>>,
}

pub(crate) fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/admin/keys/{key}", get(inspect).delete(delete))
        .route("/admin/purge-expired", post(purge))
        .route("/admin/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    crate::problem::response(status, code, detail)
}

/// Equal in time whatever the position of the first difference, so the
/// token cannot be guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return error(
            StatusCode::FORBIDDEN,
            "admin_api_off",
            "the admin API is off: start the gateway with --admin-token-file FILE",
        );
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sent {
        Some(t) if constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut res = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <the token in the gateway's --admin-token-file>",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"idem admin\""),
            );
            res
        }
    }
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope: Option<String>,
}

async fn inspect(
    State(state): State<AdminState>,
    Path(key): Path<String>,
    Query(q): Query<ScopeQuery>,
) -> Response {
    match state.keys.inspect(&key, q.scope.as_deref()).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live record for {key:?} in that scope"),
        ),
        Err(e) => failure(e),
    }
}

async fn delete(
    State(state): State<AdminState>,
    Path(key): Path<String>,
    Query(q): Query<ScopeQuery>,
) -> Response {
    match state.keys.delete(&key, q.scope.as_deref()).await {
        Ok(true) => Json(json!({"deleted": true})).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no record for {key:?} in that scope"),
        ),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct PurgeQuery {
    batch: Option<usize>,
}

async fn purge(State(state): State<AdminState>, Query(q): Query<PurgeQuery>) -> Response {
    let started = std::time::Instant::now();
    match state
        .keys
        .purge_expired(q.batch.unwrap_or(10_000).max(1), |_| {})
        .await
    {
        Ok(n) => {
            Json(json!({"purged": n, "seconds": started.elapsed().as_secs_f64()})).into_response()
        }
        Err(e) => failure(e),
    }
}

async fn stats(State(state): State<AdminState>) -> Response {
    match state.keys.stats().await {
        Ok(s) => Json(
            json!({"in_progress": s.in_progress, "completed": s.completed, "expired": s.expired}),
        )
        .into_response(),
        Err(e) => failure(e),
    }
}

/// A bad key is the caller's fault (400); anything else is the store's (503).
fn failure(e: anyhow::Error) -> Response {
    let text = format!("{e:#}");
    if e.downcast_ref::<idem_core::KeyError>().is_some() {
        error(StatusCode::BAD_REQUEST, "bad_key", text)
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", text)
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Not ready while draining (so a load balancer stops sending), or while the
/// store does not answer within a second (covered requests would get 503).
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the {} store failed: {e}\n",
                state.store.backend()
            ),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the {} store did not answer within 1s\n",
                state.store.backend()
            ),
        )
            .into_response(),
    }
}
