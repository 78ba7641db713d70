//! Opening a store from its URL (`url.rs`), with its secret, its bounds and
//! its server's settings; what this build can open (cargo features).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use idem_core::{CachedStore, MemoryStore, Secret, StoreAdmin, SystemClock};

mod url;
pub use self::url::{redact, StoreUrl};
#[cfg(feature = "postgres")]
use idem_postgres_store::{PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
use idem_redis_store::{RedisOptions, RedisStore, RedisStoreError};
#[cfg(feature = "sqlite")]
use idem_sqlite_store::{SqliteOptions, SqliteStore};

/// The stores this binary was built with (cargo features `sqlite`, `redis`,
/// `postgres`; `memory` is always there).
pub const BUILT_WITH: &[&str] = &[
    "memory",
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "postgres")]
    "postgres",
];

/// How statements reach PostgreSQL (`postgres_statements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Statements {
    /// Unnamed statements, parameters in the same round trip: works behind
    /// PgBouncer in transaction mode.
    #[default]
    Unnamed,
    /// Prepared once per connection: direct connections only; faster.
    Prepared,
}

impl std::str::FromStr for Statements {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unnamed" => Ok(Self::Unnamed),
            "prepared" => Ok(Self::Prepared),
            other => Err(format!(
                "unknown statements mode {other:?}; use \"unnamed\" (works behind PgBouncer in transaction mode) or \"prepared\" (direct connections only)"
            )),
        }
    }
}

/// An opened store, with the concrete handle (the demo keeps its payments in
/// the same place).
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn StoreAdmin>,
    /// Which backend, for the application's own data.
    pub backend: Backend,
    /// The secret behind store keys; `None`: the one the shared store keeps
    /// for all its instances, read at first use.
    pub secret: Option<Secret>,
    /// The local cache in front of the store, if one was asked for (its
    /// entries and hits are published as metrics).
    pub cache: Option<Arc<CachedStore<Arc<dyn StoreAdmin>>>>,
}

/// The concrete store behind an [`OpenedStore`].
#[derive(Clone)]
pub enum Backend {
    /// In memory.
    Memory(Arc<MemoryStore>),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    /// Redis or Redis Cluster.
    #[cfg(feature = "redis")]
    Redis(RedisStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

/// Opens the store at `url`. Nothing is connected yet for Redis and
/// PostgreSQL: idem starts while they are down and answers 503 until they are
/// back.
///
/// The secret comes from `secret_file` when given (it must exist); otherwise,
/// for SQLite, from `PATH.secret` beside the database, created once (mode
/// 0600) so a restart still replays; for Redis and PostgreSQL, from the store
/// itself, created by the first instance so every instance sharing the store
/// agrees; for memory, a random one.
pub fn open(
    url: &StoreUrl,
    secret_file: Option<&Path>,
    local_cache: usize,
) -> anyhow::Result<OpenedStore> {
    open_with(url, secret_file, local_cache, &StoreOptions::default())
}

/// How a store is opened, beyond its URL: the bounds of the local stores,
/// and the settings of the shared ones (gateway keys `redis_*`,
/// `postgres_*`, `store_connect_timeout`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The bounds of a `memory://` store; `None`: unbounded.
    pub memory: Option<MemoryLimits>,
    /// The bounds of a `sqlite://` store; `None`: unbounded.
    pub sqlite: Option<SqliteLimits>,
    /// The prefix of every Redis key: two services sharing one Redis need
    /// two prefixes.
    pub redis_key_prefix: String,
    /// Use a Redis whose `maxmemory-policy` may evict records (with a
    /// warning) instead of refusing it.
    pub redis_allow_eviction: bool,
    /// The PostgreSQL schema holding idem's tables.
    pub postgres_schema: String,
    /// How statements reach PostgreSQL (unnamed: works behind PgBouncer in
    /// transaction mode).
    pub postgres_statements: Statements,
    /// PostgreSQL connections in the pool.
    pub postgres_pool_size: usize,
    /// PostgreSQL connections, beside the pool, that the hot path's
    /// statements share, pipelined (0: none).
    pub postgres_lanes: usize,
    /// How long connecting to Redis or PostgreSQL may take.
    pub connect_timeout: Duration,
    /// The CA that signs a TLS store's certificate (`rediss://`, PostgreSQL
    /// `sslmode=verify-*`); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreOptions {
    /// The stores' own defaults (a test holds them to the store crates').
    fn default() -> Self {
        Self {
            memory: None,
            sqlite: None,
            redis_key_prefix: "idem:".into(),
            redis_allow_eviction: false,
            postgres_schema: "public".into(),
            postgres_statements: Statements::Unnamed,
            postgres_pool_size: 16,
            postgres_lanes: 2,
            connect_timeout: Duration::from_secs(2),
            ca_file: None,
        }
    }
}

impl StoreUrl {
    /// Whether this binary was built with the store's support (cargo
    /// features `sqlite`, `redis`, `postgres`); the error says how to get it.
    pub fn check_built(&self) -> anyhow::Result<()> {
        let needs = match self {
            Self::Memory => return Ok(()),
            Self::Sqlite(_) => "sqlite",
            Self::Redis(_) => "redis",
            Self::Postgres(_) => "postgres",
        };
        if BUILT_WITH.contains(&needs) {
            Ok(())
        } else {
            Err(not_built(self, needs))
        }
    }
}

/// What a store URL needs that this binary was built without.
fn not_built(url: &StoreUrl, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "store {url}: this idem was built without {feature} support (it has {}); rebuild with `cargo install idem-gateway --locked --features {feature}` (or the default features)",
        BUILT_WITH.join(", ")
    )
}

