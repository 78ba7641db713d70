//! `idem gateway --check`: the resolved configuration, every key with the
//! value the gateway will use, as TOML that `--config` reads back to the
//! same configuration (a test round-trips it). Credentials in URLs print as
//! `***`: put them back (or pass them as flags) to use the output as is.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use idem::RoutePolicy;
use toml::Value;

use super::GatewayConfig;
use crate::stores::{Statements, StoreUrl};

impl GatewayConfig {
    /// The resolved configuration as a `--config` file.
    pub fn summary(&self) -> String {
        let mut top = toml::Table::new();
        let mut put = |key: &str, v: Value| {
            top.insert(key.to_owned(), v);
        };
        put("upstream", text(&self.upstream.to_string()));
        if let Some(p) = &self.upstream_ca_file {
            put("upstream_ca_file", path(p));
        }
        put("listen", text(&self.listen));
        if let Some(tls) = &self.listener_tls {
            put("tls_cert_file", path(tls.cert_file()));
            put("tls_key_file", path(tls.key_file()));
        }
        put(
            "admin_listen",
            text(self.admin_listen.as_deref().unwrap_or("none")),
        );
        if let Some(p) = &self.admin_token_file {
            put("admin_token_file", path(p));
        }
        if let Some(p) = &self.readyz_upstream {
            put("readyz_upstream", text(p));
        }
        put("access_log", Value::Boolean(self.access_log));
        if let Some(e) = &self.otlp_endpoint {
            put("otlp_endpoint", text(&e.to_string()));
            put("otlp_service_name", text(&self.otlp_service_name));
        }
        if let Some(p) = &self.key_signing_secret_file {
            put("key_signing_secret_file", path(p));
        }
        put("store", text(&self.store.to_string()));
        if let Some(p) = &self.secret_file {
            put("secret_file", path(p));
        }
        put("scope", text(&self.scope_value));
        if let Some(p) = &self.jwt.hs256_secret_file {
            put("jwt_hs256_secret_file", path(p));
        }
        if let Some(p) = &self.jwt.jwks_file {
            put("jwt_jwks_file", path(p));
        }
        if let Some(v) = &self.jwt.issuer {
            put("jwt_issuer", text(v));
        }
        if let Some(v) = &self.jwt.audience {
            put("jwt_audience", text(v));
        }
        put("jwt_leeway", duration(self.jwt.leeway));
        put("local_cache", size(self.local_cache as u64));
        put("problem_base", text(&self.problem_base));
        put("upstream_timeout", duration(self.upstream_timeout));
        put("drain_timeout", duration(self.drain_timeout));
        put("header_read_timeout", duration(self.header_read_timeout));
        put("body_read_timeout", duration(self.body_read_timeout));
        put("body_idle_timeout", duration(self.body_idle_timeout));
        put("max_header_bytes", size(self.max_header_bytes as u64));
        put("store_timeout", duration(self.store_timeout));
        put("max_connections", size(self.max_connections as u64));
        put("max_in_flight", size(self.max_in_flight as u64));
        put("h2_max_streams", size(u64::from(self.h2_max_streams)));
        put("memory_capacity", size(self.memory_capacity as u64));
        put("memory_max_bytes", size(self.memory_max_bytes as u64));
        put("sqlite_capacity", size(self.sqlite_capacity));
        put("sqlite_max_bytes", size(self.sqlite_max_bytes));
        put("redis_key_prefix", text(&self.redis_key_prefix));
        put(
            "redis_allow_eviction",
            Value::Boolean(self.redis_allow_eviction),
        );
        put("postgres_schema", text(&self.postgres_schema));
        put(
            "postgres_statements",
            text(match self.postgres_statements {
                Statements::Unnamed => "unnamed",
                Statements::Prepared => "prepared",
            }),
        );
        put("postgres_pool_size", size(self.postgres_pool_size as u64));
        put("postgres_lanes", size(self.postgres_lanes as u64));
        put(
            "store_connect_timeout",
            duration(self.store_connect_timeout),
        );
        if let Some(p) = &self.store_ca_file {
            put("store_ca_file", path(p));
        }
        put("scope_share", Value::Float(self.scope_share));
        if let Some((rate, burst)) = self.scope_key_rate {
            put("scope_key_rate", Value::Float(rate));
            put("scope_key_burst", size(u64::from(burst)));
        }
        if let Some(w) = self.workers {
            put("workers", size(w as u64));
        }
        put("runtime", text(&self.runtime.to_string()));
        // The default policy's keys are the top level's route keys.
        top.extend(route_keys(&self.policy.default));
        let routes: Vec<Value> = self
            .policy
            .routes
            .iter()
            .map(|(pattern, p)| {
                let mut t = toml::Table::new();
                t.insert("path".into(), text(pattern.as_str()));
                t.extend(route_keys(p));
                if let Some(w) = &p.webhook {
                    t.insert("webhook".into(), Value::Boolean(true));
                    t.insert(
                        "webhook_headers".into(),
                        Value::Array(w.headers.iter().map(|h| text(h.as_str())).collect()),
                    );
                    t.insert(
                        "webhook_body_hash".into(),
                        Value::Boolean(w.body_hash_fallback),
                    );
                }
                Value::Table(t)
            })
            .collect();
        if !routes.is_empty() {
            top.insert("routes".into(), Value::Array(routes));
        }

        let mut out = String::new();
        let _ = writeln!(
            out,
            "# idem gateway: the resolved configuration (--config reads it back)."
        );
        let _ = writeln!(out, "# scope: {}", self.scope_shown);
        if let StoreUrl::Redis(_) | StoreUrl::Postgres(_) = self.store {
            if self.store.to_string().contains("***") {
                let _ = writeln!(
                    out,
                    "# store: its credentials print as ***; pass the real URL with --store"
                );
            }
        }
        out.push_str(&toml::to_string(&top).unwrap_or_else(|e| format!("# cannot print: {e}\n")));
        out
    }
}

