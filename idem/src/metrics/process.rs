//! The process's own series beside idem's: `idem_build_info` and the
//! standard `process_*` metrics (CPU, memory, file descriptors, start time),
//! read from `/proc/self` at each scrape, as the Prometheus client libraries
//! do. Registered in a [`Metrics`] registry, so the gateway's and the demo's
//! `/metrics` both carry them, and any service's can.

use super::{Metrics, ValueKind};

/// The clock ticks per second `/proc` counts CPU time in (`USER_HZ`: 100 on
/// every Linux architecture, whatever the kernel's own tick rate).
const USER_HZ: f64 = 100.0;

/// Registers `idem_build_info` (with `stores`, the stores this build can
/// open, comma-separated) and the `process_*` series in `metrics`.
pub(super) fn register(metrics: &Metrics, stores: &str) {
    metrics.register(
        ValueKind::Gauge,
        "idem_build_info",
        "The running idem: its version and the stores it was built with (always 1).",
        &[("version", env!("CARGO_PKG_VERSION")), ("stores", stores)],
        || 1.0,
    );
    if std::fs::metadata("/proc/self/stat").is_err() {
        // Not Linux: no process series rather than wrong ones.
        return;
    }
    metrics.register(
        ValueKind::Counter,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        &[],
        // One read of the file for both fields.
        || stat_fields(&[14, 15]).map_or(0.0, |f| (f[0] + f[1]) / USER_HZ),
    );
    metrics.register(
        ValueKind::Gauge,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        &[],
        || status_kib("VmRSS:").map_or(0.0, |k| k * 1024.0),
    );
    metrics.register(
        ValueKind::Gauge,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        &[],
        || status_kib("VmSize:").map_or(0.0, |k| k * 1024.0),
    );
    metrics.register(
        ValueKind::Gauge,
        "process_open_fds",
        "Number of open file descriptors.",
        &[],
        || {
            std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as f64)
                .unwrap_or(0.0)
        },
    );
    metrics.register(
        ValueKind::Gauge,
        "process_max_fds",
        "Maximum number of open file descriptors.",
        &[],
        max_fds,
    );
    // Fixed for the process's life: read once.
    let start = start_time().unwrap_or(0.0);
    metrics.register(
        ValueKind::Gauge,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        &[],
        move || start,
    );
}

/// Fields `ns` (1-based, as proc(5) numbers them) of `/proc/self/stat`,
/// from one read of it.
fn stat_fields(ns: &[usize]) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count from after its closing one, which is field 3's start.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    ns.iter()
        .map(|n| fields.get(n.checked_sub(3)?)?.parse().ok())
        .collect()
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(name: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn max_fds() -> f64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The boot time plus the process's start in ticks after it.
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + stat_fields(&[22])?[0] / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_series_are_read_from_proc() {
        let m = Metrics::new();
        register(&m, "memory,sqlite");
        let text = m.render();
        assert!(text.contains("idem_build_info{version=\""), "{text}");
        assert!(text.contains("stores=\"memory,sqlite\""), "{text}");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
