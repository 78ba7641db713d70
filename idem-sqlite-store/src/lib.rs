//! `SqliteStore`: idem's embedded default. Zero set-up, durable across
//! `kill -9` and restarts.
//!
//! # Examples
//!
//! ```no_run
//! use idem_sqlite_store::SqliteStore;
//!
//! let store = SqliteStore::open("idem.db").expect("open idem.db");
//! ```
//!
//! # Design
//!
//! - **One writer thread owns the connection.** SQLite serialises writers
//!   anyway, and every store operation (`begin` included) is a write. A
//!   dedicated OS thread runs them, so blocking SQLite calls never occupy an
//!   async executor thread, and the async side only awaits a oneshot reply.
//! - **Group commit.** The thread takes every operation queued while it was
//!   busy (up to 256) and runs them in one `BEGIN IMMEDIATE … COMMIT`. Each is
//!   still atomic (they run one after another on one connection), but the
//!   commit cost is shared. Replies go out only after `COMMIT` returns, so an
//!   answer a client saw was durable first. A `begin` whose caller stopped
//!   waiting before its turn (the layer's store timeout, while another
//!   process held the file) is skipped: its record would have held the key
//!   in progress for the lease, refusing with 409 the client told 503.
//! - **WAL with `synchronous=NORMAL`.** A committed transaction is in the WAL
//!   file, so it survives the process being killed (`kill -9`); only a power
//!   loss can lose the last transactions before a checkpoint (never corrupt
//!   the file). Checkpoints, where the fsyncs happen, run on a second thread
//!   with its own connection, so the writer never waits for the disk.
//!   `BEGIN IMMEDIATE` also makes each batch atomic against other processes
//!   sharing the file, with `busy_timeout` to wait for them.
//! - **One deadline column.** `expires_at` is the lease end while in
//!   progress and the TTL end once completed, so one index serves expiry
//!   checks and the sweeper, which deletes expired rows in batches.

mod migrations;
mod rows;
mod transaction;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::clock::deadline_ms;
use idem_core::{
    Begin, Fence, Fingerprint, Record, Secret, SharedClock, Store, StoreAdmin, StoreError,
    StoreFuture, StoreKey, StoreStats, StoredResponse, SystemClock,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{begin, read_row, to_record};
use crate::writer::{
    checkpointer_loop, count_rows, sweep, writer_loop, Checkpoints, Job, Op, Writer,
};
use tokio::sync::oneshot;

pub use rusqlite;

const BACKEND: &str = "sqlite";

/// Errors of the SQLite store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The database file could not be opened or configured.
    #[error("cannot open SQLite database {path}: {source}; check the path exists and is writable")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A migration failed.
    #[error("cannot migrate SQLite database {path} to schema version {version}: {source}")]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The version being applied.
        version: usize,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer idem.
    #[error("SQLite database {path} has schema version {found}, newer than this idem knows ({known}); upgrade idem")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: usize,
        /// The newest version known.
        known: usize,
    },
    /// A statement failed.
    #[error("SQLite statement failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The transaction a statement ran in could not commit.
    #[error("SQLite commit failed: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),
    /// The store holds its maximum of records.
    #[error("the SQLite store is full ({capacity} records)")]
    Full {
        /// The configured capacity.
        capacity: u64,
    },
    /// The store's records take up its byte budget.
    #[error("the SQLite store is full ({max_bytes} bytes of records)")]
    FullBytes {
        /// The configured budget.
        max_bytes: u64,
    },
    /// A stored response could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] idem_core::DecodeError),
    /// The writer thread is gone (it panicked or the store was dropped).
    #[error("the SQLite writer thread has stopped")]
    WriterGone,
    /// The writer thread could not be started.
    #[error("cannot start the SQLite writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A transactional completion found the record no longer held by this
    /// execution (a retry took it over after its lease ended): nothing of
    /// the transaction was kept.
    #[error("this execution no longer holds its idempotency key (its lease ended and a retry took it over); nothing was written")]
    LeaseLost,
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::FullBytes { max_bytes } => StoreError::BytesExceeded {
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            },
            SqliteError::Full { capacity } => StoreError::CapacityExceeded {
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            },
            SqliteError::Corrupt(d) => StoreError::Corrupt(d),
            SqliteError::LeaseLost => StoreError::LeaseLost,
            e => StoreError::backend(BACKEND, e),
        }
    }
}

/// Bytes accounted to every row whatever its answer: key, fingerprint,
/// state, fence, expiry, and the index entry on the key, with SQLite's page
/// slack. The budget bounds the database file to within this estimate.
pub const ROW_OVERHEAD: u64 = 160;

