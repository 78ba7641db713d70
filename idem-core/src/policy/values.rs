//! The values of route settings that are more than a number or a switch:
//! which statuses are not stored, where a webhook's key comes from, which
//! body fields are compared, and what happens to cookies, unknown outcomes
//! and streamed answers.

use http::HeaderName;

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
