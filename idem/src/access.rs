//! The access log: one line per request the layer sees, written where the
//! request's outcome is settled, so that each outcome is logged once, also
//! for a request whose client went away (its protocol finishes in a task of
//! its own and logs then). Off by default; on with
//! [`IdempotencyLayer::access_log`](crate::IdempotencyLayer::access_log)
//! (an `info` event, target `idem::access`, that the service's subscriber
//! formats) or [`IdempotencyLayer::access_log_to`](crate::IdempotencyLayer::access_log_to)
//! (a sink of the service's own). Either way, a subscriber that would drop
//! `idem::access` at `info` turns the lines off.
//!
//! A line ([`AccessLine`]): `method`, `path` (never the query: it can carry
//! secrets), `route` (the rule's pattern, `*` for the default policy, `-`
//! for a request the layer passed through), `status`, `outcome`
//! (`executed`, `replayed`, `executed-not-stored`, `unprotected`,
//! `fail-open`, `passed-through`, or the slug of the refusal:
//! `idempotency-key-in-use`, `idempotency-key-reused`, …), `key` (8 hex
//! digits of the store key's hash, never the key or the scope),
//! `duration_ms` (until the answer's head is ready) and `upstream_ms` (time
//! in the wrapped service; absent when it was not called, as for a replay
//! or a refusal). `status` is 0 when the wrapped service returned an error
//! instead of an answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use idem_core::scope::ShortKey;

/// One request's access line.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AccessLine<'a> {
    /// The request's method.
    pub method: &'a http::Method,
    /// The request's path, without the query.
    pub path: &'a str,
    /// The route's pattern, `*` for the default policy, `-` when the layer
    /// passed the request through.
    pub route: &'a str,
    /// The answer's status; 0 when the service returned an error instead.
    pub status: u16,
    /// What the layer did (see the module's documentation).
    pub outcome: &'a str,
    /// The store key's short hash; `None` before a key was known.
    pub key: Option<ShortKey>,
    /// From the request's arrival to its answer's head.
    pub duration: Duration,
    /// Time in the wrapped service, when it was called.
    pub upstream: Option<Duration>,
}

impl<'a> AccessLine<'a> {
    /// A line with no key, no upstream time and a zero duration (set them
    /// after): for sinks' own tests.
    pub fn new(
        method: &'a http::Method,
        path: &'a str,
        route: &'a str,
        status: u16,
        outcome: &'a str,
    ) -> Self {
        Self {
            method,
            path,
            route,
            status,
            outcome,
            key: None,
            duration: Duration::ZERO,
            upstream: None,
        }
    }
}

/// Where access lines go, for a service that writes them its own way (a
/// buffered file, a log pipeline) instead of as `tracing` events.
pub trait AccessLog: Send + Sync + 'static {
    /// Writes one line. Called on the request's task: keep it short (buffer,
    /// do not wait for I/O).
    fn log(&self, line: &AccessLine<'_>);
}

/// The default sink: an `info` event, target `idem::access`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TracingAccessLog;

impl AccessLog for TracingAccessLog {
    fn log(&self, line: &AccessLine<'_>) {
        event(line);
    }
}

/// A covered request's span and what its access line will say. The
/// protocol notes the outcome here as it settles it (on the span too, for
/// every event logged inside).
pub(crate) struct Trace {
    pub(crate) span: tracing::Span,
    /// `None`: no access line (the layer's access log is off), and nothing
    /// is noted but the span's fields. Boxed: the request's future holds the
    /// trace, and an inline note (176 bytes, a copy of the method and URI)
    /// made every request's future larger where no line is written.
    note: Option<Box<Note>>,
}

/// Why a `Mutex`: the protocol's helpers share `&Trace` across awaits (the
/// future must stay `Send`, so no `Cell`); one request at a time uses it,
/// so the lock is never contended.
struct Note {
    started: Instant,
    method: http::Method,
    path: http::Uri,
    said: Mutex<Said>,
}

#[derive(Default)]
struct Said {
    outcome: &'static str,
    key: Option<ShortKey>,
    upstream: Option<Duration>,
}

impl Trace {
    /// `logged`: whether the layer logs access lines. Nothing is noted
    /// when the subscriber would drop the line anyway (`--log warn`,
    /// `idem::access=off`): a callsite's interest is cached, so asking costs
    /// a load and a branch.
    pub(crate) fn new(span: tracing::Span, logged: bool, parts: &http::request::Parts) -> Self {
        Self {
            span,
            note: (logged && enabled()).then(|| {
                Box::new(Note {
                    started: Instant::now(),
                    method: parts.method.clone(),
                    path: parts.uri.clone(),
                    said: Mutex::new(Said::default()),
                })
            }),
        }
    }

    fn said(&self, f: impl FnOnce(&mut Said)) {
        if let Some(note) = &self.note {
            f(&mut note.said.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// The request's outcome so far (a later one replaces it).
    pub(crate) fn outcome(&self, o: &'static str) {
        self.span.record("outcome", o);
        self.said(|s| s.outcome = o);
    }

    /// The store key's short hash.
    pub(crate) fn key(&self, key: ShortKey) {
        self.span.record("key", tracing::field::display(key));
        self.said(|s| s.key = Some(key));
    }

    /// How long the wrapped service took.
    pub(crate) fn upstream(&self, took: Duration) {
        self.said(|s| s.upstream = Some(took));
    }

    /// Logs the access line to `sink`, once the answer is known.
    pub(crate) fn finish<B, E>(
        &self,
        sink: &dyn AccessLog,
        route: &str,
        out: &Result<http::Response<B>, E>,
    ) {
        let Some(note) = &self.note else {
            return;
        };
        let said = note.said.lock().unwrap_or_else(|e| e.into_inner());
        sink.log(&AccessLine {
            method: &note.method,
            path: note.path.path(),
            route,
            status: status(out),
            outcome: said.outcome,
            key: said.key,
            duration: note.started.elapsed(),
            upstream: said.upstream,
        });
    }
}

/// Whether the subscriber takes access lines now.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "idem::access", tracing::Level::INFO)
}

/// The answer's status; 0 for an error instead of an answer.
pub(crate) fn status<B, E>(out: &Result<http::Response<B>, E>) -> u16 {
    out.as_ref().map_or(0, |r| r.status().as_u16())
}

/// Milliseconds with microsecond precision, as log shippers parse them.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// One access line as a `tracing` event. A root event (`parent: None`):
/// the line stands on its own rather than inside the request's span, whose
/// fields it repeats.
fn event(line: &AccessLine<'_>) {
    let method = line.method.as_str();
    let key = tracing::field::display(KeyOrDash(line.key));
    let (path, route, status, outcome) = (line.path, line.route, line.status, line.outcome);
    match line.upstream {
        Some(upstream) => tracing::info!(
            target: "idem::access",
            parent: None,
            method,
            path,
            route,
            status,
            outcome,
            key,
            duration_ms = ms(line.duration),
            upstream_ms = ms(upstream),
            "access"
        ),
        None => tracing::info!(
            target: "idem::access",
            parent: None,
            method,
            path,
            route,
            status,
            outcome,
            key,
            duration_ms = ms(line.duration),
            "access"
        ),
    }
}

/// The key's short hash, or `-` for a request that had none.
pub(crate) struct KeyOrDash(pub(crate) Option<ShortKey>);

impl std::fmt::Display for KeyOrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(k) => k.fmt(f),
            None => f.write_str("-"),
        }
    }
}
