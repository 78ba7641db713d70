//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is
//! up) and `/readyz` (the store answers and the gateway is not draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use idem::{Metrics, Store};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) draining: Arc<AtomicBool>,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
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
