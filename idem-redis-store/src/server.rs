//! What the store learns of its server: the masters of a Cluster, and
//! whether a server may evict idem's records.

use redis::aio::ConnectionLike;

use crate::{Conn, RedisStoreError};

/// The `HOST:PORT` of every master of the Cluster behind `c`.
pub(crate) async fn masters(
    c: &mut redis::cluster_async::ClusterConnection,
) -> Result<Vec<String>, RedisStoreError> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.len() >= 3 && fields[2].contains("master"))
                .then(|| fields[1].split('@').next().unwrap_or_default().to_owned())
        })
        .collect())
}

/// A connection of its own to one node (`HOST:PORT`) of a Cluster.
pub(crate) async fn node(addr: &str) -> Result<redis::aio::MultiplexedConnection, RedisStoreError> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// The `maxmemory-policy` of every server `c` reaches, read from `INFO
/// memory` (managed Redis services often refuse `CONFIG`, never `INFO`). A
/// Cluster connection sends `INFO` to every node and answers a map of their
/// replies.
async fn policies(c: &mut impl ConnectionLike) -> Result<Vec<String>, RedisStoreError> {
    let info: redis::Value = redis::cmd("INFO").arg("memory").query_async(c).await?;
    let mut found = Vec::new();
    policies_in(&info, &mut found);
    Ok(found)
}

/// Every `maxmemory_policy:` line's value in an `INFO` reply: one server's
/// text, or a Cluster's map of them.
fn policies_in(v: &redis::Value, out: &mut Vec<String>) {
    let mut text = |t: &str| {
        out.extend(
            t.lines()
                .filter_map(|l| l.strip_prefix("maxmemory_policy:"))
                .map(|p| p.trim().to_owned()),
        )
    };
    match v {
        redis::Value::BulkString(b) => text(&String::from_utf8_lossy(b)),
        redis::Value::VerbatimString { text: t, .. } | redis::Value::SimpleString(t) => text(t),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| policies_in(v, out)),
        redis::Value::Array(items) => items.iter().for_each(|v| policies_in(v, out)),
        _ => {}
    }
}

/// Redis with any policy but `noeviction` drops keys when memory runs out
/// (`volatile-*` ones too: every record has a TTL), and a retry whose
/// record was dropped executes again. Refused unless `allowed`; then said
/// in the log (`warn`: at connection, not at every readiness check), since
/// nothing else would tell.
pub(crate) async fn check_eviction(
    conn: &Conn,
    warn: bool,
    allowed: bool,
) -> Result<(), RedisStoreError> {
    let found = match conn.clone() {
        Conn::Single(mut c) => policies(&mut c).await?,
        Conn::Cluster(mut c) => policies(&mut c).await?,
    };
    let Some(evicting) = found.into_iter().find(|p| p != "noeviction") else {
        return Ok(());
    };
    if allowed {
        if warn {
            tracing::warn!(
                policy = %evicting,
                "Redis may evict idem's records (maxmemory-policy {evicting}): a retry whose record was evicted executes again; allowed by redis_allow_eviction"
            );
        }
        return Ok(());
    }
    Err(RedisStoreError::Evicting { policy: evicting })
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::policies_in;

    fn info(policy: &str) -> Value {
        Value::BulkString(
            format!("# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:{policy}\r\n").into_bytes(),
        )
    }

    #[test]
    fn every_node_of_a_cluster_reply_is_read() {
        let reply = Value::Map(vec![
            (
                Value::BulkString(b"127.0.0.1:7100".to_vec()),
                info("noeviction"),
            ),
            (
                Value::BulkString(b"127.0.0.1:7101".to_vec()),
                info("volatile-lru"),
            ),
        ]);
        let mut found = Vec::new();
        policies_in(&reply, &mut found);
        assert_eq!(found, ["noeviction", "volatile-lru"]);
        let mut one = Vec::new();
        policies_in(&info("allkeys-lru"), &mut one);
        assert_eq!(one, ["allkeys-lru"]);
    }
}
