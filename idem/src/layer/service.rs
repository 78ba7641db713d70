use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use idem_core::key::{raw_body_key, IDEMPOTENCY_KEY};
use idem_core::problem::PROBLEM_JSON;
use idem_core::signed;
use idem_core::{
    Begin, CheckedKey, Fence, Fingerprint, IdempotencyKey, KeyError, LocalStore, Problem,
    ProblemKind, RoutePolicy, Secret, SetCookieReplay, StoreError, StoreKey, StoredResponse,
};
use tower_service::Service;

use super::body::{BoxError, RequestBody, ResponseBody};
use super::future::ResponseFuture;
use super::layer::Admitted;
use super::Shared;
use crate::context::IdempotencyContext;
use crate::metrics::{ErrorKind, RouteMetrics, StoreOp};

/// The header a replayed answer carries: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// On a replay of an answer whose body was too large to store, the header
/// giving the original body's size in bytes: the status and headers are
/// replayed, the body is not, and nothing executes again.
pub const IDEMPOTENT_BODY_OMITTED: HeaderName = HeaderName::from_static("idempotent-body-omitted");

/// How long a client told 409 should wait. Leases are renewed while the
/// first execution runs, so the lease's remaining time says nothing about
/// when it will finish; most executions take well under a second.
const RETRY_AFTER_IN_USE: u64 = 1;

/// Hop-by-hop and framing headers: never stored, never replayed (framing is
/// recomputed for the replayed body).
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

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

/// Which policy applies: a route rule's index, or the default.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) shared: Arc<Shared>,
    index: Option<usize>,
}

impl Route {
    fn find(shared: &Arc<Shared>, method: &http::Method, path: &str) -> Option<Self> {
        let index = shared
            .policy
            .routes
            .iter()
            .position(|(p, _)| p.matches(path));
        let route = Self {
            shared: shared.clone(),
            index,
        };
        route.policy().covers(method).then_some(route)
    }

    pub(crate) fn policy(&self) -> &RoutePolicy {
        match self.index {
            Some(i) => &self.shared.policy.routes[i].1,
            None => &self.shared.policy.default,
        }
    }

    pub(crate) fn metrics(&self) -> &RouteMetrics {
        self.shared.route_metrics(self.index)
    }

    /// Counts a refusal or failure in `idempotency_errors_total`.
    fn count(&self, kind: ProblemKind) {
        let kind = match kind {
            ProblemKind::KeyMissing => ErrorKind::MissingKey,
            ProblemKind::KeyInvalid => ErrorKind::InvalidKey,
            ProblemKind::KeyInUse => ErrorKind::InProgress,
            ProblemKind::KeyReused => ErrorKind::Mismatch,
            ProblemKind::StoreUnavailable | ProblemKind::StoreFull => ErrorKind::StoreUnavailable,
            ProblemKind::BodyTooLarge => ErrorKind::TooLarge,
            ProblemKind::ExecutionFailed
            | ProblemKind::UpstreamUnavailable
            | ProblemKind::UpstreamTimeout => ErrorKind::Upstream,
            _ => return,
        };
        self.metrics().error(kind);
    }

    pub(crate) fn name(&self) -> &str {
        match self.index {
            Some(i) => self.shared.policy.routes[i].0.as_str(),
            None => "*",
        }
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
            None => ResponseFuture::passthrough(self.inner.call(req.map(RequestBody::streaming))),
            Some(route) => {
                let permit = match &self.shared.max_in_flight {
                    None => None,
                    Some(limit) => match limit.try_enter() {
                        Some(p) => Some(p),
                        None => {
                            let res = problem_response(
                                &self.shared,
                                &Problem::new(
                                    ProblemKind::Overloaded,
                                    "too many requests are being handled; nothing was read or executed, retry after the Retry-After delay",
                                )
                                .with_retry_after(1),
                            );
                            return ResponseFuture::protocol(
                                async move { Ok(res) },
                                tracing::Span::none(),
                            );
                        }
                    },
                };
                // The clone that was made ready is the one to call (tower's
                // usual dance); a fresh clone stays for the next request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                // One span per covered request: route, backend, a short hash
                // of the store key (never the key or the scope: both can be
                // secrets) and the outcome, for every event logged inside.
                let span = tracing::info_span!(
                    "idempotency",
                    route = route.name(),
                    backend = self.shared.store.backend(),
                    key = tracing::field::Empty,
                    outcome = tracing::field::Empty,
                );
                let (parts, body) = req.into_parts();
                ResponseFuture::protocol(
                    protocol(route, inner, parts, body, span.clone(), permit),
                    span,
                )
            }
        }
    }
}

