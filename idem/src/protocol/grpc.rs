//! gRPC unary calls (`application/grpc`): the key comes from the
//! `idempotency-key` metadata (an HTTP/2 header, so rules 1 and 2 read it
//! as any other); the answer's trailers (`grpc-status`, `grpc-message`) are
//! stored with it and replayed as trailers; `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED` and `RESOURCE_EXHAUSTED` release the key as a 5xx
//! does (rule 7); and a refusal is told the gRPC way, as a trailers-only
//! answer whose status says what happened (see `ProblemKind::grpc_status`).
//!
//! A record keeps trailers among its headers, named with the prefix
//! [`TRAILER_PREFIX`], so every store keeps them without a new column.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
pub(super) use idem_core::headers::is_grpc;
use idem_core::problem::PROBLEM_JSON;
use idem_core::ProblemKind;

use crate::layer::ResponseBody;

/// How a record names a trailer among its headers: `idem-trailer-` and
/// the trailer's name.
pub const TRAILER_PREFIX: &str = "idem-trailer-";

const GRPC_STATUS: &str = "grpc-status";

/// gRPC statuses that say the operation did not take place, or not yet:
/// the key is released so a retry executes (rule 7, as for 503, 504, 429).
const RELEASED: [&[u8]; 3] = [b"14", b"4", b"8"];

/// Whether an answer is a gRPC failure that releases the key. Its status
/// is in its trailers, or in its headers for a trailers-only answer.
pub(super) fn releases(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> bool {
    let status = trailers
        .and_then(|t| t.get(GRPC_STATUS))
        .or_else(|| headers.get(GRPC_STATUS));
    status.is_some_and(|s| RELEASED.contains(&s.as_bytes())) && is_grpc(headers)
}

/// The trailers to keep among a record's headers.
pub(super) fn stored_trailers(
    trailers: &HeaderMap,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    trailers.iter().filter_map(|(n, v)| {
        let name = HeaderName::from_bytes(format!("{TRAILER_PREFIX}{n}").as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(v.as_bytes()).ok()?;
        Some((name, value))
    })
}

/// A record's header that is a trailer: the trailer's name.
pub(super) fn trailer_name(stored: &HeaderName) -> Option<HeaderName> {
    let name = stored.as_str().strip_prefix(TRAILER_PREFIX)?;
    HeaderName::from_bytes(name.as_bytes()).ok()
}

/// A refusal (a problem+json answer, the layer's or the inner service's)
/// told to a gRPC client: a trailers-only answer with the problem's gRPC
/// status and its detail as `grpc-message`; `Retry-After` kept, and given
/// again as `grpc-retry-pushback-ms`, which gRPC clients' retry policies
/// honour.
pub(super) fn refusal<B>(res: Response<ResponseBody<B>>) -> Response<ResponseBody<B>> {
    let is_problem = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !is_problem {
        return res;
    }
    let problem = res
        .body()
        .full_bytes()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    let kind = problem
        .as_ref()
        .and_then(|p| p["type"].as_str())
        .and_then(|t| t.rsplit([':', '/']).next())
        .and_then(ProblemKind::from_slug);
    let code = kind.map_or_else(|| from_http(res.status()), ProblemKind::grpc_status);
    let message = problem
        .as_ref()
        .and_then(|p| {
            p["detail"]
                .as_str()
                .or(p["title"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| res.status().to_string());
    let (parts, _) = res.into_parts();
    let mut out = Response::new(ResponseBody::empty());
    *out.extensions_mut() = parts.extensions;
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(m) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", m);
    }
    for (name, value) in &parts.headers {
        if name == CONTENT_TYPE || name == http::header::CONTENT_LENGTH {
            continue;
        }
        if name == RETRY_AFTER {
            if let Some(secs) = value.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
                headers.insert("grpc-retry-pushback-ms", HeaderValue::from(secs * 1000));
            }
        }
        headers.append(name.clone(), value.clone());
    }
    out
}

/// The gRPC status of an HTTP status, as gRPC's HTTP mapping gives it.
fn from_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`,
/// percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A replayed or passed-on body with the trailers that end it.
pub(super) fn with_trailers<B>(body: Bytes, trailers: Option<Box<HeaderMap>>) -> ResponseBody<B> {
    match trailers {
        Some(t) => ResponseBody::trailed(body, t),
        None => ResponseBody::full(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("in use: 100% é"), "in use: 100%25 %C3%A9");
    }

    #[test]
    fn only_unavailable_deadline_and_exhausted_release() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        for (code, released) in [
            ("0", false),
            ("14", true),
            ("4", true),
            ("8", true),
            ("5", false),
            ("13", false),
        ] {
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, HeaderValue::from_static(code));
            assert_eq!(releases(&headers, Some(&trailers)), released, "{code}");
        }
        // A trailers-only answer carries its status in its headers.
        headers.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert!(releases(&headers, None));
    }

    #[test]
    fn trailers_round_trip_through_a_records_headers() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        let stored: Vec<_> = stored_trailers(&trailers).collect();
        assert_eq!(stored[0].0, "idem-trailer-grpc-status");
        assert_eq!(
            trailer_name(&stored[0].0).as_ref().map(HeaderName::as_str),
            Some(GRPC_STATUS)
        );
        assert_eq!(trailer_name(&CONTENT_TYPE), None);
    }
}
