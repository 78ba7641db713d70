//! The registry's series as values ([`Metrics::families`]), for any
//! exporter, and the Prometheus text format made from them.
//!
//! [`Metrics::families`]: super::Metrics::families

use std::fmt::Write as _;

/// What a family's series are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FamilyKind {
    /// Only grows (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets, with their sum and count.
    Histogram,
}

/// One metric family as read now: its name, help and kind, and one
/// [`Series`] per label set.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Family {
    /// The name, as on `/metrics` (`idempotency_cache_hits_total`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: FamilyKind,
    /// The series, one per label set.
    pub series: Vec<Series>,
}

/// One series of a family: its labels and its value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Series {
    /// Label names and values (`route`, `backend`, …), unescaped.
    pub labels: Vec<(String, String)>,
    /// The value now.
    pub value: Sample,
}

/// A series' value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Sample {
    /// A counter's or a gauge's value.
    Value(f64),
    /// A histogram's buckets, sum and count.
    Histogram(HistogramSample),
}

/// A histogram as read now.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HistogramSample {
    /// Upper bounds (seconds) and the observations at or below each
    /// (cumulative, as Prometheus counts them); the last bound is
    /// `f64::INFINITY`, its count the histogram's count.
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observations (seconds).
    pub sum: f64,
    /// How many observations.
    pub count: u64,
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `a="x",b="y"` (empty without labels).
fn labels(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

/// `name{labels}`, or `name` alone without labels.
fn series_name(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// The Prometheus text exposition format (version 0.0.4) of `families`.
pub(super) fn text(families: &[Family]) -> String {
    let mut out = String::with_capacity(families.len() * 512);
    for f in families {
        let kind = match f.kind {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
            FamilyKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.series {
            let labels = labels(&s.labels);
            match &s.value {
                Sample::Value(v) => {
                    let _ = writeln!(out, "{} {v}", series_name(f.name, &labels));
                }
                Sample::Histogram(h) => {
                    let sep = if labels.is_empty() { "" } else { "," };
                    for (bound, count) in &h.buckets {
                        let le = if bound.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            bound.to_string()
                        };
                        let _ =
                            writeln!(out, "{}_bucket{{{labels}{sep}le=\"{le}\"}} {count}", f.name);
                    }
                    let _ = writeln!(
                        out,
                        "{} {}",
                        series_name(&format!("{}_sum", f.name), &labels),
                        h.sum
                    );
                    let _ = writeln!(
                        out,
                        "{} {}",
                        series_name(&format!("{}_count", f.name), &labels),
                        h.count
                    );
                }
            }
        }
    }
    out
}
