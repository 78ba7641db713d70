//! The retry decision, as a pure function of one attempt's outcome: SPEC.md
//! "Keys on the client side". Retry network failures, 409 (the first request
//! is still executing), 429 and 5xx; never other 4xx; stop on success.
//!
//! # Examples
//!
//! ```
//! use idem_client::classify::{classify, Attempt, Decision};
//!
//! assert_eq!(classify(&Attempt::Status(409)), Decision::Retry);
//! assert_eq!(classify(&Attempt::Status(422)), Decision::Stop);
//! assert_eq!(classify(&Attempt::ConnectError), Decision::Retry);
//! ```

use std::time::{Duration, SystemTime};

/// What one attempt ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No connection, or it broke before an answer came (the answer may have
    /// been lost: the server may have executed).
    ConnectError,
    /// No answer within the attempt's timeout.
    Timeout,
    /// An answer with this status.
    Status(u16),
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
pub fn classify(attempt: &Attempt) -> Decision {
    match attempt {
        Attempt::ConnectError | Attempt::Timeout => Decision::Retry,
        Attempt::Status(409 | 429) => Decision::Retry,
        Attempt::Status(s) if (500..=599).contains(s) => Decision::Retry,
        Attempt::Status(_) => Decision::Stop,
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
                serde_json::Value::Number(n) => Attempt::Status(n.as_u64().expect("status") as u16),
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
