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
//!   advisory lock, so instances starting at once apply each step once. At
//!   first use (not at construction, so idem starts while PostgreSQL is
//!   down and answers 503 until it is back) the store reads the version and
//!   does nothing more when the tables are current: a role that may only
//!   read and write them is enough. [`PostgresStore::migrate`] (`idem
//!   migrate`) makes them as a role that may, and [`PostgresStore::grant`]
//!   gives the application's role what it needs.
//! - **Statements that survive a transaction pooler.** By default
//!   ([`Statements::Unnamed`]) nothing outlives a transaction on a server
//!   connection: each statement goes with its parameters in one round trip,
//!   so PgBouncer in `pool_mode = transaction` works. The hot path's four
//!   statements are PL/pgSQL functions (migration 3), so such a call is
//!   cheap to plan and the plan inside is kept by the server connection.
//!   [`Statements::Prepared`] prepares each statement once per connection:
//!   faster on a direct connection, wrong behind such a pooler.
//! - **Errors say what the server said**: its message, SQLSTATE, detail and
//!   hint, and what to do for the usual ones (a missing privilege, a
//!   pooler), in the log, `/readyz` and `idem gateway --check`.
//! - **The hot path shares pipelined connections** (`lanes.rs`): begin,
//!   complete, release and renew of concurrent requests go out together on
//!   a few shared connections and are answered in one pass, each still its
//!   own transaction; a statement kept waiting by a row lock gives up after
//!   50 ms there and runs again on a pooled connection of its own.
//! - **A `begin` given up on is undone.** The fence is made before the
//!   statement is sent; a `begin` whose caller stops waiting (the layer's
//!   store timeout, a statement held by a lock) or fails runs a fenced
//!   `release` after it on the same connection, so the client told 503 is
//!   not refused with 409 until the lease ends (`abandoned.rs`).
//! - **The sweeper** deletes expired rows in batches with `FOR UPDATE SKIP
//!   LOCKED`, so several instances sweeping at once never wait on each other.
//! - **tokio-postgres with a deadpool pool** (broken connections replaced
//!   after a server restart), chosen
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
    StoreAdmin, StoreError, StoreFuture, StoreKey, StoreStats, StoredResponse,
};
use tokio::sync::OnceCell;
pub use tokio_postgres;
use tokio_postgres::types::ToSql;

mod abandoned;
mod error;
mod lanes;
mod schema;
mod sql;
mod statement;
mod tls;
mod transaction;

use self::abandoned::Abandoned;
pub use self::error::PostgresStoreError;
use self::lanes::{lock_timed_out, Lanes};
pub use self::schema::Migration;
use self::sql::Sql;
use self::statement::Via;

const BACKEND: &str = "postgres";

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
    /// How statements reach the server. The default,
    /// [`Statements::Unnamed`], works behind transaction-pooling proxies.
    pub statements: Statements,
    /// A PEM file of the CA(s) that sign the server's certificate, for
    /// `sslmode=require|verify-ca|verify-full`; the URL's `sslrootcert`
    /// wins over it. `None`: the system's roots (verify modes).
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections, beside the pool, that the hot path's statements
    /// (begin, complete, release, renew) share, pipelined: concurrent
    /// requests' statements go out together and the server answers them in
    /// one pass, which costs it and idem much less than a connection per
    /// statement. The default is 2; 0 runs every statement on a pooled
    /// connection of its own. A statement kept waiting by a row lock gives
    /// up after 50 ms there and runs again on a pooled connection, so one
    /// waiting never holds up the others.
    pub lanes: usize,
}

/// How the store's statements reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Statements {
    /// Each statement goes with its parameters as an unnamed statement, in
    /// one round trip. Nothing is kept on the server connection between
    /// transactions, so it works behind a transaction-pooling proxy
    /// (PgBouncer `pool_mode = transaction`, the usual set-up in front of
    /// PostgreSQL), where a named statement prepared on one server
    /// connection is missing (or, worse, another client's) on the next.
    #[default]
    Unnamed,
    /// Each statement is prepared once per connection and cached. Only for
    /// direct connections (or a session-pooling proxy).
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

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            clock: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            statements: Statements::default(),
            ca_file: None,
            lanes: 2,
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
    statements: Statements,
    /// `None` when [`PostgresOptions::lanes`] is 0.
    lanes: Option<Arc<Lanes>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a schema name the store takes: lower-case letters, digits
