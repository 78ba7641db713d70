//! Which requests are covered, and how: the per-route policy.
//!
//! # Examples
//!
//! The original design's per-operation TTLs:
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use idem_core::policy::{Policy, RoutePolicy};
//!
//! let hour = Duration::from_secs(3600);
//! let policy = Policy::default()
//!     .route("/payments/**", RoutePolicy::default().ttl(24 * hour))
//!     .route("/orders/**", RoutePolicy::default().ttl(6 * hour))
//!     .route("/notifications/**", RoutePolicy::default().ttl(hour))
//!     .route("/reports/**", RoutePolicy::default().ttl(7 * 24 * hour));
//! assert_eq!(policy.find(&Method::POST, "/orders/17").unwrap().1.ttl, 6 * hour);
//! assert!(policy.find(&Method::GET, "/orders/17").is_none());
//! ```

use std::time::Duration;

use http::{HeaderName, Method};

use crate::fingerprint::FingerprintMode;
use crate::key::KeyRules;

/// Statuses whose responses are not stored: the key is released so a retry
/// executes again (SPEC rule 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    /// An empty set.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Parses a list like `["5xx", "408", "429"]`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in items {
            let item = item.trim();
            let range = if let Some(d) = item.strip_suffix("xx") {
                let d: u16 = d
                    .parse()
                    .ok()
                    .filter(|d| (1..=5).contains(d))
                    .ok_or_else(|| format!("bad status class {item:?}; use 1xx to 5xx"))?;
                (d * 100, d * 100 + 99)
            } else {
                let s: u16 = item
                    .parse()
                    .ok()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        format!("bad status {item:?}; use 100 to 599 or a class like 5xx")
                    })?;
                (s, s)
            };
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    /// The set as [`parse`](Self::parse) reads it: `5xx` for a whole
    /// class, the status otherwise.
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            if lo.is_multiple_of(100) && hi == lo + 99 {
                out.push(format!("{}xx", lo / 100));
            } else {
                out.extend((lo..=hi).map(|s| s.to_string()));
            }
        }
        out
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

impl Default for StatusSet {
    /// 5xx, 408 and 429.
    fn default() -> Self {
        Self(vec![(500, 599), (408, 408), (429, 429)])
    }
}

/// Where a webhook route takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookKeys {
    /// Headers tried in order. The default is `Webhook-Id`, then `Idempotency-Key`.
    pub headers: Vec<HeaderName>,
    /// A JSON pointer (RFC 6901) of a body field holding the delivery's
    /// id (Stripe's event `/id`), tried when none of the headers is sent,
    /// before the body hash. The default is none.
    pub json: Option<String>,
    /// Whether a delivery with none of the headers is keyed by SHA-256 of its
    /// raw body. The default is true.
    pub body_hash_fallback: bool,
}

impl Default for WebhookKeys {
    fn default() -> Self {
        Self {
            headers: vec![
                HeaderName::from_static("webhook-id"),
                HeaderName::from_static("idempotency-key"),
            ],
            json: None,
            body_hash_fallback: true,
        }
    }
}

/// Which parts of a JSON body make two requests "the same" (rule 6): the
/// whole body, only some fields, or all but some. Fields are JSON pointers
/// (RFC 6901: `/amount`, `/items/0/sku`, `~1` for a `/` in a name). A body
/// that is not JSON is compared whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BodyFields {
    /// The whole body (the default).
    #[default]
    All,
    /// Only these fields: a retry that changes anything else replays; one
    /// that changes one of these gets 422.
    Include(Vec<String>),
    /// All but these fields (a client's timestamp, a trace id): a retry
    /// that changes only these replays.
    Exclude(Vec<String>),
}