/// Records the covered request's outcome on its span (passed down rather
/// than looked up: `Span::current` costs a thread-local and a registry
/// lookup even when the span is disabled).
fn outcome(span: &tracing::Span, o: &'static str) {
    span.record("outcome", o);
}

/// A refusal as an `application/problem+json` response.
pub(crate) fn problem_response<B>(shared: &Shared, problem: &Problem) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(problem.to_json(&shared.problem_base)));
    *res.status_mut() =
        StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(secs) = problem.retry_after {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// A stored answer, replayed; `Set-Cookie` dropped when `cookies` is false.
fn replay<B>(stored: StoredResponse, cookies: bool) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(stored.body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    for (name, value) in stored.headers {
        if !cookies && name == http::header::SET_COOKIE {
            continue;
        }
        headers.append(name, value);
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if let Some(len) = stored.body_omitted {
        headers.insert(IDEMPOTENT_BODY_OMITTED, HeaderValue::from(len));
    }
    res
}

/// The headers to store, each value copied: a value parsed by hyper is a
/// slice of its connection's whole read buffer, and a record that kept it
/// would keep kilobytes alive per key (measured: the memory store grew by
/// a read buffer per request, and first executions ran at 0.66× the plain
/// proxy instead of 0.9×).
fn storable_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut stored = Vec::with_capacity(storable(headers).count());
    stored.extend(storable(headers).map(|(n, v)| {
        let mut copy = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
        copy.set_sensitive(v.is_sensitive());
        (n.clone(), copy)
    }));
    stored
}

/// The headers a record keeps, in order.
fn storable(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
}

/// The bytes of the values [`storable`] yields.
fn storable_values_len(headers: &HeaderMap) -> usize {
    storable(headers).map(|(_, v)| v.len()).sum()
}

/// The headers to store, each value a slice of `values`, which holds them
/// one after the other from its start (see `read_answer`). The vector is
/// made to size: a collected filter starts at four entries (288 bytes),
/// kept by the record for as long as it lives.
fn storable_headers_in(headers: &HeaderMap, values: &Bytes) -> Vec<(HeaderName, HeaderValue)> {
    let mut at = 0;
    let mut stored = Vec::with_capacity(storable(headers).count());
    stored.extend(storable(headers).map(|(n, v)| {
        let end = at + v.len();
        let mut copy = values
            .get(at..end)
            .filter(|b| *b == v.as_bytes())
            .and_then(|_| HeaderValue::from_maybe_shared(values.slice(at..end)).ok())
            .unwrap_or_else(|| v.clone());
        at = end;
        copy.set_sensitive(v.is_sensitive());
        (n.clone(), copy)
    }));
    stored
}

/// The key the request carries, per the route's key source; with signed
/// keys required, the signature is checked for `user` and the key part
/// returned.
fn header_key<'a>(
    headers: &'a HeaderMap,
    policy: &RoutePolicy,
    signing: Option<&Secret>,
    user: Option<&[u8]>,
) -> Result<Option<Key<'a>>, String> {
    let rules = &policy.key_rules;
    let names: &[HeaderName] = match &policy.webhook {
        Some(w) => &w.headers,
        None => std::slice::from_ref(&IDEMPOTENCY_KEY_HEADER),
    };
    for name in names {
        let mut values = headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(KeyError::Repeated.to_string());
            }
            if !policy.require_signed_keys || policy.webhook.is_some() {
                return rules
                    .check_bytes(value.as_bytes())
                    .map(|k| Some(Key::Checked(k)))
                    .map_err(|e| e.to_string());
            }
            let Some(secret) = signing else {
                return Err("this route requires signed keys, but the server has no key-signing secret; nothing was executed".into());
            };
            let raw = value.to_str().map_err(|_| KeyError::NotAscii.to_string())?;
            // A Structured-Field string and a bare token are the same key.
            let raw = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                Some(inner) => inner,
                None => raw,
            };
            let key =
                signed::verify(secret, raw, user.unwrap_or_default()).map_err(|e| e.to_string())?;
            return rules
                .parse(key)
                .map(|k| Some(Key::Owned(k)))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// A request's key: checked in place in its header, or made (signed keys,
