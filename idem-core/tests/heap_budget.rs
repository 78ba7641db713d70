//! `MemoryStore`'s byte budget bounds what stays allocated, not only what
//! it counts: an answer kept without its body must not keep its body's
//! buffer alive through header values sliced from it (as the layer stores
//! them: one buffer holding the header values, then the body).
//!
//! Alone in its test binary: the global allocator counts every allocation.

use std::alloc::System;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::HeaderValue;
use idem_core::record::{Begin, StoredResponse};
use idem_core::scope::StoreKey;
use idem_core::{Fingerprint, MemoryStore};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Issue: 256 KiB answers into a 1 MiB budget kept every answer's buffer
/// alive (20 answers: 5 MiB live), though all but the first few were kept
/// without their body.
#[test]
fn answers_over_the_budget_do_not_pin_their_buffers() {
    let budget = 1 << 20;
    let store = MemoryStore::new().with_max_bytes(budget);
    let region = Region::new(GLOBAL);
    for i in 0..20u8 {
        let mut k = [0u8; 32];
        k[0] = i;
        k[31] = i;
        let key = StoreKey(k);
        let fence = match store.begin_now(&key, &Fingerprint([1; 32]), Duration::from_secs(30)) {
            Ok(Begin::Started(fence)) => fence,
            other => panic!("expected Started, got {other:?}"),
        };
        let mut buf = Vec::with_capacity(16 + (256 << 10));
        buf.extend_from_slice(b"application/json");
        buf.resize(16 + (256 << 10), b'x');
        let all = Bytes::from(buf);
        let value =
            HeaderValue::from_maybe_shared(all.slice(0..16)).unwrap_or_else(|e| panic!("{e}"));
        let response = StoredResponse {
            status: 201,
            headers: vec![(CONTENT_TYPE, value)],
            body: all.slice(16..),
            body_omitted: None,
        };
        drop(all);
        assert!(store
            .complete_now(&key, fence, &response, Duration::from_secs(60))
            .unwrap_or(false));
    }
    let stats = region.change();
    let live =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    assert!(
        live < 2 * budget as isize,
        "{live} bytes stay allocated for a budget of {budget}"
    );
}
