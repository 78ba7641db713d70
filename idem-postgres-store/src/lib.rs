//! `PostgresStore`: idem's records in PostgreSQL, shared by many instances.
//!
//! # Examples
//!
//! ```no_run
//! use idem_postgres_store::{PostgresOptions, PostgresStore};
//!
//! let store = PostgresStore::new("postgres://postgres@127.0.0.1:5432/app", PostgresOptions::default())?;
//! # Ok::<(), idem_postgres_store::PostgresStoreError>(())
//! ```
//!
//! # Design
//!
//! - **`begin` is one statement**: `INSERT … ON CONFLICT (key) DO UPDATE …
//!   WHERE <the existing record's deadline has passed> RETURNING …`, wrapped
//!   so that the same statement also returns the live record when the insert
//!   did not take. PostgreSQL's speculative insertion makes the race between
//!   concurrent `begin`s a non-event: exactly one inserts or takes over, the
//!   others see the conflict. A unique violation never reaches the caller.
//! - **The read half sees the statement's snapshot.** When the conflicting
//!   row was committed after that snapshot (a racer that won a moment ago),
//!   the statement returns no usable row; it is simply run again, and the
//!   next snapshot sees the winner. No race surfaces as an error.
//! - **`complete`, `release` and `renew` are fenced**: `WHERE key = $1 AND
//!   state = 0 AND fence = $2`, so a stale holder changes nothing.
//! - **Time is the server's.** Every statement reads PostgreSQL's own clock
//!   (`clock_timestamp()`) and computes deadlines itself, so instances whose
//!   clocks disagree share one clock: an instance running ahead cannot take
//!   over a live lease or expire a live answer (SPEC: lifetimes, shared
//!   stores). Tests give a clock of their own ([`PostgresOptions::clock`]),
//!   sent as a parameter that replaces the server's.
//! - **Migrations** are versioned, applied under a transaction-scoped
//!   advisory lock, so instances starting at once apply each step once. They
//!   run at first use, not at construction, so idem starts while PostgreSQL
//!   is down and answers 503 until it is back.
//! - **The sweeper** deletes expired rows in batches with `FOR UPDATE SKIP
//!   LOCKED`, so several instances sweeping at once never wait on each other.
//! - **tokio-postgres with a deadpool pool** (prepared statements cached per
//!   connection, broken connections replaced after a server restart), chosen
//!   over sqlx by measurement: the same `begin` and `complete` statements, 64
//!   concurrent callers, a pool of 16 connections each, alternating runs
//!   (`bench/pg-drivers`; the figures are in docs/BENCHMARKS.md, "PostgreSQL
//!   drivers"): tokio-postgres + deadpool did half as many again. It also
//!   has the smaller dependency tree, and statements are
//!   prepared and typed explicitly, with no compile-time database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use deadpool_postgres;
pub use deadpool_postgres::Pool;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use idem_core::clock::millis;
use idem_core::{
    Begin, DecodeError, Fence, Fingerprint, Record, RecordState, Secret, SharedClock, Store,
    StoreError, StoreKey, StoreStats, StoredResponse,
};
use tokio::sync::OnceCell;
pub use tokio_postgres;
use tokio_postgres::NoTls;

mod sql;

use self::sql::{Sql, MIGRATIONS};

const BACKEND: &str = "postgres";

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresStoreError {
    /// The URL could not be used.
    #[error("invalid PostgreSQL URL: {0}; use postgres://USER[:PASSWORD]@HOST:PORT/DATABASE")]
    Url(#[source] tokio_postgres::Error),
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}; use lower-case letters, digits and _")]
    Schema(String),
    /// The pool could not be built.
    #[error("cannot build the PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// No connection could be had from the pool.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("PostgreSQL statement failed: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    /// `begin` kept racing and never saw a stable answer (should not happen).
    #[error("begin did not settle after {0} attempts")]
    Unsettled(u32),
}

impl From<PostgresStoreError> for StoreError {
    fn from(e: PostgresStoreError) -> Self {
        match e {
            PostgresStoreError::Corrupt(d) => StoreError::Corrupt(d),
            e => StoreError::backend(BACKEND, e),
        }
    }
}