/// body hashes).
enum Key<'a> {
    Checked(CheckedKey<'a>),
    Owned(IdempotencyKey),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Checked(k) => k.as_str(),
            Key::Owned(k) => k.as_str(),
        }
    }

    fn into_key(self) -> IdempotencyKey {
        match self {
            Key::Checked(k) => k.to_key(),
            Key::Owned(k) => k,
        }
    }
}

static IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);

fn scope_of(headers: &HeaderMap, name: Option<&HeaderName>) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name?).iter();
    let mut scope = values.next()?.as_bytes().to_vec();
    for more in values {
        scope.push(0);
        scope.extend_from_slice(more.as_bytes());
    }
    Some(scope)
}

enum ReadError {
    TooLarge,
    Failed(BoxError),
}

/// Reads a request body, refusing it as soon as it passes `limit`: a
/// declared `Content-Length` over the limit is refused before any byte is read.
async fn read_limited<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        // One chunk (the usual case) is kept as is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The protocol for one covered request (SPEC rules 1 to 12).
///
/// One `async move` block that uses its captured arguments in place, not
/// nested `async fn`s: an `async fn` keeps its arguments twice (as captured
/// and as locals) and every level held its own copy of the request's parts,
/// which made this future 3.3 KiB, past what malloc serves from its
/// per-thread cache, and copied that much per request. Here the parts live
/// once, helpers borrow them, and the paths only a remote store takes
/// (retried `complete` and `release`, a secret read from the store) are
/// boxed where they happen.
#[allow(clippy::manual_async_fn)] // On purpose: see above.
fn protocol<S, ReqBody, ResBody>(
    route: Route,
    mut inner: S,
    mut parts: Parts,
    body: ReqBody,
    span: tracing::Span,
    permit: Option<Admitted>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send + 'static
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        // Held until the request is answered (the admission limit).
        let _permit = permit;
        let shared = &*route.shared;
        let policy = route.policy();
        let refuse = |kind: ProblemKind, detail: String| {
            outcome(&span, kind.slug());
            route.count(kind);
            Ok(problem_response(shared, &Problem::new(kind, detail)))
        };

        // Rules 1 and 2: the key, before the body is read.
        let scope = scope_of(&parts.headers, shared.scope_header.as_ref());
        let key = match header_key(
            &parts.headers,
            policy,
            shared.signing_secret.as_ref(),
            scope.as_deref(),
        ) {
            Ok(k) => k,
            Err(e) => return refuse(ProblemKind::KeyInvalid, e),
        };
        let body_keyed = key.is_none()
            && policy
                .webhook
                .as_ref()
                .is_some_and(|w| w.body_hash_fallback);
        if key.is_none() && !body_keyed {
            if policy.key_required {
                return refuse(
                    ProblemKind::KeyMissing,
                    format!(
                        "{} {} requires an Idempotency-Key header: send a unique key (a UUID v4, say) and reuse it on every retry of this operation",
                        parts.method,
                        parts.uri.path()
                    ),
                );
            }
            // An optional key that was not sent: no protection asked for.
            outcome(&span, "unprotected");
            let req = Request::from_parts(parts, RequestBody::streaming(body));
            return inner.call(req).await.map(|r| r.map(ResponseBody::inner));
        }

        // Rule 11: read the body (it is part of the fingerprint), within the limit.
        let bytes = match read_limited(&parts.headers, body, policy.max_request_body).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                return refuse(
                    ProblemKind::BodyTooLarge,
                    format!(
                        "the request body is larger than this route's limit of {} bytes",
                        policy.max_request_body
                    ),
                )
            }
            Err(ReadError::Failed(e)) => {
                return refuse(
                    ProblemKind::BodyUnreadable,
                    format!("the request body could not be read: {e}; send it again"),
                )
            }
        };
        let key = match key {
            Some(k) => k,
            None => Key::Owned(raw_body_key(&bytes)),
        };

        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let fingerprint =
            Fingerprint::compute(policy.fingerprint, &parts.method, path_and_query, &bytes);
        // In blocks, here and below: a local's room in this future is kept
        // until its scope ends, even after it was moved.
        let store_key = {
            let derived = match shared.secret_ready() {
                Some(secret) => Ok(StoreKey::derive(secret, scope.as_deref(), key.as_str())),
                None => Box::pin(shared.secret())
                    .await
                    .map(|secret| StoreKey::derive(secret, scope.as_deref(), key.as_str())),
            };
            match derived {
                Ok(k) => k,
                Err(e) => {
                    return Box::pin(store_failure(&route, inner, parts, bytes, e, &span)).await
                }
            }
        };
        span.record("key", tracing::field::display(store_key.short()));

        let wait_until = policy.wait.map(|w| tokio::time::Instant::now() + w);
        let mut poll = Duration::from_millis(5);
        let (fence, begun_at) = loop {
            let nap = {
                let started = std::time::Instant::now();
                let begun = match shared.store.local() {
                    Some(local) => local.begin_now(&store_key, &fingerprint, policy.lease),
                    None => match tokio::time::timeout(
                        shared.store_timeout,
                        shared.store.begin(&store_key, &fingerprint, policy.lease),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Timeout(shared.store_timeout)),
                    },
                };
                let begun_at = std::time::Instant::now();
                route
                    .metrics()
                    .store(StoreOp::Begin, begun_at.saturating_duration_since(started));
                match begun {
                    Ok(Begin::Started(fence)) => break (fence, begun_at),
                    Ok(Begin::Completed(stored)) => {
                        tracing::debug!("replaying");
                        route.metrics().hit();
                        outcome(&span, "replayed");
                        let cookies = match policy.replay_set_cookie {
                            SetCookieReplay::Always => true,
                            SetCookieReplay::Never => false,
                            SetCookieReplay::Scoped => scope.is_some(),
                            _ => false,
                        };
                        return Ok(replay(stored, cookies));
                    }
                    Ok(Begin::Mismatch) => {
                        return refuse(
                            ProblemKind::KeyReused,
                            "this Idempotency-Key was already used for a different request (method, path or body differ); use a new key for a new operation".into(),
                        )
                    }
                    Ok(Begin::InProgress { lease_remaining }) => {
                        // Waiting (the route's `wait`): a nap, then ask again.
                        let now = tokio::time::Instant::now();
                        match wait_until.and_then(|d| d.checked_duration_since(now)) {
                            Some(left) if !left.is_zero() => poll.min(lease_remaining).min(left),
                            _ => {
                                route.count(ProblemKind::KeyInUse);
                                outcome(&span, ProblemKind::KeyInUse.slug());
                                return Ok(problem_response(
                                    shared,
                                    &Problem::new(
                                        ProblemKind::KeyInUse,
                                        "a request with this Idempotency-Key is still being processed; retry after the Retry-After delay to get its answer",
                                    )
                                    .with_retry_after(RETRY_AFTER_IN_USE),
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        return Box::pin(store_failure(&route, inner, parts, bytes, e, &span)).await
                    }
                }
            };
            // Computed above, so that nothing of this attempt is kept
            // across the nap.
            poll = (poll * 2).min(Duration::from_millis(100));
            tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
        };

        // Started: this request holds the key. It executes, then its answer
        // is stored or its key released; a client disconnecting cannot
        // cancel that half-way (rule 12, see `ResponseFuture`).
        tracing::debug!("executing");
        route.metrics().miss();
        outcome(&span, "executed");
        if shared.request_context {
            let context = IdempotencyContext::new(route.clone(), scope, key.into_key());
            parts.extensions.insert(context);
        }
        // Counted so that a shutdown waits for the answer to be stored.
        let _guard = shared.in_flight.enter();
        let executed = {
            // The lease is renewed every third of it while the execution
            // runs, so a long execution is never taken over while alive, and
            // a crashed one blocks its key for at most one lease.
            let _renewed = shared.renewals.register(&route, store_key, fence);
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
                inner.call(Request::from_parts(parts, RequestBody::buffered(bytes)))
            }));
            AssertUnwindSafe(collect(called, policy))
                .catch_unwind()
                .await
                .and_then(|r| r)
        };
        // One clock reading ends the execution and starts `complete`.
        let finished = std::time::Instant::now();
        route
            .metrics()
            .processing(finished.saturating_duration_since(begun_at));
        let finishing = {
            let answer = answer(shared, executed);
            if matches!(answer, Answer::Release(_)) {
                self::outcome(&span, "executed-not-stored");
                route.metrics().error(ErrorKind::Upstream);
            }
            match shared.store.local() {
                Some(local) => {
                    return match answer {
                        Answer::Store(stored, res) => {
                            complete_local(&route, local, &store_key, fence, stored, finished);
                            Ok(res)
                        }
                        Answer::Release(result) => {
                            release_local(&route, local, &store_key, fence);
                            result
                        }
                    }
                }
                // Boxed, owning the answer: only a remote store waits here.
                None => Box::pin(finish_remote(
                    route.clone(),
                    store_key,
                    fence,
                    answer,
                    finished,
                )),
            }
        };
        finishing.await
    }
}

