//! A closed-loop load generator for stores: `concurrency` tasks run one
//! scenario back to back for a fixed time. Used by the store crates'
//! `benches/load.rs` to compare a store with its server's own benchmark tool
//! at the same concurrency (docs/BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idem_core::{Begin, Fingerprint, Secret, Store, StoreKey, StoredResponse};

/// What each task does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `begin` on a new key, then `complete`: one first execution.
    FirstExecution,
    /// `begin` on one of 16 completed keys: one replay.
    Replay,
}

/// Runs `scenario` on `store` with `concurrency` tasks for `duration`;
/// returns operations (first executions or replays) per second.
pub async fn run(
    store: Arc<dyn Store>,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
) -> f64 {
    let secret = Secret::generate();
    let response = StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Bytes::from_static(br#"{"id":"pay_0123456789abcdef01234567","amount":42.5,"currency":"EUR","recipient":"acct_123","status":"succeeded"}"#),
        body_omitted: None,
    };
    let fp = Fingerprint([7; 32]);
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(3600);
    let hot: Vec<StoreKey> = (0..16)
        .map(|i| StoreKey::derive(&secret, None, &format!("hot-{i}")))
        .collect();
    if scenario == Scenario::Replay {
        for k in &hot {
            if let Ok(Begin::Started(f)) = store.begin(k, &fp, lease).await {
                let _ = store.complete(k, f, &response, ttl).await;
            }
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    // Each task checks the deadline itself: with an in-memory store (or a
    // cache hit) a task never awaits anything that yields, so a timer in
    // another task could never fire to stop them.
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let (store, done, errors, counter) =
            (store.clone(), done.clone(), errors.clone(), counter.clone());
        let (secret, response, hot) = (secret.clone(), response.clone(), hot.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                // A request always yields somewhere (its socket); without this,
                // tasks answered from memory would starve the runtime's other
                // tasks (a remote store's connection driver among them).
                tokio::task::yield_now().await;
                let ok = match scenario {
                    Scenario::FirstExecution => {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let key = StoreKey::derive(&secret, None, &n.to_string());
                        match store.begin(&key, &fp, lease).await {
                            Ok(Begin::Started(f)) => store
                                .complete(&key, f, &response, ttl)
                                .await
                                .unwrap_or(false),
                            _ => false,
                        }
                    }
                    Scenario::Replay => {
                        i = (i + 1) % hot.len();
                        matches!(
                            store.begin(&hot[i], &fp, lease).await,
                            Ok(Begin::Completed(_))
                        )
                    }
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    assert_eq!(errors, 0, "{errors} operations failed during the load run");
    done.load(Ordering::Relaxed) as f64 / secs
}

/// Parses `--concurrency N --seconds S --scenario first|replay` from the
/// bench's arguments (defaults 64, 10, first).
pub fn args() -> (usize, Duration, Scenario) {
    let mut concurrency = 64;
    let mut seconds = 10;
    let mut scenario = Scenario::FirstExecution;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--concurrency" => {
                concurrency = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(concurrency)
            }
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--scenario" => {
                scenario = match it.next().as_deref() {
                    Some("replay") => Scenario::Replay,
                    _ => Scenario::FirstExecution,
                }
            }
            _ => {}
        }
    }
    (concurrency, Duration::from_secs(seconds), scenario)
}