/// Options for [`SqliteStore::open_with`].
#[derive(Clone)]
pub struct SqliteOptions {
    /// The clock. The default is the system clock.
    pub clock: SharedClock,
    /// The most records held; new keys beyond it are refused. The default is
    /// no limit.
    pub capacity: Option<u64>,
    /// The most bytes the records may account for ([`ROW_OVERHEAD`] each
    /// plus its stored answer); new keys beyond it are refused, and an
    /// answer that would overrun it is kept without its body (a replay says
    /// `Idempotent-Body-Omitted`): the operation ran, so its record stays.
    /// The default is no limit.
    pub max_bytes: Option<u64>,
    /// How often the sweeper deletes expired rows. The default is 60 s.
    pub sweep_interval: Duration,
    /// How long to wait for another process holding the write lock. The
    /// default is 5 s.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            capacity: None,
            max_bytes: None,
            sweep_interval: Duration::from_secs(60),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The SQLite store. Cheap to clone: clones share the writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Box<dyn Job>>,
    path: Arc<PathBuf>,
    capacity: Option<u64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    /// Blocks while it migrates: call it at start-up.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the database at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, SqliteError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path);
        let conn = open_connection(&path, options.busy_timeout)?;
        migrations::run(&conn, &path)?;
        let (rows, bytes) = count_rows(&conn)?;
        // Checkpoints run on their own thread and connection (see
        // `checkpointer_loop`), so the writer never waits for an fsync.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoint_conn = open_connection(&path, options.busy_timeout)?;
        let writer = Writer {
            conn,
            clock: options.clock,
            rows,
            capacity: options.capacity,
            bytes,
            max_bytes: options.max_bytes,
        };
        let (tx, rx) = mpsc::channel();
        // The writer holds this sender; when the writer ends, the
        // checkpointer sees the channel close and ends too.
        let (alive_tx, alive_rx) = mpsc::channel::<()>();
        let checkpoints = Arc::new(Checkpoints::default());
        let ckpt = checkpoints.clone();
        thread::Builder::new()
            .name("idem-sqlite-ckpt".into())
            .spawn(move || checkpointer_loop(checkpoint_conn, alive_rx, ckpt))
            .map_err(SqliteError::Thread)?;
        thread::Builder::new()
            .name("idem-sqlite-writer".into())
            .spawn(move || {
                let _alive = alive_tx;
                writer_loop(writer, rx, options.sweep_interval, checkpoints)
            })
            .map_err(SqliteError::Thread)?;
        Ok(Self {
            tx,
            path: Arc::new(path),
            capacity: options.capacity,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread's connection, inside the current group
    /// transaction, and returns its result once that transaction committed.
    /// Lets an application keep its own tables in the same file (the demo's
    /// payments do).
    pub async fn call<R, F>(&self, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.job(move |w| f(&w.conn).map_err(SqliteError::from))
            .await
    }

    pub(crate) async fn job<R, F>(&self, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R, SqliteError> + Send + 'static,
    {
        self.queue(f, false).await
    }

    /// [`job`](Self::job), skipped by the writer if the caller no longer
    /// waits for its answer when its turn comes (see `Op::awaited_only`).
    pub(crate) async fn job_if_awaited<R, F>(&self, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R, SqliteError> + Send + 'static,
    {
        self.queue(f, true).await
    }

    async fn queue<R, F>(&self, f: F, awaited_only: bool) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R, SqliteError> + Send + 'static,
    {
        let (reply, reply_rx) = oneshot::channel();
        self.tx
            .send(Box::new(Op {
                f,
                reply,
                awaited_only,
            }))
            .map_err(|_| SqliteError::WriterGone)?;
        reply_rx.await.map_err(|_| SqliteError::WriterGone)?
    }
}

/// Creates the database file readable and writable by its owner only (mode
/// 0600) when it does not exist yet: the records hold full responses.
/// SQLite gives the `-wal` and `-shm` files the database file's permissions.
/// Any failure is left to `Connection::open` to report.
fn create_private(path: &Path) {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = opts.open(path);
}

fn open_connection(path: &Path, busy: Duration) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(busy).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

#[async_trait]
impl Store for SqliteStore {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        StoreFuture::pending(
            async move { Ok(self.begin_expiring(key, fingerprint, lease).await?.0) },
        )
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let (key, fp) = (*key, *fingerprint);
        // Drawn here, not on the single writer thread (it is a syscall).
        let fence = Fence::generate();
        Ok(self
            .job_if_awaited(move |w| begin(w, &key, &fp, lease, fence))
            .await?)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            let key = *key;
            // Encode on the caller's thread, not the single writer's; with a
            // byte budget, also the answer without its body, kept instead when
            // the whole one would overrun the budget.
            let encoded = response.encode();
            let slim = (!response.body.is_empty()).then(|| {
                StoredResponse {
                    status: response.status,
                    headers: response.headers.clone(),
                    body: bytes::Bytes::new(),
                    body_omitted: Some(response.body_omitted.unwrap_or(response.body.len() as u64)),
                }
                .encode()
            });
            Ok(self
                .job(move |w| {
                    let expires = deadline_ms(w.clock.now_ms(), ttl);
                    let fits = |len: usize| {
                        w.max_bytes
                            .is_none_or(|m| w.bytes.saturating_add(len as u64) <= m)
                    };
                    let encoded = match slim {
                        Some(slim) if !fits(encoded.len()) => slim,
                        _ => encoded,
                    };
                    let len = encoded.len() as u64;
                    let n = w
                        .conn
                        .prepare_cached(
                            "UPDATE idem_records SET state = 1, response = ?1, expires_at = ?2 \
                         WHERE key = ?3 AND state = 0 AND fence = ?4",
                        )?
                        .execute(params![encoded, expires as i64, &key.0[..], fence.0 as i64])?;
                    if n == 1 {
                        w.bytes += len;
                    }
                    Ok(n == 1)
                })
                .await?)
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            let key = *key;
            Ok(self
                .job(move |w| {
                    let n = w
                        .conn
                        .prepare_cached(
                            "DELETE FROM idem_records WHERE key = ?1 AND state = 0 AND fence = ?2",
                        )?
                        .execute(params![&key.0[..], fence.0 as i64])?;
                    w.rows = w.rows.saturating_sub(n as u64);
                    w.bytes = w.bytes.saturating_sub(n as u64 * ROW_OVERHEAD);
                    Ok(n == 1)
                })
                .await?)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            let key = *key;
            Ok(self
                .job(move |w| {
                    let until = deadline_ms(w.clock.now_ms(), lease);
                    let n = w
                        .conn
                        .prepare_cached(
                            "UPDATE idem_records SET expires_at = ?1 \
                         WHERE key = ?2 AND state = 0 AND fence = ?3",
                        )?
                        .execute(params![until as i64, &key.0[..], fence.0 as i64])?;
                    Ok(n == 1)
                })
                .await?)
        })
    }

    fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        let candidate = idem_core::key::hex(Secret::generate().as_bytes());
        // The first writer's secret wins (every job runs on the one writer,
        // inside `BEGIN IMMEDIATE`, so two processes on one file agree too).
        let value: String = self
            .job(move |w| {
                w.conn.execute(
                    "INSERT INTO idem_secret (id, secret) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
                    [&candidate],
                )?;
                Ok(w
                    .conn
                    .query_row("SELECT secret FROM idem_secret WHERE id = 1", [], |r| {
                        r.get(0)
                    })?)
            })
            .await?;
        Secret::from_bytes(value.into_bytes())
            .map(Some)
            .map_err(|e| StoreError::backend(BACKEND, e))
    }
}