/// Stores the answer in a remote store, or releases the key; returns the
/// client's response.
async fn finish_remote<B, E>(
    route: Route,
    key: StoreKey,
    fence: Fence,
    answer: Answer<B, E>,
    finished: std::time::Instant,
) -> Result<Response<ResponseBody<B>>, E> {
    match answer {
        Answer::Store(stored, res) => {
            complete(&route, &key, fence, stored, finished).await;
            Ok(res)
        }
        Answer::Release(result) => {
            release(&route, &key, fence).await;
            result
        }
    }
}

/// Rule 10: the store failed. Fail-closed (503) unless the route is
/// fail-open, which executes the request without protection. Boxed by its
/// callers: a cold path whose future would otherwise take room in every
/// covered request's.
async fn store_failure<S, ReqBody, ResBody>(
    route: &Route,
    mut inner: S,
    parts: Parts,
    bytes: Bytes,
    e: StoreError,
    span: &tracing::Span,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
{
    route.count(ProblemKind::StoreUnavailable);
    if route.policy().fail_open {
        outcome(span, "fail-open");
        tracing::warn!(route = route.name(), error = %e, "idempotency store failed; executing unprotected (fail-open)");
        let req = Request::from_parts(parts, RequestBody::buffered(bytes));
        return inner.call(req).await.map(|r| r.map(ResponseBody::inner));
    }
    let kind = match e {
        StoreError::CapacityExceeded { .. } | StoreError::BytesExceeded { .. } => {
            ProblemKind::StoreFull
        }
        _ => ProblemKind::StoreUnavailable,
    };
    outcome(span, kind.slug());
    tracing::warn!(route = route.name(), error = %e, "idempotency store failed; refusing (fail-closed)");
    Ok(problem_response(
        &route.shared,
        &Problem::new(kind, format!("{e}; nothing was executed, retry later")).with_retry_after(1),
    ))
}

/// What an execution produced.
enum Outcome<B> {
    /// A status that is not stored (rule 7): passed through, key released.
    NoStore(Response<B>),
    /// Read in full, within the stored-response limit: one buffer holding
    /// the storable header values (the first `usize` bytes) then the body.
    Full(http::response::Parts, Bytes, usize),
    /// Over the limit: the part read, and the rest of the stream.
    Oversize(http::response::Parts, Bytes, std::pin::Pin<Box<B>>),
    /// The response body failed while being read.
    BodyFailed(BoxError),
}

/// Awaits the inner service's answer (`called`: its future, or the panic of
/// the call that was to make it) and reads it, within the stored-response
/// limit, for storing.
async fn collect<F, ResBody, E>(
    called: std::thread::Result<F>,
    policy: &RoutePolicy,
) -> std::thread::Result<Result<Outcome<ResBody>, E>>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let fut = called?;
    Ok(read_answer(fut, policy).await)
}

