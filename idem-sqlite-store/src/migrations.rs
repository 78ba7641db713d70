//! Versioned schema migrations, applied at open.
//!
//! The schema version lives in `PRAGMA user_version`. Each migration runs in
//! a `BEGIN IMMEDIATE` transaction that rereads the version first, so two
//! processes opening the same new file at once apply each step exactly once.

use std::path::Path;

use rusqlite::Connection;

use crate::SqliteError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the records table. `key` is the 32-byte HMAC of (scope, key);
    // `expires_at` (ms since the epoch) is the lease end while in progress
    // (state 0) and the TTL end once completed (state 1).
    //
    // A rowid table with a unique index on `key`, not a WITHOUT ROWID table
    // keyed by it: keys are uniformly random, so keying the table by them
    // would scatter every new row (with its response) over the whole B-tree,
    // dirtying a different page per insert. With rowids, new rows append to
    // the same few hot pages and only the small key index takes random
    // inserts: fewer pages written per commit (measured: docs/BENCHMARKS.md).
    "CREATE TABLE idem_records (
        id          INTEGER PRIMARY KEY,
        key         BLOB NOT NULL UNIQUE,
        fingerprint BLOB NOT NULL,
        state       INTEGER NOT NULL,
        fence       INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        response    BLOB
    );
    CREATE INDEX idem_records_expires_at ON idem_records (expires_at);",
    // 2: the secret behind store keys, kept with the records it keys, so a
    // layer rebuilt on the same file (a restart) finds its records again.
    // One row, hex text.
    "CREATE TABLE idem_secret (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        secret TEXT NOT NULL
    );",
    // 3: recovery points (`idem_core::recovery`): the last committed phase
    // of an operation and its state, per key, for the request whose
    // fingerprint is given. Apart from the records, so their rows and the
    // hot path stay as they were; expired with the TTL the application
    // gives.
    "CREATE TABLE idem_recovery (
        key         BLOB PRIMARY KEY,
        fingerprint BLOB NOT NULL,
        phase       TEXT NOT NULL,
        state       BLOB NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX idem_recovery_expires_at ON idem_recovery (expires_at);",
];

pub(crate) fn run(conn: &Connection, path: &Path) -> Result<(), SqliteError> {
    for (version, sql) in MIGRATIONS.iter().enumerate() {
        let err = |source| SqliteError::Migrate {
            path: path.to_path_buf(),
            version: version + 1,
            source,
        };
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let current: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
            .map_err(err)?;
        if current > MIGRATIONS.len() {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(SqliteError::TooNew {
                path: path.to_path_buf(),
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        if current > version {
            conn.execute_batch("COMMIT").map_err(err)?;
            continue;
        }
        let applied = conn
            .execute_batch(sql)
            .and_then(|()| conn.pragma_update(None, "user_version", (version + 1) as i64))
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(err(e));
        }
    }
    Ok(())
}
