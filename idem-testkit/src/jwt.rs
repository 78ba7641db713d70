//! Bearer JWTs for identity-scope tests: an HS256 secret, a JWKS with an
//! RSA key (`rsa-1`, RS256) and a P-256 key (`ec-1`, ES256), tokens signed
//! by them, and tokens forged with a key the JWKS does not hold. The keys
//! were made for these tests only (`openssl genrsa 2048`, `openssl ecparam
//! -name prime256v1`) and protect nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The HS256 secret (32 bytes).
pub const HS256_SECRET: &[u8] = b"idem-test-hs256-secret-0123456789";

/// The issuer and audience the tokens below carry.
pub const ISSUER: &str = "https://auth.example.test/";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "payments";

/// The JSON Web Key Set holding the public halves of `rsa-1` and `ec-1`.
pub const JWKS: &str = include_str!("../data/jwks.json");

const RSA_PRIVATE: &[u8] = include_bytes!("../data/rsa-private.der");
const EC_PRIVATE: &[u8] = include_bytes!("../data/ec-private.der");
const EC_ATTACKER: &[u8] = include_bytes!("../data/ec-attacker-private.der");

/// Claims for `sub`, issued now by [`ISSUER`] for [`AUDIENCE`], expiring
/// in `expires_in` seconds (negative: already expired); `extra` is merged
/// in (a nonce makes two tokens of one subject differ).
pub fn claims(sub: &str, expires_in: i64, extra: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    serde_json::json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + expires_in,
        "jti": extra,
    })
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign a test token")
}

/// An HS256 token signed with [`HS256_SECRET`].
pub fn hs256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(HS256_SECRET),
        claims,
    )
}

/// An RS256 token signed by `rsa-1`.
pub fn rs256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &EncodingKey::from_rsa_der(RSA_PRIVATE),
        claims,
    )
}

/// An ES256 token signed by `ec-1`.
pub fn es256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::ES256,
        Some("ec-1"),
        &EncodingKey::from_ec_der(EC_PRIVATE),
        claims,
    )
}

/// An ES256 token that names `ec-1` but is signed by another key: what an
/// attacker who knows a victim's subject can make.
pub fn forged_es256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::ES256,
        Some("ec-1"),
        &EncodingKey::from_ec_der(EC_ATTACKER),
        claims,
    )
}

/// An HS256 token signed with another secret.
pub fn forged_hs256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"not-the-servers-secret-0123456789"),
        claims,
    )
}

/// A token with `"alg": "none"` and no signature.
pub fn unsigned(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    )
}

/// An HS256 token naming `rsa-1` and keyed with that key's public modulus
/// (as the JWKS spells it): the algorithm-confusion attack on verifiers
/// that let a token pick how its key is used.
pub fn confused_hs256(claims: &serde_json::Value) -> String {
    let jwks: serde_json::Value = serde_json::from_str(JWKS).expect("the test JWKS");
    let n = jwks["keys"][0]["n"].as_str().expect("rsa-1's modulus");
    sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(n.as_bytes()),
        claims,
    )
}

/// Unpadded base64url (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}