impl BodyFields {
    /// Checks that each of `pointers` is a JSON pointer (empty, or starting
    /// with `/`, with `~` only as `~0` or `~1`).
    pub fn check(pointers: &[String]) -> Result<(), String> {
        for p in pointers {
            if !(p.is_empty() || p.starts_with('/')) {
                return Err(format!(
                    "{p:?} is not a JSON pointer: write it as /field or /parent/child"
                ));
            }
            let mut rest = p.as_str();
            while let Some(i) = rest.find('~') {
                match rest.as_bytes().get(i + 1) {
                    Some(b'0' | b'1') => rest = &rest[i + 2..],
                    _ => {
                        return Err(format!(
                            "{p:?}: a ~ in a JSON pointer is written ~0, and a / in a name ~1"
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether a replay carries the stored `Set-Cookie` headers.
///
/// A cookie set by the first execution (a session, a CSRF token) belongs to
/// the client that made it. Within a scope the store key already binds the
/// record to that user, so replaying it is safe; in the anonymous scope,
/// anyone who learns or guesses a key would receive another client's cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SetCookieReplay {
    /// Replayed to requests that carry a scope; dropped in the anonymous
    /// scope. The default.
    #[default]
    Scoped,
    /// Always replayed: byte-for-byte replays, cookies included.
    Always,
    /// Never replayed.
    Never,
}

impl SetCookieReplay {
    /// The name `FromStr` reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scoped => "scoped",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl std::str::FromStr for SetCookieReplay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scoped" => Ok(Self::Scoped),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown Set-Cookie replay policy {other:?}; use scoped, always or never"
            )),
        }
    }
}

/// What happens to a key when its execution may have run but nothing of its
/// answer arrived (the upstream reset, or timed out, before its status line:
/// SPEC rule 7's unknown outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownOutcome {
    /// The key is released, so a retry executes again. The default, as
    /// SPEC rule 7 says: right when the operation is safe to run again or
    /// the upstream deduplicates on its own.
    #[default]
    Release,
    /// The key is kept, answered with a problem (`outcome-unknown`) until
    /// the record expires or an operator deletes it: never a second
    /// execution, at the price of a retry that cannot succeed on its own.
    Keep,
}

impl UnknownOutcome {
    /// The name `FromStr` reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Keep => "keep",
        }
    }
}

impl std::str::FromStr for UnknownOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "release" => Ok(Self::Release),
            "keep" => Ok(Self::Keep),
            other => Err(format!(
                "unknown unknown_outcome {other:?}; use release or keep"
            )),
        }
    }
}

/// Which covered answers are passed to the client as they are produced and
/// stored as they stream, instead of being read in full before the first
/// byte is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StreamAnswers {
    /// Answers that are streams by nature: server-sent events
    /// (`text/event-stream`) and newline-delimited JSON
    /// (`application/x-ndjson`, `application/jsonl`). Buffering them would
    /// hold every event back until the last. The default.
    #[default]
    Auto,
    /// Every stored answer: its first byte reaches the client as soon as
    /// the handler sends it.
    Always,
    /// None: answers are read in full, then sent.
    Never,
}

impl StreamAnswers {
    /// The name `FromStr` reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }
    }

    /// Whether an answer with these headers is streamed.
    pub fn streams(self, headers: &http::HeaderMap) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| {
                    let media = ct.split(';').next().unwrap_or("").trim();
                    [
                        "text/event-stream",
                        "application/x-ndjson",
                        "application/jsonl",
                    ]
                    .iter()
                    .any(|m| media.eq_ignore_ascii_case(m))
                }),
        }
    }
}

impl std::str::FromStr for StreamAnswers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown stream {other:?}; use auto, always or never"
            )),
        }
    }
}

