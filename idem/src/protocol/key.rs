//! Rules 1 and 2: the request's key and scope, read before its body.
//! Signed keys are verified here; webhook routes take their key from their
//! own headers (or, when none is sent, from the body: see `raw_body_key`).

use http::{HeaderMap, HeaderName};
use idem_core::key::IDEMPOTENCY_KEY;
use idem_core::signed;
use idem_core::{CheckedKey, IdempotencyKey, KeyError, RoutePolicy, Secret};

use super::refusal;

/// The key the request carries, per the route's key source; with signed
/// keys required, the signature is checked for `user` and the key part
/// returned.
pub(super) fn header_key<'a>(
    headers: &'a HeaderMap,
    policy: &RoutePolicy,
    signing: Option<&Secret>,
    user: Option<&[u8]>,
) -> Result<Option<Key<'a>>, String> {
    let rules = &policy.key_rules;
    let names: &[HeaderName] = match &policy.webhook {
        Some(w) => &w.headers,
        None => std::slice::from_ref(&IDEMPOTENCY_KEY_HEADER),
    };
    for name in names {
        let mut values = headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(KeyError::Repeated.to_string());
            }
            if !policy.require_signed_keys || policy.webhook.is_some() {
                return rules
                    .check_bytes(value.as_bytes())
                    .map(|k| Some(Key::Checked(k)))
                    .map_err(|e| e.to_string());
            }
            let Some(secret) = signing else {
                return Err(refusal::NO_SIGNING_SECRET.into());
            };
            let raw = value.to_str().map_err(|_| KeyError::NotAscii.to_string())?;
            // A Structured-Field string and a bare token are the same key.
            let raw = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                Some(inner) => inner,
                None => raw,
            };
            let key =
                signed::verify(secret, raw, user.unwrap_or_default()).map_err(|e| e.to_string())?;
            return rules
                .parse(key)
                .map(|k| Some(Key::Owned(k)))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

/// The key in the body's field at `pointer` (`RoutePolicy::key_json`,
/// `WebhookKeys::json`), checked like a header's (signed when the route
/// requires it); `Ok(None)` when the body is not JSON or has no such field.
pub(super) fn body_key(
    body: &[u8],
    pointer: &str,
    policy: &RoutePolicy,
    signing: Option<&Secret>,
    user: Option<&[u8]>,
) -> Result<Option<Key<'static>>, String> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(None);
    };
    let raw = match doc.pointer(pointer) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(format!(
                "the body's {pointer} must be a string: the request's idempotency key"
            ))
        }
    };
    let rules = &policy.key_rules;
    if !policy.require_signed_keys || policy.webhook.is_some() {
        return rules
            .validate(raw)
            .map(|k| Some(Key::Owned(k)))
            .map_err(|e| format!("the body's {pointer}: {e}"));
    }
    let Some(secret) = signing else {
        return Err(refusal::NO_SIGNING_SECRET.into());
    };
    let key = signed::verify(secret, raw, user.unwrap_or_default())
        .map_err(|e| format!("the body's {pointer}: {e}"))?;
    rules
        .parse(key)
        .map(|k| Some(Key::Owned(k)))
        .map_err(|e| format!("the body's {pointer}: {e}"))
}

/// A request's key: checked in place in its header, or made (signed keys,
/// body fields, body hashes).
pub(super) enum Key<'a> {
    Checked(CheckedKey<'a>),
    Owned(IdempotencyKey),
}

impl Key<'_> {
    pub(super) fn as_str(&self) -> &str {
        match self {
            Key::Checked(k) => k.as_str(),
            Key::Owned(k) => k.as_str(),
        }
    }

    /// The key as a header value, for a route that echoes it.
    pub(super) fn echo(&self) -> Option<http::HeaderValue> {
        http::HeaderValue::from_str(self.as_str()).ok()
    }

    pub(super) fn into_key(self) -> IdempotencyKey {
        match self {
            Key::Checked(k) => k.to_key(),
            Key::Owned(k) => k,
        }
    }
}

pub(super) static IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);
