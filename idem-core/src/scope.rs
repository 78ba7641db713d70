//! Per-user scoping and the keyed hash that names a record in the store.
//!
//! The store never sees a scope (an `Authorization` value, say) or a raw key:
//! it sees `HMAC-SHA256(secret, scope, key)`. One user can never reach
//! another user's record, and a leaked store reveals neither.
//!
//! # Examples
//!
//! ```
//! use idem_core::scope::{Secret, StoreKey};
//!
//! let secret = Secret::generate();
//! let alice = StoreKey::derive(&secret, Some(b"Bearer alice"), "key-0000000001");
//! let bob = StoreKey::derive(&secret, Some(b"Bearer bob"), "key-0000000001");
//! assert_ne!(alice, bob);
//! ```

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::random;

/// The server secret behind [`StoreKey`]s (and signed keys).
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
    /// HMAC-SHA256 keyed with `bytes`, its inner and outer pads already
    /// hashed: each store key clones it instead of hashing them again (two
    /// SHA-256 blocks per request).
    keyed: Hmac<Sha256>,
}

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a secret could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Too short to be a secret.
    #[error("the secret is {len} bytes; use at least {MIN_SECRET_LEN} (idem generates 32 random bytes when none is given)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The secret file could not be read or written.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The secret file can be read by other users of the machine.
    #[error(
        "secret file {path} can be read by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl Secret {
    fn new(bytes: Vec<u8>) -> Self {
        #[allow(clippy::expect_used)]
        let keyed =
            Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC accepts keys of any length");
        Self { bytes, keyed }
    }

    /// 32 random bytes from the operating system.
    pub fn generate() -> Self {
        Self::new(random::bytes::<32>().to_vec())
    }

    /// A secret from given bytes (at least 16).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(Self::new(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Reads a secret file: its content, with surrounding whitespace trimmed,
    /// is the secret.
    ///
    /// A file that group or others can read is refused (the secret keys
    /// every record; whoever reads it can compute store keys): the error
    /// names the `chmod` that fixes it.
    pub fn read_file(path: &Path) -> Result<Self, SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(io_err)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(SecretError::Exposed {
                    path: path.display().to_string(),
                    mode: mode & 0o777,
                });
            }
        }
        let data = std::fs::read(path).map_err(io_err)?;
        let trimmed = data.trim_ascii();
        Self::from_bytes(trimmed.to_vec())
    }

    /// Reads the secret file at `path`, or creates it (mode 0600, 32 random
    /// bytes in hex) when it does not exist. Used by the embedded store so a
    /// restart keeps the same secret and so still replays.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io_err = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        // create_new: when two processes start at once, exactly one creates
        // the file and the other reads the winner's secret.
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut file) => {
                let secret = Self::generate();
                let text = crate::key::hex(&secret.bytes);
                file.write_all(format!("{text}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io_err)?;
                // The file content (hex text) is what a later read returns, so
                // use the same bytes now.
                Self::from_bytes(text.into_bytes())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // The creator may still be writing: retry briefly on a short read.
                for _ in 0..50 {
                    match Self::read_file(path) {
                        Err(SecretError::TooShort { .. }) => {
                            std::thread::sleep(std::time::Duration::from_millis(10))
                        }
                        other => return other,
                    }
                }
                Self::read_file(path)
            }
            Err(e) => Err(io_err(e)),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The name of a record in the store: `HMAC-SHA256(secret, scope, key)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(pub [u8; 32]);

impl StoreKey {
    /// Derives the store key for `key` in `scope` (`None`: the anonymous scope).
    pub fn derive(secret: &Secret, scope: Option<&[u8]>, key: &str) -> Self {
        let mut mac = secret.keyed.clone();
        // The anonymous scope and an empty scope header are different scopes;
        // length prefixes make (scope, key) pairs unambiguous.
        match scope {
            None => mac.update(&[0]),
            Some(s) => {
                mac.update(&[1]);
                mac.update(&(s.len() as u64).to_be_bytes());
                mac.update(s);
            }
        }
        mac.update(key.as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// A key for a downstream call this execution makes (`label` names
    /// the call: "charge", "email"), as a UUID: the same on every retry of
    /// the same request, different per label, per key and per scope, and
    /// unguessable without the server's secret (the store key is keyed by
    /// it). Pass it as the downstream API's idempotency key so that the call
    /// happens once however often this operation is retried.
    ///
    /// ```
    /// use idem_core::scope::{Secret, StoreKey};
    /// let secret = Secret::from_bytes([7; 32]).expect("a 32-byte secret");
    /// let k = StoreKey::derive(&secret, None, "order-0000000001");
    /// assert_eq!(k.derived_key("charge"), k.derived_key("charge"));
    /// assert_ne!(k.derived_key("charge"), k.derived_key("email"));
    /// assert_eq!(k.derived_key("charge").len(), 36);
    /// ```
    pub fn derived_key(&self, label: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(b"idem derived key\0");
        mac.update(label.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        // Version 8: custom (RFC 9562).
        crate::key::uuid_text(b, 8)
    }

    /// Lower-case hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        crate::key::hex(&self.0)
    }

    /// The first 8 hex digits (shown by `Display`): enough to correlate
    /// logs, useless to an attacker. Formatted only when a log is written.
    pub fn short(&self) -> ShortKey {
        ShortKey([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

/// The first 4 bytes of a [`StoreKey`], displayed as 8 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortKey([u8; 4]);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({}…)", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_and_empty_scopes_differ() {
        let s = Secret::generate();
        assert_ne!(
            StoreKey::derive(&s, None, "k"),
            StoreKey::derive(&s, Some(b""), "k")
        );
        assert_eq!(
            StoreKey::derive(&s, Some(b"a"), "k"),
            StoreKey::derive(&s, Some(b"a"), "k")
        );
        let other = Secret::generate();
        assert_ne!(
            StoreKey::derive(&s, None, "k"),
            StoreKey::derive(&other, None, "k")
        );
    }

    /// Store keys name records in durable and shared stores: their
    /// derivation must never change between versions (values computed
    /// with Python's hmac module).
    #[test]
    fn store_keys_are_stable_across_versions() {
        let s = Secret::from_bytes(*b"0123456789abcdef0123456789abcdef")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            StoreKey::derive(&s, None, "k-000001").to_hex(),
            "00e45fa4c9f2183afd7608719813cb8da2e8cf22c58a6ae99b82add03d326055"
        );
        assert_eq!(
            StoreKey::derive(&s, Some(b"Bearer a"), "k-000001").to_hex(),
            "dc9ee1d53b677416f23629b300649e9e90e13aa87076999a50d02e2866a512e4"
        );
        // Deriving many keys from one secret does not disturb it.
        let again = StoreKey::derive(&s, None, "k-000001");
        assert_eq!(again, StoreKey::derive(&s, None, "k-000001"));
    }

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("idem-secret-{}", random::nonzero_u64()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("s.secret");
        let a = Secret::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        let b = Secret::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.as_bytes(), b.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Secret::from_bytes(b"short".to_vec()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
