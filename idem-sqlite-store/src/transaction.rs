//! Completing a record inside the application's own transaction, and the
//! recovery points of operations run as phases: the business writes and
//! idem's bookkeeping commit together on the writer's connection.

use idem_core::clock::deadline_ms;
use idem_core::{HeldRecord, RecoveryPoint, StoredResponse};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{SqliteError, SqliteStore};

impl SqliteStore {
    /// Runs `f` and completes the execution's record (`held`) with the
    /// answer `f` gives, in one transaction on the writer's connection: the
    /// application's writes and the stored answer commit together or not
    /// at all (issue: a crash between the two would run the operation again
    /// on retry). If the record is no longer held by this execution (its
    /// lease ended and a retry took it over), or `f` fails, nothing `f`
    /// wrote is kept and the error says so ([`SqliteError::LeaseLost`]).
    /// Returns once the transaction committed.
    ///
    /// ```no_run
    /// # async fn example(store: idem_sqlite_store::SqliteStore, held: idem_core::HeldRecord, answer: idem_core::StoredResponse) -> Result<(), idem_sqlite_store::SqliteError> {
    /// let id: i64 = store
    ///     .complete_with(held, move |conn| {
    ///         conn.execute("INSERT INTO payments (amount) VALUES (42)", [])?;
    ///         Ok((conn.last_insert_rowid(), answer))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn complete_with<R, F>(&self, held: HeldRecord, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<(R, StoredResponse)> + Send + 'static,
    {
        self.job(move |w| {
            // A savepoint inside the writer's group transaction: undone
            // alone, whatever the other operations of the batch do.
            w.conn.execute_batch("SAVEPOINT idem_complete_with")?;
            let done = (|| {
                let (r, answer) = f(&w.conn)?;
                let encoded = answer.encode();
                let len = encoded.len() as u64;
                let expires = deadline_ms(w.clock.now_ms(), held.ttl);
                let n = w
                    .conn
                    .prepare_cached(
                        "UPDATE idem_records SET state = 1, response = ?1, expires_at = ?2 \
                         WHERE key = ?3 AND state = 0 AND fence = ?4",
                    )?
                    .execute(params![
                        encoded,
                        expires as i64,
                        &held.key.0[..],
                        held.fence.0 as i64
                    ])?;
                Ok::<_, rusqlite::Error>((r, n == 1, len))
            })();
            match done {
                Ok((r, true, len)) => {
                    w.conn.execute_batch("RELEASE idem_complete_with")?;
                    w.bytes += len;
                    Ok(r)
                }
                Ok((_, false, _)) => {
                    w.conn.execute_batch(
                        "ROLLBACK TO idem_complete_with; RELEASE idem_complete_with",
                    )?;
                    Err(SqliteError::LeaseLost)
                }
                Err(e) => {
                    w.conn.execute_batch(
                        "ROLLBACK TO idem_complete_with; RELEASE idem_complete_with",
                    )?;
                    Err(SqliteError::Sql(e))
                }
            }
        })
        .await
    }

    /// The last phase this execution's request committed (its recovery
    /// point, [`idem_core::recovery`]), or `None` when no phase did. A
    /// retry that took over after a crash finds the point the crashed
    /// execution left; another request reusing the key after its record
    /// is gone does not. Fails with [`SqliteError::LeaseLost`] when this
    /// execution no longer holds the record.
    ///
    /// ```no_run
    /// # async fn example(store: idem_sqlite_store::SqliteStore, held: idem_core::HeldRecord) -> Result<(), Box<dyn std::error::Error>> {
    /// use idem_core::{Phases, RecoveryPoint};
    /// const TRANSFER: Phases = Phases::new(&["debited", "credited"]);
    /// let done = store.recovery_point(held).await?;
    /// if TRANSFER.pending(done.as_ref(), "debited")? {
    ///     store
    ///         .phase_with(held, "debited", |conn| {
    ///             conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 'a'", [])?;
    ///             Ok(((), b"{}".to_vec()))
    ///         })
    ///         .await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recovery_point(
        &self,
        held: HeldRecord,
    ) -> Result<Option<RecoveryPoint>, SqliteError> {
        self.job(move |w| {
            let now = w.clock.now_ms() as i64;
            let row: Option<(Option<String>, Option<Vec<u8>>)> = w
                .conn
                .prepare_cached(
                    "SELECT p.phase, p.state FROM idem_records r \
                     LEFT JOIN idem_recovery p ON p.key = r.key \
                       AND p.fingerprint = r.fingerprint AND p.expires_at > ?3 \
                     WHERE r.key = ?1 AND r.state = 0 AND r.fence = ?2",
                )?
                .query_row(params![&held.key.0[..], held.fence.0 as i64, now], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (phase, state) = row.ok_or(SqliteError::LeaseLost)?;
            Ok(phase.map(|phase| RecoveryPoint {
                phase,
                state: state.unwrap_or_default(),
            }))
        })
        .await
    }

    /// Runs phase `phase` of an operation: `f`'s writes and the new
    /// recovery point (`phase` with the state `f` returns) commit together,
    /// in one transaction on the writer's connection. Fenced: if this
    /// execution no longer holds the record (a retry took it over), or `f`
    /// fails, nothing `f` wrote is kept ([`SqliteError::LeaseLost`] says
    /// which). The point is kept for the record's TTL. Returns once the
    /// transaction committed; a crash after that resumes after `phase`.
    pub async fn phase_with<R, F>(
        &self,
        held: HeldRecord,
        phase: &str,
        f: F,
    ) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<(R, Vec<u8>)> + Send + 'static,
    {
        let phase = phase.to_owned();
        self.job(move |w| {
            w.conn.execute_batch("SAVEPOINT idem_phase_with")?;
            let done = (|| {
                let (r, state) = f(&w.conn)?;
                let expires = deadline_ms(w.clock.now_ms(), held.ttl);
                // Only while this fence holds the record: the fingerprint
                // comes from the record, so the point is this request's.
                let n = w
                    .conn
                    .prepare_cached(
                        "INSERT INTO idem_recovery (key, fingerprint, phase, state, expires_at) \
                         SELECT key, fingerprint, ?3, ?4, ?5 FROM idem_records \
                         WHERE key = ?1 AND state = 0 AND fence = ?2 \
                         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                           phase = excluded.phase, state = excluded.state, \
                           expires_at = excluded.expires_at",
                    )?
                    .execute(params![
                        &held.key.0[..],
                        held.fence.0 as i64,
                        phase,
                        state,
                        expires as i64
                    ])?;
                Ok::<_, rusqlite::Error>((r, n == 1))
            })();
            let undo = "ROLLBACK TO idem_phase_with; RELEASE idem_phase_with";
            match done {
                Ok((r, true)) => {
                    w.conn.execute_batch("RELEASE idem_phase_with")?;
                    Ok(r)
                }
                Ok((_, false)) => {
                    w.conn.execute_batch(undo)?;
                    Err(SqliteError::LeaseLost)
                }
                Err(e) => {
                    w.conn.execute_batch(undo)?;
                    Err(SqliteError::Sql(e))
                }
            }
        })
        .await
    }
}