/// How one route is treated. Every setting has a default; builders name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Methods covered. The default is POST and PATCH.
    pub methods: Vec<Method>,
    /// How long a completed record is kept. The default is 24 h.
    pub ttl: Duration,
    /// The lease of an execution, renewed every third of it while the
    /// execution runs. The default is 30 s.
    pub lease: Duration,
    /// Whether a covered request without a key is refused (true) or passes
    /// through without protection (false). The default is true.
    pub key_required: bool,
    /// What a valid key looks like. The default is 10–255 of `A-Za-z0-9-_`, or a UUID.
    pub key_rules: KeyRules,
    /// How requests are compared. The default is [`FingerprintMode::Json`].
    pub fingerprint: FingerprintMode,
    /// Which fields of a JSON body are compared. The default is all.
    pub fingerprint_fields: BodyFields,
    /// A JSON pointer (RFC 6901) of a body field holding the key, for APIs
    /// that carry it in the body (Square's `/idempotency_key`). The
    /// `Idempotency-Key` header wins when both are sent. The default is
    /// none: the header only.
    pub key_json: Option<String>,
    /// Statuses not stored. The default is 5xx, 408 and 429.
    pub no_store: StatusSet,
    /// Largest request body accepted, in bytes. The default is 1 MiB.
    pub max_request_body: usize,
    /// Largest response body stored in full, in bytes. Larger ones are stored
    /// without their body, and a replay says so. The default is 1 MiB.
    pub max_stored_response: usize,
    /// Whether a store failure lets the request execute unprotected (true)
    /// instead of answering 503 (false). The default is false (fail-closed).
    pub fail_open: bool,
    /// Opt-in wait mode: a duplicate of an in-progress request waits up to this
    /// long for the first to finish, then gets its replay, instead of a 409.
    /// The default is `None` (answer 409 at once).
    pub wait: Option<Duration>,
    /// Webhook mode: where the key comes from. The default is `None` (the
    /// `Idempotency-Key` header).
    pub webhook: Option<WebhookKeys>,
    /// Whether keys must be signed for their user (`KEY.SIGNATURE`, see
    /// [`crate::signed`]); unsigned or forged keys are refused with 400.
    /// The layer needs the signing secret. The default is false.
    pub require_signed_keys: bool,
    /// Whether replays carry the stored `Set-Cookie` headers. The default
    /// is [`SetCookieReplay::Scoped`].
    pub replay_set_cookie: SetCookieReplay,
    /// What a key becomes when its execution may have run but nothing of
    /// its answer arrived. The default is [`UnknownOutcome::Release`].
    pub unknown_outcome: UnknownOutcome,
    /// Which answers stream to the client while they are stored. The
    /// default is [`StreamAnswers::Auto`] (server-sent events and NDJSON).
    pub stream: StreamAnswers,
    /// Whether every answer of the route carries the request's key back
    /// (`Idempotency-Key`), as Adyen's API does. The default is false.
    pub echo_key: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PATCH],
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            key_required: true,
            key_rules: KeyRules::default(),
            fingerprint: FingerprintMode::Json,
            fingerprint_fields: BodyFields::All,
            key_json: None,
            no_store: StatusSet::default(),
            max_request_body: 1 << 20,
            max_stored_response: 1 << 20,
            fail_open: false,
            wait: None,
            webhook: None,
            require_signed_keys: false,
            replay_set_cookie: SetCookieReplay::Scoped,
            unknown_outcome: UnknownOutcome::Release,
            stream: StreamAnswers::Auto,
            echo_key: false,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = $name;
            self
        }
    };
}

impl RoutePolicy {
    setter!(
        /// Sets the covered methods. The default is POST and PATCH.
        methods: Vec<Method>
    );
    setter!(
        /// Sets the TTL of completed records. The default is 24 h.
        ttl: Duration
    );
    setter!(
        /// Sets the lease. The default is 30 s.
        lease: Duration
    );
    setter!(
        /// Sets whether a key is required. The default is true.
        key_required: bool
    );
    setter!(
        /// Sets the key rules. The default is 10–255 characters, or a UUID.
        key_rules: KeyRules
    );
    setter!(
        /// Sets the fingerprint mode. The default is JSON-canonical.
        fingerprint: FingerprintMode
    );
    setter!(
        /// Sets which fields of a JSON body are compared. The default is
        /// the whole body.
        fingerprint_fields: BodyFields
    );
    setter!(
        /// Takes the key from this JSON pointer of the body when no
        /// `Idempotency-Key` header is sent. The default is none.
        key_json: Option<String>
    );
    setter!(
        /// Sets the statuses not stored. The default is 5xx, 408, 429.
        no_store: StatusSet
    );
    setter!(
        /// Sets the request body limit. The default is 1 MiB.
        max_request_body: usize
    );
    setter!(
        /// Sets the stored-response limit. The default is 1 MiB.
        max_stored_response: usize
    );
    setter!(
        /// Sets fail-open. The default is false.
        fail_open: bool
    );
    setter!(
        /// Sets wait mode. The default is off.
        wait: Option<Duration>
    );
    setter!(
        /// Sets webhook mode. The default is off.
        webhook: Option<WebhookKeys>
    );
    setter!(
        /// Requires signed keys (`KEY.SIGNATURE`). The default is false.
        require_signed_keys: bool
    );
    setter!(
        /// Sets whether replays carry `Set-Cookie`. The default is scoped.
        replay_set_cookie: SetCookieReplay
    );
    setter!(
        /// Sets what a key becomes when nothing of its answer arrived. The
        /// default is release.
        unknown_outcome: UnknownOutcome
    );
    setter!(
        /// Sets which answers stream while they are stored. The default is
        /// auto (server-sent events and NDJSON).
        stream: StreamAnswers
    );
    setter!(
        /// Sets whether answers carry the request's key back. The default
        /// is false.
        echo_key: bool
    );

