//! Prometheus metrics with the SPEC's names, labelled by `route` and `backend`.
//!
//! Every [`IdempotencyLayer`](crate::IdempotencyLayer) records into a
//! [`Metrics`] registry; [`Metrics::render`] gives the Prometheus text format
//! for a `/metrics` endpoint. Several layers can share one registry.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::{get, post}, Router};
//! use idem::{metrics::Metrics, IdempotencyLayer, MemoryStore};
//!
//! let metrics = Metrics::new();
//! let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new())).metrics(metrics.clone());
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "charged" }))
//!     .layer(layer)
//!     .route("/metrics", get(move || async move { metrics.render() }));
//! ```
//!
//! Counters and histograms are plain atomics, one set per route of each
//! layer, found by index: recording costs a few relaxed atomic adds and no
//! lock or map lookup on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod family;
mod histogram;
mod kinds;
mod process;
#[cfg(feature = "prometheus-client")]
mod prometheus_client;

pub use family::{Family, FamilyKind, HistogramSample, Sample, Series};
pub(crate) use histogram::Passthrough;
use histogram::{Histogram, PROCESSING_BUCKETS, STORE_BUCKETS};
pub use kinds::{ErrorKind, StoreOp};

/// The series of one route of one layer.
pub(crate) struct RouteMetrics {
    route: String,
    backend: String,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    leases_lost: AtomicU64,
    answers_not_stored: AtomicU64,
    processing: Histogram,
    store: [Histogram; 4],
}

impl RouteMetrics {
    fn new(route: &str, backend: &str) -> Self {
        Self {
            route: route.to_owned(),
            backend: backend.to_owned(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: Default::default(),
            leases_lost: AtomicU64::new(0),
            answers_not_stored: AtomicU64::new(0),
            processing: Histogram::new(&PROCESSING_BUCKETS),
            store: std::array::from_fn(|_| Histogram::new(&STORE_BUCKETS)),
        }
    }

    /// A replay.
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// An execution.
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An execution that finished after its lease was taken over: its
    /// answer was not stored, and the key's new holder may execute again.
    pub(crate) fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer the store never took (every attempt failed): the key
    /// stays in progress until its lease ends, then a retry executes again.
    pub(crate) fn answer_not_stored(&self) {
        self.answers_not_stored.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn processing(&self, d: Duration) {
        self.processing.observe(d);
    }

    pub(crate) fn store(&self, op: StoreOp, d: Duration) {
        let i = StoreOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.store[i].observe(d);
    }
}

impl RouteMetrics {
    /// `route` and `backend`, and `extra` after them.
    fn labels(&self, extra: Option<(&str, &str)>) -> Vec<(String, String)> {
        let mut labels = vec![
            ("route".to_owned(), self.route.clone()),
            ("backend".to_owned(), self.backend.clone()),
        ];
        if let Some((k, v)) = extra {
            labels.push((k.to_owned(), v.to_owned()));
        }
        labels
    }
}

/// A counter family with one series per route.
fn per_route(
    series: &[Arc<RouteMetrics>],
    name: &'static str,
    help: &'static str,
    counter: impl Fn(&RouteMetrics) -> &AtomicU64,
) -> Family {
    Family {
        name,
        help,
        kind: FamilyKind::Counter,
        series: series
            .iter()
            .map(|s| Series {
                labels: s.labels(None),
                value: Sample::Value(counter(s).load(Ordering::Relaxed) as f64),
            })
            .collect(),
    }
}

/// A registry of idempotency metrics. Cloning gives another handle to the
/// same registry.
#[derive(Clone, Default)]
pub struct Metrics {
    series: Arc<Mutex<Vec<Arc<RouteMetrics>>>>,
    values: Arc<Mutex<Vec<Value>>>,
    /// Every layer on this registry counts what it passes through here.
    passthrough: Arc<Passthrough>,
}

/// Whether a read value only grows (a counter) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    /// Goes up and down: in flight, records held.
    Gauge,
    /// Only grows: hits of a cache, events counted elsewhere.
    Counter,
}

/// A value read when the registry is rendered: the sum of its readers
/// (layers sharing a registry each add theirs to one series).
struct Value {
    name: &'static str,
    help: &'static str,
    kind: ValueKind,
    labels: Vec<(String, String)>,
    readers: Vec<Reader>,
}

type Reader = Box<dyn Fn() -> f64 + Send + Sync>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The series for `route` on `backend`, created on first use; two layers
    /// naming the same route and backend share it.
    pub(crate) fn route(&self, route: &str, backend: &str) -> Arc<RouteMetrics> {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = series
            .iter()
            .find(|s| s.route == route && s.backend == backend)
        {
            return found.clone();
        }
        let made = Arc::new(RouteMetrics::new(route, backend));
        series.push(made.clone());
        made
    }

