use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use idem_core::Store;
use tower_service::Service;

use super::body::{BoxError, RequestBody, ResponseBody};
use super::future::{ResponseFuture, Seen};
use super::{IdempotencyLayer, Shared};
use crate::protocol::{protocol, Route};

/// The service made by [`IdempotencyLayer`](super::IdempotencyLayer).
pub struct Idempotency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S> Idempotency<S> {
    /// `inner` behind a layer over `store` with every default: the same as
    /// `IdempotencyLayer::new(store).layer(inner)`.
    pub fn layer(store: Arc<dyn Store>) -> IdempotencyLayer {
        IdempotencyLayer::new(store)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match Route::find(&self.shared, req.method(), req.uri().path()) {
            None => {
                let seen = Seen::new(&self.shared, &req);
                ResponseFuture::passthrough(self.inner.call(req.map(RequestBody::streaming)), seen)
            }
            Some(route) => {
                // The clone that was made ready is the one to call (tower's
                // usual dance); a fresh clone stays for the next request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                // One span per covered request: route, backend, a short hash
                // of the store key (never the key or the scope: both can be
                // secrets) and the outcome, for every event logged inside.
                // At `debug`: at the usual `info`, creating it and
                // formatting its fields for the log cost about 10,000
                // instructions per request (a replay costs 38,000 in all),
                // and every warning inside names its route and key itself.
                // At `info` when an exporter reads it (`trace_context`).
                macro_rules! span {
                    ($level:expr) => {
                        tracing::span!(
                            $level,
                            "idempotency",
                            route = route.name(),
                            backend = self.shared.store.backend(),
                            key = tracing::field::Empty,
                            outcome = tracing::field::Empty,
                            traceparent = tracing::field::Empty,
                            status = tracing::field::Empty,
                        )
                    };
                }
                let span = if self.shared.trace_context {
                    span!(tracing::Level::INFO)
                } else {
                    span!(tracing::Level::DEBUG)
                };
                if self.shared.trace_context && !span.is_disabled() {
                    if let Some(tp) = req.headers().get("traceparent") {
                        if let Ok(tp) = tp.to_str() {
                            span.record("traceparent", tp);
                        }
                    }
                }
                let (parts, body) = req.into_parts();
                ResponseFuture::protocol(protocol(route, inner, parts, body, span.clone()), span)
            }
        }
    }
}
