//! How the store's statements reach the server: on a lane or a pooled
//! connection of the caller's own (`lanes.rs`), as a function call, text
//! or a prepared statement ([`Statements`]), and again on a connection of
//! its own when a shared one gave up waiting for a lock.

use idem_core::StoreError;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::lanes::{lock_timed_out, Conn};
use crate::sql::Stmt;
use crate::{PostgresStore, PostgresStoreError, Statements};

impl PostgresStore {
    /// A pooled connection of the caller's own.
    pub(crate) async fn own(&self) -> Result<Conn, PostgresStoreError> {
        Ok(Conn::Own(Box::new(self.client().await?)))
    }

    /// Where a hot-path statement goes: the next lane, or a pooled
    /// connection when there are none.
    pub(crate) async fn hot_conn(&self) -> Result<Conn, PostgresStoreError> {
        let Some(lanes) = &self.lanes else {
            return self.own().await;
        };
        if self.migrated.get().is_none() {
            // The tables are checked (or made) once, on a pooled connection.
            drop(self.client().await?);
        }
        Ok(Conn::Lane(lanes.get(self.statements, &self.sql).await?))
    }

    /// Runs a fenced statement (complete, release, renew): whether the
    /// fence still held the key, and so one row changed.
    pub(crate) async fn held(
        &self,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, StoreError> {
        let conn = self.hot_conn().await?;
        Ok(self.execute_hot(&conn, stmt, params).await? == 1)
    }

    /// Runs a hot-path statement that changes rows on `conn`; when it gave
    /// up waiting for a row lock (see `lanes`), runs it again on a pooled
    /// connection of its own, where it waits as long as it must. The one
    /// that gave up changed nothing: a failed statement rolls back.
    pub(crate) async fn execute_hot(
        &self,
        conn: &Conn,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PostgresStoreError> {
        match self.execute(conn, stmt, params, Via::Fast).await {
            Err(e) if lock_timed_out(&e) => {
                let own = self.own().await?;
                self.execute(&own, stmt, params, Via::Text).await
            }
            other => other,
        }
    }

    /// Runs `stmt` with `params` on `conn`, the way [`Statements`] says.
    pub(crate) async fn query(
        &self,
        conn: &Conn,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
        via: Via,
    ) -> Result<Vec<Row>, PostgresStoreError> {
        Ok(match self.statements {
            Statements::Unnamed => {
                let text = match via {
                    Via::Fast => stmt.call.as_deref().unwrap_or(&stmt.text),
                    Via::Text => &stmt.text,
                };
                conn.client()
                    .query_typed(text, &typed(stmt, params))
                    .await?
            }
            Statements::Prepared => {
                let prepared = conn.prepared(stmt).await?;
                conn.client().query(&prepared, params).await?
            }
        })
    }

    /// Runs `stmt` with `params` on `conn`; the rows it changed.
    pub(crate) async fn execute(
        &self,
        conn: &Conn,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
        via: Via,
    ) -> Result<u64, PostgresStoreError> {
        Ok(match self.statements {
            // The function answers the count as its one row.
            Statements::Unnamed if stmt.call.is_some() && via == Via::Fast => {
                let rows = self.query(conn, stmt, params, via).await?;
                rows.first()
                    .and_then(|r| r.get::<_, Option<i64>>(0))
                    .map_or(0, |n| n as u64)
            }
            Statements::Unnamed => {
                conn.client()
                    .execute_typed(&stmt.text, &typed(stmt, params))
                    .await?
            }
            Statements::Prepared => {
                let prepared = conn.prepared(stmt).await?;
                conn.client().execute(&prepared, params).await?
            }
        })
    }
}

/// How a hot-path statement is sent with [`Statements::Unnamed`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The call of its function (planned once per server connection; waits
    /// at most `LANE_LOCK_TIMEOUT` for a lock).
    Fast,
    /// Its text (planned on every call; waits as long as it must).
    Text,
}

/// `params` paired with `stmt`'s types, as an unnamed statement takes them.
pub(crate) fn typed<'a>(
    stmt: &Stmt,
    params: &[&'a (dyn ToSql + Sync)],
) -> Vec<(&'a (dyn ToSql + Sync), tokio_postgres::types::Type)> {
    params
        .iter()
        .zip(stmt.types)
        .map(|(p, t)| (*p, t.clone()))
        .collect()
}
