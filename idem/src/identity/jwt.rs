//! A verified bearer JWT's claim as the scope (`scope = "jwt:sub"`).
//!
//! The token is verified before its claim is trusted: signature (HS256 with
//! a shared secret, or the public keys of a JWKS: RS256, ES256 and the
//! other algorithms their keys name), expiry and not-before with a small
//! leeway, and issuer and audience when configured. Every key is bound to
//! one algorithm, so a token cannot choose how it is checked (no `none`,
//! no HMAC with a public key as the secret).

use std::collections::HashSet;
use std::time::Duration;

use http::request::Parts;
use http::HeaderValue;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Identify, Unverified};

/// The default leeway on `exp` and `nbf`: clocks of the token's issuer and
/// this host may differ by this much.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Verifies the request's `Authorization: Bearer` JWT and takes one of its
/// claims (`sub` by default) as the scope.
///
/// A request without `Authorization` is in the anonymous scope; one whose
/// token does not verify (bad signature, expired, wrong issuer or audience,
/// unknown key, no such claim) gets `401` and nothing executes or replays.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use idem::{JwtScope, ScopeSource};
///
/// let scope = JwtScope::hs256(b"a secret of at least 32 bytes....")
///     .issuer("https://auth.example.com/")
///     .audience("payments")
///     .leeway(Duration::from_secs(30));
/// let source = ScopeSource::verified(scope);
/// ```
#[derive(Clone)]
pub struct JwtScope {
    claim: String,
    keys: Vec<VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

/// One key, with the one algorithm it verifies.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// A JWKS or secret that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The JWKS is not a JSON Web Key Set.
    #[error("not a JSON Web Key Set ({0}); expected {{\"keys\": [{{\"kty\": \"RSA\", \"kid\": …, \"n\": …, \"e\": …}}, …]}}")]
    Jwks(#[source] serde_json::Error),
    /// The JWKS holds no key this verifier can use.
    #[error("the JSON Web Key Set holds no public key to verify with; add the issuer's RSA, EC (P-256, P-384) or Ed25519 signing keys")]
    NoKeys,
    /// One key of the JWKS cannot be used.
    #[error("key {kid}: {why}")]
    Key {
        /// The key's `kid`, or its position.
        kid: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HMAC secret is too short to be safe.
    #[error("the HS256 secret is {0} bytes; use at least 32 random bytes")]
    ShortSecret(usize),
}

impl JwtScope {
    /// Verifies HS256 tokens with `secret` (at least 32 bytes: see
    /// [`try_hs256`](Self::try_hs256)).
    ///
    /// # Panics
    ///
    /// When `secret` is shorter than 32 bytes.
    pub fn hs256(secret: &[u8]) -> Self {
        match Self::try_hs256(secret) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Verifies HS256 tokens with `secret`; a secret under 32 bytes is an
    /// error (RFC 7518 §3.2: at least the hash's size).
    pub fn try_hs256(secret: &[u8]) -> Result<Self, JwtError> {
        if secret.len() < 32 {
            return Err(JwtError::ShortSecret(secret.len()));
        }
        Ok(Self::with_keys(vec![VerifyingKey::new(
            None,
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
        )]))
    }

    /// Verifies tokens signed by the keys of a JSON Web Key Set (the
    /// issuer's `jwks_uri` document, saved to a file). A token names its
    /// key with `kid`; without one, it must match the only key of its
    /// algorithm. Each key verifies only its own algorithm: its `alg`, or
    /// RS256 for RSA, ES256 for P-256, ES384 for P-384, EdDSA for Ed25519.
    /// Keys for encryption (`"use": "enc"`) are skipped.
    pub fn jwks(json: &str) -> Result<Self, JwtError> {
        let set: JwkSet = serde_json::from_str(json).map_err(JwtError::Jwks)?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let name = kid.clone().unwrap_or_else(|| format!("#{i}"));
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let algorithm = key_algorithm(jwk).map_err(|why| JwtError::Key {
                kid: name.clone(),
                why,
            })?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Key {
                kid: name,
                why: e.to_string(),
            })?;
            keys.push(VerifyingKey::new(kid, algorithm, key));
        }
        if keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        Ok(Self::with_keys(keys))
    }

    fn with_keys(keys: Vec<VerifyingKey>) -> Self {
        let mut s = Self {
            claim: "sub".to_owned(),
            keys,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
        };
        s.rebuild();
        s
    }

    /// The claim whose value is the scope. The default is `sub`.
    pub fn claim(mut self, claim: impl Into<String>) -> Self {
        self.claim = claim.into();
        self
    }

    /// Accepts only tokens whose `iss` is `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self.rebuild();
        self
    }

