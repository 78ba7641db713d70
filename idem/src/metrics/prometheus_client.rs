//! The registry as a [`prometheus_client`] collector (feature
//! `prometheus-client`): a service that publishes its metrics with
//! prometheus-client registers idem's once and serves them on its own
//! `/metrics`.
//!
//! ```
//! use std::sync::Arc;
//! use idem::{IdempotencyLayer, MemoryStore};
//! use prometheus_client::registry::Registry;
//!
//! let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(layer.metrics_handle()));
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("idempotency_passthrough_total{class=\"2xx\"} 0"));
//! ```
//!
//! Read at each scrape, from the same atomics the layer records into:
//! requests pay nothing for it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{FamilyKind, Metrics, Sample};

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            let (name, kind) = match family.kind {
                // prometheus-client writes a counter's `_total` itself.
                FamilyKind::Counter => (
                    family.name.strip_suffix("_total").unwrap_or(family.name),
                    MetricType::Counter,
                ),
                FamilyKind::Gauge => (family.name, MetricType::Gauge),
                FamilyKind::Histogram => (family.name, MetricType::Histogram),
            };
            let mut descriptor = encoder.encode_descriptor(name, family.help, None, kind)?;
            for series in &family.series {
                let mut metric = descriptor.encode_family(&series.labels)?;
                match (&series.value, family.kind) {
                    (Sample::Value(v), FamilyKind::Counter) => {
                        metric.encode_counter::<NoLabelSet, _, f64>(v, None)?
                    }
                    (Sample::Value(v), _) => metric.encode_gauge(v)?,
                    (Sample::Histogram(h), _) => {
                        // prometheus-client takes each bucket's own count,
                        // and f64::MAX for +Inf.
                        let mut below = 0;
                        let buckets: Vec<(f64, u64)> = h
                            .buckets
                            .iter()
                            .map(|&(bound, cumulative)| {
                                let own = cumulative.saturating_sub(below);
                                below = cumulative;
                                (if bound.is_infinite() { f64::MAX } else { bound }, own)
                            })
                            .collect();
                        metric.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}
