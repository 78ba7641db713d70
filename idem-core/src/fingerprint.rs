//! Request fingerprints: what makes two requests "the same" (SPEC terms).
//!
//! # Examples
//!
//! ```
//! use http::Method;
//! use idem_core::fingerprint::{Fingerprint, FingerprintMode};
//!
//! let a = Fingerprint::compute(FingerprintMode::Json, &Method::POST, "/payments", br#"{"amount":10,"currency":"EUR"}"#);
//! let b = Fingerprint::compute(FingerprintMode::Json, &Method::POST, "/payments", br#"{ "currency": "EUR", "amount": 10 }"#);
//! assert_eq!(a, b);
//! let c = Fingerprint::compute(FingerprintMode::Exact, &Method::POST, "/payments", br#"{ "currency": "EUR", "amount": 10 }"#);
//! assert_ne!(a, c);
//! ```

use std::fmt;

use http::Method;
use sha2::{Digest, Sha256};

use crate::json;

/// How the body takes part in the fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FingerprintMode {
    /// Bodies that are valid JSON are canonicalised (key order and whitespace
    /// do not matter); other bodies are compared byte for byte. The default.
    #[default]
    Json,
    /// Bodies are compared byte for byte.
    Exact,
    /// Only method and path with query count; the body is ignored.
    MethodAndPath,
}

impl FingerprintMode {
    /// The name `FromStr` reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Exact => "exact",
            Self::MethodAndPath => "method-and-path",
        }
    }
}

impl std::str::FromStr for FingerprintMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "exact" => Ok(Self::Exact),
            "method-and-path" => Ok(Self::MethodAndPath),
            other => Err(format!(
                "unknown fingerprint mode {other:?}; use json, exact or method-and-path"
            )),
        }
    }
}

/// SHA-256 over method, path with query, and (per mode) body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// Canonical forms are written to a per-thread buffer kept up to this size.
const SCRATCH_KEEP: usize = 64 << 10;

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Fingerprint {
    /// Computes the fingerprint of a request.
    pub fn compute(
        mode: FingerprintMode,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Self {
        let mut h = Sha256::new();
        // Length prefixes keep the fields unambiguous: no choice of path can
        // make two different (path, body) pairs hash alike.
        let mut field = |tag: u8, bytes: &[u8]| {
            h.update([tag]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(b'M', method.as_str().as_bytes());
        field(b'P', path_and_query.as_bytes());
        match mode {
            FingerprintMode::MethodAndPath => {}
            FingerprintMode::Exact => field(b'B', body),
            FingerprintMode::Json => SCRATCH.with(|scratch| {
                // One buffer per thread, reused: no allocation per request.
                let mut buf = scratch.take();
                if json::canonicalize_into(body, &mut buf) {
                    field(b'J', &buf);
                } else {
                    field(b'B', body);
                }
                if buf.capacity() <= SCRATCH_KEEP {
                    scratch.set(buf);
                }
            }),
        }
        Self(h.finalize().into())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", crate::key::hex(&self.0[..6]))
    }
}