/// and `_`, at most 63, not starting with a digit (so it is never quoted).
pub fn is_valid_schema(s: &str) -> bool {
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
    ///
    /// TLS follows the URL's `sslmode` as libpq does (`prefer` when unset:
    /// encrypted when the server offers it): `require` encrypts, `verify-ca`
    /// also checks the certificate against the CA (`sslrootcert=PATH` in the
    /// URL, [`PostgresOptions::ca_file`], or the system's roots), and
    /// `verify-full` the host name too.
    pub fn new(url: &str, options: PostgresOptions) -> Result<Self, PostgresStoreError> {
        if !is_valid_schema(&options.schema) {
            return Err(PostgresStoreError::Schema(options.schema));
        }
        let split = tls::split_url(url)?;
        let mut pg: tokio_postgres::Config = split.url.parse().map_err(PostgresStoreError::Url)?;
        pg.connect_timeout(options.connect_timeout);
        let ca_file = split.root_cert.as_deref().or(options.ca_file.as_deref());
        let tls = tls::MakeTls::new(tls::client_config(split.mode, ca_file)?);
        let lanes = (options.lanes > 0).then(|| {
            Arc::new(Lanes::new(
                options.lanes,
                pg.clone(),
                tls.clone(),
                options.connect_timeout,
            ))
        });
        let manager = Manager::from_config(
            pg,
            tls,
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
            statements: options.statements,
            lanes,
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

    /// Connects and checks (or makes) the tables now rather than at first
    /// use.
    pub async fn connect(&self) -> Result<(), PostgresStoreError> {
        self.client().await.map(|_| ())
    }

    /// Creates or upgrades idem's tables, and says what it did. Run it
    /// once (`idem migrate`) as a role that may create tables, so that the
    /// application's role needs only to read and write them; at first use
    /// the store does the same when the tables are not current and its role
    /// may.
    pub async fn migrate(&self) -> Result<Migration, PostgresStoreError> {
        let client = self.pool.get().await?;
        let done = schema::migrate(&client, &self.schema).await?;
        let _ = self.migrated.set(());
        Ok(done)
    }

    /// Grants `role` what the store needs of idem's tables (use of the
    /// schema; select, insert, update and delete on the records and the
    /// secret; select on the version), and nothing more. Run by the tables'
    /// owner, after [`migrate`](Self::migrate).
    pub async fn grant(&self, role: &str) -> Result<(), PostgresStoreError> {
        let client = self.pool.get().await?;
        schema::grant(&client, &self.schema, role).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PostgresStoreError> {
        let client = self.pool.get().await?;
        // A failed check leaves the cell empty: the next call retries.
        self.migrated
            .get_or_try_init(|| schema::ensure_current(&client, &self.schema))
            .await?;
        Ok(client)
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
        // Undoes the begin if this future is dropped or fails once it may
        // have been sent (see `abandoned`).
        let mut pending = Abandoned::arm(self, key, self.hot_conn().await?);
        let mut via = Via::Fast;
        const ATTEMPTS: u32 = 8;
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            let fence = Fence::generate();
            pending.fence = fence;
            let params: [&(dyn ToSql + Sync); 5] = [
                &&key.0[..],
                &&fingerprint.0[..],
                &(fence.0 as i64),
                &millis_i64(lease),
                &self.now_param(),
            ];
            let rows = match self
                .query(pending.conn(), &self.sql.begin, &params, via)
                .await
            {
                // The key's row is locked (an application's transaction
                // holds it, or a racer's statement): wait for it on a
                // connection of this call's own, not on a shared one (see
                // `lanes`). The statement that gave up wrote nothing.
                Err(e) if via == Via::Fast && lock_timed_out(&e) => {
                    pending.replace(self.own().await?);
                    via = Via::Text;
                    continue;
                }
                other => other?,
            };
            attempts += 1;
            let Some(row) = rows.first() else {
                // The conflicting row committed after this statement's
                // snapshot: run again with a fresh one.
                continue;
            };
            if row.get::<_, bool>(0) {
                pending.disarm();
                return Ok((Begin::Started(fence), None));
            }
            let expires_at: i64 = row.get(3);
            let now = judged_at(row);
            if expires_at as u64 <= now {
                // The snapshot showed an expired row, but a newer live version
                // blocked the takeover: look again.
                continue;
            }
            // Another's record: this attempt wrote nothing.
            pending.disarm();
            let record = to_record(row.get(1), row.get(2), 0, expires_at, row.get(4))?;
            return Ok(record.into_begin_expiring(fingerprint, now));
        }
        // Every attempt answered, none wrote.
        pending.disarm();
        Err(PostgresStoreError::Unsettled(ATTEMPTS).into())
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            let (encoded, ttl) = (response.encode(), millis_i64(ttl));
            let params: [&(dyn ToSql + Sync); 5] = [
                &&key.0[..],
                &(fence.0 as i64),
                &encoded,
                &ttl,
                &self.now_param(),
            ];
            self.held(&self.sql.complete, &params).await
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            self.held(&self.sql.release, &[&&key.0[..], &(fence.0 as i64)])
                .await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            let lease = millis_i64(lease);
            let params: [&(dyn ToSql + Sync); 4] =
                [&&key.0[..], &(fence.0 as i64), &lease, &self.now_param()];
            self.held(&self.sql.renew, &params).await
        })
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        let client = self.own().await?;
        let candidate = idem_core::key::hex(Secret::generate().as_bytes()).into_bytes();
        // A racer's row committed after this statement's snapshot shows as
        // no row: ask again.
        for _ in 0..5 {
            let rows = self
                .query(&client, &self.sql.secret, &[&candidate], Via::Fast)
                .await?;
            if let Some(row) = rows.first() {
                return Secret::from_bytes(row.get::<_, Vec<u8>>(0))
                    .map(Some)
                    .map_err(|e| StoreError::backend(BACKEND, e));
            }
        }
        Err(PostgresStoreError::Unsettled(5).into())
    }
}

