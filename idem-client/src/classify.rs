//! The retry decision, as a pure function of one attempt's outcome: SPEC.md
//! "Keys on the client side". Retry network failures, 408 (the server
//! released the key), 429, 5xx, and the 409 of `idempotency-key-in-use`
//! (the first request is still executing); a business 409 is final, and so
//! is every other 4xx; stop on success. The cases are
//! `clients/retry-cases.json`, shared with the Python and JavaScript clients.
//!
//! # Examples
//!
//! ```
//! use idem_client::classify::{classify, Attempt, Decision};
//!
//! let in_use = Attempt::Answer { status: 409, problem: Some("idempotency-key-in-use") };
//! assert_eq!(classify(&in_use), Decision::Retry);
//! let business = Attempt::Answer { status: 409, problem: None };
//! assert_eq!(classify(&business), Decision::Stop);
//! assert_eq!(classify(&Attempt::status(422)), Decision::Stop);
//! assert_eq!(classify(&Attempt::ConnectError), Decision::Retry);
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The problem a server sends while the first request with a key executes.
pub const KEY_IN_USE: &str = "idempotency-key-in-use";

/// What one attempt ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// No connection, or it broke before an answer came (the answer may have
    /// been lost: the server may have executed).
    ConnectError,
    /// No answer within the attempt's timeout.
    Timeout,
    /// An answer with this status and, when its body is a problem+json
    /// document, the problem's slug (the last segment of its `type`).
    Answer {
        /// The status.
        status: u16,
        /// The problem's slug, if the answer is one.
        problem: Option<&'a str>,
    },
}

impl Attempt<'static> {
    /// An answer with this status and no problem document.
    pub fn status(status: u16) -> Self {
        Self::Answer {
            status,
            problem: None,
        }
    }
}

/// The slug of a problem+json answer (`idempotency-key-in-use` of
/// `urn:idem:problem:idempotency-key-in-use`), if the answer is one.
pub fn problem_slug(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let is_problem = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !is_problem {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slug = v["type"].as_str()?.rsplit([':', '/']).next()?;
    Some(slug.to_owned())
}

/// Whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the same request, with the same key, again (after a delay).
    Retry,
    /// The answer is final.
    Stop,
}

/// Decides whether an attempt's outcome is worth another try.
pub fn classify(attempt: &Attempt<'_>) -> Decision {
    match attempt {
        Attempt::ConnectError | Attempt::Timeout => Decision::Retry,
        Attempt::Answer {
            status: 409,
            problem: Some(KEY_IN_USE),
        } => Decision::Retry,
        Attempt::Answer {
            status: 408 | 429, ..
        } => Decision::Retry,
        Attempt::Answer { status, .. } if (500..=599).contains(status) => Decision::Retry,
        Attempt::Answer { .. } => Decision::Stop,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3),
/// relative to `now`. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table shared with the Python and JavaScript clients.
    #[test]
    fn the_shared_table_of_cases() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/retry-cases.json");
        let text = std::fs::read_to_string(path).expect("clients/retry-cases.json");
        let table: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let cases = table["cases"].as_array().expect("cases");
        assert!(cases.len() >= 15);
        for case in cases {
            let attempt = match &case["outcome"] {
                serde_json::Value::String(s) if s == "connect_error" => Attempt::ConnectError,
                serde_json::Value::String(s) if s == "timeout" => Attempt::Timeout,
                serde_json::Value::Number(n) => Attempt::Answer {
                    status: n.as_u64().expect("status") as u16,
                    problem: case["problem"].as_str(),
                },
                other => panic!("unknown outcome {other}"),
            };
            let want = if case["retry"] == true {
                Decision::Retry
            } else {
                Decision::Stop
            };
            assert_eq!(classify(&attempt), want, "{}", case["name"]);
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