#[async_trait]
impl StoreAdmin for SqliteStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let key = *key;
        Ok(self
            .job(move |w| {
                let now = w.clock.now_ms();
                match read_row(&w.conn, &key)? {
                    Some(row) if row.3 as u64 > now => Ok(Some(to_record(row)?)),
                    _ => Ok(None),
                }
            })
            .await?)
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let key = *key;
        Ok(self
            .job(move |w| {
                let answer: Option<Option<i64>> = w
                    .conn
                    .prepare_cached(
                        "DELETE FROM idem_records WHERE key = ?1 RETURNING length(response)",
                    )?
                    .query_row([&key.0[..]], |r| r.get(0))
                    .optional()?;
                let Some(answer) = answer else {
                    return Ok(false);
                };
                w.rows = w.rows.saturating_sub(1);
                w.bytes = w
                    .bytes
                    .saturating_sub(ROW_OVERHEAD + answer.unwrap_or(0) as u64);
                Ok(true)
            })
            .await?)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        Ok(self
            .job(move |w| {
                let now = w.clock.now_ms();
                Ok(sweep(w, now, limit)?)
            })
            .await?)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(self
            .job(move |w| {
                let now = w.clock.now_ms() as i64;
                let mut stmt = w.conn.prepare_cached(
                    "SELECT state, expires_at > ?1, count(*) FROM idem_records GROUP BY 1, 2",
                )?;
                let mut rows = stmt.query([now])?;
                let mut s = StoreStats::default();
                while let Some(r) = rows.next()? {
                    let (state, live, n): (i64, bool, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                    s.count(state == 0, live, n as u64);
                }
                Ok(s)
            })
            .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self
            .job(|w| Ok(w.conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await?)
    }
}
