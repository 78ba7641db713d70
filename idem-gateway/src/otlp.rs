//! OpenTelemetry trace export (feature `otlp`, on by default): each
//! covered request's span (route, store, key hash, outcome, status) sent to
//! an OTLP/HTTP collector (`otlp_endpoint`, as `POST /v1/traces` with the
//! JSON encoding every collector accepts), in the client's trace when the
//! request carries a W3C `traceparent`.
//!
//! Why not the `opentelemetry` crates: a tracing layer that turns one span
//! into one OTLP record needs only what the gateway already builds with
//! (hyper, serde_json); the SDK, its exporter and protobuf would double the
//! gateway's dependencies for the same bytes on the wire.
//!
//! The layer is installed at start and stays dormant (one atomic load per
//! span) until [`start`] is called with an endpoint. Spans are queued
//! without waiting (a full queue drops them and counts them) and posted in
//! batches, at most every second, by one task; [`flush`] posts what is
//! left at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::gateway::upstream_client::UpstreamClient;

/// The name of the span exported: the layer's span of a covered request.
const SPAN: &str = "idempotency";
/// Spans queued at most; past it new ones are dropped (and counted).
const QUEUE: usize = 4096;
/// Spans per request to the collector at most.
const BATCH: usize = 512;

/// Where spans go, once [`start`] was called.
struct Export {
    tx: tokio::sync::mpsc::Sender<Value>,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Value>>,
    client: UpstreamClient<Full<Bytes>>,
    uri: http::Uri,
    resource: Value,
    dropped: AtomicU64,
    sent: AtomicU64,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// Spans sent to the collector, and spans dropped (queue full, or the
/// collector refused or could not be reached), for `/metrics`.
pub fn counts() -> (u64, u64) {
    EXPORT.get().map_or((0, 0), |e| {
        (
            e.sent.load(Ordering::Relaxed),
            e.dropped.load(Ordering::Relaxed),
        )
    })
}

/// Starts exporting to `endpoint` (`http://HOST:4318`, `/v1/traces` added
/// unless the path already names it), as service `service`. Once per
/// process; a second call is an error.
pub fn start(
    endpoint: &http::Uri,
    service: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
    let uri = traces_uri(endpoint)?;
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let export = Export {
        tx,
        rx: tokio::sync::Mutex::new(rx),
        client: UpstreamClient::new(Duration::from_secs(2), tls, true),
        uri,
        resource: json!({
            "attributes": [
                attribute("service.name", json!({ "stringValue": service })),
                attribute("service.version", json!({ "stringValue": env!("CARGO_PKG_VERSION") })),
            ]
        }),
        dropped: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    };
    EXPORT
        .set(export)
        .map_err(|_| anyhow::anyhow!("OTLP export was already started"))?;
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            while post_batch().await >= BATCH {}
        }
    });
    Ok(())
}

/// Posts the spans still queued (at shutdown), within `within`.
pub async fn flush(within: Duration) {
    if EXPORT.get().is_none() {
        return;
    }
    let _ = tokio::time::timeout(within, async { while post_batch().await > 0 {} }).await;
}

/// `endpoint` with the traces path.
fn traces_uri(endpoint: &http::Uri) -> anyhow::Result<http::Uri> {
    let base = endpoint.to_string();
    let base = base.trim_end_matches('/');
    let full = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    full.parse()
        .map_err(|e| anyhow::anyhow!("otlp_endpoint {full}: {e}"))
}

