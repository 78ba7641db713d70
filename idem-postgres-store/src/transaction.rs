//! Completing a record inside the application's own transaction: the
//! business write and the stored answer commit together.

use idem_core::{HeldRecord, RecoveryPoint, StoreError, StoredResponse};
use tokio_postgres::types::ToSql;

use crate::statement::typed;
use crate::{millis_i64, PostgresStore, PostgresStoreError};

impl PostgresStore {
    /// Completes the execution's record (`held`) with `answer` inside the
    /// application's transaction `tx`, on the database and schema this
    /// store uses: the application's writes and the stored answer commit
    /// together or not at all (a crash between the two would otherwise run
    /// the operation again on retry). The record's row stays locked until
    /// `tx` ends: a retry waits for the commit, is told the key is in
    /// progress, and the next one replays. Fails
    /// with [`StoreError::LeaseLost`] when the record is no longer held by
    /// this execution (its lease ended and a retry took it over): then `tx`
    /// must be rolled back (dropping it does), or the operation would count
    /// twice. An unnamed statement: it works behind PgBouncer.
    ///
    /// ```no_run
    /// # async fn example(store: &idem_postgres_store::PostgresStore, client: &mut idem_postgres_store::tokio_postgres::Client, held: idem_core::HeldRecord, answer: idem_core::StoredResponse) -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO payments (amount) VALUES (42)", &[]).await?;
    /// store.complete_in(&tx, &held, &answer).await?; // fenced
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn complete_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        held: &HeldRecord,
        answer: &StoredResponse,
    ) -> Result<(), StoreError> {
        let stmt = &self.sql.complete;
        let encoded = answer.encode();
        let now = self.now_param();
        let ttl = millis_i64(held.ttl);
        let fence = held.fence.0 as i64;
        let key = &held.key.0[..];
        let params: [&(dyn ToSql + Sync); 5] = [&key, &fence, &encoded, &ttl, &now];
        fenced(tx, stmt, &params).await
    }
}

impl PostgresStore {
    /// Starts a phase of an operation with recovery points
    /// ([`idem_core::recovery`]): inside the application's transaction
    /// `tx`, locks the held record (a takeover waits until `tx` ends) and
    /// reads the last phase this request committed, if any. Call it first
    /// in each phase's transaction, decide with
    /// [`Phases::pending`](idem_core::Phases::pending), do the phase's
    /// writes, then [`set_recovery_point`](Self::set_recovery_point) and
    /// commit. Fails with [`StoreError::LeaseLost`] when this execution no
    /// longer holds the record.
    ///
    /// ```no_run
    /// # async fn example(store: &idem_postgres_store::PostgresStore, client: &mut idem_postgres_store::tokio_postgres::Client, held: idem_core::HeldRecord) -> Result<(), Box<dyn std::error::Error>> {
    /// use idem_core::{Phases, RecoveryPoint};
    /// const TRANSFER: Phases = Phases::new(&["debited", "credited"]);
    /// let tx = client.transaction().await?;
    /// let done = store.recovery_point(&tx, &held).await?;
    /// if TRANSFER.pending(done.as_ref(), "debited")? {
    ///     tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 'a'", &[]).await?;
    ///     store.set_recovery_point(&tx, &held, &RecoveryPoint::new("debited", Vec::new())).await?;
    ///     tx.commit().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recovery_point(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        held: &HeldRecord,
    ) -> Result<Option<RecoveryPoint>, StoreError> {
        let stmt = &self.sql.recovery_read;
        let now = self.now_param();
        let fence = held.fence.0 as i64;
        let key = &held.key.0[..];
        let params: [&(dyn ToSql + Sync); 3] = [&key, &fence, &now];
        let row = tx
            .query_typed(&stmt.text, &typed(stmt, &params))
            .await
            .map_err(PostgresStoreError::from)?
            .into_iter()
            .next()
            .ok_or(StoreError::LeaseLost)?;
        let phase: Option<String> = row.get(0);
        Ok(phase.map(|phase| RecoveryPoint {
            phase,
            state: row.get::<_, Option<Vec<u8>>>(1).unwrap_or_default(),
        }))
    }

    /// Records `point` as the held record's recovery point inside `tx`, so
    /// that it commits with the phase's writes. Fenced: fails with
    /// [`StoreError::LeaseLost`] when a retry took the record over (then
    /// roll `tx` back). The point is kept for the record's TTL.
    pub async fn set_recovery_point(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        held: &HeldRecord,
        point: &RecoveryPoint,
    ) -> Result<(), StoreError> {
        let stmt = &self.sql.recovery_write;
        let now = self.now_param();
        let ttl = millis_i64(held.ttl);
        let fence = held.fence.0 as i64;
        let key = &held.key.0[..];
        let params: [&(dyn ToSql + Sync); 6] =
            [&key, &fence, &point.phase, &point.state, &ttl, &now];
        fenced(tx, stmt, &params).await
    }
}

/// Runs `stmt`, a fenced change of one row, inside `tx`: no row changed
/// means this execution no longer holds the record.
async fn fenced(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: &crate::sql::Stmt,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), StoreError> {
    let n = tx
        .execute_typed(&stmt.text, &typed(stmt, params))
        .await
        .map_err(PostgresStoreError::from)?;
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}
