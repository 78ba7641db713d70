//! idem-client: the client half of the idempotency contract (SPEC.md "Keys
//! on the client side"). One key per logical operation, chosen before the
//! first try and sent on every retry; retries of network failures, 408,
//! 429, 5xx and the 409 of a key in use with exponential backoff and full
//! jitter, honouring
//! `Retry-After`; never a retry of another 4xx; bounded by a number of
//! attempts and an overall deadline. The answer says whether it was a
//! replay, and problem+json refusals become typed errors.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> Result<(), idem_client::Error> {
//! use std::time::Duration;
//! use idem_client::{Client, RetryPolicy};
//!
//! let client = Client::new().retry_policy(RetryPolicy {
//!     deadline: Duration::from_secs(10),
//!     ..RetryPolicy::default()
//! });
//! let answer = client
//!     .post("http://127.0.0.1:8080/payments")
//!     .json(&serde_json::json!({"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}))
//!     .send()
//!     .await?;
//! assert!(answer.status.is_success());
//! # Ok(())
//! # }
//! ```

pub mod classify;
mod client;

pub use client::{Answer, Client, KeyStrategy, Operation, RetryEvent, RetryPolicy};

/// How the last attempt of an operation that gave up ended.
#[derive(Debug)]
pub enum LastAttempt {
    /// An answer worth retrying (a 503, an `idempotency-key-in-use` 409...).
    Answer(Box<Answer>),
    /// No answer: the connection failed or the attempt timed out.
    Failed(reqwest::Error),
}

impl std::fmt::Display for LastAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answer(a) => write!(
                f,
                "status {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
            ),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LastAttempt {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Answer(_) => None,
            Self::Failed(e) => Some(e),
        }
    }
}

/// Why an operation did not get a final answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 422: the key was already used for a different request. Use a new key
    /// for a new operation.
    #[error("the key {key} was already used for a different request: {detail}")]
    KeyReused {
        /// The key sent.
        key: String,
        /// The server's explanation.
        detail: String,
    },
    /// 400: the server refused the key (malformed, or a bad signature).
    #[error("the server refused the key {key}: {detail}")]
    KeyInvalid {
        /// The key sent.
        key: String,
        /// The server's explanation.
        detail: String,
    },
    /// 400: the server wants a key (this client always sends one, so the
    /// header was lost on the way: a proxy stripping it?).
    #[error("the server says the Idempotency-Key header is missing: {detail}")]
    KeyMissing {
        /// The server's explanation.
        detail: String,
    },
    /// 413: the body is over the server's limit.
    #[error("the request body is too large for the server: {detail}")]
    BodyTooLarge {
        /// The server's explanation.
        detail: String,
    },
    /// Every attempt allowed failed with a retryable outcome. The
    /// operation may have run: retry it later with the same `key`.
    #[error("gave up after {attempts} attempts with the key {key} (retry later with it); the last: {last}")]
    GaveUp {
        /// The key sent on every attempt.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's answer or error.
        #[source]
        last: LastAttempt,
    },
    /// The next retry would pass the overall deadline. The operation may
    /// have run: retry it later with the same `key`.
    #[error("the deadline of {deadline:?} passed after {attempts} attempts with the key {key} (retry later with it); the last: {last}")]
    Deadline {
        /// The key sent on every attempt.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The deadline.
        deadline: std::time::Duration,
        /// The last attempt's answer or error.
        #[source]
        last: LastAttempt,
    },
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Build(String),
}
