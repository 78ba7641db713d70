//! Rules 7, 12 and 13: the execution's answer, read for storing. A status
//! that is not stored (5xx, 408, 429 by default) or a panic releases the key
//! (or, when the inner service marks its answer [`OutcomeUnknown`] and the
//! route says `keep`, keeps it); an answer whose body breaks off after its
//! status line is stored without its body; any other answer is stored. The
//! read runs to its end even when the client has gone (the layer's
//! `ResponseFuture` sees to it).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::FutureExt;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use idem_core::{RoutePolicy, StoredResponse, UnknownOutcome};

use super::replay::{
    storable, storable_headers, storable_headers_in, storable_values_len, IDEMPOTENT_BODY_LOST,
};
use super::stream::Inner;
use super::{grpc, refusal};
use crate::context::AnsweredInTransaction;
use tower_service::Service;

use crate::access::Trace;
use crate::layer::{BoxError, RequestBody, ResponseBody, Shared};

/// What an execution produced.
pub(super) enum Outcome<B> {
    /// A status that is not stored (rule 7): passed through, key released.
    NoStore(Response<B>),
    /// Nothing of the answer arrived, and the route keeps such keys.
    Unknown,
    /// Read in full, within the stored-response limit: one buffer holding
    /// the storable header values (the first `usize` bytes) then the body;
    /// and the trailers that ended it, if any (gRPC's status).
    Full(http::response::Parts, Bytes, usize, Option<Box<HeaderMap>>),
    /// Read in full, and a gRPC failure that releases the key (see `grpc`):
    /// passed on with its body and trailers, not stored.
    Released(http::response::Parts, Bytes, Option<Box<HeaderMap>>),
    /// Over the limit: the part read, and the rest of the stream.
    Oversize(http::response::Parts, Bytes, std::pin::Pin<Box<B>>),
    /// The body broke off after the status line and headers arrived (rule
    /// 13): the operation ran. With how many body bytes had arrived.
    BodyFailed(http::response::Parts, u64, BoxError),
    /// An answer the route streams (see `stream`): its body not read yet.
    Stream(http::response::Parts, Inner),
    /// An answer the handler stored itself, inside its own transaction
    /// (`IdempotencyContext::answer`): passed on, nothing more stored.
    Stored(Response<B>),
}

/// A response extension an inner service sets on an answer it made itself
/// when the request may have reached the operation but nothing of the
/// operation's answer came back (a reset or a timeout before the status
/// line). On a route whose `unknown_outcome` is `keep` the layer then keeps
/// the key instead of releasing it. The gateway's proxy sets it; a
/// connection that was never made is not an unknown outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutcomeUnknown;

/// Executes `req` without protection (an optional key not sent, a
/// fail-open route whose store failed): nothing is stored, the outcome is
/// `why`, the time in the inner service noted for the access line. Boxed
/// by its callers: a cold path.
pub(super) async fn unprotected<S, ReqBody, ResBody>(
    trace: &Trace,
    why: &'static str,
    mut inner: S,
    req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
{
    trace.outcome(why);
    let called = std::time::Instant::now();
    let out = inner.call(req).await;
    trace.upstream(called.elapsed());
    out.map(|r| r.map(ResponseBody::inner))
}

/// Awaits the inner service's answer (`called`: its future, or the panic of
/// the call that was to make it) and reads it, within the stored-response
/// limit, for storing.
///
/// Combinators, not `async fn`s: an `async fn` keeps its arguments for its
/// whole life, so one awaiting the inner service's future (320 bytes for an
/// axum route) kept it twice, and through the body's read; every request's
/// future was 1000 bytes larger for this step alone, over what glibc's
/// per-thread cache serves, and copied that much more per request.
pub(super) fn collect<'a, F, ResBody, E>(
    called: std::thread::Result<F>,
    policy: &'a RoutePolicy,
) -> impl Future<Output = std::thread::Result<Result<Outcome<ResBody>, E>>> + 'a
where
    F: Future<Output = Result<Response<ResBody>, E>> + 'a,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    E: 'a,
{
    match called {
        Ok(fut) => Either::Left(read_answer(fut, policy).map(Ok)),
        Err(panic) => Either::Right(std::future::ready(Err(panic))),
    }
}

/// Reads the inner service's answer for storing: its head when it comes,
/// then (for an answer to store) its body.
pub(super) fn read_answer<'a, F, ResBody, E>(
    fut: F,
    policy: &'a RoutePolicy,
) -> impl Future<Output = Result<Outcome<ResBody>, E>> + 'a
where
    F: Future<Output = Result<Response<ResBody>, E>> + 'a,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    E: 'a,
{
    fut.then(move |res| match res.map(|res| settle(res, policy)) {
        Ok(Head::Read(parts, body)) => Either::Left(read_body(parts, body, policy).map(Ok)),
        Ok(Head::Settled(outcome)) => Either::Right(std::future::ready(Ok(outcome))),
        Err(e) => Either::Right(std::future::ready(Err(e))),
    })
}

/// What the head of an answer decides.
enum Head<B> {
    /// Settled by the head alone.
    Settled(Outcome<B>),
    /// A body to read for storing.
    Read(http::response::Parts, B),
}

