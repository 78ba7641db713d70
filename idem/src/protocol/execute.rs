//! Rules 7 and 12: the execution's answer, read for storing. A status that
//! is not stored (5xx, 408, 429 by default), a panic or a failed body
//! releases the key; any other answer is stored. The read runs to its end
//! even when the client has gone (the layer's `ResponseFuture` sees to it).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use idem_core::{RoutePolicy, StoredResponse};

use super::refusal;
use super::replay::{storable, storable_headers, storable_headers_in, storable_values_len};
use crate::layer::{BoxError, ResponseBody, Shared};

/// What an execution produced.
pub(super) enum Outcome<B> {
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
pub(super) async fn collect<F, ResBody, E>(
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
pub(super) async fn read_answer<F, ResBody, E>(
    fut: F,
    policy: &RoutePolicy,
) -> Result<Outcome<ResBody>, E>
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
pub(super) enum Answer<B, E> {
    /// An answer to store, and the client's response.
    Store(StoredResponse, Response<ResponseBody<B>>),
    /// A result that is not stored, so the key is released (rule 7).
    Release(Result<Response<ResponseBody<B>>, E>),
}

pub(super) fn answer<B, E>(
    shared: &Shared,
    executed: std::thread::Result<Result<Outcome<B>, E>>,
) -> Answer<B, E> {
    use Answer::{Release, Store};
    match executed {
        Err(_panic) => Release(Ok(refusal::response(shared, &refusal::handler_panicked()))),
        Ok(Err(e)) => Release(Err(e)),
        Ok(Ok(Outcome::NoStore(res))) => Release(Ok(res.map(ResponseBody::inner))),
        Ok(Ok(Outcome::BodyFailed(e))) => Release(Ok(refusal::response(
            shared,
            &refusal::response_body_failed(&e),
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
