//! Refusals as `application/problem+json` (RFC 9457).
//!
//! # Examples
//!
//! ```
//! use idem_core::problem::{Problem, ProblemKind};
//! let p = Problem::new(ProblemKind::KeyReused, "this key was used with another request");
//! let json = String::from_utf8(p.to_json("urn:idem:problem:")).unwrap();
//! assert!(json.contains("\"type\":\"urn:idem:problem:idempotency-key-reused\""));
//! assert_eq!(p.status(), 422);
//! ```

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The default base of problem `type` URIs.
pub const DEFAULT_PROBLEM_BASE: &str = "urn:idem:problem:";

/// Every refusal idem makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Rule 1.
    KeyMissing,
    /// Rule 2.
    KeyInvalid,
    /// Rule 5.
    KeyInUse,
    /// Rule 6.
    KeyReused,
    /// Rule 10.
    StoreUnavailable,
    /// The store refused a new key because it is full.
    StoreFull,
    /// Rule 11.
    BodyTooLarge,
    /// The request body could not be read.
    BodyUnreadable,
    /// The handler or upstream failed without an answer (rule 7).
    ExecutionFailed,
    /// The upstream could not be reached (gateway, rule 7).
    UpstreamUnavailable,
    /// The upstream did not answer in time (gateway, rule 7).
    UpstreamTimeout,
    /// Too many covered requests in flight: refused before anything is read
    /// or executed, so memory stays bounded.
    Overloaded,
    /// Rule 13: the operation ran and its status line arrived, then its
    /// body broke off.
    AnswerIncomplete,
    /// The request body did not arrive within the body read timeout.
    BodyTimeout,
    /// Rule 7 with `unknown_outcome = "keep"`: the operation may have run,
    /// nothing of its answer arrived, and the key is kept.
    OutcomeUnknown,
    /// One scope (one client, or the anonymous scope) holds its share of
    /// the store's capacity: its new keys wait, other scopes' do not.
    ScopeFull,
    /// One scope's new keys came faster than its configured rate.
    ScopeRateLimited,
    /// The request's credentials, from which its scope is taken, did not
    /// verify (an invalid bearer token): nothing executes or replays.
    Unauthenticated,
}

impl ProblemKind {
    /// Every kind.
    pub const ALL: [ProblemKind; 18] = [
        Self::KeyMissing,
        Self::KeyInvalid,
        Self::KeyInUse,
        Self::KeyReused,
        Self::StoreUnavailable,
        Self::StoreFull,
        Self::BodyTooLarge,
        Self::BodyUnreadable,
        Self::ExecutionFailed,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::Overloaded,
        Self::AnswerIncomplete,
        Self::BodyTimeout,
        Self::OutcomeUnknown,
        Self::ScopeFull,
        Self::ScopeRateLimited,
        Self::Unauthenticated,
    ];

    /// The kind whose [`slug`](Self::slug) this is.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// The gRPC status code a gRPC client is told instead of
    /// [`status`](Self::status): the key missing or invalid is
    /// `INVALID_ARGUMENT` (3), in use `ABORTED` (10, retry later), reused
    /// for another request `FAILED_PRECONDITION` (9), the store or the
    /// upstream down `UNAVAILABLE` (14), limits `RESOURCE_EXHAUSTED` (8).
    pub fn grpc_status(self) -> u8 {
        match self {
            Self::KeyMissing | Self::KeyInvalid | Self::BodyUnreadable => 3,
            Self::KeyInUse => 10,
            Self::KeyReused => 9,
            Self::StoreUnavailable | Self::UpstreamUnavailable | Self::Overloaded => 14,
            Self::StoreFull | Self::BodyTooLarge | Self::ScopeFull | Self::ScopeRateLimited => 8,
            Self::UpstreamTimeout | Self::BodyTimeout => 4,
            Self::ExecutionFailed => 13,
            // The operation ran; its answer's body was lost.
            Self::AnswerIncomplete => 15,
            Self::OutcomeUnknown => 2,
            Self::Unauthenticated => 16,
        }
    }