    /// Where layers on this registry count what they pass through.
    pub(crate) fn passthrough(&self) -> &Passthrough {
        &self.passthrough
    }

    /// Adds a value read at each render: series `name{labels}`, of `kind`,
    /// described by `help`. Readers registered under the same name and
    /// labels are summed, so layers sharing a registry give one series.
    /// A service adds its own this way (its connections, its caches).
    pub fn register(
        &self,
        kind: ValueKind,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match values
            .iter_mut()
            .find(|v| v.name == name && v.labels == labels)
        {
            Some(v) => v.readers.push(Box::new(read)),
            None => values.push(Value {
                name,
                help,
                kind,
                labels,
                readers: vec![Box::new(read)],
            }),
        }
    }

    /// Registers the process's own series beside idem's: `idem_build_info`
    /// (its `version`, and `stores`: what this build can open, as given)
    /// and the standard `process_*` metrics (CPU, memory, file descriptors,
    /// start time) read from `/proc/self` at each scrape (none off Linux).
    pub fn register_process(&self, stores: &str) {
        process::register(self, stores);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        family::text(&self.families())
    }

    /// Every family of this registry as read now: what an exporter of the
    /// service's own publishes (the `prometheus-client` feature registers
    /// the registry as a `Collector` this way), so idem's series need no
    /// second endpoint.
    pub fn families(&self) -> Vec<Family> {
        let series: Vec<Arc<RouteMetrics>> = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = vec![
            per_route(
                &series,
                "idempotency_cache_hits_total",
                "Covered requests answered with a stored response (replays).",
                |s| &s.hits,
            ),
            per_route(
                &series,
                "idempotency_cache_misses_total",
                "Covered requests that executed and whose answer was kept (a failed execution counts in idempotency_errors_total{kind=\"upstream\"} instead).",
                |s| &s.misses,
            ),
            Family {
                name: "idempotency_errors_total",
                help: "Covered requests refused or failed, by kind.",
                kind: FamilyKind::Counter,
                series: series
                    .iter()
                    .flat_map(|s| {
                        ErrorKind::ALL.iter().enumerate().map(|(i, kind)| Series {
                            labels: s.labels(Some(("kind", kind.as_str()))),
                            value: Sample::Value(s.errors[i].load(Ordering::Relaxed) as f64),
                        })
                    })
                    .collect(),
            },
            per_route(
                &series,
                "idempotency_leases_lost_total",
                "Executions that finished after their lease was taken over (their answer was not stored; the key's new holder may have executed it again).",
                |s| &s.leases_lost,
            ),
            per_route(
                &series,
                "idempotency_answers_not_stored_total",
                "Answers the store never took after every retry (the key stays in progress until its lease ends, then a retry executes again).",
                |s| &s.answers_not_stored,
            ),
            Family {
                name: "idempotency_processing_seconds",
                help: "Time executing covered requests.",
                kind: FamilyKind::Histogram,
                series: series
                    .iter()
                    .map(|s| Series {
                        labels: s.labels(None),
                        value: s.processing.sample(),
                    })
                    .collect(),
            },
            Family {
                name: "idempotency_store_seconds",
                help: "Store latency by operation.",
                kind: FamilyKind::Histogram,
                series: series
                    .iter()
                    .flat_map(|s| {
                        StoreOp::ALL.iter().enumerate().map(|(i, op)| Series {
                            labels: s.labels(Some(("op", op.as_str()))),
                            value: s.store[i].sample(),
                        })
                    })
                    .collect(),
            },
        ];
        self.passthrough.families(&mut out);
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for v in values.iter() {
            let sample = Series {
                labels: v.labels.clone(),
                value: Sample::Value(v.readers.iter().map(|r| r()).sum()),
            };
            // Values of one name are one family, whatever their order.
            match out.iter_mut().find(|f| f.name == v.name) {
                Some(family) => family.series.push(sample),
                None => out.push(Family {
                    name: v.name,
                    help: v.help,
                    kind: match v.kind {
                        ValueKind::Gauge => FamilyKind::Gauge,
                        ValueKind::Counter => FamilyKind::Counter,
                    },
                    series: vec![sample],
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new();
        let r = m.route("/payments", "memory");
        r.hit();
        r.miss();
        r.miss();
        r.error(ErrorKind::Mismatch);
        r.processing(Duration::from_millis(3));
        r.processing(Duration::from_secs(100));
        r.store(StoreOp::Begin, Duration::from_micros(50));
        let text = m.render();
        assert!(text
            .contains("idempotency_cache_hits_total{route=\"/payments\",backend=\"memory\"} 1\n"));
        assert!(text.contains(
            "idempotency_cache_misses_total{route=\"/payments\",backend=\"memory\"} 2\n"
        ));
        assert!(text.contains(
            "idempotency_errors_total{route=\"/payments\",backend=\"memory\",kind=\"mismatch\"} 1\n"
        ));
        assert!(text.contains("idempotency_processing_seconds_bucket{route=\"/payments\",backend=\"memory\",le=\"0.005\"} 1\n"));
        assert!(text.contains("idempotency_processing_seconds_bucket{route=\"/payments\",backend=\"memory\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("idempotency_store_seconds_bucket{route=\"/payments\",backend=\"memory\",op=\"begin\",le=\"0.0001\"} 1\n"));
        // The same route and backend is one series.
        m.route("/payments", "memory").hit();
        assert!(m
            .render()
            .contains("idempotency_cache_hits_total{route=\"/payments\",backend=\"memory\"} 2\n"));
    }

    #[test]
    fn lease_and_store_counters_and_registered_values_render() {
        let m = Metrics::new();
        let r = m.route("*", "redis");
        r.lease_lost();
        r.answer_not_stored();
        r.answer_not_stored();
        r.error(ErrorKind::Overloaded);
        // Two layers on one registry: one series, their sum.
        m.register(
            ValueKind::Gauge,
            "x_in_flight",
            "In flight.",
            &[("backend", "redis")],
            || 2.0,
        );
        m.register(
            ValueKind::Gauge,
            "x_in_flight",
            "In flight.",
            &[("backend", "redis")],
            || 3.0,
        );
        m.register(ValueKind::Counter, "x_hits_total", "Hits.", &[], || 7.0);
        let text = m.render();
        let l = r#"route="*",backend="redis""#;
        assert!(text.contains(&format!("idempotency_leases_lost_total{{{l}}} 1\n")));
        assert!(text.contains(&format!("idempotency_answers_not_stored_total{{{l}}} 2\n")));
        assert!(text.contains(&format!(
            "idempotency_errors_total{{{l},kind=\"overloaded\"}} 1\n"
        )));
        assert!(
            text.contains("x_in_flight{backend=\"redis\"} 5\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE x_in_flight gauge").count(), 1);
        assert!(
            text.contains("# TYPE x_hits_total counter\nx_hits_total 7\n"),
            "{text}"
        );
    }
}