/// The bounds of a `memory://` store: past either, new keys are refused with
/// 503 `idempotency-store-full`; live records are never evicted.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// Records held at most.
    pub records: usize,
    /// Accounted bytes at most (see [`MemoryStore`]).
    pub bytes: usize,
}

/// The bounds of a `sqlite://` store, as [`MemoryLimits`] are for memory:
/// past either, new keys get 503 `idempotency-store-full` (after expired
/// records were purged); an answer that would overrun the bytes is kept
/// without its body.
#[derive(Debug, Clone, Copy)]
pub struct SqliteLimits {
    /// Records held at most.
    pub records: u64,
    /// Accounted bytes at most (`ROW_OVERHEAD` per row plus its answer).
    pub bytes: u64,
}

/// [`open`], with `options`.
pub fn open_with(
    url: &StoreUrl,
    secret_file: Option<&Path>,
    local_cache: usize,
    options: &StoreOptions,
) -> anyhow::Result<OpenedStore> {
    let mut opened = open_store(url, secret_file, options)?;
    if local_cache > 0 {
        // Replays of hot keys answered locally (see idem_core::cache).
        let cached =
            Arc::new(CachedStore::new(opened.store, Arc::new(SystemClock)).capacity(local_cache));
        opened.store = cached.clone();
        opened.cache = Some(cached);
    }
    Ok(opened)
}

fn open_store(
    url: &StoreUrl,
    secret_file: Option<&Path>,
    options: &StoreOptions,
) -> anyhow::Result<OpenedStore> {
    let memory_limits = options.memory;
    let explicit = match secret_file {
        Some(p) => Some(Secret::read_file(p).with_context(|| {
            format!(
                "cannot use secret file {}; create one with: openssl rand -hex 32 > {}",
                p.display(),
                p.display()
            )
        })?),
        None => None,
    };
    match url {
        StoreUrl::Memory => {
            let store = Arc::new(match memory_limits {
                Some(l) => MemoryStore::new()
                    .with_capacity(l.records)
                    .with_max_bytes(l.bytes),
                None => MemoryStore::new(),
            });
            spawn_sweeper(store.clone());
            Ok(OpenedStore {
                store: store.clone(),
                backend: Backend::Memory(store),
                secret: Some(explicit.unwrap_or_else(Secret::generate)),
                cache: None,
            })
        }
        #[cfg(not(feature = "redis"))]
        StoreUrl::Redis(_) => Err(not_built(url, "redis")),
        #[cfg(not(feature = "postgres"))]
        StoreUrl::Postgres(_) => Err(not_built(url, "postgres")),
        #[cfg(not(feature = "sqlite"))]
        StoreUrl::Sqlite(_) => Err(not_built(url, "sqlite")),
        #[cfg(feature = "redis")]
        StoreUrl::Redis(u) => {
            let redis = RedisOptions {
                prefix: options.redis_key_prefix.clone(),
                allow_eviction: options.redis_allow_eviction,
                connect_timeout: options.connect_timeout,
                ca_file: options.ca_file.clone(),
                ..RedisOptions::default()
            };
            let store =
                RedisStore::new(u, redis).with_context(|| format!("cannot use store {url}"))?;
            if explicit.is_none() {
                tracing::info!("no --secret-file: using the secret kept in the store, shared by every instance");
            }
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Redis(store),
                secret: explicit,
                cache: None,
            })
        }
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres(u) => {
            let store = PostgresStore::new(u, postgres_options(options))
                .with_context(|| format!("cannot use store {url}"))?;
            spawn_sweeper(Arc::new(store.clone()));
            if explicit.is_none() {
                tracing::info!("no --secret-file: using the secret kept in the store, shared by every instance");
            }
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Postgres(store),
                secret: explicit,
                cache: None,
            })
        }
        #[cfg(feature = "sqlite")]
        StoreUrl::Sqlite(path) => {
            let options = SqliteOptions {
                capacity: options.sqlite.map(|l| l.records),
                max_bytes: options.sqlite.map(|l| l.bytes),
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open_with(path, options)
                .with_context(|| format!("cannot open store sqlite://{}", path.display()))?;
            let secret = match explicit {
                Some(s) => s,
                None => {
                    let mut secret_path = path.clone().into_os_string();
                    secret_path.push(".secret");
                    let secret_path = PathBuf::from(secret_path);
                    Secret::load_or_create(&secret_path).with_context(|| {
                        format!(
                            "cannot read or create the store secret {}",
                            secret_path.display()
                        )
                    })?
                }
            };
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Sqlite(store),
                secret: Some(secret),
                cache: None,
            })
        }
    }
}

