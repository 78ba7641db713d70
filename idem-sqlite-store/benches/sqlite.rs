//! `SqliteStore` phases: one at a time (latency through the writer thread)
//! and 64 concurrent callers (where group commit pays); and a payment with
//! its answer, written apart (`call` then `complete`) or together
//! (`complete_with`). Run with `cargo bench -p idem-sqlite-store`.

// criterion_group! defines an undocumented public fn.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use idem_core::{Begin, Fingerprint, HeldRecord, Secret, Store, StoreKey, StoredResponse};
use idem_sqlite_store::SqliteStore;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Bytes::from_static(br#"{"id":"pay_0123456789abcdef01234567","amount":42.5,"currency":"EUR","recipient":"acct_123","status":"succeeded"}"#),
        body_omitted: None,
    }
}

async fn first_execution(store: &SqliteStore, key: StoreKey, r: &StoredResponse) {
    if let Ok(Begin::Started(f)) = store.begin(&key, &Fingerprint([1; 32]), LEASE).await {
        let _ = store.complete(&key, f, r, TTL).await;
    }
}

/// A payment, then its answer, as two writes (the window between them open).
async fn payment_then_answer(store: &SqliteStore, key: StoreKey, r: &StoredResponse) {
    if let Ok(Begin::Started(f)) = store.begin(&key, &Fingerprint([1; 32]), LEASE).await {
        let _ = store
            .call(|c| c.execute("INSERT INTO payments (amount) VALUES (42)", []))
            .await;
        let _ = store.complete(&key, f, r, TTL).await;
    }
}

/// A payment and its answer in one transaction.
async fn payment_with_answer(store: &SqliteStore, key: StoreKey, r: &StoredResponse) {
    if let Ok(Begin::Started(fence)) = store.begin(&key, &Fingerprint([1; 32]), LEASE).await {
        let held = HeldRecord {
            key,
            fence,
            ttl: TTL,
        };
        let answer = r.clone();
        let _ = store
            .complete_with(held, move |c| {
                c.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
                Ok(((), answer))
            })
            .await;
    }
}

fn sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SqliteStore::open(dir.path().join("bench.db")).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let secret = Secret::generate();
    let counter = Arc::new(AtomicU64::new(0));
    let r = Arc::new(response());
    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("begin_complete_new_key", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            rt.block_on(first_execution(
                &store,
                StoreKey::derive(&secret, None, &n.to_string()),
                &r,
            ))
        })
    });
    let hot = StoreKey::derive(&secret, None, "hot");
    rt.block_on(first_execution(&store, hot, &r));
    g.bench_function("replay_begin_completed", |b| {
        b.iter(|| rt.block_on(store.begin(&hot, &Fingerprint([1; 32]), LEASE)))
    });
    // 64 callers at once: the writer thread commits their operations in groups.
    g.throughput(Throughput::Elements(64));
    g.bench_function("begin_complete_new_key_x64_concurrent", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(64);
                    for _ in 0..64 {
                        let (store, r, secret) = (store.clone(), r.clone(), secret.clone());
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        tasks.push(tokio::spawn(async move {
                            first_execution(
                                &store,
                                StoreKey::derive(&secret, None, &n.to_string()),
                                &r,
                            )
                            .await
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                })
            }
            start.elapsed()
        })
    });
    rt.block_on(store.call(|c| {
        c.execute_batch("CREATE TABLE payments (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)")
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("payment_then_answer", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            rt.block_on(payment_then_answer(
                &store,
                StoreKey::derive(&secret, None, &n.to_string()),
                &r,
            ))
        })
    });
    g.bench_function("payment_with_answer_in_one_transaction", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            rt.block_on(payment_with_answer(
                &store,
                StoreKey::derive(&secret, None, &n.to_string()),
                &r,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, sqlite);
criterion_main!(benches);
