//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is
//! up), `/readyz` (the gateway is not draining, the store answers, and,
//! with `readyz_upstream`, the upstream answers), and the admin API under
//! `/admin/` (docs/admin-openapi.yaml), which needs
//! `Authorization: Bearer <token>` with the token from `--admin-token-file`.
//! Every error is `application/problem+json`, like the main listener's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem::{Metrics, StoreAdmin};
use serde::Deserialize;
use serde_json::json;

use super::upstream_client::UpstreamClient;
use crate::keys::KeyAdmin;

/// `/readyz`'s question to the upstream (`readyz_upstream`): a `GET` of one
/// path, on a client of its own that keeps no connection (a check must
/// see a dead upstream, not a pooled connection to it).
pub(crate) struct UpstreamCheck {
    client: UpstreamClient<http_body_util::Empty<bytes::Bytes>>,
    uri: http::Uri,
}

impl UpstreamCheck {
    pub(crate) fn new(
        upstream: &super::config::Upstream,
        path: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let uri = http::Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(format!("{}{path}", upstream.prefix))
            .build()?;
        Ok(Self {
            client: UpstreamClient::new(READY_WITHIN, tls, false),
            uri,
        })
    }

    /// `None` when the upstream is ready; else why not.
    async fn not_ready(&self) -> Option<String> {
        let req = match http::Request::get(&self.uri)
            .header(header::USER_AGENT, "idem-readyz")
            .body(http_body_util::Empty::new())
        {
            Ok(req) => req,
            Err(e) => return Some(format!("cannot ask the upstream: {e}")),
        };
        match tokio::time::timeout(READY_WITHIN, self.client.request(req)).await {
            Ok(Ok(res)) if res.status().is_success() || res.status().is_redirection() => None,
            Ok(Ok(res)) => Some(format!(
                "the upstream answered {} to GET {}",
                res.status(),
                self.uri
            )),
            Ok(Err(e)) => Some(format!(
                "the upstream cannot be reached at {}: {}",
                self.uri,
                super::proxy::source_chain(&e)
            )),
            Err(_) => Some(format!(
                "the upstream did not answer GET {} within {READY_WITHIN:?}",
                self.uri
            )),
        }
    }
}

/// How long `/readyz` waits for the store and for the upstream.
const READY_WITHIN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) store: Arc<dyn StoreAdmin>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) keys: KeyAdmin,
    /// The bearer token of the admin API; `None`: the API is off.
    pub(crate) token: Option<Arc<str>>,
    /// What `/readyz` asks the upstream; `None`: the upstream is not asked.
    pub(crate) upstream: Option<Arc<UpstreamCheck>>,
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
    idem_core::problem::service_response(status, code, detail, axum::body::Body::from)
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

/// Ready (200 `ready`) when the gateway is not draining (a load balancer
/// must stop sending before it stops), its store answers within a second
/// (else covered requests would get 503), and, with `readyz_upstream`, the
/// upstream answers that path with a 2xx or 3xx within a second. Else 503,
/// problem+json `not-ready` saying which check failed. The store and the
/// upstream are asked at once.
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return not_ready("shutting down: finishing the requests in flight".to_owned());
    }
    let store = async {
        match tokio::time::timeout(READY_WITHIN, state.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the {} store failed: {e}", state.store.backend())),
            Err(_) => Some(format!(
                "the {} store did not answer within {READY_WITHIN:?}",
                state.store.backend()
            )),
        }
    };
    let upstream = async {
        match &state.upstream {
            Some(check) => check.not_ready().await,
            None => None,
        }
    };
    let (store, upstream) = tokio::join!(store, upstream);
    let why: Vec<String> = store.into_iter().chain(upstream).collect();
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        not_ready(why.join("; "))
    }
}

fn not_ready(why: String) -> Response {
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!("not ready: {why}"),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    res
}
