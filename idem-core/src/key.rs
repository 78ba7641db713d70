//! The `Idempotency-Key` header: parsing, validation and generation.
//!
//! # Examples
//!
//! ```
//! use idem_core::key::KeyRules;
//!
//! let rules = KeyRules::default();
//! // A bare token (as Stripe clients send it) and a Structured-Field string
//! // (as the IETF draft writes it) are the same key.
//! let bare = rules.parse("order-2024-0001").unwrap();
//! let quoted = rules.parse("\"order-2024-0001\"").unwrap();
//! assert_eq!(bare, quoted);
//! assert!(rules.parse("short").is_err());
//! ```

use std::fmt;

use sha2::{Digest, Sha256};

use crate::json;
use crate::random;

/// The header that carries the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A validated idempotency key, without Structured-Field quoting.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key as the client sent it, without quotes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key that skips validation: for keys idem derives itself (webhook body
    /// hashes, batch sub-keys), never for client input.
    pub fn derived(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys can be guessable per-user handles; keep them out of debug logs
        // in full.
        let shown: String = self.0.chars().take(6).collect();
        write!(f, "IdempotencyKey({shown}…)")
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key checked by [`KeyRules::check`], borrowed from the header it came
/// in: checking a key allocates nothing, and a caller that only hashes it
/// never has to own it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CheckedKey<'a>(&'a str);

impl<'a> CheckedKey<'a> {
    /// The key, without quotes.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The key, owned.
    pub fn to_key(&self) -> IdempotencyKey {
        IdempotencyKey(self.0.to_owned())
    }
}

impl fmt::Debug for CheckedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(6).collect();
        write!(f, "CheckedKey({shown}…)")
    }
}

/// Why a key was refused. Each message tells the client what a valid key is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header is present but empty.
    #[error("the Idempotency-Key header is empty; send {min}–{max} characters of A-Z a-z 0-9 - _, or a UUID")]
    Empty {
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
    },
    /// The header has bytes outside visible ASCII.
    #[error(
        "the Idempotency-Key header contains bytes outside visible ASCII; use A-Z a-z 0-9 - _ only"
    )]
    NotAscii,
    /// The header was sent more than once.
    #[error("the Idempotency-Key header was sent more than once; send exactly one")]
    Repeated,
    /// A Structured-Field string that is not closed or has escapes.
    #[error("the Idempotency-Key is badly quoted; send a bare token or one quoted string without escapes")]
    BadQuoting,
    /// Shorter than the minimum.
    #[error("the Idempotency-Key is {len} characters long; it must be at least {min} (or a UUID)")]
    TooShort {
        /// Length sent.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// Longer than the maximum.
    #[error("the Idempotency-Key is {len} characters long; it must be at most {max}")]
    TooLong {
        /// Length sent.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// A character outside `A-Za-z0-9-_`.
    #[error("the Idempotency-Key contains {ch:?} at position {pos}; use A-Z a-z 0-9 - _ only")]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its zero-based position.
        pos: usize,
    },
}

/// What a valid key looks like (SPEC rule 2).
///
/// The default is 10 to 255 characters of `A-Za-z0-9-_`; a UUID is always
/// accepted, whatever the bounds.
///
/// ```
/// use idem_core::key::KeyRules;
/// let rules = KeyRules::new(4, 64);
/// assert!(rules.parse("abcd").is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    /// Minimum length in characters. The default is 10.
    pub min_len: usize,
    /// Maximum length in characters. The default is 255.
    pub max_len: usize,
}

impl Default for KeyRules {
    fn default() -> Self {
        Self {
            min_len: 10,
            max_len: 255,
        }
    }
}

impl KeyRules {
    /// Rules with the given length bounds (inclusive).
    pub fn new(min_len: usize, max_len: usize) -> Self {
        Self { min_len, max_len }
    }

    /// Parses a header value's bytes (see [`KeyRules::parse`]).
    pub fn parse_bytes(&self, raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
        self.check_bytes(raw).map(|k| k.to_key())
    }

    /// Parses a header value: a bare token or a Structured-Field string,
    /// optionally followed by Structured-Field parameters (ignored).
    pub fn parse(&self, raw: &str) -> Result<IdempotencyKey, KeyError> {
        self.check(raw).map(|k| k.to_key())
    }

    /// Validates an unquoted key.
    pub fn validate(&self, key: &str) -> Result<IdempotencyKey, KeyError> {
        self.check_unquoted(key).map(|k| k.to_key())
    }

