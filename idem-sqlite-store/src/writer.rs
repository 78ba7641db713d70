//! The writer thread: the one connection every store operation runs on,
//! in group-committed batches (see the crate's design notes), its sweeper,
//! and the checkpointer thread beside it.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::clock::SharedClock;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::{SqliteError, ROW_OVERHEAD};

const MAX_BATCH: usize = 256;
/// Expired rows deleted per sweep statement.
pub(crate) const SWEEP_BATCH: usize = 1000;

/// What the writer and the checkpointer share: a lock that lets one
/// checkpoint run at a time (so the writer's reset never waits on SQLite's
/// busy handler, which sleeps in steps of milliseconds), and the
/// checkpointer's request that the writer reset the WAL.
#[derive(Default)]
pub(crate) struct Checkpoints {
    running: std::sync::Mutex<()>,
    reset_due: std::sync::atomic::AtomicBool,
}

impl Checkpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the writer thread holds.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) clock: SharedClock,
    /// Rows in the table, kept exact by the single writer, so the capacity
    /// check costs nothing. (Another process writing the same file makes it
    /// approximate; it is recounted at every sweep.)
    pub(crate) rows: u64,
    pub(crate) capacity: Option<u64>,
    /// Bytes the rows account for ([`ROW_OVERHEAD`] each plus its stored
    /// answer), kept exact the same way as `rows`.
    pub(crate) bytes: u64,
    pub(crate) max_bytes: Option<u64>,
}

impl Writer {
    /// Whether one more row fits both bounds.
    pub(crate) fn has_room(&self) -> bool {
        self.capacity.is_none_or(|c| self.rows < c)
            && self
                .max_bytes
                .is_none_or(|m| self.bytes.saturating_add(ROW_OVERHEAD) <= m)
    }

    /// Recounts rows and bytes from the table (another process may share
    /// the file).
    pub(crate) fn recount(&mut self) -> rusqlite::Result<()> {
        let (rows, bytes) = count_rows(&self.conn)?;
        self.rows = rows;
        self.bytes = bytes;
        Ok(())
    }
}

pub(crate) fn count_rows(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(length(response)), 0) FROM idem_records",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .map(|(rows, answers)| {
        (
            rows,
            rows.saturating_mul(ROW_OVERHEAD).saturating_add(answers),
        )
    })
}

pub(crate) type Reply = Box<dyn FnOnce(Option<&Arc<rusqlite::Error>>) + Send>;

/// One operation queued for the writer thread.
pub(crate) trait Job: Send {
    /// Runs the operation; returns how to answer once the batch's fate is
    /// known, and whether the operation itself failed.
    fn run(self: Box<Self>, w: &mut Writer) -> (Reply, bool);
    /// Answers without running (the batch could not start, or was rolled back).
    fn fail(self: Box<Self>, e: &Arc<rusqlite::Error>);
}

pub(crate) struct Op<F, R> {
    pub(crate) f: F,
    pub(crate) reply: oneshot::Sender<Result<R, SqliteError>>,
    /// Run only if the caller still waits for the answer (`begin`): a
    /// `begin` whose caller gave up (the layer's store timeout, while the
    /// writer was held by a long batch or another process's lock) would
    /// leave a record no one holds, keeping the key in progress for its
    /// lease while the client, told 503, got 409 on each retry.
    pub(crate) awaited_only: bool,
}

impl<F, R> Job for Op<F, R>
where
    R: Send + 'static,
    F: FnOnce(&mut Writer) -> Result<R, SqliteError> + Send,
{
    fn run(self: Box<Self>, w: &mut Writer) -> (Reply, bool) {
        let Op {
            f,
            reply,
            awaited_only,
        } = *self;
        if awaited_only && reply.is_closed() {
            // No one to answer, nothing done.
            return (Box::new(|_| {}), false);
        }
        let result = f(w);
        let failed = result.is_err();
        let reply: Reply = Box::new(move |commit_err| {
            let result = match (result, commit_err) {
                (Ok(_), Some(e)) => Err(SqliteError::Commit(e.clone())),
                (r, _) => r,
            };
            // The caller may have gone (its request was cancelled); the work
            // is done either way.
            let _ = reply.send(result);
        });
        (reply, failed)
    }

    fn fail(self: Box<Self>, e: &Arc<rusqlite::Error>) {
        let _ = self.reply.send(Err(SqliteError::Commit(e.clone())));
    }
}

pub(crate) fn writer_loop(
    mut w: Writer,
    rx: mpsc::Receiver<Box<dyn Job>>,
    sweep_every: Duration,
    checkpoints: Arc<Checkpoints>,
) {
    let mut next_sweep = Instant::now() + sweep_every;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    loop {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(job) => batch.push(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&mut w, &mut batch);
        }
        if checkpoints
            .reset_due
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            reset_wal(&w.conn, &checkpoints);
        }
        if Instant::now() >= next_sweep {
            let now = w.clock.now_ms();
            match sweep(&mut w, now, SWEEP_BATCH) {
                // A full batch: more may be waiting; come back soon, after
                // serving whatever queued meanwhile.
                Ok(n) if n as usize == SWEEP_BATCH => next_sweep = Instant::now(),
                Ok(_) => next_sweep = Instant::now() + sweep_every,
                Err(e) => {
                    tracing::warn!(error = %e, "sqlite sweeper failed; retrying later");
                    next_sweep = Instant::now() + sweep_every;
                }
            }
        }
    }
}

