//! Rule 4: a stored answer replayed byte for byte, and which headers of an
//! answer a record keeps.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use idem_core::{headers, SetCookieReplay, StoredResponse};

use super::grpc;
use crate::layer::ResponseBody;

/// The header a replayed answer carries: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// On a replay of an answer whose body was too large to store, the header
/// giving the original body's size in bytes: the status and headers are
/// replayed, the body is not, and nothing executes again.
pub const IDEMPOTENT_BODY_OMITTED: HeaderName = HeaderName::from_static("idempotent-body-omitted");

/// On a replay of an answer whose body broke off on its way (SPEC rule 13:
/// the operation ran, its status and headers arrived, its body did not),
/// `Idempotent-Body-Lost: true`, beside `Idempotent-Body-Omitted`. Kept as
/// one of the record's headers, so every store replays it as it is.
pub const IDEMPOTENT_BODY_LOST: HeaderName = HeaderName::from_static("idempotent-body-lost");

/// A stored answer, replayed; `Set-Cookie` dropped when `cookies` is false.
pub(super) fn replay<B>(stored: StoredResponse, cookies: bool) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    let mut trailers = None;
    for (name, value) in stored.headers {
        if !cookies && name == http::header::SET_COOKIE {
            continue;
        }
        // Trailers (a gRPC answer's status) are kept among the headers.
        if let Some(t) = grpc::trailer_name(&name) {
            trailers
                .get_or_insert_with(Box::<HeaderMap>::default)
                .append(t, value);
            continue;
        }
        headers.append(name, value);
    }
    *res.body_mut() = grpc::with_trailers(stored.body, trailers);
    let headers = res.headers_mut();
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if let Some(len) = stored.body_omitted {
        headers.insert(IDEMPOTENT_BODY_OMITTED, HeaderValue::from(len));
    }
    res
}

/// Whether a replay carries the stored `Set-Cookie` headers: per the route,
/// and for `Scoped` only when the request has a scope (an anonymous caller
/// never gets another caller's cookies).
pub(super) fn replays_cookies(policy: SetCookieReplay, scoped: bool) -> bool {
    match policy {
        SetCookieReplay::Always => true,
        SetCookieReplay::Never => false,
        SetCookieReplay::Scoped => scoped,
        _ => false,
    }
}

/// The headers to store, each value copied: a value parsed by hyper is a
/// slice of its connection's whole read buffer, and a record that kept it
/// would keep kilobytes alive per key (measured: the memory store grew by
/// a read buffer per request; the throughput cost is in docs/BENCHMARKS.md).
pub(crate) fn storable_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut stored = Vec::with_capacity(storable(headers).count());
    stored.extend(storable(headers).map(|(n, v)| {
        let mut copy = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
        copy.set_sensitive(v.is_sensitive());
        (n.clone(), copy)
    }));
    stored
}

/// The headers a record keeps, in order.
pub(super) fn storable(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers.iter().filter(|(n, _)| headers::is_stored(n))
}

/// The bytes of the values [`storable`] yields.
pub(super) fn storable_values_len(headers: &HeaderMap) -> usize {
    storable(headers).map(|(_, v)| v.len()).sum()
}

/// The headers to store, each value a slice of `values`, which holds them
/// one after the other from its start (see `read_answer`). The vector is
/// made to size: a collected filter starts at four entries (288 bytes),
/// kept by the record for as long as it lives.
pub(super) fn storable_headers_in(
    headers: &HeaderMap,
    values: &Bytes,
) -> Vec<(HeaderName, HeaderValue)> {
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
