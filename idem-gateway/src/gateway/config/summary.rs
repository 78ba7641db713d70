//! `idem gateway --check`: the resolved configuration, readable.

use crate::stores::Statements;
use http::Method;
use idem::RoutePolicy;

use super::GatewayConfig;
use crate::stores::StoreUrl;

impl GatewayConfig {
    /// A readable summary, printed by `--check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "upstream      {}", self.upstream);
        match &self.listener_tls {
            Some(tls) => writeln!(
                out,
                "listen        {} (TLS: {})",
                self.listen,
                tls.cert_file().display()
            ),
            None => writeln!(out, "listen        {}", self.listen),
        }
        .ok();
        let _ = writeln!(
            out,
            "admin_listen  {}",
            self.admin_listen.as_deref().unwrap_or("off")
        );
        let _ = writeln!(out, "store         {}", self.store);
        let _ = writeln!(out, "store_timeout {:?}", self.store_timeout);
        let _ = writeln!(out, "scope         {}", self.scope_shown);
        let _ = writeln!(
            out,
            "limits        max_connections={} max_in_flight={} h2_max_streams={}",
            self.max_connections, self.max_in_flight, self.h2_max_streams
        );
        let _ = writeln!(
            out,
            "workers       {}",
            self.workers
                .map_or_else(|| "one per CPU core".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(out, "runtime       {}", self.runtime);
        if matches!(self.store, StoreUrl::Memory) {
            let _ = writeln!(
                out,
                "memory_store  capacity={} records, max_bytes={}",
                self.memory_capacity, self.memory_max_bytes
            );
        }
        if matches!(self.store, StoreUrl::Sqlite(_)) {
            let _ = writeln!(
                out,
                "sqlite_store  capacity={} records, max_bytes={}",
                self.sqlite_capacity, self.sqlite_max_bytes
            );
        }
        if matches!(self.store, StoreUrl::Redis(_)) {
            let _ = writeln!(
                out,
                "redis_store   key_prefix={:?} allow_eviction={} connect_timeout={:?}",
                self.redis_key_prefix, self.redis_allow_eviction, self.store_connect_timeout
            );
        }
        if matches!(self.store, StoreUrl::Postgres(_)) {
            let _ = writeln!(
                out,
                "postgres      schema={} statements={} pool_size={} connect_timeout={:?}",
                self.postgres_schema,
                match self.postgres_statements {
                    Statements::Prepared => "prepared",
                    _ => "unnamed",
                },
                self.postgres_pool_size,
                self.store_connect_timeout
            );
        }
        if let (Some(ca), StoreUrl::Redis(_) | StoreUrl::Postgres(_)) =
            (&self.store_ca_file, &self.store)
        {
            let _ = writeln!(out, "store_ca_file {}", ca.display());
        }
        let line = |name: &str, p: &RoutePolicy| {
            let methods: Vec<&str> = p.methods.iter().map(Method::as_str).collect();
            format!(
                "{name:<24} methods={} ttl={:?} lock_timeout={:?} key_required={} fingerprint={:?} max_body={} wait={:?} webhook={} signed_keys={} unknown_outcome={:?}",
                if methods.is_empty() { "-".to_owned() } else { methods.join(",") },
                p.ttl,
                p.lease,
                p.key_required,
                p.fingerprint,
                p.max_request_body,
                p.wait,
                p.webhook.is_some(),
                p.require_signed_keys,
                p.unknown_outcome
            )
        };
        for (pattern, p) in &self.policy.routes {
            let _ = writeln!(out, "route {}", line(pattern.as_str(), p));
        }
        let _ = writeln!(out, "route {}", line("(other paths)", &self.policy.default));
        out
    }
}