    /// The last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::KeyMissing => "idempotency-key-missing",
            Self::KeyInvalid => "idempotency-key-invalid",
            Self::KeyInUse => "idempotency-key-in-use",
            Self::KeyReused => "idempotency-key-reused",
            Self::StoreUnavailable => "idempotency-store-unavailable",
            Self::StoreFull => "idempotency-store-full",
            Self::BodyTooLarge => "request-body-too-large",
            Self::BodyUnreadable => "request-body-unreadable",
            Self::ExecutionFailed => "execution-failed",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::Overloaded => "server-overloaded",
            Self::AnswerIncomplete => "answer-incomplete",
            Self::BodyTimeout => "request-body-timeout",
            Self::OutcomeUnknown => "outcome-unknown",
            Self::ScopeFull => "idempotency-scope-full",
            Self::ScopeRateLimited => "idempotency-scope-rate-limited",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::KeyMissing | Self::KeyInvalid | Self::BodyUnreadable => 400,
            Self::KeyInUse => 409,
            Self::KeyReused => 422,
            Self::StoreUnavailable | Self::StoreFull => 503,
            Self::BodyTooLarge => 413,
            Self::ExecutionFailed => 500,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
            Self::Overloaded => 503,
            Self::AnswerIncomplete | Self::OutcomeUnknown => 502,
            Self::BodyTimeout => 408,
            Self::ScopeFull | Self::ScopeRateLimited => 429,
            Self::Unauthenticated => 401,
        }
    }

    /// A short human title.
    pub fn title(self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency-Key header is missing",
            Self::KeyInvalid => "Idempotency-Key header is invalid",
            Self::KeyInUse => "A request with this Idempotency-Key is being processed",
            Self::KeyReused => "Idempotency-Key was used with a different request",
            Self::StoreUnavailable => "Idempotency store is unavailable",
            Self::StoreFull => "Idempotency store is full",
            Self::BodyTooLarge => "Request body is too large",
            Self::BodyUnreadable => "Request body could not be read",
            Self::ExecutionFailed => "The request failed while executing",
            Self::UpstreamUnavailable => "Upstream is unavailable",
            Self::UpstreamTimeout => "Upstream timed out",
            Self::Overloaded => "Too many requests in flight",
            Self::AnswerIncomplete => "The operation ran, but its answer broke off",
            Self::BodyTimeout => "Request body did not arrive in time",
            Self::OutcomeUnknown => "The operation may have run; its answer never arrived",
            Self::ScopeFull => "Too many idempotency keys held for this client",
            Self::ScopeRateLimited => "New idempotency keys are coming too fast from this client",
            Self::Unauthenticated => "The request's credentials could not be verified",
        }
    }
}

/// One refusal: a kind, a detail that tells the client what to do, and an
/// optional `Retry-After` in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What went wrong.
    pub kind: ProblemKind,
    /// What to do about it.
    pub detail: String,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The problem document, with `type` = `base` + slug.
    pub fn to_json(&self, base: &str) -> Vec<u8> {
        let mut s = String::with_capacity(160 + self.detail.len());
        s.push_str("{\"type\":");
        json_string(&mut s, &format!("{base}{}", self.kind.slug()));
        s.push_str(",\"title\":");
        json_string(&mut s, self.kind.title());
        s.push_str(&format!(",\"status\":{},\"detail\":", self.status()));
        json_string(&mut s, &self.detail);
        s.push('}');
        s.into_bytes()
    }
}

impl Problem {
    /// The problem as an HTTP response (status, `Content-Type`,
    /// `Retry-After` when set), its body made by `body` from the document.
    /// The layer, the gateway's proxy and the admin API all answer with this.
    pub fn to_response<B>(&self, base: &str, body: impl FnOnce(Vec<u8>) -> B) -> http::Response<B> {
        let mut res = http::Response::new(body(self.to_json(base)));
        *res.status_mut() = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = res.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(PROBLEM_JSON),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        res
    }