    /// Accepts only tokens whose `aud` names `audience`. Without one, a
    /// token meant for another service of the same issuer is accepted too.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self.rebuild();
        self
    }

    /// How far past `exp` (and before `nbf`) a token is still accepted.
    /// The default is 30 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self.rebuild();
        self
    }

    /// The claim whose value is the scope.
    pub fn claim_name(&self) -> &str {
        &self.claim
    }

    /// Whether an audience is checked.
    pub fn checks_audience(&self) -> bool {
        self.audience.is_some()
    }

    fn rebuild(&mut self) {
        for k in &mut self.keys {
            let mut v = Validation::new(k.algorithm);
            v.leeway = self.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required: HashSet<String> = HashSet::from(["exp".to_owned()]);
            match &self.issuer {
                Some(iss) => {
                    v.set_issuer(&[iss]);
                    required.insert("iss".to_owned());
                }
                None => v.iss = None,
            }
            match &self.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.insert("aud".to_owned());
                }
                None => v.validate_aud = false,
            }
            v.required_spec_claims = required;
            k.validation = v;
        }
    }

    /// The key that verifies a token with `header`.
    fn key_for(&self, header: &jsonwebtoken::Header) -> Result<&VerifyingKey, Unverified> {
        let mut candidates = self.keys.iter().filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => self.keys.len() == 1,
            (None, _) => k.algorithm == header.alg,
        });
        let key = match (candidates.next(), candidates.next()) {
            (Some(k), None) => k,
            (None, _) => {
                return Err(invalid(match &header.kid {
                    Some(kid) => format!("the bearer token names key {kid:?}, which this server does not know; get a new token"),
                    None => format!("no key verifies {:?} bearer tokens here", header.alg),
                }))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "the bearer token names no key (kid) and several keys could verify it",
                ))
            }
        };
        if key.algorithm != header.alg {
            return Err(invalid(format!(
                "the bearer token is signed with {:?}, but its key verifies {:?}",
                header.alg, key.algorithm
            )));
        }
        Ok(key)
    }

    /// The verified claim of `token`.
    fn verify(&self, token: &str) -> Result<Vec<u8>, Unverified> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not a JWT"))?;
        let key = self.key_for(&header)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &key.validation,
        )
        .map_err(|e| invalid(rejected(&e)))?;
        match data.claims.get(&self.claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.as_bytes().to_vec()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string().into_bytes()),
            Some(_) => Err(invalid(format!(
                "the bearer token's {:?} claim is not a non-empty string or a number",
                self.claim
            ))),
            None => Err(invalid(format!(
                "the bearer token has no {:?} claim to identify its holder",
                self.claim
            ))),
        }
    }
}

impl VerifyingKey {
    fn new(kid: Option<String>, algorithm: Algorithm, key: DecodingKey) -> Self {
        Self {
            kid,
            algorithm,
            key,
            validation: Validation::new(algorithm),
        }
    }
}

impl std::fmt::Debug for JwtScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtScope")
            .field("claim", &self.claim)
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Identify for JwtScope {
    fn identify(&self, parts: &Parts) -> Result<Option<Vec<u8>>, Unverified> {
        let mut values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid("send one Authorization header, not several"));
        }
        let token = bearer(value).ok_or_else(|| {
            invalid("Authorization must be a bearer token (Authorization: Bearer <JWT>)")
        })?;
        self.verify(token).map(Some)
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The one algorithm `jwk` verifies.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => {
                return Err(format!(
                    "alg {other:?} is not a public-key signature algorithm; a JWKS holds the issuer's public keys (RS256, ES256, …)"
                ))
            }
        }),
    };
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref c => return Err(format!("curve {c:?} is not supported; use P-256 or P-384")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (kty oct) does not belong in a JWKS of public keys; use jwt_hs256_secret_file for HS256".to_owned())
        }
    };
    let Some(a) = named else {
        return Ok(family);
    };
    // The algorithms each kind of key can verify: an RSA key any RSA
    // scheme; an EC or Ed25519 key only its curve's.
    let fits = match family {
        Algorithm::RS256 => matches!(
            a,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        f => a == f,
    };
    if fits {
        Ok(a)
    } else {
        Err(format!(
            "alg {a:?} does not match the key (its type and curve verify {family:?})"
        ))
    }
}

/// Why `e` rejected the token, for the client.
fn rejected(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => {
            "the bearer token has expired; get a new token and retry with the same Idempotency-Key"
                .to_owned()
        }
        K::ImmatureSignature => "the bearer token is not valid yet (nbf)".to_owned(),
        K::InvalidSignature => "the bearer token's signature does not verify".to_owned(),
        K::InvalidIssuer => "the bearer token was issued by another issuer".to_owned(),
        K::InvalidAudience => "the bearer token is meant for another audience".to_owned(),
        K::MissingRequiredClaim(c) => format!("the bearer token has no {c:?} claim"),
        K::InvalidAlgorithm => "the bearer token's algorithm is not accepted here".to_owned(),
        _ => "the bearer token is malformed".to_owned(),
    }
}

fn invalid(detail: impl Into<String>) -> Unverified {
    Unverified::new(detail)
        .with_challenge(HeaderValue::from_static("Bearer error=\"invalid_token\""))
}