/// How often the checkpointer copies the WAL back into the database while
/// the writer is writing. Small bites: each pass copies what a few
/// milliseconds of commits wrote, so a reset has little left to copy
/// (docs/BENCHMARKS.md, "SQLite's tail at a fixed rate").
const CHECKPOINT_BUSY: Duration = Duration::from_millis(5);
/// The longest pause between passes while nothing is written: an idle store
/// does not wake 200 times a second.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);
/// WAL frames (pages) beyond which the writer stops to reset the WAL: 256
/// MiB with 4 KiB pages. Each reset stalls the writer (the last frames' copy
/// and the database file's fsync); a larger WAL makes them four times rarer
/// than the 64 MiB cap did. The file keeps that size on disk once reached;
/// the WAL index in shared memory grows by about 32 KiB per 4,096 frames.
const WAL_CAP_FRAMES: i64 = 65_536;

/// Copies the WAL into the database file, off the writer thread.
///
/// With `synchronous=NORMAL` a commit in WAL mode does not fsync; the fsyncs
/// happen at checkpoints. Left to SQLite's auto-checkpoint they would run on
/// the committing thread, the single writer, stalling every queued operation
/// behind them (measured: it halves first-execution throughput). PASSIVE
/// checkpoints from this second connection run concurrently with the writer.
/// A writer that never lets a checkpoint catch up would grow the WAL without
/// end (it starts over only when a checkpoint has copied all of it and the
/// writer has not written since), so past a cap this thread asks the writer
/// to reset it between two batches ([`reset_wal`]).
pub(crate) fn checkpointer_loop(
    conn: Connection,
    alive: mpsc::Receiver<()>,
    checkpoints: Arc<Checkpoints>,
) {
    let mut pause = CHECKPOINT_BUSY;
    let mut last = (-1, -1);
    loop {
        match alive.recv_timeout(pause) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The writer is gone: one last checkpoint, then stop.
            _ => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                return;
            }
        }
        let passive = {
            let _one_at_a_time = checkpoints.lock();
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        // Back off while the WAL stands still; come back soon once it moves.
        pause = match passive {
            Ok(now) if now == last => (pause * 2).min(CHECKPOINT_IDLE),
            _ => CHECKPOINT_BUSY,
        };
        match passive {
            Ok((log, _)) if log > WAL_CAP_FRAMES => {
                checkpoints
                    .reset_due
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                last = (-1, -1);
            }
            Ok(now) => last = now,
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed; retrying"),
        }
    }
}

/// Resets the WAL from the writer's own connection, between two batches:
/// no transaction of the writer is open, so the RESTART checkpoint neither
/// waits for one nor makes the next wait on SQLite's busy handler (which
/// sleeps 1, 2, 5, 10 ms and more between tries: that waiting was most of
/// each reset's stall when the checkpointer's connection ran it).
/// The checkpointer's pass, if one is running, finishes first.
fn reset_wal(conn: &Connection, checkpoints: &Checkpoints) {
    let _one_at_a_time = checkpoints.lock();
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "sqlite WAL restart checkpoint failed");
    }
}

fn run_batch(w: &mut Writer, batch: &mut Vec<Box<dyn Job>>) {
    if let Err(e) = w.conn.execute_batch("BEGIN IMMEDIATE") {
        let e = Arc::new(e);
        for job in batch.drain(..) {
            job.fail(&e);
        }
        return;
    }
    let (rows_before, bytes_before) = (w.rows, w.bytes);
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut rolled_back: Option<Arc<rusqlite::Error>> = None;
    for job in batch.drain(..) {
        if let Some(e) = &rolled_back {
            job.fail(e);
            continue;
        }
        let (reply, failed) = job.run(w);
        replies.push(reply);
        // Some errors (disk full, I/O) make SQLite roll back the whole
        // transaction; then every job of this batch so far was undone, and
        // statements after it would autocommit one by one: fail them all.
        if failed && w.conn.is_autocommit() {
            rolled_back = Some(Arc::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("transaction rolled back by an earlier error in the batch".into()),
            )));
        }
    }
    let commit_err = match &rolled_back {
        Some(e) => Some(e.clone()),
        None => w.conn.execute_batch("COMMIT").err().map(Arc::new),
    };
    if commit_err.is_some() {
        let _ = w.conn.execute_batch("ROLLBACK");
        w.rows = rows_before;
        w.bytes = bytes_before;
    }
    for reply in replies {
        reply(commit_err.as_ref());
    }
}

pub(crate) fn sweep(w: &mut Writer, now: u64, limit: usize) -> Result<u64, rusqlite::Error> {
    // Recovery points past their TTL (not counted: they are not records).
    w.conn
        .prepare_cached(
            "DELETE FROM idem_recovery WHERE key IN \
             (SELECT key FROM idem_recovery WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now as i64, limit as i64])?;
    let (n, freed) = {
        let mut stmt = w.conn.prepare_cached(
            "DELETE FROM idem_records WHERE id IN \
             (SELECT id FROM idem_records WHERE expires_at <= ?1 LIMIT ?2) \
             RETURNING length(response)",
        )?;
        let mut deleted = stmt.query(params![now as i64, limit as i64])?;
        let (mut n, mut freed) = (0u64, 0u64);
        while let Some(r) = deleted.next()? {
            n += 1;
            freed += ROW_OVERHEAD + r.get::<_, Option<i64>>(0)?.unwrap_or(0) as u64;
        }
        (n, freed)
    };
    w.rows = w.rows.saturating_sub(n);
    w.bytes = w.bytes.saturating_sub(freed);
    if (n as usize) < limit {
        // Caught up: recount, in case another process shares the file.
        w.recount()?;
    }
    Ok(n)
}
