//! Header vocabulary shared by the layer, the gateway's proxy and replays:
//! which headers describe one connection (hop-by-hop, RFC 9110 §7.6.1) and
//! which headers of an answer a record keeps.
//!
//! # Examples
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use idem_core::headers::{is_stored, strip_hop_by_hop};
//!
//! let mut h = HeaderMap::new();
//! h.insert("connection", HeaderValue::from_static("x-trace"));
//! h.insert("x-trace", HeaderValue::from_static("1"));
//! h.insert("content-type", HeaderValue::from_static("text/plain"));
//! strip_hop_by_hop(&mut h);
//! assert_eq!(h.len(), 1);
//! assert!(is_stored(&http::header::CONTENT_TYPE));
//! assert!(!is_stored(&http::header::CONTENT_LENGTH));
//! ```

use http::header::{self, HeaderName};
use http::HeaderMap;

/// Hop-by-hop headers: they describe one connection, so a proxy drops them
/// in both directions (with any header `Connection` names), and a record
/// never keeps them.
///
/// Names, not `HeaderName`s: comparing a name's string with these (a length
/// check, then the bytes) costs a third of comparing `HeaderName`s, whose
/// equality is not inlined across crates, and these run for every header of
/// every request and answer.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
];

/// Whether `name` is a hop-by-hop header.
#[inline]
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether a record keeps this header of an answer: every header but the
/// hop-by-hop ones and `Content-Length` (framing is recomputed for the
/// replayed body).
#[inline]
pub fn is_stored(name: &HeaderName) -> bool {
    name.as_str() != "content-length" && !is_hop_by_hop(name)
}

/// Whether a message is a gRPC call or answer (`application/grpc`, with or
/// without a `+proto` or `+json` suffix).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Removes hop-by-hop headers, and those `Connection` lists.
///
/// Most messages carry none, so one pass over the names decides whether
/// there is anything to remove, and only then are names parsed.
#[inline]
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("idempotency-key", HeaderValue::from_static("abcdefghijkl"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("idempotency-key"));
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_keeps_every_header() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("x-tag", HeaderValue::from_static("a"));
        h.append("x-tag", HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Each hop-by-hop name alone is found and removed.
        for name in HOP_BY_HOP {
            let mut h = before.clone();
            h.insert(name, HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h, before, "{name}");
        }
    }

    #[test]
    fn records_keep_end_to_end_headers_only() {
        for name in HOP_BY_HOP {
            assert!(!is_stored(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_stored(&header::CONTENT_LENGTH));
        assert!(is_stored(&header::SET_COOKIE));
        assert!(is_stored(&HeaderName::from_static("x-request-id")));
    }
}
