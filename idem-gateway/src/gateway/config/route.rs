//! Route keys: how requests are covered. The file's top-level route keys
//! are the defaults of every `[[routes]]` entry and the policy of paths no
//! entry matches; a flag replaces the top-level value, and a route's own
//! value stays. Each key is declared once, in [`RouteSettings`]; the
//! layering is done on the TOML tables before they are read.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use http::{HeaderName, Method};
use idem::{BodyFields, FingerprintMode, KeyRules, RoutePolicy, StatusSet, WebhookKeys};
use serde::Deserialize;

use super::values::{Secs, Size, Wait};

/// The route keys of one table. Unset keys keep [`RoutePolicy`]'s defaults,
/// the one place they are written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSettings {
    methods: Option<Vec<String>>,
    ttl: Option<Secs>,
    lock_timeout: Option<Secs>,
    key_required: Option<bool>,
    key_from: Option<String>,
    key_min_length: Option<Size>,
    key_max_length: Option<Size>,
    fingerprint: Option<String>,
    fingerprint_include: Option<Vec<String>>,
    fingerprint_exclude: Option<Vec<String>>,
    no_store: Option<Vec<String>>,
    max_body: Option<Size>,
    max_stored_response: Option<Size>,
    fail_open: Option<bool>,
    wait: Option<Wait>,
    require_signed_keys: Option<bool>,
    replay_set_cookie: Option<String>,
    unknown_outcome: Option<String>,
    stream: Option<String>,
    echo_key: Option<bool>,
}

/// The keys of a `[[routes]]` entry beside its route keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteEntry {
    pub(super) path: String,
    webhook: Option<bool>,
    webhook_headers: Option<Vec<String>>,
    webhook_body_hash: Option<bool>,
    webhook_key_json: Option<String>,
}

pub(super) fn header_name(key: &str, s: &str) -> anyhow::Result<HeaderName> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| anyhow!("{key}: {s:?} is not a valid header name"))
}

impl RouteSettings {
    /// The policy these settings give; `at` names the table in errors
    /// (`""` for the top level, `"routes[2]."` for an entry).
    pub(super) fn policy(&self, at: &str) -> anyhow::Result<RoutePolicy> {
        let mut p = RoutePolicy::default();
        if let Some(methods) = &self.methods {
            p.methods = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                        .map_err(|_| anyhow!("{at}methods: {m:?} is not an HTTP method"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(Secs(ttl)) = self.ttl {
            if ttl.is_zero() {
                bail!("{at}ttl: must be more than 0");
            }
            p.ttl = ttl;
        }
        if let Some(Secs(lease)) = self.lock_timeout {
            if lease < Duration::from_millis(100) {
                bail!("{at}lock_timeout: must be at least 100ms (it is renewed every third of it)");
            }
            p.lease = lease;
        }
        if let Some(v) = self.key_required {
            p.key_required = v;
        }
        if let Some(from) = &self.key_from {
            p.key_json = match from.trim() {
                "header" => None,
                other => match other.strip_prefix("json:") {
                    Some(pointer) => {
                        BodyFields::check(&[pointer.to_owned()])
                            .map_err(|e| anyhow!("{at}key_from: {e}"))?;
                        if pointer.is_empty() {
                            bail!("{at}key_from: name the body field, as json:/idempotency_key");
                        }
                        Some(pointer.to_owned())
                    }
                    None => bail!(
                        "{at}key_from: {from:?} is not a key source; write \"header\" or \"json:/idempotency_key\" (a JSON pointer into the body)"
                    ),
                },
            };
        }
        let mut rules = KeyRules::default();
        if let Some(Size(n)) = self.key_min_length {
            rules.min_len = n;
        }
        if let Some(Size(n)) = self.key_max_length {
            rules.max_len = n;
        }
        if rules.min_len == 0 || rules.min_len > rules.max_len || rules.max_len > 8192 {
            bail!(
                "{at}key_min_length/key_max_length: need 1 <= min <= max <= 8192, got {}..{}",
                rules.min_len,
                rules.max_len
            );
        }
        p.key_rules = rules;
        if let Some(f) = &self.fingerprint {
            p.fingerprint =
                FingerprintMode::from_str(f).map_err(|e| anyhow!("{at}fingerprint: {e}"))?;
        }
        p.fingerprint_fields = match (&self.fingerprint_include, &self.fingerprint_exclude) {
            (Some(_), Some(_)) => {
                bail!("{at}fingerprint_include and {at}fingerprint_exclude: set one of the two")
            }
            (Some(list), None) => {
                BodyFields::check(list).map_err(|e| anyhow!("{at}fingerprint_include: {e}"))?;
                BodyFields::Include(list.clone())
            }
            (None, Some(list)) => {
                BodyFields::check(list).map_err(|e| anyhow!("{at}fingerprint_exclude: {e}"))?;
                BodyFields::Exclude(list.clone())
            }
            (None, None) => BodyFields::All,
        };
        if let Some(list) = &self.no_store {
            p.no_store = StatusSet::parse(list.iter().map(String::as_str))
                .map_err(|e| anyhow!("{at}no_store: {e}"))?;
        }
        if let Some(Size(n)) = self.max_body {
            p.max_request_body = n;
        }
        if let Some(Size(n)) = self.max_stored_response {
            p.max_stored_response = n;
        }
        if let Some(v) = self.fail_open {
            p.fail_open = v;
        }
        if let Some(Wait(w)) = self.wait {
            p.wait = w;
        }
        if let Some(v) = self.require_signed_keys {
            p.require_signed_keys = v;
        }
        if let Some(v) = &self.replay_set_cookie {
            p.replay_set_cookie = v
                .parse()
                .map_err(|e| anyhow!("{at}replay_set_cookie: {e}"))?;
        }
        if let Some(v) = &self.unknown_outcome {
            p.unknown_outcome = v.parse().map_err(|e| anyhow!("{at}unknown_outcome: {e}"))?;
        }
        if let Some(v) = &self.stream {
            p.stream = v.parse().map_err(|e| anyhow!("{at}stream: {e}"))?;
        }
        if let Some(v) = self.echo_key {
            p.echo_key = v;
        }
        Ok(p)
    }
}

impl RouteEntry {
    /// Adds the entry's webhook keys to its policy `p`.
    pub(super) fn apply_webhook(&self, at: &str, p: &mut RoutePolicy) -> anyhow::Result<()> {
        let webhook_keys = self.webhook_headers.is_some()
            || self.webhook_body_hash.is_some()
            || self.webhook_key_json.is_some();
        if !self.webhook.unwrap_or(webhook_keys) {
            if webhook_keys {
                bail!("{at}webhook_headers/webhook_body_hash/webhook_key_json: only apply with webhook = true");
            }
            return Ok(());
        }
        let mut w = WebhookKeys::default();
        if let Some(headers) = &self.webhook_headers {
            if headers.is_empty() {
                bail!("{at}webhook_headers: name at least one header");
            }
            w.headers = headers
                .iter()
                .map(|h| header_name(&format!("{at}webhook_headers"), h))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(b) = self.webhook_body_hash {
            w.body_hash_fallback = b;
        }
        if let Some(pointer) = &self.webhook_key_json {
            BodyFields::check(std::slice::from_ref(pointer))
                .map_err(|e| anyhow!("{at}webhook_key_json: {e}"))?;
            if pointer.is_empty() {
                bail!("{at}webhook_key_json: name the body field, as /id");
            }
            w.json = Some(pointer.clone());
        }
        p.webhook = Some(w);
        Ok(())
    }
}