/// Reads the inner service's answer for storing.
async fn read_answer<F, ResBody, E>(fut: F, policy: &RoutePolicy) -> Result<Outcome<ResBody>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = {
        // In a block: the response's room is not kept while its body is read.
        let res = fut.await?;
        if policy.no_store.contains(res.status().as_u16()) {
            return Ok(Outcome::NoStore(res));
        }
        res.into_parts()
    };
    // Boxed so that, when the body is too large to store, the rest of it can
    // be handed on to the client after part of it was read here.
    let mut body = Box::pin(body);
    let limit = policy.max_stored_response;
    // One buffer for the record: the header values to store, then the body.
    // The stored answer and the client's copy are slices of it, so storing
    // costs one allocation however many headers there are, and the record
    // keeps no part of the connection's read buffer alive.
    let head = storable_values_len(&parts.headers);
    let hint = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(limit.saturating_add(1));
    let mut buf = BytesMut::with_capacity(head + hint);
    for (_, v) in storable(&parts.headers) {
        buf.extend_from_slice(v.as_bytes());
    }
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => return Ok(Outcome::BodyFailed(e.into())),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() - head > limit {
            let prefix = buf.split_off(head).freeze();
            return Ok(Outcome::Oversize(parts, prefix, body));
        }
    }
    Ok(Outcome::Full(parts, buf.freeze(), head))
}

