//! Store URLs: `memory://`, `sqlite://PATH`, and the secret that goes with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use idem_core::{CachedStore, MemoryStore, Secret, Store, SystemClock};
use idem_postgres_store::{PostgresOptions, PostgresStore};
use idem_redis_store::{RedisOptions, RedisStore};
use idem_sqlite_store::{SqliteOptions, SqliteStore};

/// A parsed `--store` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: in this process only.
    Memory,
    /// `sqlite://PATH`: `sqlite://idem.db` is relative, `sqlite:///var/lib/idem.db` absolute.
    Sqlite(PathBuf),
    /// `redis://HOST:PORT/DB`, `rediss://…`, or `redis+cluster://HOST:PORT,HOST:PORT`.
    Redis(String),
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` (or `postgresql://`).
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..s], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "memory://" || s == "memory:" || s == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!("store URL {s:?} has no file path; use sqlite://idem.db or sqlite:///absolute/path.db");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+cluster://")
        {
            return Ok(Self::Redis(s.to_owned()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_owned()));
        }
        bail!(
            "unknown store URL {:?}; use sqlite://PATH (the default is sqlite://idem.db), memory://, \
             redis://HOST:PORT, redis+cluster://HOST:PORT,HOST:PORT or postgres://USER@HOST:PORT/DB",
            redact(s)
        )
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory://"),
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Redis(u) | Self::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// An opened store, with the concrete handle (the demo keeps its payments in
/// the same place).
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Which backend, for the application's own data.
    pub backend: Backend,
    /// The secret behind store keys; `None`: the one the shared store keeps
    /// for all its instances, read at first use.
    pub secret: Option<Secret>,
}

/// The concrete store behind an [`OpenedStore`].
#[derive(Clone)]
pub enum Backend {
    /// In memory.
    Memory,
    /// SQLite.
    Sqlite(SqliteStore),
    /// Redis or Redis Cluster.
    Redis(RedisStore),
    /// PostgreSQL.
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
    open_with(url, secret_file, local_cache, None, None)
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

/// [`open`], with bounds for `memory://` and `sqlite://`. `None`: unbounded.
pub fn open_with(
    url: &StoreUrl,
    secret_file: Option<&Path>,
    local_cache: usize,
    memory_limits: Option<MemoryLimits>,
    sqlite_limits: Option<SqliteLimits>,
) -> anyhow::Result<OpenedStore> {
    let mut opened = open_store(url, secret_file, memory_limits, sqlite_limits)?;
    if local_cache > 0 {
        // Replays of hot keys answered locally (see idem_core::cache).
        let cached = CachedStore::new(opened.store, Arc::new(SystemClock)).capacity(local_cache);
        opened.store = Arc::new(cached);
    }
    Ok(opened)
}

fn open_store(
    url: &StoreUrl,
    secret_file: Option<&Path>,
    memory_limits: Option<MemoryLimits>,
    sqlite_limits: Option<SqliteLimits>,
) -> anyhow::Result<OpenedStore> {
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
                store,
                backend: Backend::Memory,
                secret: Some(explicit.unwrap_or_else(Secret::generate)),
            })
        }
        StoreUrl::Redis(u) => {
            let store = RedisStore::new(u, RedisOptions::default())
                .with_context(|| format!("cannot use store {url}"))?;
            if explicit.is_none() {
                tracing::info!("no --secret-file: using the secret kept in the store, shared by every instance");
            }
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Redis(store),
                secret: explicit,
            })
        }
        StoreUrl::Postgres(u) => {
            let store = PostgresStore::new(u, PostgresOptions::default())
                .with_context(|| format!("cannot use store {url}"))?;
            spawn_sweeper(Arc::new(store.clone()));
            if explicit.is_none() {
                tracing::info!("no --secret-file: using the secret kept in the store, shared by every instance");
            }
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Postgres(store),
                secret: explicit,
            })
        }
        StoreUrl::Sqlite(path) => {
            let options = SqliteOptions {
                capacity: sqlite_limits.map(|l| l.records),
                max_bytes: sqlite_limits.map(|l| l.bytes),
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
            })
        }
    }
}

/// Purges expired records every minute, in batches (SQLite's writer thread
/// sweeps on its own; Redis expires records itself). Several instances may
/// sweep one PostgreSQL at once: its purge skips rows another one holds.
fn spawn_sweeper(store: Arc<dyn Store>) {
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

    #[test]
    fn urls() {
        assert_eq!("memory://".parse::<StoreUrl>().ok(), Some(StoreUrl::Memory));
        assert_eq!(
            "sqlite://idem.db".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Sqlite("idem.db".into()))
        );
        assert_eq!(
            "sqlite:///var/lib/idem.db".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Sqlite("/var/lib/idem.db".into()))
        );
        assert!("sqlite://".parse::<StoreUrl>().is_err());
        assert!("mysql://x".parse::<StoreUrl>().is_err());
        assert!(matches!(
            "redis+cluster://a:1,b:2".parse::<StoreUrl>(),
            Ok(StoreUrl::Redis(_))
        ));
        assert_eq!(
            "postgres://u:secret@h:5432/db"
                .parse::<StoreUrl>()
                .map(|u| u.to_string())
                .ok(),
            Some("postgres://u:***@h:5432/db".to_owned())
        );
    }
}
