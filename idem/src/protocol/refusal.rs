//! Every refusal the layer makes, with the sentence it tells the client, and
//! how each is rendered (`application/problem+json`, RFC 9457) and counted.
//! The slug, status and title of each kind are `ProblemKind`'s, in
//! idem-core; what is said and counted lives here, once.

use http::{Method, Response};
use idem_core::{Problem, ProblemKind, StoreError};

use crate::layer::{ResponseBody, Shared};
use crate::metrics::ErrorKind;

/// How long a client told 409 should wait. Leases are renewed while the
/// first execution runs, so the lease's remaining time says nothing about
/// when it will finish; most executions take well under a second.
const RETRY_AFTER_IN_USE: u64 = 1;

/// A route that requires signed keys on a server without a signing secret.
pub(super) const NO_SIGNING_SECRET: &str =
    "this route requires signed keys, but the server has no key-signing secret; nothing was executed";

/// A refusal as an `application/problem+json` response.
pub(crate) fn response<B>(shared: &Shared, problem: &Problem) -> Response<ResponseBody<B>> {
    problem.to_response(&shared.problem_base, ResponseBody::full)
}

/// Credentials that did not verify: 401 with the verifier's challenge.
pub(super) fn unauthenticated<B>(
    shared: &Shared,
    why: crate::Unverified,
) -> Response<ResponseBody<B>> {
    let problem = Problem::new(ProblemKind::Unauthenticated, why.detail());
    let mut res = response(shared, &problem);
    res.headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, why.challenge().clone());
    res
}

/// The `idempotency_errors_total{kind}` a refusal counts in, if any.
pub(super) fn metric(kind: ProblemKind) -> Option<ErrorKind> {
    Some(match kind {
        ProblemKind::KeyMissing => ErrorKind::MissingKey,
        ProblemKind::KeyInvalid => ErrorKind::InvalidKey,
        ProblemKind::KeyInUse => ErrorKind::InProgress,
        ProblemKind::KeyReused => ErrorKind::Mismatch,
        ProblemKind::StoreUnavailable => ErrorKind::StoreUnavailable,
        ProblemKind::StoreFull => ErrorKind::StoreFull,
        ProblemKind::BodyTooLarge => ErrorKind::TooLarge,
        ProblemKind::BodyUnreadable => ErrorKind::BodyUnreadable,
        ProblemKind::BodyTimeout => ErrorKind::BodyTimeout,
        ProblemKind::Overloaded => ErrorKind::Overloaded,
        ProblemKind::ScopeFull => ErrorKind::ScopeFull,
        ProblemKind::ScopeRateLimited => ErrorKind::ScopeRateLimited,
        ProblemKind::Unauthenticated => ErrorKind::Unauthenticated,
        ProblemKind::ExecutionFailed
        | ProblemKind::UpstreamUnavailable
        | ProblemKind::UpstreamTimeout
        | ProblemKind::AnswerIncomplete
        | ProblemKind::OutcomeUnknown => ErrorKind::Upstream,
        _ => return None,
    })
}

/// One scope holds its share of a bounded store (see `quota`).
pub(super) fn scope_full(max: usize, ttl: std::time::Duration) -> Problem {
    Problem::new(
        ProblemKind::ScopeFull,
        format!(
            "this client holds {max} idempotency keys, its share of the store; nothing was executed. Retry after the Retry-After delay, as keys expire ({}s after their answer) or are released",
            ttl.as_secs()
        ),
    )
    .with_retry_after(ttl.as_secs().clamp(1, 60))
}

/// One scope's new keys came faster than its rate (see `rate`).
pub(super) fn scope_rate_limited(wait: std::time::Duration) -> Problem {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Problem::new(
        ProblemKind::ScopeRateLimited,
        format!(
            "this client sends new idempotency keys faster than its rate; nothing was executed. Retry in {secs}s; retries of keys already answered are not limited"
        ),
    )
    .with_retry_after(secs)
}

/// Too many covered requests in flight (the admission limit).
pub(crate) fn overloaded() -> Problem {
    Problem::new(
        ProblemKind::Overloaded,
        "too many requests are being handled; nothing was executed, retry after the Retry-After delay",
    )
    .with_retry_after(1)
}

