//! A counting upstream: an HTTP server that records every request it gets,
//! so gateway tests can assert "nothing executed" by counting (STYLE habit 5).
//!
//! Requests steer it with headers (headers are not part of the fingerprint,
//! so they do not change which request is "the same"):
//! - `x-test-delay-ms: N`: answer after N milliseconds;
//! - `x-test-status: N`: answer with status N;
//! - `x-test-body-bytes: N`: answer with a body of N bytes;
//! - `x-test-sse-events: N`: answer 200 with N server-sent events
//!   (`text/event-stream`), the first at once, then one every
//!   `x-test-sse-gap-ms` (200 by default), each naming its execution.
//!
//! Otherwise it answers 201 with JSON: `{"n": <its count>, "method", "path",
//! "key", "body_len"}`, with `X-Upstream-N: <its count>` and `X-Trace`
//! twice (`a`, then `b`: a repeated header, whose order a replay keeps).
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let upstream = idem_testkit::upstream::CountingUpstream::start().await?;
//! // ... point the gateway at upstream.url() and send requests ...
//! assert_eq!(upstream.executions(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

#[derive(Default)]
struct Seen {
    total: usize,
    by_key: HashMap<String, usize>,
    last_headers: HeaderMap,
    last_version: Option<axum::http::Version>,
}

/// The running upstream; it stops when dropped.
pub struct CountingUpstream {
    addr: SocketAddr,
    /// `https` when serving TLS.
    scheme: &'static str,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn handle(State(seen): State<Arc<Mutex<Seen>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // Counted on arrival, before any delay: an execution that is abandoned
    // half-way still counts.
    let n = {
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.total += 1;
        *s.by_key.entry(key.clone()).or_default() += 1;
        s.last_headers = parts.headers.clone();
        s.last_version = Some(parts.version);
        s.total
    };
    let body: Bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    if let Some(ms) = header_num(&parts.headers, "x-test-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = header_num(&parts.headers, "x-test-status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::CREATED);
    if let Some(count) = header_num(&parts.headers, "x-test-sse-events") {
        let gap = header_num(&parts.headers, "x-test-sse-gap-ms").unwrap_or(200);
        let events =
            crate::sse::Events::new(n.to_string(), count as u32, Duration::from_millis(gap));
        return (
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            axum::body::Body::new(events),
        )
            .into_response();
    }
    if let Some(len) = header_num(&parts.headers, "x-test-body-bytes") {
        return (status, vec![b'x'; len as usize]).into_response();
    }
    let json = format!(
        "{{\"n\":{n},\"method\":\"{}\",\"path\":\"{}\",\"key\":\"{}\",\"body_len\":{}}}",
        parts.method,
        parts.uri.path().replace('"', ""),
        key.replace('"', ""),
        body.len()
    );
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-upstream-n", &n.to_string()),
        ],
        axum::response::AppendHeaders([("x-trace", "a"), ("x-trace", "b")]),
        json,
    )
        .into_response()
}

impl CountingUpstream {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts on `addr` (to bring an upstream back on the port it had).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(addr, |app| app).await
    }

    /// Starts on a free loopback port with its handler wrapped by `wrap`:
    /// `|app| app.layer(IdempotencyLayer::new(store))` serves the same
    /// handler behind idem's layer, in process, as the gateway serves it
    /// behind a proxy.
    pub async fn start_wrapped(wrap: impl FnOnce(Router) -> Router) -> std::io::Result<Self> {
        Self::serve("127.0.0.1:0".parse().map_err(std::io::Error::other)?, wrap).await
    }

    async fn serve(addr: SocketAddr, wrap: impl FnOnce(Router) -> Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = wrap(Router::new().fallback(handle).with_state(seen.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            scheme: "http",
            seen,
            task,
        })
    }

    /// Starts on a free loopback port serving TLS only (HTTP/2 or
    /// HTTP/1.1 by ALPN) with the certificate `cert` and its key `key`.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<Self> {
        let config = crate::tls::server_config(cert, key)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new().fallback(handle).with_state(seen.clone());
        let tls = crate::tls::TlsListener::new(listener, config);
        let task = tokio::spawn(async move {
            let _ = axum::serve(tls, app).await;
        });
        Ok(Self {
            addr,
            scheme: "https",
            seen,
            task,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The HTTP version of the last request received.
    pub fn last_version(&self) -> Option<axum::http::Version> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_version
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received, of any kind.
    pub fn executions(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Returns once `n` requests have arrived (panics after 5 s): a test
    /// that needs an execution under way waits for it, not for a guess.
    pub async fn wait_for_executions(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.executions() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upstream got {} requests, not {n}, within 5 s",
                self.executions()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Requests received with `Idempotency-Key: key`.
    pub fn executions_of(&self, key: &str) -> usize {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.by_key.get(key).copied().unwrap_or(0)
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_headers
            .clone()
    }
}