    /// [`KeyRules::parse_bytes`] without taking a copy of the key.
    pub fn check_bytes<'a>(&self, raw: &'a [u8]) -> Result<CheckedKey<'a>, KeyError> {
        if raw.iter().any(|b| !(0x20..0x7f).contains(b) && *b != b'\t') {
            return Err(KeyError::NotAscii);
        }
        // Checked just above: every byte is ASCII.
        let text = std::str::from_utf8(raw).map_err(|_| KeyError::NotAscii)?;
        self.check(text)
    }

    /// [`KeyRules::parse`] without taking a copy of the key.
    pub fn check<'a>(&self, raw: &'a str) -> Result<CheckedKey<'a>, KeyError> {
        let trimmed = raw.trim_matches(|c| c == ' ' || c == '\t');
        let inner = if let Some(rest) = trimmed.strip_prefix('"') {
            let end = rest.find(['"', '\\']).ok_or(KeyError::BadQuoting)?;
            if rest.as_bytes()[end] == b'\\' {
                // An escape could only produce `"` or `\`, neither of which a
                // key may contain: refuse early with the clearer message.
                return Err(KeyError::BadQuoting);
            }
            let after = &rest[end + 1..];
            if !(after.is_empty() || after.starts_with(';')) {
                return Err(KeyError::BadQuoting);
            }
            &rest[..end]
        } else {
            trimmed
        };
        self.check_unquoted(inner)
    }

    /// [`KeyRules::validate`] without taking a copy of the key.
    pub fn check_unquoted<'a>(&self, key: &'a str) -> Result<CheckedKey<'a>, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty {
                min: self.min_len,
                max: self.max_len,
            });
        }
        if is_uuid(key) {
            return Ok(CheckedKey(key));
        }
        if let Some(pos) = key
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            // Reported as a character and its position in characters; the
            // bytes before `pos` are ASCII, so both count the same.
            let ch = key[pos..].chars().next().unwrap_or('\u{fffd}');
            return Err(KeyError::BadChar { ch, pos });
        }
        let len = key.len();
        if len < self.min_len {
            return Err(KeyError::TooShort {
                len,
                min: self.min_len,
            });
        }
        if len > self.max_len {
            return Err(KeyError::TooLong {
                len,
                max: self.max_len,
            });
        }
        Ok(CheckedKey(key))
    }
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hexadecimal form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Generates a random UUID v4 key (the default strategy).
///
/// ```
/// let key = idem_core::key::generate_uuid_v4();
/// assert!(idem_core::key::is_uuid(&key));
/// ```
pub fn generate_uuid_v4() -> String {
    uuid_text(random::bytes(), 4)
}

/// `bytes` as a UUID of `version` (RFC 9562: its version nibble and the
/// `10` variant set), in its 8-4-4-4-12 text form.
pub(crate) fn uuid_text(mut b: [u8; 16], version: u8) -> String {
    b[6] = (b[6] & 0x0f) | (version << 4);
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A key derived from content: the hex SHA-256 of its RFC 8785 (JCS)
/// canonical JSON form (so member order, whitespace and how a number is
/// written do not matter, and the Python and JavaScript clients compute the
/// same key: `clients/content-keys.json`), or of the raw bytes when the
/// content is not JSON. The same operation content always gives the same key.
///
/// ```
/// use idem_core::key::generate_content_key;
/// assert_eq!(
///     generate_content_key(br#"{"a":1,"b":2}"#),
///     generate_content_key(br#"{ "b": 2, "a": 1 }"#),
/// );
/// ```
pub fn generate_content_key(content: &[u8]) -> String {
    let digest = match json::jcs(content) {
        Some(canonical) => Sha256::digest(&canonical),
        None => Sha256::digest(content),
    };
    hex(&digest)
}

/// The key of a webhook delivery that carries no id header: the hex SHA-256
/// of its raw body, so a byte-identical redelivery is recognised.
pub fn raw_body_key(body: &[u8]) -> IdempotencyKey {
    IdempotencyKey(hex(&Sha256::digest(body)))
}

/// A time-ordered key: milliseconds since the Unix epoch, a dash, and 64
/// random bits in hex (`1764180000000-9f2c4a1b7e3d5a60`).
pub fn generate_time_key() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let r: [u8; 8] = random::bytes();
    format!("{ms}-{}", hex(&r))
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_quoted_are_the_same_key() {
        let r = KeyRules::default();
        assert_eq!(r.parse("abcdefghij"), r.parse("\"abcdefghij\""));
        assert_eq!(r.parse(" abcdefghij\t"), r.parse("abcdefghij"));
        assert_eq!(r.parse("\"abcdefghij\";p=1"), r.parse("abcdefghij"));
    }

    #[test]
    fn rule_2_refusals() {
        let r = KeyRules::default();
        assert!(matches!(r.parse(""), Err(KeyError::Empty { .. })));
        assert!(matches!(r.parse("\"\""), Err(KeyError::Empty { .. })));
        assert!(matches!(r.parse("abc"), Err(KeyError::TooShort { .. })));
        assert!(matches!(
            r.parse(&"a".repeat(256)),
            Err(KeyError::TooLong { .. })
        ));
        assert!(r.parse(&"a".repeat(255)).is_ok());
        assert!(matches!(
            r.parse("abcdefghij!"),
            Err(KeyError::BadChar { ch: '!', pos: 10 })
        ));
        assert!(matches!(r.parse("\"abcdefghij"), Err(KeyError::BadQuoting)));
        assert!(matches!(
            r.parse("\"abc\\\"defghij\""),
            Err(KeyError::BadQuoting)
        ));
        assert!(matches!(
            r.parse("\"abcdefghij\"x"),
            Err(KeyError::BadQuoting)
        ));
        assert!(matches!(
            r.parse_bytes(b"abcdefghij\xff"),
            Err(KeyError::NotAscii)
        ));
        assert!(matches!(
            r.parse("abcde fghij"),
            Err(KeyError::BadChar { ch: ' ', .. })
        ));
    }

    #[test]
    fn uuid_always_accepted() {
        let r = KeyRules::new(1, 8);
        let u = generate_uuid_v4();
        assert!(r.parse(&u).is_ok());
        assert_eq!(&u[14..15], "4");
        assert!(KeyRules::default().parse(&generate_time_key()).is_ok());
        assert!(KeyRules::default()
            .parse(&generate_content_key(b"x"))
            .is_ok());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(generate_uuid_v4(), generate_uuid_v4());
        assert_ne!(generate_time_key(), generate_time_key());
    }
}
