//! The protocol of one covered request, one file per step of SPEC.md:
//!
//! | rules | step | file |
//! |---|---|---|
//! | 1, 2 | the key and the scope (signed and webhook keys) | `key.rs` |
//! | 11 | reading the body | `read_body.rs` |
//! | 3, 5, 6, 8, 9 | `begin` and what its answer means (wait mode) | `begin.rs` |
//! | 10 | store failure (fail-closed, fail-open) | `store_failure.rs` |
//! | 7, 12, 13 | executing and reading the answer (unknown outcomes, broken bodies) | `execute.rs` |
//! | — | storing the answer or releasing the key, with retries | `finish.rs` |
//! | — | renewing leases while executions run | `renew.rs` |
//! | 4 | replaying (stored headers, cookies) | `replay.rs` |
//! | all | every refusal, its detail text and its metric | `refusal.rs` |
//!
//! This file holds the one `async` block that runs these steps in order
//! (see [`protocol`] for why it is one block) and the route a request
//! belongs to (`route.rs`). The tower shell around it is `crate::layer`.

mod begin;
mod execute;
mod fields;
mod finish;
mod grpc;
mod key;
mod quota;
mod rate;
mod read_body;
pub(crate) mod refusal;
mod renew;
mod replay;
mod route;
mod store_failure;
mod stream;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use idem_core::key::raw_body_key;
use idem_core::{Fingerprint, Problem, ProblemKind, StoreError, StoreKey};
use tower_service::Service;

use self::begin::Next;
pub use self::execute::OutcomeUnknown;
use self::execute::{answer, collect, unprotected, Answer, Executed};
pub(crate) use self::finish::release;
use self::finish::{complete_at_once, finish_remote, release_at_once};
pub use self::grpc::TRAILER_PREFIX;
use self::key::{body_key, header_key, Key};
pub(crate) use self::quota::ScopeQuota;
pub(crate) use self::rate::KeyRate;
pub(crate) use self::read_body::BodyTimeouts;
use self::read_body::{read_limited, ReadError};
pub(crate) use self::renew::Renewals;
pub(crate) use self::replay::storable_headers;
use self::replay::{replay, replays_cookies};
pub use self::replay::{IDEMPOTENT_BODY_LOST, IDEMPOTENT_BODY_OMITTED, IDEMPOTENT_REPLAYED};
pub(crate) use self::route::Route;
use self::store_failure::store_failure;
use self::stream::Recording;
pub(crate) use self::stream::Tee;
use crate::context::IdempotencyContext;
use crate::identity::header_scope;
use crate::layer::{Admitted, BoxError, RequestBody, ResponseBody};
use crate::metrics::{ErrorKind, StoreOp};

use crate::access::Trace;

/// Records the covered request's outcome on its span and for its access
/// line (the span is passed down rather than looked up: `Span::current`
/// costs a thread-local and a registry lookup even when the span is
/// disabled).
fn outcome(trace: &Trace, o: &'static str) {
    trace.outcome(o);
}

/// A slot under the layer's in-flight limit, if it has one; `Err` when
/// every slot is taken.
fn admit(shared: &crate::layer::Shared) -> Result<Option<Admitted>, ()> {
    match &shared.max_in_flight {
        None => Ok(None),
        Some(limit) => limit.try_enter().map(Some).ok_or(()),
    }
}

/// The body field a route reads its key from (`key_json`, a webhook's
/// `json`), if any.
fn body_key_field(policy: &idem_core::RoutePolicy) -> Option<&str> {
    match &policy.webhook {
        Some(w) => w.json.as_deref(),
        None => policy.key_json.as_deref(),
    }
}

/// Whether a webhook route keys a delivery without a key on its body's hash.
fn hash_keyed(policy: &idem_core::RoutePolicy) -> bool {
    policy
        .webhook
        .as_ref()
        .is_some_and(|w| w.body_hash_fallback)
}