#[async_trait]
impl StoreAdmin for PostgresStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let client = self.own().await?;
        let rows = self
            .query(
                &client,
                &self.sql.get,
                &[&&key.0[..], &self.now_param()],
                Via::Fast,
            )
            .await?;
        match rows.first() {
            Some(r) => {
                let now = judged_at(r);
                let rec = to_record(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))?;
                Ok(rec.is_live(now).then_some(rec))
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let client = self.own().await?;
        let n = self
            .execute(&client, &self.sql.delete, &[&&key.0[..]], Via::Fast)
            .await?;
        Ok(n == 1)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        let client = self.own().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = self.now_param();
        let n = self
            .execute(&client, &self.sql.purge, &[&now, &limit], Via::Fast)
            .await?;
        // Recovery points past their TTL too. A role granted the records
        // before recovery points existed (version 4) may not touch them:
        // that is no reason to stop purging records.
        match self
            .execute(
                &client,
                &self.sql.recovery_purge,
                &[&now, &limit],
                Via::Fast,
            )
            .await
        {
            Err(PostgresStoreError::Sql(e)) if schema::sqlstate(&e) == Some("42501") => {}
            other => {
                other?;
            }
        }
        Ok(n)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let client = self.own().await?;
        let mut s = StoreStats::default();
        for row in self
            .query(&client, &self.sql.stats, &[&self.now_param()], Via::Fast)
            .await?
        {
            let (state, live, n): (i16, bool, i64) = (row.get(0), row.get(1), row.get(2));
            s.count(state == 0, live, n as u64);
        }
        Ok(s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A readiness check: a grant revoked since start shows here.
        let client = self.client().await?;
        schema::check_grants(&client, &self.schema).await?;
        Ok(())
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
