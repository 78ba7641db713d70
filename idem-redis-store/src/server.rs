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

/// The server's `maxmemory-policy`, read from `INFO memory` (managed Redis
/// services often refuse `CONFIG`, never `INFO`).
async fn policy(c: &mut impl ConnectionLike) -> Result<String, RedisStoreError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(c).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("maxmemory_policy:"))
        .unwrap_or("noeviction")
        .trim()
        .to_owned())
}

/// Redis with any policy but `noeviction` drops keys when memory runs out
/// (`volatile-*` ones too: every record has a TTL), and a retry whose
/// record was dropped executes again. Refused unless `allowed`; then said
/// once in the log, since nothing else would tell.
///
/// `every_master`: read each master of a Cluster (at connection); else the
/// one node the connection asks (at each readiness check).
pub(crate) async fn check_eviction(
    conn: &Conn,
    every_master: bool,
    allowed: bool,
) -> Result<(), RedisStoreError> {
    let policies = match conn.clone() {
        Conn::Single(mut c) => vec![policy(&mut c).await?],
        Conn::Cluster(mut c) if every_master => {
            let mut found = Vec::new();
            for addr in masters(&mut c).await? {
                found.push(policy(&mut node(&addr).await?).await?);
            }
            found
        }
        Conn::Cluster(mut c) => vec![policy(&mut c).await?],
    };
    let Some(evicting) = policies.into_iter().find(|p| p != "noeviction") else {
        return Ok(());
    };
    if allowed {
        if every_master {
            tracing::warn!(
                policy = %evicting,
                "Redis may evict idem's records (maxmemory-policy {evicting}): a retry whose record was evicted executes again; allowed by redis_allow_eviction"
            );
        }
        return Ok(());
    }
    Err(RedisStoreError::Evicting { policy: evicting })
}