/// Counts a new record against its scope's rate and share, if the layer
/// has them: the share's count to settle when the record goes, or the
/// refusal.
fn admit_scope<'a>(
    shared: &'a crate::layer::Shared,
    scope: Option<&[u8]>,
    ttl: Duration,
) -> Result<Option<(&'a ScopeQuota, u64)>, Problem> {
    if let Some(rate) = &shared.key_rate {
        rate.take(rate.tag(scope))
            .map_err(refusal::scope_rate_limited)?;
    }
    let Some(q) = shared.scope_quota() else {
        return Ok(None);
    };
    let tag = q.tag(scope);
    if !q.take(tag) {
        return Err(refusal::scope_full(q.max(), ttl));
    }
    Ok(Some((q, tag)))
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
pub(crate) fn protocol<S, ReqBody, ResBody>(
    route: Route,
    mut inner: S,
    mut parts: Parts,
    body: ReqBody,
    span: tracing::Span,
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
    let trace = Trace::new(span, route.shared.access_log.is_some(), &parts);
    // A gRPC client is told refusals the gRPC way (see `grpc`). gRPC runs
    // over HTTP/2 only: an HTTP/1.1 request skips the header lookup.
    let grpc = parts.version == http::Version::HTTP_2 && grpc::is_grpc(&parts.headers);
    async move {
        // The key every answer carries back, on a route that echoes it
        // (`echo_key`): set by the steps once the key is known and valid.
        // Boxed: 8 bytes of this future where no route echoes keys.
        let mut echoed: Option<Box<http::HeaderValue>> = None;
        // The steps, in a labelled block rather than an `async` block of
        // their own: an inner future would hold its own copy of the
        // request's parts, body and service beside this one's (a future
        // keeps what it captured for its whole life), 256 bytes more in a
        // future that must stay within what glibc's per-thread cache serves
        // (1,032 bytes) to be allocated cheaply. Each step ends with
        // `break 'steps` and the answer; the access line is written once
        // they have given it, whichever step gave it.
        let mut out = 'steps: {
            let shared = &*route.shared;
            let policy = route.policy();
            // A macro, not a closure: a closure used after awaits keeps its
            // three references in this future for the request's whole life.
            macro_rules! refuse {
                ($problem:expr) => {{
                    let problem: Problem = $problem;
                    outcome(&trace, problem.kind.slug());
                    route.count(problem.kind);
                    Ok(refusal::response(shared, &problem))
                }};
            }

            // Whose key: from a header, or a verified identity (refused with
            // 401 when its credentials do not verify, before anything is read).
            let scope = match &shared.scope {
                crate::ScopeSource::Header(name) => header_scope(&parts.headers, name),
                crate::ScopeSource::Shared => None,
                crate::ScopeSource::Verified(v) => match v.identify(&parts) {
                    Ok(scope) => scope,
                    Err(why) => {
                        outcome(&trace, ProblemKind::Unauthenticated.slug());
                        route.count(ProblemKind::Unauthenticated);
                        break 'steps Ok(refusal::unauthenticated(shared, why));
                    }
                },
            }
            // A boxed slice (no capacity word): kept until the execution, in
            // a future that must stay within 1,032 bytes (see above).
            .map(Vec::into_boxed_slice);
            // Rules 1 and 2: the key, before the body is read. In a block
            // (so is the body key below): the locals it borrows keep no
            // room in this future past it.
            let key = {
                let key = match header_key(
                    &parts.headers,
                    policy,
                    shared.signing_secret.as_ref(),
                    scope.as_deref(),
                ) {
                    Ok(k) => k,
                    Err(e) => break 'steps refuse!(refusal::key_invalid(e)),
                };
                if policy.echo_key {
                    echoed = key.as_ref().and_then(Key::echo).map(Box::new);
                }
                // A key in a body field (`key_json`, a webhook's `json`) is
                // read with the body; so is a webhook's body hash.
                let body_keyed =
                    key.is_none() && (hash_keyed(policy) || body_key_field(policy).is_some());
                if key.is_none() && !body_keyed {
                    if policy.key_required {
                        break 'steps refuse!(refusal::key_missing(
                            &parts.method,
                            parts.uri.path()
                        ));
                    }
                    // An optional key that was not sent: no protection asked for.
                    let _permit = match admit(shared) {
                        Ok(p) => p,
                        Err(()) => break 'steps refuse!(refusal::overloaded()),
                    };
                    let req = Request::from_parts(parts, RequestBody::streaming(body));
                    break 'steps Box::pin(unprotected(&trace, "unprotected", inner, req)).await;
                }
                key
            };

            // Rule 11: read the body (it is part of the fingerprint), within the limit.
            let read = read_limited(
                &parts.headers,
                body,
                policy.max_request_body,
                shared.body_timeouts,
            );
            let bytes = match read.await {
                Ok(b) => b,
                Err(ReadError::TooLarge) => {
                    break 'steps refuse!(refusal::body_too_large(policy.max_request_body))
                }
                Err(ReadError::Failed(e)) => break 'steps refuse!(refusal::body_unreadable(&e)),
                Err(ReadError::TimedOut) => {
                    break 'steps refuse!(refusal::body_timeout(shared.body_timeouts.total))
                }
                Err(ReadError::Idle) => {
                    break 'steps refuse!(refusal::body_idle(shared.body_timeouts.idle))
                }
            };
            // The in-flight slot is taken once the body is here, and held until
            // the request is answered: taken before, requests whose bodies
            // never come (or trickle in) would hold every slot until their
            // body read timeout, and refuse everyone else. Bodies being read
            // are bounded by the connection limit and that timeout instead.
            let permit = match admit(shared) {
                Ok(p) => p,
                Err(()) => break 'steps refuse!(refusal::overloaded()),
            };
            let key = match key {
                Some(k) => k,
                None => {
                    let json_key = body_key_field(policy);
                    let found = match json_key {
                        Some(pointer) => match body_key(
                            &bytes,
                            pointer,
                            policy,
                            shared.signing_secret.as_ref(),
                            scope.as_deref(),
                        ) {
                            Ok(k) => k,
                            Err(e) => break 'steps refuse!(refusal::key_invalid(e)),
                        },
                        None => None,
                    };
                    match (found, json_key) {
                        (Some(k), _) => k,
                        (None, _) if hash_keyed(policy) => Key::Owned(raw_body_key(&bytes)),
                        (None, Some(pointer)) if policy.key_required => {
                            break 'steps refuse!(refusal::key_missing_from_both(
                                &parts.method,
                                parts.uri.path(),
                                pointer,
                            ))
                        }
                        // An optional key sent nowhere: no protection asked for.
                        (None, _) => {
                            let req = Request::from_parts(parts, RequestBody::buffered(bytes));
                            break 'steps Box::pin(unprotected(&trace, "unprotected", inner, req))
                                .await;
                        }
                    }
                }
            };

            if policy.echo_key && echoed.is_none() {
                echoed = key.echo().map(Box::new);
            }
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
                        break 'steps Box::pin(store_failure(
                            &route, inner, parts, bytes, e, None, &trace,
                        ))
                        .await
                    }
                }
            };
            trace.key(store_key.short());

            // The fingerprint in the block of the `begin`s that use it: its
            // room in this future ends with them.
            let (fence, begun_at) = {
                let fingerprint = {
                    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let selected = fields::selected(&policy.fingerprint_fields, &bytes);
                    let body = selected.as_deref().unwrap_or(&bytes);
                    Fingerprint::compute(policy.fingerprint, &parts.method, path_and_query, body)
                };
                let wait_until = policy.wait.map(|w| tokio::time::Instant::now() + w);
                let mut poll = Duration::from_millis(5);
                loop {
                    let nap = {
                        let started = std::time::Instant::now();
                        let begun = match shared
                            .store
                            .begin(&store_key, &fingerprint, policy.lease)
                            .into_ready()
                        {
                            // An in-process store or a cache hit: no timer to set.
                            Ok(answer) => answer,
                            Err(pending) => {
                                match tokio::time::timeout(shared.store_timeout, pending).await {
                                    Ok(r) => r,
                                    Err(_) => Err(StoreError::Timeout(shared.store_timeout)),
                                }
                            }
                        };
                        let begun_at = std::time::Instant::now();
                        route
                            .metrics()
                            .store(StoreOp::Begin, begun_at.saturating_duration_since(started));
                        // Rules 3 to 9: what the store's answer means (see `begin`).
                        match begin::next(begun, wait_until, poll) {
                            Next::Execute(fence) => break (fence, begun_at),
                            Next::Replay(stored) => {
                                tracing::debug!("replaying");
                                route.metrics().hit();
                                outcome(&trace, "replayed");
                                let cookies =
                                    replays_cookies(policy.replay_set_cookie, scope.is_some());
                                break 'steps Ok(replay(stored, cookies));
                            }
                            Next::Refuse(problem) => break 'steps refuse!(problem),
                            Next::Nap(nap) => nap,
                            Next::StoreFailed(e) => {
                                break 'steps Box::pin(store_failure(
                                    &route,
                                    inner,
                                    parts,
                                    bytes,
                                    e,
                                    Some(store_key.short()),
                                    &trace,
                                ))
                                .await
                            }
                        }
                    };
                    // Computed above, so that nothing of this attempt is kept
                    // across the nap.
                    poll = (poll * 2).min(Duration::from_millis(100));
                    tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
                }
            };

            // A new record: within its scope's rate of new keys and share of a
            // bounded store (see `rate` and `quota`)? If not, the record just
            // made is released and the scope told to wait; replays above never
            // get here.
            let quota = match admit_scope(shared, scope.as_deref(), policy.ttl) {
                Ok(q) => q,
                Err(problem) => {
                    if !release_at_once(&route, &store_key, fence) {
                        Box::pin(release(&route, &store_key, fence)).await
                    }
                    break 'steps refuse!(problem);
                }
            };
            // Started: this request holds the key. It executes, then its answer
            // is stored or its key released; a client disconnecting cannot
            // cancel that half-way (rule 12, see `ResponseFuture`).
            tracing::debug!("executing");
            outcome(&trace, "executed");
            if shared.request_context {
                let context = IdempotencyContext::new(
                    route.clone(),
                    scope.map(Vec::from),
                    key.into_key(),
                    store_key,
                    fence,
                );
                parts.extensions.insert(context);
            }
            // Counted so that a shutdown waits for the answer to be stored.
            let in_flight = shared.in_flight.enter();
            // The lease is renewed every third of it until the answer is stored
            // or the key released (not only while the execution runs: storing
            // can take retries longer than a short lease), so a live request is
            // never taken over, and a crashed one blocks its key for at most
            // one lease.
            let renewed = shared.renewals.register(&route, store_key, fence, begun_at);
            let executed = {
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
            let took = finished.saturating_duration_since(begun_at);
            route.metrics().processing(took);
            trace.upstream(took);
            let finishing = {
                let answer = match answer(&route, store_key.short(), executed) {
                    Executed::Settled(a) => a,
                    // Stored when its body ends: what keeps the execution
                    // counted, its slot and its lease go with the body.
                    Executed::Stream(parts, body) => {
                        route.metrics().miss();
                        if let Some((q, tag)) = quota {
                            q.expire_after(tag, policy.ttl);
                        }
                        let recording = Recording::new(
                            route.clone(),
                            store_key,
                            fence,
                            &parts,
                            renewed,
                            in_flight,
                            permit,
                        );
                        let body = ResponseBody::streamed(Tee::new(body, recording));
                        break 'steps Ok(Response::from_parts(parts, body));
                    }
                };
                // Counted once, as what it was: an execution whose answer is
                // kept (a miss), or one that failed and was released (an
                // upstream error), never both.
                if matches!(answer, Answer::Release(_)) {
                    self::outcome(&trace, "executed-not-stored");
                    route.metrics().error(ErrorKind::Upstream);
                } else {
                    route.metrics().miss();
                }
                if let Some((q, tag)) = quota {
                    match answer {
                        Answer::Release(_) => q.give_back(tag),
                        Answer::Store(..) | Answer::Stored(_) => q.expire_after(tag, policy.ttl),
                    }
                }
                // At once when the store answers at once (dropping the
                // registration ends the renewals); otherwise boxed, owning the
                // answer: only a store that waits waits here.
                let answer = match answer {
                    Answer::Store(stored, res) => {
                        if complete_at_once(&route, &store_key, fence, &stored, finished) {
                            drop(renewed);
                            break 'steps Ok(res);
                        }
                        Answer::Store(stored, res)
                    }
                    Answer::Release(result) => {
                        if release_at_once(&route, &store_key, fence) {
                            drop(renewed);
                            break 'steps result;
                        }
                        Answer::Release(result)
                    }
                    Answer::Stored(res) => {
                        drop(renewed);
                        break 'steps Ok(res);
                    }
                };
                Box::pin(finish_remote(
                    route.clone(),
                    store_key,
                    fence,
                    answer,
                    finished,
                    renewed,
                ))
            };
            finishing.await
        };
        if grpc {
            out = out.map(grpc::refusal);
        }
        if let (Ok(res), Some(key)) = (&mut out, echoed) {
            res.headers_mut()
                .insert(key::IDEMPOTENCY_KEY_HEADER.clone(), *key);
        }
        if route.shared.trace_context {
            if let Ok(res) = &out {
                trace.span.record("status", res.status().as_u16());
            }
        }
        if let Some(sink) = &route.shared.access_log {
            trace.finish(&**sink, route.name(), &out);
        }
        out
    }
}
