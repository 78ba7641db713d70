//! Histograms of plain atomics (one relaxed add per observation, summed
//! into cumulative buckets only when read), and the pass-through series
//! built on one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Family, FamilyKind, HistogramSample, Sample, Series};

/// Upper bounds (seconds) of execution-time buckets.
pub(super) const PROCESSING_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of store-latency buckets: stores answer in
/// microseconds (memory) to milliseconds (network), so they start lower.
pub(super) const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub(super) struct Histogram {
    bounds: &'static [f64; 14],
    /// Per bucket (not cumulative; summed when rendered), then +Inf.
    counts: [AtomicU64; 15],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64; 14]) -> Self {
        Self {
            bounds,
            counts: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The histogram as read now.
    pub(super) fn sample(&self) -> Sample {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, cumulative));
        Sample::Histogram(HistogramSample {
            buckets,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
        })
    }
}

/// The `class` label values of `idempotency_passthrough_total`: the
/// answer's status class, or `error` when the wrapped service returned an
/// error instead of an answer.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Requests the layer passed through untouched (no rule covers them): how
/// many by status class, and how long until their answer's head.
pub(crate) struct Passthrough {
    classes: [AtomicU64; CLASSES.len()],
    latency: Histogram,
}

impl Default for Passthrough {
    fn default() -> Self {
        Self {
            classes: Default::default(),
            latency: Histogram::new(&PROCESSING_BUCKETS),
        }
    }
}

impl Passthrough {
    /// One request answered with `status` (0: an error) after `took`.
    pub(crate) fn observe(&self, status: u16, took: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => CLASSES.len() - 1,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
    }

    pub(super) fn families(&self, out: &mut Vec<Family>) {
        out.push(Family {
            name: "idempotency_passthrough_total",
            help: "Requests the layer passed through untouched (no rule covers their method and path), by status class.",
            kind: FamilyKind::Counter,
            series: CLASSES
                .iter()
                .zip(&self.classes)
                .map(|(class, count)| Series {
                    labels: vec![("class".to_owned(), (*class).to_owned())],
                    value: Sample::Value(count.load(Ordering::Relaxed) as f64),
                })
                .collect(),
        });
        out.push(Family {
            name: "idempotency_passthrough_seconds",
            help: "Time until the answer's head of requests passed through untouched.",
            kind: FamilyKind::Histogram,
            series: vec![Series {
                labels: Vec::new(),
                value: self.latency.sample(),
            }],
        });
    }
}
