//! What operators use besides the hot path: reading, deleting, counting
//! and purging records, and the readiness check. SCAN walks every node's
//! keys, so none of this is ever on a request path.

use async_trait::async_trait;
use idem_core::{Record, RecordState, StoreAdmin, StoreError, StoreKey, StoreStats};

use crate::{decode, parse_now, server, Conn, RedisStore, RedisStoreError, Target, GET, PURGE};

impl RedisStore {
    /// The record at `key` and the time to judge it by (one script, so
    /// both come from the server at once), its deadline the server's.
    async fn get_at(&self, key: &[u8]) -> Result<(Option<Record>, u64), RedisStoreError> {
        let (v, now, left): (Vec<u8>, String, i64) =
            self.invoke(GET.key(key).arg(self.now_arg())).await?;
        let now = parse_now(&now)?;
        if v.is_empty() {
            return Ok((None, now));
        }
        let mut record = decode(&v)?;
        self.server_deadline(&mut record, now, left);
        Ok((Some(record), now))
    }

    /// Every record key, on every node, for the admin operations (SCAN: never
    /// on a request path).
    async fn all_keys(&self) -> Result<Vec<Vec<u8>>, RedisStoreError> {
        let pattern = glob_escape(&self.prefix);
        let mut keys = Vec::new();
        match (&self.target, self.conn().await?) {
            (_, Conn::Single(mut c)) => scan(&mut c, &pattern, &mut keys).await?,
            (Target::Cluster(_), Conn::Cluster(mut c)) => {
                for addr in server::masters(&mut c).await? {
                    scan(&mut self.nodes.connect(&addr).await?, &pattern, &mut keys).await?;
                }
            }
            (Target::Single(_), Conn::Cluster(_)) => {}
        }
        // Records are the prefix and 32 bytes; anything else under the
        // prefix (the shared secret) is not a record.
        keys.retain(|k| k.len() == self.prefix.len() + 32);
        Ok(keys)
    }
}

#[async_trait]
impl StoreAdmin for RedisStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        match self.get_at(&self.key(key)).await? {
            (None, _) => Ok(None),
            (Some(r), now) => Ok(r.is_live(now).then_some(r)),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let n: i64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut self.conn().await?)
            .await
            .map_err(RedisStoreError::from)?;
        Ok(n == 1)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64, StoreError> {
        // Redis drops records itself when their PX runs out; this removes
        // any past their deadline that it has not dropped yet.
        let now = self.now_arg();
        let mut purged = 0u64;
        for key in self.all_keys().await? {
            if purged as usize >= limit {
                break;
            }
            let n: i64 = self.invoke(PURGE.key(key).arg(&now[..])).await?;
            purged += n as u64;
        }
        Ok(purged)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut s = StoreStats::default();
        for key in self.all_keys().await? {
            let (Some(r), now) = self.get_at(&key).await? else {
                continue;
            };
            let in_progress = matches!(r.state, RecordState::InProgress { .. });
            s.count(in_progress, r.is_live(now), 1);
        }
        Ok(s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Reads the eviction policy again: it can be changed at run time.
        let conn = self.conn().await?;
        server::check_eviction(&conn, false, self.options.allow_eviction).await?;
        Ok(())
    }
}

async fn scan<C: redis::aio::ConnectionLike>(
    c: &mut C,
    pattern: &[u8],
    out: &mut Vec<Vec<u8>>,
) -> Result<(), RedisStoreError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        out.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// `prefix*` with the prefix's glob characters escaped.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 2);
    for b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(*b);
    }
    p.push(b'*');
    p
}