    /// Whether `method` is covered.
    pub fn covers(&self, method: &Method) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// A path pattern: literal segments, `*` or `{name}` for one segment, and a
/// trailing `**` for any rest (including none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    /// Parses a pattern; it must start with `/`, and `**` may only end it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("route pattern {pattern:?} must start with '/'"));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => {
                    return Err(format!(
                        "route pattern {pattern:?}: '**' may only end a pattern"
                    ))
                }
                "*" => Segment::One,
                s if s.starts_with('{') && s.ends_with('}') => Segment::One,
                s => Segment::Literal(s.to_owned()),
            };
            segments.push(seg);
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect::<Vec<_>>()
        };
        // A trailing slash does not make another route.
        if parts.last() == Some(&"") {
            parts.pop();
        }
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if i >= parts.len() || parts[i].is_empty() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == parts.len()
    }
}

/// The whole policy: route rules tried in order, then the default.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Rules tried in order; the first whose pattern matches the path applies.
    pub routes: Vec<(PathPattern, RoutePolicy)>,
    /// The policy for paths no rule matches. The default covers POST and PATCH
    /// on every route.
    pub default: RoutePolicy,
}

impl Policy {
    /// Adds a route rule.
    ///
    /// # Panics
    /// When `pattern` is invalid; use [`PathPattern::parse`] and
    /// [`Policy::route_pattern`] for patterns from user input.
    pub fn route(self, pattern: &str, policy: RoutePolicy) -> Self {
        #[allow(clippy::expect_used)]
        let p = PathPattern::parse(pattern).expect("invalid route pattern");
        self.route_pattern(p, policy)
    }

    /// Adds a route rule with a parsed pattern.
    pub fn route_pattern(mut self, pattern: PathPattern, policy: RoutePolicy) -> Self {
        self.routes.push((pattern, policy));
        self
    }

    /// Replaces the default policy.
    pub fn default_policy(mut self, policy: RoutePolicy) -> Self {
        self.default = policy;
        self
    }

    /// The policy covering this request with the name of its route (the
    /// pattern, or `*` for the default), or `None` when it is not covered.
    pub fn find(&self, method: &Method, path: &str) -> Option<(&str, &RoutePolicy)> {
        let (name, policy) = self
            .routes
            .iter()
            .find(|(p, _)| p.matches(path))
            .map(|(p, r)| (p.as_str(), r))
            .unwrap_or(("*", &self.default));
        policy.covers(method).then_some((name, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, path: &str| {
            PathPattern::parse(p)
                .map(|p| p.matches(path))
                .unwrap_or(false)
        };
        assert!(m("/payments", "/payments"));
        assert!(m("/payments", "/payments/"));
        assert!(!m("/payments", "/payments/1"));
        assert!(m("/payments/{id}", "/payments/1"));
        assert!(!m("/payments/{id}", "/payments"));
        assert!(m("/payments/**", "/payments"));
        assert!(m("/payments/**", "/payments/1/refunds"));
        assert!(m("/", "/"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/a/*/c", "/a/b/c"));
        assert!(PathPattern::parse("x").is_err());
        assert!(PathPattern::parse("/**/x").is_err());
    }

    #[test]
    fn status_sets() {
        let d = StatusSet::default();
        assert!(d.contains(500) && d.contains(503) && d.contains(408) && d.contains(429));
        assert!(!d.contains(400) && !d.contains(201) && !d.contains(409));
        let p = StatusSet::parse(["4xx", "503"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.contains(404) && p.contains(503) && !p.contains(500));
        assert!(StatusSet::parse(["9xx"]).is_err());
        assert!(StatusSet::parse(["abc"]).is_err());
    }
}
