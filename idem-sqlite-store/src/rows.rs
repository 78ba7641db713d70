//! Reading a row, and `begin`: the one phase that reads before it writes
//! (create the record, or report the live one), in the writer's
//! transaction.

use std::time::Duration;

use idem_core::clock::deadline_i64;
use idem_core::{Begin, Fence, Fingerprint, Record, RecordState, StoreKey, StoredResponse};
use rusqlite::{params, Connection, OptionalExtension};

use crate::writer::{sweep, Writer, SWEEP_BATCH};
use crate::{SqliteError, ROW_OVERHEAD};

pub(crate) type Row = (Vec<u8>, i64, i64, i64, Option<Vec<u8>>);

pub(crate) fn read_row(conn: &Connection, key: &StoreKey) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT fingerprint, state, fence, expires_at, response FROM idem_records WHERE key = ?1",
    )?
    .query_row([&key.0[..]], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .optional()
}

pub(crate) fn to_record(row: Row) -> Result<Record, SqliteError> {
    let (fp, state, fence, expires_at, response) = row;
    let mut fingerprint = [0u8; 32];
    if fp.len() != 32 {
        return Err(SqliteError::Corrupt(idem_core::DecodeError::new(
            "fingerprint is not 32 bytes",
        )));
    }
    fingerprint.copy_from_slice(&fp);
    let state = if state == 0 {
        RecordState::InProgress {
            fence: Fence(fence as u64),
            lease_until_ms: expires_at as u64,
        }
    } else {
        let bytes = response.unwrap_or_default();
        RecordState::Completed {
            response: StoredResponse::decode(&bytes)?,
            expires_at_ms: expires_at as u64,
        }
    };
    Ok(Record {
        fingerprint: Fingerprint(fingerprint),
        state,
    })
}

pub(crate) fn begin(
    w: &mut Writer,
    key: &StoreKey,
    fp: &Fingerprint,
    lease: Duration,
    fence: Fence,
) -> Result<(Begin, Option<u64>), SqliteError> {
    let now = w.clock.now_ms();
    let lease_until = deadline_i64(now, lease);
    // Every statement here runs in one BEGIN IMMEDIATE transaction on the only
    // writer, so no one can slip in between the read and the write.
    if w.has_room() {
        // The common case, a new key, in one statement.
        let inserted = w
            .conn
            .prepare_cached(
                "INSERT INTO idem_records (key, fingerprint, state, fence, expires_at) \
                 VALUES (?1, ?2, 0, ?3, ?4) ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![&key.0[..], &fp.0[..], fence.0 as i64, lease_until])?;
        if inserted == 1 {
            w.rows += 1;
            w.bytes += ROW_OVERHEAD;
            return Ok((Begin::Started(fence), None));
        }
    }
    match read_row(&w.conn, key)? {
        Some(row) if row.3 as u64 > now => Ok(to_record(row)?.into_begin_expiring(fp, now)),
        Some(row) => {
            // An expired lease or TTL: treated as no record (rules 8 and 9).
            // Replacing it takes no new room, and frees its answer's.
            let answer = row.4.as_ref().map_or(0, |r| r.len() as u64);
            w.bytes = w.bytes.saturating_sub(answer);
            w.conn
                .prepare_cached(
                    "UPDATE idem_records SET fingerprint = ?2, state = 0, fence = ?3, \
                     expires_at = ?4, response = NULL WHERE key = ?1",
                )?
                .execute(params![&key.0[..], &fp.0[..], fence.0 as i64, lease_until])?;
            Ok((Begin::Started(fence), None))
        }
        None => {
            // Only reached when full: make room from expired rows, or refuse.
            sweep(w, now, SWEEP_BATCH)?;
            if let Some(capacity) = w.capacity.filter(|&c| w.rows >= c) {
                return Err(SqliteError::Full { capacity });
            }
            if let Some(max_bytes) = w
                .max_bytes
                .filter(|&m| w.bytes.saturating_add(ROW_OVERHEAD) > m)
            {
                return Err(SqliteError::FullBytes { max_bytes });
            }
            w.conn
                .prepare_cached(
                    "INSERT INTO idem_records (key, fingerprint, state, fence, expires_at) \
                     VALUES (?1, ?2, 0, ?3, ?4)",
                )?
                .execute(params![&key.0[..], &fp.0[..], fence.0 as i64, lease_until])?;
            w.rows += 1;
            w.bytes += ROW_OVERHEAD;
            Ok((Begin::Started(fence), None))
        }
    }
}
