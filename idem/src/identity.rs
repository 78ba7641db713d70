//! Whom a key belongs to: the request's scope (SPEC "scope"), and where it
//! comes from.
//!
//! The same key in two scopes is two unrelated records, so the scope must
//! name the caller in a way that (a) stays the same across the caller's
//! retries and (b) cannot be claimed by another caller. Three sources:
//!
//! - [`ScopeSource::Header`] with `Authorization` (the default): each
//!   credential is its own scope. Right for API keys; wrong for OAuth
//!   access tokens that are refreshed between retries (the retry lands in
//!   another scope and executes again).
//! - [`ScopeSource::Header`] with a header a trusted authenticating proxy
//!   sets (`X-User-Id`): a stable identity, *if* no client can reach idem
//!   without passing through that proxy (otherwise anyone can send the
//!   header and read another user's replays).
//! - [`ScopeSource::Verified`]: an [`Identify`] checks the request's
//!   credentials and names the caller, or refuses the request with `401`
//!   (nothing executes or replays). [`JwtScope`] verifies a bearer JWT and
//!   takes one of its claims (feature `jwt`); a closure can take an identity
//!   that the service's own authentication put in the request's extensions.
//!
//! A request without credentials is in the anonymous scope, shared by every
//! such request.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use idem::{IdempotencyLayer, MemoryStore, ScopeSource, Unverified};
//!
//! /// What the service's authentication middleware leaves in the extensions.
//! #[derive(Clone)]
//! struct UserId(u64);
//!
//! let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new())).scope(
//!     ScopeSource::verified(|parts: &http::request::Parts| match parts.extensions.get::<UserId>() {
//!         Some(UserId(id)) => Ok(Some(id.to_be_bytes().to_vec())),
//!         None => Err(Unverified::new("sign in first")),
//!     }),
//! );
//! ```

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
pub use self::jwt::{JwtError, JwtScope};

/// Where a request's scope comes from (see the [module](self)).
#[derive(Clone)]
#[non_exhaustive]
pub enum ScopeSource {
    /// Every request in one scope.
    Shared,
    /// The header's values (`Authorization` by default). A request without
    /// the header is in the anonymous scope.
    Header(HeaderName),
    /// The identity an [`Identify`] establishes.
    Verified(Arc<dyn Identify>),
}

impl ScopeSource {
    /// A verified identity from `identify`.
    pub fn verified(identify: impl Identify) -> Self {
        Self::Verified(Arc::new(identify))
    }

    /// The scope of a request with head `parts`: `Ok(None)` for the
    /// anonymous scope.
    pub fn scope_of(&self, parts: &Parts) -> Result<Option<Vec<u8>>, Unverified> {
        match self {
            Self::Shared => Ok(None),
            Self::Header(name) => Ok(header_scope(&parts.headers, name)),
            Self::Verified(v) => v.identify(parts),
        }
    }
}

impl Default for ScopeSource {
    fn default() -> Self {
        Self::Header(http::header::AUTHORIZATION)
    }
}

impl std::fmt::Debug for ScopeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shared => f.write_str("Shared"),
            Self::Header(h) => f.debug_tuple("Header").field(h).finish(),
            Self::Verified(_) => f.write_str("Verified(..)"),
        }
    }
}

/// Establishes who sent a request, from its head.
///
/// Called once per covered request, before anything is read or stored: it
/// must not block (verify against keys already in memory).
pub trait Identify: Send + Sync + 'static {
    /// The caller's identity, as the bytes its scope is derived from;
    /// `Ok(None)` when the request carries no credentials (the anonymous
    /// scope); `Err` when it carries credentials that do not verify (the
    /// request gets `401` and nothing executes or replays).
    fn identify(&self, parts: &Parts) -> Result<Option<Vec<u8>>, Unverified>;
}

impl<F> Identify for F
where
    F: Fn(&Parts) -> Result<Option<Vec<u8>>, Unverified> + Send + Sync + 'static,
{
    fn identify(&self, parts: &Parts) -> Result<Option<Vec<u8>>, Unverified> {
        self(parts)
    }
}

/// Credentials that did not verify: the request gets `401`
/// `unauthenticated` with this detail and a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    detail: String,
    challenge: HeaderValue,
}

impl Unverified {
    /// A refusal saying `detail` (what is wrong, what to do; never a
    /// secret), with the challenge `Bearer`.
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            challenge: HeaderValue::from_static("Bearer"),
        }
    }

    /// Sets the `WWW-Authenticate` challenge (RFC 9110 §11.6.1: every 401
    /// carries one).
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = challenge;
        self
    }

    /// What the client is told.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The `WWW-Authenticate` value.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Unverified {}

/// The header's values, joined by NUL (`None` without the header).
pub(crate) fn header_scope(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let mut scope = values.next()?.as_bytes().to_vec();
    for more in values {
        scope.push(0);
        scope.extend_from_slice(more.as_bytes());
    }
    Some(scope)
}