    /// The problem as a complete HTTP/1.1 response that closes the
    /// connection: for a refusal written to a socket before any HTTP
    /// library reads from it (a connection over the limit).
    pub fn to_http1(&self, base: &str) -> Vec<u8> {
        let body = self.to_json(base);
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        );
        if let Some(secs) = self.retry_after {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A service's own error (the admin API's, the demo's: `validation_failed`,
/// `not_found`, …) as a problem document: `type` is the default base and
/// `code` in kebab case, `title` the status's reason, and `error` the code
/// as it is (the member these services answered with before, kept so that
/// clients reading it keep working).
pub fn service_document(
    status: http::StatusCode,
    code: &str,
    detail: impl Into<String>,
) -> serde_json::Value {
    serde_json::json!({
        "type": format!("{DEFAULT_PROBLEM_BASE}{}", code.replace('_', "-")),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.into(),
        "error": code,
    })
}

/// [`service_document`] as a response with its `Content-Type`, its body
/// made by `body` from the document (`axum::body::Body::from`, say).
pub fn service_response<B>(
    status: http::StatusCode,
    code: &str,
    detail: impl Into<String>,
    body: impl FnOnce(Vec<u8>) -> B,
) -> http::Response<B> {
    let doc = service_document(status, code, detail).to_string();
    let mut res = http::Response::new(body(doc.into_bytes()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(PROBLEM_JSON),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_its_slug_and_has_a_grpc_status() {
        let mut slugs = std::collections::HashSet::new();
        for kind in ProblemKind::ALL {
            assert!(slugs.insert(kind.slug()), "{kind:?} twice");
            assert_eq!(ProblemKind::from_slug(kind.slug()), Some(kind));
            assert!((1..=16).contains(&kind.grpc_status()), "{kind:?}");
        }
        assert_eq!(ProblemKind::from_slug("no-such-problem"), None);
    }

    #[test]
    fn http1_rendering_is_a_whole_response() {
        let p = Problem::new(ProblemKind::Overloaded, "busy").with_retry_after(1);
        let raw = String::from_utf8(p.to_http1("x:")).unwrap_or_default();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body.as_bytes(), p.to_json("x:"));
        let res = p.to_response("x:", |b| b);
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["content-type"], PROBLEM_JSON);
    }

    #[test]
    fn problem_json_escapes() {
        let p = Problem::new(ProblemKind::KeyInvalid, "bad \"key\"\n\u{1}");
        let s = String::from_utf8(p.to_json("x:")).unwrap_or_default();
        assert_eq!(
            s,
            r#"{"type":"x:idempotency-key-invalid","title":"Idempotency-Key header is invalid","status":400,"detail":"bad \"key\"\n\u0001"}"#
        );
    }

    #[test]
    fn a_service_error_is_a_problem_that_keeps_its_code() {
        let doc = service_document(
            http::StatusCode::BAD_REQUEST,
            "validation_failed",
            "amount is required",
        );
        assert_eq!(doc["type"], "urn:idem:problem:validation-failed");
        assert_eq!(doc["title"], "Bad Request");
        assert_eq!(doc["status"], 400);
        assert_eq!(doc["detail"], "amount is required");
        assert_eq!(doc["error"], "validation_failed");
        let res = service_response(
            http::StatusCode::NOT_FOUND,
            "not_found",
            "no payment x",
            |b| b,
        );
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(
            res.headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(PROBLEM_JSON)
        );
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap_or_default();
        assert_eq!(
            body,
            doc.as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("detail".into(), "no payment x".into());
                    o.insert("type".into(), "urn:idem:problem:not-found".into());
                    o.insert("title".into(), "Not Found".into());
                    o.insert("status".into(), 404.into());
                    o.insert("error".into(), "not_found".into());
                    serde_json::Value::Object(o)
                })
                .unwrap_or_default()
        );
    }
}