/// Takes up to a batch of queued spans and posts them; how many it took.
async fn post_batch() -> usize {
    let Some(export) = EXPORT.get() else {
        return 0;
    };
    let mut spans = Vec::with_capacity(BATCH);
    {
        let mut rx = export.rx.lock().await;
        while spans.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => spans.push(span),
                Err(_) => break,
            }
        }
    }
    let n = spans.len();
    if n == 0 {
        return 0;
    }
    let body = json!({
        "resourceSpans": [{
            "resource": export.resource,
            "scopeSpans": [{
                "scope": { "name": "idem", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }]
        }]
    });
    let req = http::Request::post(&export.uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("idem/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body.to_string())));
    let outcome = match req {
        Ok(req) => {
            match tokio::time::timeout(Duration::from_secs(10), export.client.request(req)).await {
                Ok(Ok(res)) if res.status().is_success() => Ok(()),
                Ok(Ok(res)) => Err(format!("the collector answered {}", res.status())),
                Ok(Err(e)) => Err(format!("the collector cannot be reached: {e}")),
                Err(_) => Err("the collector did not answer within 10s".to_owned()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => {
            export.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(why) => {
            export.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(spans = n, endpoint = %export.uri, "OTLP export failed, spans dropped: {why}");
        }
    }
    n
}

fn attribute(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

/// The tracing layer that turns covered requests' spans into OTLP spans.
#[derive(Debug, Default, Clone, Copy)]
pub struct OtlpLayer;

/// A span being recorded, kept in its extensions until it closes.
struct Open {
    start: SystemTime,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    attributes: Vec<(&'static str, Value)>,
    status: Option<u16>,
}

impl Open {
    fn new() -> Self {
        let mut ids = [0u8; 24];
        // A failure of the system's random source leaves zeros, which a
        // collector refuses: that span is lost, the request is not.
        let _ = getrandom::fill(&mut ids);
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&ids[..16]);
        span_id.copy_from_slice(&ids[16..]);
        Self {
            start: SystemTime::now(),
            trace_id,
            span_id,
            parent: None,
            attributes: Vec::new(),
            status: None,
        }
    }

    /// A W3C `traceparent` (`00-TRACEID-PARENTID-FLAGS`): this span joins
    /// the client's trace under its span. A malformed one is ignored.
    fn join(&mut self, traceparent: &str) {
        let mut parts = traceparent.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(_flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Some(trace), Some(parent)) = (hex::<16>(trace), hex::<8>(parent)) else {
            return;
        };
        if version.len() != 2 || version == "ff" || trace == [0; 16] || parent == [0; 8] {
            return;
        }
        self.trace_id = trace;
        self.parent = Some(parent);
    }

    fn set(&mut self, key: &'static str, value: Value) {
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    fn to_json(&self, end: SystemTime) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_string()
        };
        let mut span = json!({
            "traceId": to_hex(&self.trace_id),
            "spanId": to_hex(&self.span_id),
            "name": SPAN,
            // SERVER: the gateway's handling of a client's request.
            "kind": 2,
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(end),
            "attributes": self.attributes.iter().map(|(k, v)| attribute(k, v.clone())).collect::<Vec<_>>(),
            // ERROR for a 5xx answer, else UNSET (the OTel HTTP server rule).
            "status": if self.status.is_some_and(|s| s >= 500) { json!({ "code": 2 }) } else { json!({}) },
        });
        if let Some(parent) = self.parent {
            span["parentSpanId"] = json!(to_hex(&parent));
        }
        span
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The span's fields as OTLP attributes (OTel's names where there is one).
struct Fields<'a>(&'a mut Open);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "traceparent" => {
                if let Some(s) = value.as_str() {
                    self.0.join(s);
                }
            }
            "route" => self.0.set("http.route", json!({ "stringValue": value })),
            "backend" => self.0.set("idem.store", json!({ "stringValue": value })),
            "key" => self.0.set("idem.key_hash", json!({ "stringValue": value })),
            "outcome" => self.0.set("idem.outcome", json!({ "stringValue": value })),
            "status" => {
                let status = value.as_u64().and_then(|s| u16::try_from(s).ok());
                self.0.status = status;
                // int64 values are strings in OTLP's JSON.
                self.0.set(
                    "http.response.status_code",
                    json!({ "intValue": value.to_string() }),
                );
            }
            _ => {}
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Display fields (the key hash) arrive here.
        self.put(field, json!(format!("{value:?}")));
    }
}

impl<S> tracing_subscriber::Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if EXPORT.get().is_none() || attrs.metadata().name() != SPAN {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut open = Open::new();
        attrs.record(&mut Fields(&mut open));
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(open) = ext.get_mut::<Open>() {
            values.record(&mut Fields(open));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(export) = EXPORT.get() else { return };
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        if export.tx.try_send(open.to_json(SystemTime::now())).is_err() {
            export.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_puts_the_span_in_the_clients_trace() {
        let mut open = Open::new();
        open.join("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let span = open.to_json(SystemTime::now());
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["spanId"].as_str().map(str::len), Some(16));
        // Malformed or all-zero ones are ignored.
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut open = Open::new();
            open.join(bad);
            assert!(open.parent.is_none(), "{bad}");
        }
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        let uri = |s: &str| {
            traces_uri(&s.parse().expect("uri"))
                .expect("traces")
                .to_string()
        };
        assert_eq!(
            uri("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(uri("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(uri("https://c/v1/traces"), "https://c/v1/traces");
    }
}