/// Rule 1.
pub(super) fn key_missing(method: &Method, path: &str) -> Problem {
    Problem::new(
        ProblemKind::KeyMissing,
        format!(
            "{method} {path} requires an Idempotency-Key header: send a unique key (a UUID v4, say) and reuse it on every retry of this operation"
        ),
    )
}

/// Rule 1 on a route that also takes the key from a body field.
pub(super) fn key_missing_from_both(method: &Method, path: &str, pointer: &str) -> Problem {
    Problem::new(
        ProblemKind::KeyMissing,
        format!(
            "{method} {path} requires an idempotency key: send it in the Idempotency-Key header or in the body's {pointer} (a UUID v4, say), and reuse it on every retry of this operation"
        ),
    )
}

/// Rule 2; `why` says what is wrong with the key.
pub(super) fn key_invalid(why: String) -> Problem {
    Problem::new(ProblemKind::KeyInvalid, why)
}

/// Rule 5.
pub(super) fn key_in_use() -> Problem {
    Problem::new(
        ProblemKind::KeyInUse,
        "a request with this Idempotency-Key is still being processed; retry after the Retry-After delay to get its answer",
    )
    .with_retry_after(RETRY_AFTER_IN_USE)
}

/// Rule 6.
pub(super) fn key_reused() -> Problem {
    Problem::new(
        ProblemKind::KeyReused,
        "this Idempotency-Key was already used for a different request (method, path or body differ); use a new key for a new operation",
    )
}

/// Rule 11.
pub(super) fn body_too_large(limit: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("the request body is larger than this route's limit of {limit} bytes"),
    )
}

/// The request body did not arrive within the body read timeout.
pub(super) fn body_timeout(within: std::time::Duration) -> Problem {
    Problem::new(
        ProblemKind::BodyTimeout,
        format!("the request body did not arrive within {within:?}; nothing was executed, send the request again"),
    )
}

/// The request body stopped arriving for the body idle timeout.
pub(super) fn body_idle(idle: std::time::Duration) -> Problem {
    Problem::new(
        ProblemKind::BodyTimeout,
        format!("the request body stopped arriving for {idle:?}; nothing was executed, send the request again"),
    )
}

/// The request body broke off while it was read.
pub(super) fn body_unreadable(e: &dyn std::fmt::Display) -> Problem {
    Problem::new(
        ProblemKind::BodyUnreadable,
        format!("the request body could not be read: {e}; send it again"),
    )
}

/// Rule 10, fail-closed: `kind` is `StoreUnavailable` or `StoreFull`. A
/// full store says which limit was reached (an operator's setting); an
/// unreachable one says no more: its error text can name hosts, users and
/// databases, so it goes to the log (`store_failure`), not to the client.
pub(super) fn store_failed(kind: ProblemKind, e: &StoreError) -> Problem {
    let detail = match kind {
        ProblemKind::StoreFull => format!("{e}; nothing was executed, retry later"),
        _ => "the idempotency store did not answer; nothing was executed, retry later".to_owned(),
    };
    Problem::new(kind, detail).with_retry_after(1)
}

/// Rule 7: the handler panicked.
pub(super) fn handler_panicked() -> Problem {
    Problem::new(
        ProblemKind::ExecutionFailed,
        "the request handler panicked; nothing was stored, so a retry executes again",
    )
}

/// Rule 13: the operation ran and answered `status`, then the answer's body
/// broke off before it all arrived.
pub(super) fn answer_incomplete(status: http::StatusCode) -> Problem {
    Problem::new(
        ProblemKind::AnswerIncomplete,
        format!(
            "the operation ran and answered {status}, but its answer broke off before the whole body arrived; it is kept without its body, and a retry with this Idempotency-Key gets that status again (marked Idempotent-Body-Lost) instead of executing twice"
        ),
    )
}

/// Rule 7 with `unknown_outcome = "keep"`: nothing of the answer arrived,
/// and the key is kept rather than risk a second execution.
pub(super) fn outcome_unknown() -> Problem {
    Problem::new(
        ProblemKind::OutcomeUnknown,
        "the operation may have run, but none of its answer arrived; this Idempotency-Key is kept so that it cannot run twice: check whether it took effect, then use a new key, or have an operator delete this one (idem keys delete)",
    )
}
