//! Resident memory per completed record in `MemoryStore`, as the layer
//! stores a small JSON answer: its header values and body in one buffer,
//! the values sliced from it. Prints the RSS growth per record, and the same
//! less the answer's body bytes (issue 18's target: at most 400 bytes plus
//! the body).
//!
//! `cargo run --release -p idem-core --example record_memory [records=500000]`

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue};
use idem_core::fingerprint::Fingerprint;
use idem_core::memory::MemoryStore;
use idem_core::record::Begin;
use idem_core::record::StoredResponse;
use idem_core::scope::{Secret, StoreKey};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500_000);
    let store = MemoryStore::new()
        .with_capacity(n * 2)
        .with_max_bytes(usize::MAX / 2);
    let secret = Secret::generate();
    let ttl = Duration::from_secs(3600);
    let lease = Duration::from_secs(30);
    let mut body_bytes = 0;
    let before = rss_bytes();
    for i in 0..n {
        let key = StoreKey::derive(&secret, None, &format!("key-{i:012}"));
        let fp = Fingerprint(StoreKey::derive(&secret, None, &format!("fp-{i}")).0);
        let Ok(Begin::Started(fence)) = store.begin_now(&key, &fp, lease) else {
            panic!("begin {i}");
        };
        let body =
            format!(r#"{{"id":"pay_{i:012}","amount":42.5,"currency":"EUR","status":"created"}}"#);
        let location = format!("/payments/pay_{i:012}");
        let values: [&[u8]; 2] = [b"application/json", location.as_bytes()];
        let mut buf = BytesMut::with_capacity(128);
        for v in values {
            buf.extend_from_slice(v);
        }
        let head = buf.len();
        buf.extend_from_slice(body.as_bytes());
        let all = buf.freeze();
        let mut at = 0;
        let mut headers = Vec::with_capacity(2);
        for (name, v) in [("content-type", values[0]), ("location", values[1])] {
            let value = HeaderValue::from_maybe_shared(all.slice(at..at + v.len()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            at += v.len();
            headers.push((HeaderName::from_static(name), value));
        }
        body_bytes += body.len();
        let response = StoredResponse {
            status: 201,
            headers,
            body: all.slice(head..),
            body_omitted: None,
        };
        if !matches!(store.complete_now(&key, fence, &response, ttl), Ok(true)) {
            panic!("complete {i}");
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{n} records: {} bytes of RSS each, {} without the body ({} body bytes each)",
        grown / n,
        grown.saturating_sub(body_bytes) / n,
        body_bytes / n
    );
}