/// Options of [`PostgresStore::new`].
#[derive(Clone)]
pub struct PostgresOptions {
    /// The schema holding idem's tables. The default is `public`.
    pub schema: String,
    /// The clock deadlines are read from. The default, `None`, is the
    /// PostgreSQL server's own (`clock_timestamp()`), shared by every
    /// instance; tests set a clock they move by hand.
    pub clock: Option<SharedClock>,
    /// Connections in the pool. The default is 16.
    pub pool_size: usize,
    /// How long to wait for a connection. The default is 2 s.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            clock: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The PostgreSQL store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    schema: Arc<str>,
    migrated: Arc<OnceCell<()>>,
    clock: Option<SharedClock>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl PostgresStore {
    /// The `now` parameter of a statement: the configured clock's reading,
    /// or NULL for the server's own clock.
    fn now_param(&self) -> Option<i64> {
        self.clock
            .as_ref()
            .map(|c| i64::try_from(c.now_ms()).unwrap_or(i64::MAX))
    }

    /// A store at `url`. Nothing is connected until first use.
    pub fn new(url: &str, options: PostgresOptions) -> Result<Self, PostgresStoreError> {
        if !valid_identifier(&options.schema) {
            return Err(PostgresStoreError::Schema(options.schema));
        }
        let mut pg: tokio_postgres::Config = url.parse().map_err(PostgresStoreError::Url)?;
        pg.connect_timeout(options.connect_timeout);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(options.connect_timeout),
            create: Some(options.connect_timeout),
            recycle: Some(options.connect_timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            pool,
            sql: Arc::new(Sql::new(&options.schema)),
            schema: options.schema.into(),
            migrated: Arc::new(OnceCell::new()),
            clock: options.clock,
        })
    }

    /// The connection pool, for an application keeping its own tables beside
    /// idem's (the demo's payments do).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The schema holding idem's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Connects and migrates now rather than at first use.
    pub async fn connect(&self) -> Result<(), PostgresStoreError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PostgresStoreError> {
        let client = self.pool.get().await?;
        // A failed migration leaves the cell empty: the next call retries.
        self.migrated
            .get_or_try_init(|| migrate(&client, &self.schema))
            .await?;
        Ok(client)
    }
}