/// What an execution ended with.
enum Answer<B, E> {
    /// An answer to store, and the client's response.
    Store(StoredResponse, Response<ResponseBody<B>>),
    /// A result that is not stored, so the key is released (rule 7).
    Release(Result<Response<ResponseBody<B>>, E>),
}

fn answer<B, E>(
    shared: &Shared,
    executed: std::thread::Result<Result<Outcome<B>, E>>,
) -> Answer<B, E> {
    use Answer::{Release, Store};
    match executed {
        Err(_panic) => Release(Ok(problem_response(
            shared,
            &Problem::new(
                ProblemKind::ExecutionFailed,
                "the request handler panicked; nothing was stored, so a retry executes again",
            ),
        ))),
        Ok(Err(e)) => Release(Err(e)),
        Ok(Ok(Outcome::NoStore(res))) => Release(Ok(res.map(ResponseBody::inner))),
        Ok(Ok(Outcome::BodyFailed(e))) => Release(Ok(problem_response(
            shared,
            &Problem::new(
                ProblemKind::ExecutionFailed,
                format!(
                    "the response body failed: {e}; nothing was stored, so a retry executes again"
                ),
            ),
        ))),
        Ok(Ok(Outcome::Full(parts, all, head))) => {
            let bytes = all.slice(head..);
            let stored = StoredResponse {
                status: parts.status.as_u16(),
                headers: storable_headers_in(&parts.headers, &all),
                body: bytes.clone(),
                body_omitted: None,
            };
            Store(
                stored,
                Response::from_parts(parts, ResponseBody::full(bytes)),
            )
        }
        Ok(Ok(Outcome::Oversize(parts, prefix, rest))) => {
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let stored = StoredResponse {
                status: parts.status.as_u16(),
                headers: storable_headers(&parts.headers),
                body: Bytes::new(),
                body_omitted: Some(declared.unwrap_or(prefix.len() as u64)),
            };
            Store(
                stored,
                Response::from_parts(parts, ResponseBody::prefixed(prefix, rest)),
            )
        }
    }
}

