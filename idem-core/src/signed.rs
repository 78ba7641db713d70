//! Signed keys, the original design's practice against forged or borrowed
//! keys: the server issues `KEY.SIGNATURE`, where the signature is
//! HMAC-SHA256 over the key and the user's id with a server secret; under a
//! policy that requires signed keys, a key that is unsigned, signed for
//! another user, or altered is refused (400 `idempotency-key-invalid`) and
//! nothing executes.
//!
//! The user id is the value of the scope header (by default the request's
//! `Authorization`), so a key issued to one user is worthless to another.
//!
//! # Examples
//!
//! ```
//! use idem_core::signed::{sign, verify, SignatureError};
//! use idem_core::Secret;
//!
//! let secret = Secret::from_bytes(*b"0123456789abcdef0123456789abcdef").unwrap();
//! let signed = sign(&secret, "order-0001-abcdef", b"Bearer alice");
//! assert_eq!(verify(&secret, &signed, b"Bearer alice"), Ok("order-0001-abcdef"));
//! assert_eq!(verify(&secret, &signed, b"Bearer bob"), Err(SignatureError::Forged));
//! assert_eq!(verify(&secret, "order-0001-abcdef", b"Bearer alice"), Err(SignatureError::Unsigned));
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::key::hex;
use crate::scope::Secret;

/// Length of the signature: 32 bytes in lowercase hex.
pub const SIGNATURE_LEN: usize = 64;

/// Why a signed key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `.SIGNATURE` part.
    #[error("the key is not signed: send the signed key (KEY.SIGNATURE) the server issued for this operation")]
    Unsigned,
    /// A `.SIGNATURE` part that is not 64 hex digits.
    #[error("the key's signature is malformed: it must be 64 hex digits after the last '.'")]
    Malformed,
    /// A well-formed signature that does not match key and user.
    #[error(
        "the key's signature does not match this key and user: use a key issued to you, unaltered"
    )]
    Forged,
}

fn mac(secret: &Secret, key: &str, user: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    // Domain-separated and length-prefixed, so (key, user) pairs cannot
    // collide by moving bytes from one to the other.
    mac.update(b"idem-signed-key\0");
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(user);
    mac
}

/// Signs `key` for `user`: `KEY.SIGNATURE`.
pub fn sign(secret: &Secret, key: &str, user: &[u8]) -> String {
    let tag = mac(secret, key, user).finalize().into_bytes();
    format!("{key}.{}", hex(&tag))
}

fn unhex(s: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != SIGNATURE_LEN {
        return None;
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Checks `signed` (`KEY.SIGNATURE`) for `user` and returns the key part.
/// The comparison takes the same time wherever the signatures differ.
pub fn verify<'a>(
    secret: &Secret,
    signed: &'a str,
    user: &[u8],
) -> Result<&'a str, SignatureError> {
    let Some((key, signature)) = signed.rsplit_once('.') else {
        return Err(SignatureError::Unsigned);
    };
    let tag = unhex(signature.as_bytes()).ok_or(SignatureError::Malformed)?;
    mac(secret, key, user)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Forged)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(*b"test-secret-test-secret-test-sec").expect("secret")
    }

    #[test]
    fn a_signature_binds_key_user_and_secret() {
        let s = secret();
        let signed = sign(&s, "order-0001-abcdef", b"alice");
        assert_eq!(signed.len(), "order-0001-abcdef".len() + 1 + SIGNATURE_LEN);
        assert_eq!(verify(&s, &signed, b"alice"), Ok("order-0001-abcdef"));
        assert_eq!(verify(&s, &signed, b"bob"), Err(SignatureError::Forged));
        let other = Secret::from_bytes(*b"another-secret-another-secret-00").expect("secret");
        assert_eq!(
            verify(&other, &signed, b"alice"),
            Err(SignatureError::Forged)
        );
        // Truncated, altered, or moved between key and user.
        assert_eq!(
            verify(&s, &signed[..signed.len() - 2], b"alice"),
            Err(SignatureError::Malformed)
        );
        let altered = signed.replacen("order-0001", "order-0002", 1);
        assert_eq!(verify(&s, &altered, b"alice"), Err(SignatureError::Forged));
        let shifted = sign(&s, "order-0001-abcde", b"falice");
        assert_ne!(shifted[shifted.len() - 64..], signed[signed.len() - 64..]);
        assert_eq!(
            verify(&s, "order-0001-abcdef", b"alice"),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(
            verify(&s, "order-0001-abcdef.zz", b"alice"),
            Err(SignatureError::Malformed)
        );
    }
}
