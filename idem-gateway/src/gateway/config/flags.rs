//! The flags of `idem gateway`, as the top-level keys they write over the
//! `--config` file's.

use std::path::PathBuf;

use crate::cli::GatewayArgs;

/// The flags that were given, as the top-level values they replace.
pub(super) fn flag_values(args: &GatewayArgs) -> Vec<(&'static str, toml::Value)> {
    let text = |key, v: &Option<String>| v.clone().map(|s| (key, toml::Value::String(s)));
    let path = |key, v: &Option<PathBuf>| {
        v.as_ref()
            .map(|p| (key, toml::Value::String(p.to_string_lossy().into_owned())))
    };
    [
        text("upstream", &args.upstream),
        path("upstream_ca_file", &args.upstream_ca_file),
        text("listen", &args.listen),
        path("tls_cert_file", &args.tls_cert_file),
        path("tls_key_file", &args.tls_key_file),
        text("store", &args.store),
        text("ttl", &args.ttl),
        text("lock_timeout", &args.lock_timeout),
        text("max_body", &args.max_body),
        text("max_stored_response", &args.max_stored_response),
        text("scope_header", &args.scope_header),
        text("scope", &args.scope),
        path("jwt_hs256_secret_file", &args.jwt_hs256_secret_file),
        path("jwt_jwks_file", &args.jwt_jwks_file),
        text("jwt_issuer", &args.jwt_issuer),
        text("jwt_audience", &args.jwt_audience),
        text("jwt_leeway", &args.jwt_leeway),
        path("secret_file", &args.secret_file),
        text("admin_listen", &args.admin_listen),
        path("admin_token_file", &args.admin_token_file),
        text("readyz_upstream", &args.readyz_upstream),
        args.access_log
            .map(|on| ("access_log", toml::Value::Boolean(on))),
        text("otlp_endpoint", &args.otlp_endpoint),
        text("otlp_service_name", &args.otlp_service_name),
        args.require_signed_keys
            .then_some(("require_signed_keys", toml::Value::Boolean(true))),
        path("key_signing_secret_file", &args.key_signing_secret_file),
        text("upstream_timeout", &args.upstream_timeout),
        text("drain_timeout", &args.drain_timeout),
        text("header_read_timeout", &args.header_read_timeout),
        text("body_read_timeout", &args.body_read_timeout),
        text("body_idle_timeout", &args.body_idle_timeout),
        text("store_timeout", &args.store_timeout),
        text("wait", &args.wait),
        text("local_cache", &args.local_cache),
        text("max_connections", &args.max_connections),
        text("max_in_flight", &args.max_in_flight),
        text("h2_max_streams", &args.h2_max_streams),
        text("memory_capacity", &args.memory_capacity),
        text("memory_max_bytes", &args.memory_max_bytes),
        text("scope_share", &args.scope_share),
        text("scope_key_rate", &args.scope_key_rate),
        text("scope_key_burst", &args.scope_key_burst),
        text("sqlite_capacity", &args.sqlite_capacity),
        text("sqlite_max_bytes", &args.sqlite_max_bytes),
        text("redis_key_prefix", &args.redis_key_prefix),
        args.redis_allow_eviction
            .then_some(("redis_allow_eviction", toml::Value::Boolean(true))),
        text("postgres_schema", &args.postgres_schema),
        text("postgres_statements", &args.postgres_statements),
        text("postgres_pool_size", &args.postgres_pool_size),
        text("postgres_lanes", &args.postgres_lanes),
        text("store_connect_timeout", &args.store_connect_timeout),
        path("store_ca_file", &args.store_ca_file),
        text("workers", &args.workers),
        text("runtime", &args.runtime),
    ]
    .into_iter()
    .flatten()
    .collect()
}