/// Stores the answer in a store of this process: nothing to wait for and
/// no blip to retry past; the answer moves into the store.
fn complete_local(
    route: &Route,
    local: &dyn LocalStore,
    key: &StoreKey,
    fence: Fence,
    stored: StoredResponse,
    started: std::time::Instant,
) {
    let done = local.complete_now(key, fence, stored, route.policy().ttl);
    route.metrics().store(StoreOp::Complete, started.elapsed());
    match done {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(key = %key.short(), "execution finished after its lease was taken over; its answer was not stored")
        }
        Err(e) => {
            tracing::error!(key = %key.short(), error = %e, "could not store the answer; the key stays in progress until its lease ends")
        }
    }
}

/// Removes the record in a store of this process (rule 7). Not retried: with
/// nothing in between to recover, a second try would fail the same way, and
/// the lease frees the key in the end.
fn release_local(route: &Route, local: &dyn LocalStore, key: &StoreKey, fence: Fence) {
    let started = std::time::Instant::now();
    let done = local.release_now(key, fence);
    route.metrics().store(StoreOp::Release, started.elapsed());
    if let Err(e) = done {
        tracing::warn!(key = %key.short(), error = %e, "releasing the key failed; it is freed when its lease ends");
    }
}

/// Stores the answer, retrying briefly: a store blip here must not leave the
/// key in progress until its lease ends. `started` is when the execution
/// ended (one clock reading serves both).
async fn complete(
    route: &Route,
    key: &StoreKey,
    fence: Fence,
    stored: StoredResponse,
    mut started: std::time::Instant,
) {
    let shared = &route.shared;
    let ttl = route.policy().ttl;
    if let Some(local) = shared.store.local() {
        return complete_local(route, local, key, fence, stored, started);
    }
    let stored = &stored;
    for attempt in 0..3u32 {
        if attempt > 0 {
            started = std::time::Instant::now();
        }
        let done = tokio::time::timeout(
            shared.store_timeout,
            shared.store.complete(key, fence, stored, ttl),
        )
        .await;
        route.metrics().store(StoreOp::Complete, started.elapsed());
        match done {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) => {
                tracing::warn!(key = %key.short(), "execution finished after its lease was taken over; its answer was not stored");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %key.short(), error = %e, attempt, "storing the answer failed")
            }
            Err(_) => tracing::warn!(key = %key.short(), attempt, "storing the answer timed out"),
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
    tracing::error!(key = %key.short(), "could not store the answer; the key stays in progress until its lease ends");
}

/// Removes the record so a retry executes again (rule 7), retrying briefly;
/// if the store stays down the lease ends on its own.
pub(crate) async fn release(route: &Route, key: &StoreKey, fence: Fence) {
    let shared = &route.shared;
    if let Some(local) = shared.store.local() {
        return release_local(route, local, key, fence);
    }
    for attempt in 0..3u32 {
        let started = std::time::Instant::now();
        let done =
            tokio::time::timeout(shared.store_timeout, shared.store.release(key, fence)).await;
        route.metrics().store(StoreOp::Release, started.elapsed());
        match done {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::warn!(key = %key.short(), error = %e, attempt, "releasing the key failed")
            }
            Err(_) => tracing::warn!(key = %key.short(), attempt, "releasing the key timed out"),
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
}
