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

mod path;
mod values;

use std::time::Duration;

use http::Method;

pub use self::path::PathPattern;
pub use self::values::{
    BodyFields, SetCookieReplay, StatusSet, StreamAnswers, UnknownOutcome, WebhookKeys,
};
use crate::fingerprint::FingerprintMode;
use crate::key::KeyRules;

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
