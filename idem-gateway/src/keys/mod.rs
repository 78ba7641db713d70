//! Operating on records without a database shell: inspect, delete, purge,
//! count. Used by `idem keys …` and by the admin HTTP API.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use idem_gateway::keys::KeyAdmin;
//!
//! let admin = KeyAdmin::open(&"sqlite://idem.db".parse()?, None)?;
//! if let Some(view) = admin.inspect("order-0001-abcdef", Some("Bearer alice")).await? {
//!     println!("{}", view.state);
//! }
//! # Ok(())
//! # }
//! ```

pub mod command;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use idem_core::key::{hex, KeyRules};
use idem_core::record::RecordState;
use idem_core::{Clock, Secret, Store, StoreAdmin, StoreKey, StoreStats, SystemClock};
use serde::Serialize;

use crate::stores::{self, StoreUrl};

/// A record as an operator sees it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RecordView {
    /// `in_progress` or `completed`.
    pub state: &'static str,
    /// The request fingerprint, hex.
    pub fingerprint: String,
    /// Milliseconds until the lease ends (in progress) or the record expires
    /// (completed).
    pub expires_in_ms: u64,
    /// The stored status (completed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The stored headers (completed only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Bytes of stored body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// The body as UTF-8 (lossy), first 4 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_preview: Option<String>,
    /// Set when the body was too large to store: its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_omitted: Option<u64>,
}

impl std::fmt::Display for RecordView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "state        {}", self.state)?;
        writeln!(f, "fingerprint  {}", self.fingerprint)?;
        let what = if self.state == "in_progress" {
            "lease ends"
        } else {
            "expires"
        };
        writeln!(
            f,
            "{what:<12} in {:?}",
            Duration::from_millis(self.expires_in_ms)
        )?;
        if let Some(s) = self.status {
            writeln!(f, "status       {s}")?;
        }
        for (n, v) in &self.headers {
            writeln!(f, "header       {n}: {v}")?;
        }
        if let Some(n) = self.body_bytes {
            writeln!(f, "body         {n} bytes")?;
        }
        if let Some(n) = self.body_omitted {
            writeln!(
                f,
                "body         omitted ({n} bytes, over the stored-response limit)"
            )?;
        }
        if let Some(p) = &self.body_preview {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Admin operations on one store.
#[derive(Clone)]
pub struct KeyAdmin {
    store: Arc<dyn StoreAdmin>,
    /// The given secret, or the store's, read once at first use.
    secret: Arc<tokio::sync::OnceCell<Secret>>,
}

impl KeyAdmin {
    /// Opens the store at `url` with the secret its instances use (see
    /// [`stores::open`]).
    pub fn open(url: &StoreUrl, secret_file: Option<&Path>) -> anyhow::Result<Self> {
        Self::open_with(url, secret_file, &stores::StoreOptions::default())
    }

    /// [`open`](Self::open), with the store's settings (a Redis key prefix
    /// or PostgreSQL schema other than the default).
    pub fn open_with(
        url: &StoreUrl,
        secret_file: Option<&Path>,
        options: &stores::StoreOptions,
    ) -> anyhow::Result<Self> {
        if *url == StoreUrl::Memory {
            bail!("memory:// records live inside the process that holds them; use that gateway's admin API (--admin-listen, --admin-token-file) instead");
        }
        if let StoreUrl::Sqlite(path) = url {
            // Opening would create an empty database (and a new secret
            // beside it): a mistyped path would answer "no such key" for
            // every key instead of saying it is the wrong file.
            if !path.exists() {
                bail!(
                    "no SQLite store at {} (nothing was created); give the path the gateway uses, as in --store sqlite:///var/lib/idem/idem.db",
                    path.display()
                );
            }
        }
        let opened = stores::open_with(url, secret_file, 0, options)?;
        Ok(Self::new(opened.store, opened.secret))
    }

    /// Admin operations on an open store with its secret (`None`: the one
    /// the store keeps).
    pub fn new(store: Arc<dyn StoreAdmin>, secret: Option<Secret>) -> Self {
        Self {
            store,
            secret: Arc::new(tokio::sync::OnceCell::new_with(secret)),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StoreAdmin> {
        &self.store
    }

    /// The store key of `key` sent with scope header value `scope`.
    pub async fn store_key(&self, key: &str, scope: Option<&str>) -> anyhow::Result<StoreKey> {
        let key = KeyRules::new(1, 8192)
            .parse(key)
            .with_context(|| format!("{key:?} is not a key"))?;
        let secret = self
            .secret
            .get_or_try_init(|| async {
                self.store
                    .shared_secret()
                    .await
                    .context("cannot read the secret kept in the store")?
                    .context("this store keeps no secret: pass --secret-file")
            })
            .await?;
        Ok(StoreKey::derive(
            secret,
            scope.map(str::as_bytes),
            key.as_str(),
        ))
    }

    /// The live record of `key` in `scope`.
    pub async fn inspect(
        &self,
        key: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<Option<RecordView>> {
        let sk = self.store_key(key, scope).await?;
        let Some(record) = self.store.get(&sk).await? else {
            return Ok(None);
        };
        let now = SystemClock.now_ms();
        let fingerprint = hex(&record.fingerprint.0);
        Ok(Some(match record.state {
            RecordState::InProgress { lease_until_ms, .. } => RecordView {
                state: "in_progress",
                fingerprint,
                expires_in_ms: lease_until_ms.saturating_sub(now),
                status: None,
                headers: Vec::new(),
                body_bytes: None,
                body_preview: None,
                body_omitted: None,
            },
            RecordState::Completed {
                response,
                expires_at_ms,
            } => RecordView {
                state: "completed",
                fingerprint,
                expires_in_ms: expires_at_ms.saturating_sub(now),
                status: Some(response.status),
                headers: response
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body_bytes: Some(response.body.len()),
                body_preview: (!response.body.is_empty()).then(|| {
                    String::from_utf8_lossy(&response.body[..response.body.len().min(4096)])
                        .into_owned()
                }),
                body_omitted: response.body_omitted,
            },
        }))
    }

    /// Removes the record of `key` in `scope`, whatever its state; a retry
    /// then executes again.
    pub async fn delete(&self, key: &str, scope: Option<&str>) -> anyhow::Result<bool> {
        let sk = self.store_key(key, scope).await?;
        Ok(self.store.delete(&sk).await?)
    }

    /// Removes every expired record, in batches of `batch`, calling
    /// `progress(total so far)` after each.
    pub async fn purge_expired(
        &self,
        batch: usize,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let mut total = 0;
        loop {
            let n = self.store.purge_expired(batch).await?;
            total += n;
            progress(total);
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Counts records by state.
    pub async fn stats(&self) -> anyhow::Result<StoreStats> {
        Ok(self.store.stats().await?)
    }
}
