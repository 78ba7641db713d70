//! The hot path's statements pipelined on shared connections ("lanes").
//!
//! With a pooled connection of its own for each statement, every `begin`
//! and `complete` woke a server process of its own and waited for it: one
//! round trip, two context switches and a process wake-up per statement,
//! which measured as most of PostgreSQL's CPU (and much of idem's) per
//! first execution (`bench/store-gateway.sh postgres`, docs/BENCHMARKS.md).
//! Concurrent calls on one tokio-postgres `Client` are pipelined: its
//! connection task writes every queued request in one write, the server
//! process reads them in one read and answers them in order. So the hot
//! path's four statements (begin, complete, release, renew) go to a few
//! shared connections, taken in turn; everything else (transactions, the
//! admin operations, the sweeper) keeps the pool. Each statement is still
//! its own transaction (its own Sync), so what commits, and when, is as
//! with a connection of its own.
//!
//! The price of sharing: a statement waiting for a row lock (a retry's
//! `begin` on a row an application's transaction holds, `complete_in`,
//! recovery points) would hold up every statement queued behind it. So a
//! statement on a lane waits at most [`LANE_LOCK_TIMEOUT`] for a lock (the
//! functions' setting, migration 5; with prepared statements, the lane's
//! session setting), and one that gave up runs again, as text without
//! that limit, on a pooled connection of its own, where it waits as long
//! as it must (`PostgresStore::execute_hot`, the `begin` loop).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Statement;

use crate::sql::{Sql, Stmt, LANE_LOCK_TIMEOUT};
use crate::{tls, PostgresStoreError, Statements};

/// A connection a statement runs on.
pub(crate) enum Conn {
    /// Shared with concurrent callers' hot-path statements.
    Lane(Arc<Lane>),
    /// A pooled connection of this caller's own (boxed: the fallback and
    /// admin path; the hot path's `Lane` stays small).
    Own(Box<deadpool_postgres::Object>),
}

impl Conn {
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        match self {
            Self::Lane(lane) => &lane.client,
            Self::Own(object) => object,
        }
    }

    /// `stmt` prepared on this connection ([`Statements::Prepared`]): a
    /// lane's own for the hot path, else from the connection's cache.
    pub(crate) async fn prepared(&self, stmt: &Stmt) -> Result<Statement, tokio_postgres::Error> {
        match self {
            Self::Lane(lane) => match stmt.hot.and_then(|i| lane.prepared.get(i)) {
                Some(prepared) => Ok(prepared.clone()),
                None => lane.client.prepare_typed(&stmt.text, stmt.types).await,
            },
            Self::Own(object) => object.prepare_typed_cached(&stmt.text, stmt.types).await,
        }
    }
}

/// One shared connection.
pub(crate) struct Lane {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    /// With [`Statements::Prepared`]: the hot path's statements, prepared
    /// on this connection, in `sql::HOT`'s order (`Sql::hot`).
    prepared: Vec<Statement>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        // The connection task would otherwise outlive every handle.
        self.task.abort();
    }
}

/// The store's lanes, opened at first use and again when one closes.
pub(crate) struct Lanes {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    config: tokio_postgres::Config,
    tls: tls::MakeTls,
    connect_timeout: Duration,
}

#[derive(Default)]
struct Slot {
    lane: Mutex<Option<Arc<Lane>>>,
    /// Held while a lane is opened, so that the callers that find the slot
    /// empty wait for one connection rather than each opening its own.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The open lane, if any.
    fn current(&self) -> Option<Arc<Lane>> {
        // Poisoning cannot leave the Option half-written: take it as is.
        let lane = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        lane.as_ref().filter(|l| !l.client.is_closed()).cloned()
    }
}

impl Lanes {
    /// `count` lanes (at least one).
    pub(crate) fn new(
        count: usize,
        config: tokio_postgres::Config,
        tls: tls::MakeTls,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            slots: (0..count.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            config,
            tls,
            connect_timeout,
        }
    }

    /// The next lane in turn, opened now if it is not open.
    pub(crate) async fn get(
        &self,
        statements: Statements,
        sql: &Sql,
    ) -> Result<Arc<Lane>, PostgresStoreError> {
        // In turn rather than by load: every statement is short, and a
        // lane held up by a lock gives up within LANE_LOCK_TIMEOUT.
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(lane) = slot.current() {
            return Ok(lane);
        }
        let _opening = slot.opening.lock().await;
        if let Some(lane) = slot.current() {
            return Ok(lane);
        }
        let lane = tokio::time::timeout(self.connect_timeout, self.open(statements, sql))
            .await
            .map_err(|_| PostgresStoreError::OpenTimeout(self.connect_timeout))??;
        let lane = Arc::new(lane);
        *slot.lane.lock().unwrap_or_else(|p| p.into_inner()) = Some(lane.clone());
        Ok(lane)
    }

    async fn open(&self, statements: Statements, sql: &Sql) -> Result<Lane, PostgresStoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(PostgresStoreError::Open)?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "a PostgreSQL connection of the hot path closed; the next statement opens another");
            }
        });
        let mut lane = Lane {
            client,
            task,
            prepared: Vec::new(),
        };
        if statements == Statements::Prepared {
            // A direct connection (prepared statements need one), so a
            // session setting stays with it.
            lane.client
                .batch_execute(&format!("SET lock_timeout = '{LANE_LOCK_TIMEOUT}'"))
                .await?;
            for stmt in sql.hot() {
                lane.prepared
                    .push(lane.client.prepare_typed(&stmt.text, stmt.types).await?);
            }
        }
        Ok(lane)
    }
}

/// Whether `e` says a statement gave up waiting for a lock
/// (`lock_not_available`, what `lock_timeout` raises).
pub(crate) fn lock_timed_out(e: &PostgresStoreError) -> bool {
    e.sqlstate() == Some("55P03")
}
