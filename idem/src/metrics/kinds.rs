//! The label values the layer's series are split by: why a request was
//! refused (`kind`), which store operation was timed (`op`).

/// Why a covered request was refused or failed: the `kind` label of
/// `idempotency_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 409: the key is being executed by another request.
    InProgress,
    /// 422: the key was used for a different request.
    Mismatch,
    /// 400: no key.
    MissingKey,
    /// 400: a malformed key.
    InvalidKey,
    /// 503: the store failed (or was full).
    StoreUnavailable,
    /// 413: the request body was over the limit.
    TooLarge,
    /// The execution failed: a status that is not stored (5xx, 408, 429),
    /// an error, a panic, or a broken response body.
    Upstream,
    /// 503: too many covered requests in flight.
    Overloaded,
    /// 503: the store holds as many records (or bytes) as it may.
    StoreFull,
    /// 429: one scope holds its share of a bounded store.
    ScopeFull,
    /// 429: one scope's new keys came faster than its rate.
    ScopeRateLimited,
    /// 401: the credentials the scope comes from did not verify.
    Unauthenticated,
    /// 408: the request body did not arrive in time.
    BodyTimeout,
    /// 400: the request body could not be read.
    BodyUnreadable,
}

impl ErrorKind {
    pub(super) const ALL: [ErrorKind; 14] = [
        Self::InProgress,
        Self::Mismatch,
        Self::MissingKey,
        Self::InvalidKey,
        Self::StoreUnavailable,
        Self::TooLarge,
        Self::Upstream,
        Self::Overloaded,
        Self::StoreFull,
        Self::ScopeFull,
        Self::ScopeRateLimited,
        Self::Unauthenticated,
        Self::BodyTimeout,
        Self::BodyUnreadable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Mismatch => "mismatch",
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::StoreUnavailable => "store_unavailable",
            Self::TooLarge => "too_large",
            Self::Upstream => "upstream",
            Self::Overloaded => "overloaded",
            Self::StoreFull => "store_full",
            Self::ScopeFull => "scope_full",
            Self::ScopeRateLimited => "scope_rate_limited",
            Self::Unauthenticated => "unauthenticated",
            Self::BodyTimeout => "body_timeout",
            Self::BodyUnreadable => "body_unreadable",
        }
    }
}

/// A store operation: the `op` label of `idempotency_store_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// `begin`.
    Begin,
    /// `complete`.
    Complete,
    /// `release`.
    Release,
    /// `renew`.
    Renew,
}

impl StoreOp {
    pub(super) const ALL: [StoreOp; 4] = [Self::Begin, Self::Complete, Self::Release, Self::Renew];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::Renew => "renew",
        }
    }
}
