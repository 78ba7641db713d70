//! Store URLs: `memory://`, `sqlite://PATH`, and the secret that goes with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use idem_core::{MemoryStore, Secret, Store};
use idem_sqlite_store::SqliteStore;

/// A parsed `--store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: in this process only.
    Memory,
    /// `sqlite://PATH`: `sqlite://idem.db` is relative, `sqlite:///var/lib/idem.db` absolute.
    Sqlite(PathBuf),
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
            || s.starts_with("postgres://")
            || s.starts_with("postgresql://")
        {
            bail!("store URL {s:?}: the Redis and PostgreSQL stores are not in this build yet; use sqlite://PATH or memory://");
        }
        bail!("unknown store URL {s:?}; use sqlite://PATH (the default is sqlite://idem.db) or memory://")
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory://"),
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
        }
    }
}

/// An opened store, with the SQLite handle when it is one (the demo keeps its
/// payments in the same file).
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The SQLite store, when the URL was `sqlite://`.
    pub sqlite: Option<SqliteStore>,
    /// The secret behind store keys.
    pub secret: Secret,
}

/// Opens the store at `url`. The secret comes from `secret_file` when given
/// (it must exist); otherwise, for SQLite, from `PATH.secret` beside the
/// database, created once (mode 0600) so a restart still replays; for memory,
/// a random one.
pub fn open(url: &StoreUrl, secret_file: Option<&Path>) -> anyhow::Result<OpenedStore> {
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
            let store = Arc::new(MemoryStore::new());
            spawn_sweeper(store.clone());
            Ok(OpenedStore {
                store,
                sqlite: None,
                secret: explicit.unwrap_or_else(Secret::generate),
            })
        }
        StoreUrl::Sqlite(path) => {
            let store = SqliteStore::open(path)
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
                sqlite: Some(store),
                secret,
            })
        }
    }
}

/// Purges expired records of an in-memory store every minute (SQLite's
/// writer thread sweeps on its own).
fn spawn_sweeper(store: Arc<MemoryStore>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let _ = store.purge_expired(usize::MAX).await;
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
    }
}
