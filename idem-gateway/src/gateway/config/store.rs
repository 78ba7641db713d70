//! The store's settings: how it is opened, and how long a call to it may
//! take (with the check that every lease outlasts three of those).

use std::time::Duration;

use anyhow::bail;
use idem::Policy;

use crate::stores::Statements;
use anyhow::anyhow;

use super::values::{Secs, Size};
use super::{GatewayConfig, Names, Settings, DEFAULT_STORE_TIMEOUT};
use crate::stores::StoreOptions;

impl GatewayConfig {
    /// How the store is opened: its bounds and its server's settings.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            memory: Some(crate::stores::MemoryLimits {
                records: self.memory_capacity,
                bytes: self.memory_max_bytes,
            }),
            sqlite: Some(crate::stores::SqliteLimits {
                records: self.sqlite_capacity,
                bytes: self.sqlite_max_bytes,
            }),
            redis_key_prefix: self.redis_key_prefix.clone(),
            redis_allow_eviction: self.redis_allow_eviction,
            postgres_schema: self.postgres_schema.clone(),
            postgres_statements: self.postgres_statements,
            postgres_pool_size: self.postgres_pool_size,
            postgres_lanes: self.postgres_lanes,
            connect_timeout: self.store_connect_timeout,
            ca_file: self.store_ca_file.clone(),
        }
    }
}

/// The store timeout, and the check that every lease outlasts three of
/// them.
pub(super) fn store_timeout(
    s: &Settings,
    policy: &Policy,
    names: &Names,
) -> anyhow::Result<Duration> {
    let leases = || {
        std::iter::once(("", &policy.default)).chain(
            policy
                .routes
                .iter()
                .map(|(pattern, p)| (pattern.as_str(), p)),
        )
    };
    // Unless set, the store timeout is the default's or a quarter of the
    // shortest lease, whichever is shorter: a short lease alone is a valid
    // configuration.
    let timeout = match s.store_timeout {
        Some(Secs(t)) => t,
        None => leases()
            .map(|(_, p)| p.lease / 4)
            .fold(DEFAULT_STORE_TIMEOUT, Duration::min),
    };
    // The lease is renewed until the answer is stored, and one renewal (or
    // one try of storing) may take a store timeout: a lease no longer than
    // three of them can run out while its holder is alive, and a duplicate
    // would execute again.
    for (i, (pattern, p)) in leases().enumerate() {
        if p.lease > timeout * 3 {
            continue;
        }
        let lease_name = match i {
            0 => names.of("lock_timeout"),
            _ => format!("routes[{}].lock_timeout ({pattern})", i - 1),
        };
        let timeout_name = names.of("store_timeout");
        bail!(
            "{lease_name}: {:?} must be longer than three times {timeout_name} ({timeout:?}): the lease is renewed until the answer is stored, and a store this slow would let it run out while its holder is alive; raise {lease_name} above {:?} or lower {timeout_name}",
            p.lease,
            timeout * 3
        );
    }
    Ok(timeout)
}

/// The shared stores' settings the types cannot check: the PostgreSQL
/// schema, statements mode, pool size and lanes, the Redis prefix.
pub(super) fn server_settings(
    s: &Settings,
    names: &Names,
) -> anyhow::Result<(Statements, usize, usize)> {
    let n = |key: &str| names.of(key);
    // Checked where it is used: a build without PostgreSQL has no schema.
    #[cfg(feature = "postgres")]
    if !idem_postgres_store::is_valid_schema(&s.postgres_schema) {
        bail!(
            "{}: {:?} is not a plain schema name; use lower-case letters, digits and _ (at most 63, not starting with a digit)",
            n("postgres_schema"),
            s.postgres_schema
        );
    }
    let postgres_statements: Statements = s
        .postgres_statements
        .parse()
        .map_err(|e| anyhow!("{}: {e}", n("postgres_statements")))?;
    let Size(postgres_pool_size) = s.postgres_pool_size;
    if !(1..=1000).contains(&postgres_pool_size) {
        bail!(
            "{}: must be between 1 and 1000, got {postgres_pool_size}",
            n("postgres_pool_size")
        );
    }
    let Size(postgres_lanes) = s.postgres_lanes;
    if postgres_lanes > 64 {
        bail!(
            "{}: must be between 0 and 64, got {postgres_lanes}",
            n("postgres_lanes")
        );
    }
    if s.redis_key_prefix.is_empty() || s.redis_key_prefix.chars().any(char::is_whitespace) {
        bail!(
            "{}: {:?}: use a non-empty prefix without spaces, such as \"idem:payments:\" (each service sharing a Redis its own)",
            n("redis_key_prefix"),
            s.redis_key_prefix
        );
    }
    Ok((postgres_statements, postgres_pool_size, postgres_lanes))
}