fn settle<B>(res: Response<B>, policy: &RoutePolicy) -> Head<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if res.extensions().get::<AnsweredInTransaction>().is_some() {
        return Head::Settled(Outcome::Stored(res));
    }
    if policy.no_store.contains(res.status().as_u16()) {
        let unknown = res.extensions().get::<OutcomeUnknown>().is_some();
        if !(unknown && policy.unknown_outcome == UnknownOutcome::Keep) {
            return Head::Settled(Outcome::NoStore(res));
        }
        return Head::Settled(Outcome::Unknown);
    }
    let (parts, body) = res.into_parts();
    if policy.stream.streams(&parts.headers) {
        return Head::Settled(Outcome::Stream(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ));
    }
    Head::Read(parts, body)
}

/// Reads an answer's body, within the stored-response limit.
async fn read_body<ResBody>(
    parts: http::response::Parts,
    body: ResBody,
    policy: &RoutePolicy,
) -> Outcome<ResBody>
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
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
    let mut trailers = None;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                let received = (buf.len() - head) as u64;
                return Outcome::BodyFailed(parts, received, e.into());
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(Box::new(t));
                }
                continue;
            }
        };
        buf.extend_from_slice(&data);
        if buf.len() - head > limit {
            let prefix = buf.split_off(head).freeze();
            return Outcome::Oversize(parts, prefix, body);
        }
    }
    // A gRPC status arrives in trailers, or alone in the headers (with no
    // body): only such answers are looked at.
    if (trailers.is_some() || buf.len() == head)
        && grpc::releases(&parts.headers, trailers.as_deref())
    {
        let body = buf.split_off(head).freeze();
        return Outcome::Released(parts, body, trailers);
    }
    Outcome::Full(parts, buf.freeze(), head, trailers)
}

/// What an execution ended with.
pub(super) enum Answer<B, E> {
    /// An answer to store, and the client's response.
    Store(StoredResponse, Response<ResponseBody<B>>),
    /// A result that is not stored, so the key is released (rule 7).
    Release(Result<Response<ResponseBody<B>>, E>),
    /// An answer the handler already stored in its own transaction.
    Stored(Response<ResponseBody<B>>),
}

/// What an execution gave: an answer settled now, or one stored as it
/// streams to the client (see `stream`).
pub(super) enum Executed<B, E> {
    Settled(Answer<B, E>),
    Stream(http::response::Parts, Inner),
}

pub(super) fn answer<B, E>(
    route: &super::Route,
    key: idem_core::scope::ShortKey,
    executed: std::thread::Result<Result<Outcome<B>, E>>,
) -> Executed<B, E> {
    use Answer::{Release, Store};
    let shared: &Shared = &route.shared;
    Executed::Settled(match executed {
        Err(_panic) => Release(Ok(refusal::response(shared, &refusal::handler_panicked()))),
        Ok(Err(e)) => Release(Err(e)),
        Ok(Ok(Outcome::NoStore(res))) => Release(Ok(res.map(ResponseBody::inner))),
        Ok(Ok(Outcome::Unknown)) => {
            let problem = refusal::outcome_unknown();
            let res = refusal::response(shared, &problem);
            let stored = StoredResponse {
                status: problem.status(),
                headers: storable_headers(res.headers()),
                body: problem.to_json(&shared.problem_base).into(),
                body_omitted: None,
            };
            Store(stored, res)
        }
        Ok(Ok(Outcome::BodyFailed(parts, received, e))) => {
            // Logged here, not sent: error chains can name internal hosts.
            tracing::warn!(key = %key, route = route.name(), status = parts.status.as_u16(), received, error = %e, "the answer's body broke off after its status line: the operation ran; its answer is kept without the body");
            let mut headers = storable_headers(&parts.headers);
            headers.push((IDEMPOTENT_BODY_LOST, HeaderValue::from_static("true")));
            let stored = StoredResponse {
                status: parts.status.as_u16(),
                headers,
                body: Bytes::new(),
                body_omitted: Some(declared_length(&parts.headers).unwrap_or(received)),
            };
            Store(
                stored,
                refusal::response(shared, &refusal::answer_incomplete(parts.status)),
            )
        }
        Ok(Ok(Outcome::Full(parts, all, head, trailers))) => {
            let bytes = all.slice(head..);
            let mut headers = storable_headers_in(&parts.headers, &all);
            if let Some(t) = &trailers {
                headers.extend(grpc::stored_trailers(t));
            }
            let stored = StoredResponse {
                status: parts.status.as_u16(),
                headers,
                body: bytes.clone(),
                body_omitted: None,
            };
            let body = grpc::with_trailers(bytes, trailers);
            Store(stored, Response::from_parts(parts, body))
        }
        Ok(Ok(Outcome::Released(parts, bytes, trailers))) => Release(Ok(Response::from_parts(
            parts,
            grpc::with_trailers(bytes, trailers),
        ))),
        Ok(Ok(Outcome::Stream(parts, body))) => return Executed::Stream(parts, body),
        Ok(Ok(Outcome::Stored(res))) => Answer::Stored(res.map(ResponseBody::inner)),
        Ok(Ok(Outcome::Oversize(parts, prefix, rest))) => {
            let declared = declared_length(&parts.headers);
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
    })
}

/// The body length an answer announced (`Content-Length`), if it did.
pub(super) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
