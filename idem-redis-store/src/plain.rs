//! `begin` in plain commands, where Redis's own clock times the records
//! (no clock configured, as every deployment runs) and the servers are
//! Redis 7.0 or later.
//!
//! `SET key record NX PX lease GET` creates the in-progress record unless
//! one exists and answers the one that does, atomically: exactly the
//! script's decision, because on the server's clock a record Redis still
//! holds is live (its `PX` is its deadline, and Redis never answers a key
//! past it). `PTTL` in the same `MULTI` gives that record's time left, by
//! the same clock. Redis runs two plain commands for a fraction of what
//! evaluating the script costs it (a Lua call, `TIME`, the record built
//! with string operations), which is most of Redis's work per first
//! execution; `complete`, `release` and `renew` stay scripts, since each
//! must check the fence before it writes.
//!
//! The new record's deadline field holds the latest deadline there is
//! ([`MAX_DEADLINE_MS`]), not this instance's estimate of the server's
//! time: the scripts and the admin operations read such a record's end from
//! its `PTTL` on the server's clock, and `renew` and `complete` write the
//! server's deadline. An older idem sharing the store during a rollout
//! (whose `begin` script compares the field with the server's clock) then
//! sees the lease live until Redis drops the record at its `PX`, as it is;
//! an estimate from a clock running behind the server's would have let it
//! take over a live lease.

use std::time::Duration;

use idem_core::clock::{millis, MAX_DEADLINE_MS};
use idem_core::SystemClock;
use idem_core::{Begin, Clock, Fence, Fingerprint, Record, RecordState, StoreError, StoreKey};

use crate::{decode, px, Conn, RedisStore, RedisStoreError};

impl RedisStore {
    /// `begin` as `MULTI; SET … NX PX … GET; PTTL; EXEC`; `None` when the
    /// record found has no `PX` (not written by idem's commands): the
    /// script judges it by its deadline field.
    pub(crate) async fn begin_plain(
        &self,
        conn: &mut Conn,
        key: &StoreKey,
        fence: Fence,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Option<(Begin, Option<u64>)>, StoreError> {
        let now = SystemClock.now_ms();
        let mut record = Vec::with_capacity(49);
        record.push(b'P');
        record.extend_from_slice(&fence.0.to_be_bytes());
        record.extend_from_slice(&MAX_DEADLINE_MS.to_be_bytes());
        record.extend_from_slice(&fingerprint.0);
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(record)
            .arg("NX")
            .arg("PX")
            .arg(px(millis(lease)))
            .arg("GET")
            .cmd("PTTL")
            .arg(&key);
        let (found, left): (Option<Vec<u8>>, i64) = pipe
            .query_async(conn)
            .await
            .inspect_err(|e| self.saw(e))
            .map_err(RedisStoreError::from)?;
        let Some(found) = found else {
            return Ok(Some((Begin::Started(fence), None)));
        };
        let Ok(left) = u64::try_from(left) else {
            return Ok(None);
        };
        let mut found = decode(&found).map_err(RedisStoreError::from)?;
        set_deadline(&mut found, now.saturating_add(left));
        Ok(Some(found.into_begin_expiring(fingerprint, now)))
    }
}

/// Gives `record` the deadline its `PTTL` says, on the reader's clock.
pub(crate) fn set_deadline(record: &mut Record, deadline: u64) {
    match &mut record.state {
        RecordState::InProgress { lease_until_ms, .. } => *lease_until_ms = deadline,
        RecordState::Completed { expires_at_ms, .. } => *expires_at_ms = deadline,
    }
}