async fn migrate(
    client: &deadpool_postgres::Object,
    schema: &str,
) -> Result<(), PostgresStoreError> {
    // Session-independent: the lock is held by this transaction only, so a
    // crashed migrator never leaves it taken.
    let lock_id: i64 = schema.bytes().fold(0x1de3_u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    }) as i64;
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_id])
            .await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; \
                 CREATE TABLE IF NOT EXISTS {schema}.idem_schema_migrations ( \
                   version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        let row = client
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {schema}.idem_schema_migrations"),
                &[],
            )
            .await?;
        let current: i32 = row.get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            client
                .batch_execute(&sql.replace("{schema}", schema))
                .await?;
            client
                .execute(
                    &format!("INSERT INTO {schema}.idem_schema_migrations (version) VALUES ($1)"),
                    &[&(i as i32 + 1)],
                )
                .await?;
        }
        Ok::<_, PostgresStoreError>(())
    }
    .await;
    match result {
        Ok(()) => {
            client.batch_execute("COMMIT").await?;
            Ok(())
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

fn to_record(
    fp: Vec<u8>,
    state: i16,
    fence: i64,
    expires_at: i64,
    response: Option<Vec<u8>>,
) -> Result<Record, PostgresStoreError> {
    let fingerprint: [u8; 32] = fp
        .try_into()
        .map_err(|_| DecodeError::new("fingerprint is not 32 bytes"))?;
    let state = if state == 0 {
        RecordState::InProgress {
            fence: Fence(fence as u64),
            lease_until_ms: expires_at as u64,
        }
    } else {
        RecordState::Completed {
            response: StoredResponse::decode(response.as_deref().unwrap_or_default())?,
            expires_at_ms: expires_at as u64,
        }
    };
    Ok(Record {
        fingerprint: Fingerprint(fingerprint),
        state,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        Ok(self.begin_expiring(key, fingerprint, lease).await?.0)
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.begin)
            .await
            .map_err(PostgresStoreError::from)?;
        const ATTEMPTS: u32 = 8;
        for _ in 0..ATTEMPTS {
            let fence = Fence::generate();
            let rows = client
                .query(
                    &stmt,
                    &[
                        &&key.0[..],
                        &&fingerprint.0[..],
                        &(fence.0 as i64),
                        &millis_i64(lease),
                        &self.now_param(),
                    ],
                )
                .await
                .map_err(PostgresStoreError::from)?;
            let Some(row) = rows.first() else {
                // The conflicting row committed after this statement's
                // snapshot: run again with a fresh one.
                continue;
            };
            if row.get::<_, bool>(0) {
                return Ok((Begin::Started(fence), None));
            }
            let expires_at: i64 = row.get(3);
            let now = judged_at(row);
            if expires_at as u64 <= now {
                // The snapshot showed an expired row, but a newer live version
                // blocked the takeover: look again.
                continue;
            }
            let record = to_record(row.get(1), row.get(2), 0, expires_at, row.get(4))?;
            return Ok(record.into_begin_expiring(fingerprint, now));
        }
        Err(PostgresStoreError::Unsettled(ATTEMPTS).into())
    }

    async fn complete(
        &self,
        key: &StoreKey,
        fence: Fence,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.complete)
            .await
            .map_err(PostgresStoreError::from)?;
        let n = client
            .execute(
                &stmt,
                &[
                    &&key.0[..],
                    &(fence.0 as i64),
                    &response.encode(),
                    &millis_i64(ttl),
                    &self.now_param(),
                ],
            )
            .await
            .map_err(PostgresStoreError::from)?;
        Ok(n == 1)
    }

    async fn release(&self, key: &StoreKey, fence: Fence) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.release)
            .await
            .map_err(PostgresStoreError::from)?;
        let n = client
            .execute(&stmt, &[&&key.0[..], &(fence.0 as i64)])
            .await
            .map_err(PostgresStoreError::from)?;
        Ok(n == 1)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.renew)
            .await
            .map_err(PostgresStoreError::from)?;
        let n = client
            .execute(
                &stmt,
                &[
                    &&key.0[..],
                    &(fence.0 as i64),
                    &millis_i64(lease),
                    &self.now_param(),
                ],
            )
            .await
            .map_err(PostgresStoreError::from)?;
        Ok(n == 1)
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(PostgresStoreError::from)?;
        let row = client
            .query_opt(&stmt, &[&&key.0[..], &self.now_param()])
            .await
            .map_err(PostgresStoreError::from)?;
        match row {
            Some(r) => {
                let now = judged_at(&r);
                let rec = to_record(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))?;
                Ok(rec.is_live(now).then_some(rec))
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.delete)
            .await
            .map_err(PostgresStoreError::from)?;
        let n = client
            .execute(&stmt, &[&&key.0[..]])
            .await
            .map_err(PostgresStoreError::from)?;
        Ok(n == 1)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.purge)
            .await
            .map_err(PostgresStoreError::from)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(client
            .execute(&stmt, &[&self.now_param(), &limit])
            .await
            .map_err(PostgresStoreError::from)?)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.stats)
            .await
            .map_err(PostgresStoreError::from)?;
        let mut s = StoreStats::default();
        for row in client
            .query(&stmt, &[&self.now_param()])
            .await
            .map_err(PostgresStoreError::from)?
        {
            let (state, live, n): (i16, bool, i64) = (row.get(0), row.get(1), row.get(2));
            s.count(state == 0, live, n as u64);
        }
        Ok(s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .batch_execute("SELECT 1")
            .await
            .map_err(PostgresStoreError::from)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        let client = self.client().await?;
        let candidate = idem_core::key::hex(Secret::generate().as_bytes()).into_bytes();
        // The first instance's secret wins; every instance reads it. A
        // racer's row committed after this statement's snapshot shows as no
        // row: ask again.
        let sql = format!(
            "WITH ins AS (INSERT INTO {s}.idem_secret (secret) VALUES ($1) \
             ON CONFLICT (id) DO NOTHING RETURNING secret) \
             SELECT secret FROM ins UNION ALL SELECT secret FROM {s}.idem_secret \
             WHERE NOT EXISTS (SELECT 1 FROM ins)",
            s = self.schema
        );
        let mut found = None;
        for _ in 0..5 {
            found = client
                .query_opt(&sql, &[&candidate])
                .await
                .map_err(PostgresStoreError::from)?;
            if found.is_some() {
                break;
            }
        }
        let Some(row) = found else {
            return Err(PostgresStoreError::Unsettled(5).into());
        };
        Secret::from_bytes(row.get::<_, Vec<u8>>(0))
            .map(Some)
            .map_err(|e| StoreError::backend(BACKEND, e))
    }
}

/// The time a `begin` or `get` row was judged by: its last column (the
/// configured clock's, or the server's).
fn judged_at(row: &tokio_postgres::Row) -> u64 {
    u64::try_from(row.get::<_, i64>(5)).unwrap_or(0)
}

/// A lease or TTL in ms, as the `bigint` a statement takes (at most
/// `MAX_DEADLINE_MS`, so it always fits).
fn millis_i64(d: Duration) -> i64 {
    i64::try_from(millis(d)).unwrap_or(i64::MAX)
}