/// A route's keys, every one with its resolved value.
fn route_keys(p: &RoutePolicy) -> toml::Table {
    let mut t = toml::Table::new();
    let mut put = |key: &str, v: Value| {
        t.insert(key.to_owned(), v);
    };
    put(
        "methods",
        Value::Array(p.methods.iter().map(|m| text(m.as_str())).collect()),
    );
    put("ttl", duration(p.ttl));
    put("lock_timeout", duration(p.lease));
    put("key_required", Value::Boolean(p.key_required));
    put(
        "key_from",
        text(
            &p.key_json
                .as_ref()
                .map_or("header".to_owned(), |j| format!("json:{j}")),
        ),
    );
    put("key_min_length", size(p.key_rules.min_len as u64));
    put("key_max_length", size(p.key_rules.max_len as u64));
    put("fingerprint", text(p.fingerprint.as_str()));
    let pointers = |list: &[String]| Value::Array(list.iter().map(|s| text(s)).collect());
    match &p.fingerprint_fields {
        idem::BodyFields::Include(list) => put("fingerprint_include", pointers(list)),
        idem::BodyFields::Exclude(list) => put("fingerprint_exclude", pointers(list)),
        _ => {}
    }
    put(
        "no_store",
        Value::Array(p.no_store.to_strings().iter().map(|s| text(s)).collect()),
    );
    put("max_body", size(p.max_request_body as u64));
    put("max_stored_response", size(p.max_stored_response as u64));
    put("fail_open", Value::Boolean(p.fail_open));
    put("wait", p.wait.map_or_else(|| text("off"), duration));
    put("require_signed_keys", Value::Boolean(p.require_signed_keys));
    put("replay_set_cookie", text(p.replay_set_cookie.as_str()));
    put("unknown_outcome", text(p.unknown_outcome.as_str()));
    put("stream", text(p.stream.as_str()));
    put("echo_key", Value::Boolean(p.echo_key));
    t
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn path(p: &Path) -> Value {
    text(&p.to_string_lossy())
}

fn size(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `d` in the largest unit that writes it exactly (`24h`, `30s`, `250ms`).
fn duration(d: Duration) -> Value {
    let ms = d.as_millis();
    let s = if ms == 0 {
        "0s".to_owned()
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        let secs = ms / 1000;
        match secs {
            s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
            s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
            s if s.is_multiple_of(60) => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    };
    text(&s)
}