#[cfg(feature = "postgres")]
fn postgres_options(options: &StoreOptions) -> PostgresOptions {
    PostgresOptions {
        schema: options.postgres_schema.clone(),
        statements: match options.postgres_statements {
            Statements::Unnamed => idem_postgres_store::Statements::Unnamed,
            Statements::Prepared => idem_postgres_store::Statements::Prepared,
        },
        pool_size: options.postgres_pool_size,
        lanes: options.postgres_lanes,
        connect_timeout: options.connect_timeout,
        ca_file: options.ca_file.clone(),
        ..PostgresOptions::default()
    }
}

/// Whether a shared store can be used now: connects (and, for PostgreSQL,
/// checks the tables' version) within `timeout`. `None`: a local store,
/// nothing to check.
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres")),
    allow(unused_variables, unreachable_code)
)] // A build without shared stores has nothing to connect to.
pub async fn check(opened: &OpenedStore, timeout: Duration) -> Option<anyhow::Result<()>> {
    let connected: Result<anyhow::Result<()>, tokio::time::error::Elapsed> = match &opened.backend {
        Backend::Memory(_) => return None,
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(_) => return None,
        #[cfg(feature = "redis")]
        Backend::Redis(s) => tokio::time::timeout(timeout, s.connect())
            .await
            .map(|r| r.map_err(anyhow::Error::from)),
        #[cfg(feature = "postgres")]
        Backend::Postgres(s) => tokio::time::timeout(timeout, s.connect())
            .await
            .map(|r| r.map_err(anyhow::Error::from)),
    };
    Some(connected.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}"))))
}

/// Whether `e` (from [`check`]) is a setting of the server that idem must
/// not run with, rather than a server that is down or a role that lacks a
/// grant (which an operator fixes while idem runs).
pub fn is_unsafe_server(e: &anyhow::Error) -> bool {
    #[cfg(feature = "redis")]
    if matches!(
        e.downcast_ref::<RedisStoreError>(),
        Some(RedisStoreError::Evicting { .. })
    ) {
        return true;
    }
    let _ = e;
    false
}

/// `idem migrate`: creates or upgrades idem's tables in a PostgreSQL store
/// (and grants `grant` their use); says what it did. Other stores make
/// their own at first use.
pub async fn migrate(
    url: &StoreUrl,
    options: &StoreOptions,
    grant: Option<&str>,
) -> anyhow::Result<String> {
    let StoreUrl::Postgres(u) = url else {
        if grant.is_some() {
            bail!("--grant is for PostgreSQL stores; {url} has no roles to grant");
        }
        return Ok(format!(
            "{url}: nothing to migrate (this store keeps no schema; it is ready as it is)"
        ));
    };
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (u, options);
        Err(not_built(url, "postgres"))
    }
    #[cfg(feature = "postgres")]
    postgres_migrate(url, u, options, grant).await
}

#[cfg(feature = "postgres")]
async fn postgres_migrate(
    url: &StoreUrl,
    u: &str,
    options: &StoreOptions,
    grant: Option<&str>,
) -> anyhow::Result<String> {
    let store = PostgresStore::new(u, postgres_options(options))
        .with_context(|| format!("cannot use store {url}"))?;
    let done = store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate store {url}"))?;
    let mut out = done.to_string();
    if let Some(role) = grant {
        store
            .grant(role)
            .await
            .with_context(|| format!("cannot grant role {role:?} the use of idem's tables"))?;
        out.push_str(&format!(
            "\nschema {}: granted {role} the use of idem's tables (select, insert, update, delete)",
            store.schema()
        ));
    }
    Ok(out)
}

/// Purges expired records every minute, in batches (SQLite's writer thread
/// sweeps on its own; Redis expires records itself). Several instances may
/// sweep one PostgreSQL at once: its purge skips rows another one holds.
fn spawn_sweeper(store: Arc<dyn StoreAdmin>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            loop {
                match store.purge_expired(10_000).await {
                    Ok(10_000) => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "purging expired records failed; retrying in a minute");
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults written here are the store crates' own.
    #[test]
    #[cfg(all(feature = "redis", feature = "postgres"))]
    fn store_options_default_to_the_stores_defaults() {
        let (d, r, p) = (
            StoreOptions::default(),
            RedisOptions::default(),
            PostgresOptions::default(),
        );
        assert_eq!(d.redis_key_prefix, r.prefix);
        assert_eq!(d.redis_allow_eviction, r.allow_eviction);
        assert_eq!(d.postgres_schema, p.schema);
        assert_eq!(d.postgres_pool_size, p.pool_size);
        assert_eq!(d.postgres_lanes, p.lanes);
        assert_eq!(d.connect_timeout, p.connect_timeout);
        assert_eq!(d.connect_timeout, r.connect_timeout);
        assert_eq!(
            postgres_options(&d).statements,
            idem_postgres_store::Statements::default()
        );
    }
}
