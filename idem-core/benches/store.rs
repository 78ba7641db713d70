//! In-process costs of the core: fingerprints, store keys, and the
//! `MemoryStore` phases. Run with `cargo bench -p idem-core`.

// criterion_group! defines an undocumented public fn.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderName, HeaderValue, Method};
use idem_core::{
    Begin, Fingerprint, FingerprintMode, MemoryStore, Secret, Store, StoreKey, StoredResponse,
};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from_static(br#"{"id":"pay_0123456789abcdef01234567","amount":42.5,"currency":"EUR","recipient":"acct_123","status":"succeeded","created":1764000000}"#),
        body_omitted: None,
    }
}

fn keys(c: &mut Criterion) {
    let body = br#"{"amount": 42.5, "currency": "EUR", "recipient": "acct_123", "metadata": {"order": "o_991", "note": "thanks"}}"#;
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fingerprint_json_120B", |b| {
        b.iter(|| Fingerprint::compute(FingerprintMode::Json, &Method::POST, "/payments", body))
    });
    g.bench_function("fingerprint_exact_120B", |b| {
        b.iter(|| Fingerprint::compute(FingerprintMode::Exact, &Method::POST, "/payments", body))
    });
    let secret = Secret::generate();
    g.bench_function("store_key_hmac", |b| {
        b.iter(|| {
            StoreKey::derive(
                &secret,
                Some(b"Bearer sk_test_123"),
                "8e03978e-40d5-43e8-bc93-6894a57f9324",
            )
        })
    });
    g.bench_function("key_parse", |b| {
        let rules = idem_core::KeyRules::default();
        b.iter(|| rules.parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""))
    });
    g.finish();
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let store = MemoryStore::new().with_capacity(usize::MAX);
    let secret = Secret::generate();
    let counter = AtomicU64::new(0);
    let fp = Fingerprint([1; 32]);
    let r = response();
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("begin_complete_new_key", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let key = StoreKey::derive(&secret, None, &n.to_string());
            rt.block_on(async {
                if let Ok(Begin::Started(f)) = store.begin(&key, &fp, LEASE).await {
                    let _ = store.complete(&key, f, &r, TTL).await;
                }
            })
        })
    });
    let hot = StoreKey::derive(&secret, None, "hot");
    rt.block_on(async {
        if let Ok(Begin::Started(f)) = store.begin(&hot, &fp, LEASE).await {
            let _ = store.complete(&hot, f, &r, TTL).await;
        }
    });
    g.bench_function("replay_begin_completed", |b| {
        b.iter(|| rt.block_on(store.begin(&hot, &fp, LEASE)))
    });
    g.finish();
}

/// Issue 17 item 14: 128 objects with keys out of order around 1 MiB must
/// cost less than 5x the same payload in one flat object.
fn canonical_json(c: &mut Criterion) {
    let payload = format!("\"{}\"", "x".repeat(1 << 20));
    let mut nested = payload.clone();
    for _ in 0..128 {
        nested = format!(r#"{{"b": {nested}, "a": 1}}"#);
    }
    let flat = format!(r#"{{"b": {payload}, "a": 1}}"#);
    let mut g = c.benchmark_group("canonical_json");
    g.sample_size(20);
    g.bench_function("flat_1MiB", |b| {
        b.iter(|| idem_core::json::canonicalize(flat.as_bytes()))
    });
    g.bench_function("nested_unsorted_128_around_1MiB", |b| {
        b.iter(|| idem_core::json::canonicalize(nested.as_bytes()))
    });
}

criterion_group!(benches, keys, memory, canonical_json);
criterion_main!(benches);
