//! What the store knows of its servers: how to reach them (the URL's
//! scheme, TLS and its CA), the masters of a Cluster, and whether a server
//! may evict idem's records.

use redis::aio::ConnectionLike;
use redis::TlsCertificates;

use crate::{redact, Conn, RedisOptions, RedisStoreError, Target};

/// The client for `url` (see [`crate::RedisStore::new`]), and how to reach
/// one node of it by address.
pub(crate) fn target(
    url: &str,
    options: &RedisOptions,
) -> Result<(Target, Nodes), RedisStoreError> {
    let url_err = |source| RedisStoreError::Url {
        url: redact(url),
        source,
    };
    let certs = match &options.ca_file {
        Some(path) => Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(
                std::fs::read(path).map_err(|source| RedisStoreError::CaFile {
                    path: path.clone(),
                    source,
                })?,
            ),
        }),
        None => None,
    };
    let cluster = url
        .strip_prefix("redis+cluster://")
        .map(|n| ("redis", n))
        .or_else(|| url.strip_prefix("rediss+cluster://").map(|n| ("rediss", n)));
    if let Some((scheme, nodes)) = cluster {
        let nodes: Vec<String> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| format!("{scheme}://{n}"))
            .collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout);
        if let (Some(certs), "rediss") = (&certs, scheme) {
            builder = builder.certs(certs.clone());
        }
        let client = builder.build().map_err(url_err)?;
        let nodes = Nodes {
            scheme,
            certs: certs.filter(|_| scheme == "rediss"),
        };
        return Ok((Target::Cluster(Box::new(client)), nodes));
    }
    let client = match certs {
        Some(certs) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, certs),
        _ => redis::Client::open(url),
    }
    .map_err(url_err)?;
    Ok((
        Target::Single(Box::new(client)),
        Nodes {
            scheme: "redis",
            certs: None,
        },
    ))
}

/// The client's error, with what to do when it is the usual TLS mistake.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        format!(
            "{text}; the server's certificate was not issued by a CA idem trusts (or not for this host name): \
             give the CA that issued it with store_ca_file (--store-ca-file), or connect by the name the certificate holds"
        )
    } else {
        text
    }
}

/// How to reach one node of a Cluster by its address, as the Cluster's
/// client does.
#[derive(Clone)]
pub(crate) struct Nodes {
    scheme: &'static str,
    certs: Option<TlsCertificates>,
}

impl Nodes {
    /// A connection of its own to the node at `addr` (`HOST:PORT`).
    pub(crate) async fn connect(
        &self,
        addr: &str,
    ) -> Result<redis::aio::MultiplexedConnection, RedisStoreError> {
        let url = format!("{}://{addr}", self.scheme);
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
            None => redis::Client::open(url)?,
        };
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

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
    fields_in(v, "maxmemory_policy:", out)
}

/// Every value of the `INFO` field `name` (with its colon) in `v`: one
/// server's text, or a Cluster's map of them.
fn fields_in(v: &redis::Value, name: &str, out: &mut Vec<String>) {
    let mut text = |t: &str| {
        out.extend(
            t.lines()
                .filter_map(|l| l.strip_prefix(name))
                .map(|p| p.trim().to_owned()),
        )
    };
    match v {
        redis::Value::BulkString(b) => text(&String::from_utf8_lossy(b)),
        redis::Value::VerbatimString { text: t, .. } | redis::Value::SimpleString(t) => text(t),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| fields_in(v, name, out)),
        redis::Value::Array(items) => items.iter().for_each(|v| fields_in(v, name, out)),
        _ => {}
    }
}

/// Whether every server `conn` reaches takes `SET … NX … GET` (Redis 7.0
/// and later; before, `NX` and `GET` together are a syntax error), which
/// `begin` then uses instead of its script (see `crate::plain`).
pub(crate) async fn takes_set_nx_get(conn: &Conn) -> Result<bool, RedisStoreError> {
    let mut info = redis::cmd("INFO");
    info.arg("server");
    let reply: redis::Value = match conn.clone() {
        Conn::Single(mut c) => info.query_async(&mut c).await?,
        Conn::Cluster(mut c) => info.query_async(&mut c).await?,
    };
    let mut versions = Vec::new();
    fields_in(&reply, "redis_version:", &mut versions);
    Ok(!versions.is_empty() && versions.iter().all(|v| at_least_7(v)))
}

/// `7.0.15`, `7.2.4`, `8.0.0`: a major version of 7 or more.
fn at_least_7(version: &str) -> bool {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| m >= 7)
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

    use super::{at_least_7, fields_in, policies_in};

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

    #[test]
    fn set_nx_get_needs_redis_7_on_every_node() {
        let mut found = Vec::new();
        let reply = Value::Map(vec![
            (
                Value::BulkString(b"a:1".to_vec()),
                Value::BulkString(b"# Server\r\nredis_version:7.0.15\r\n".to_vec()),
            ),
            (
                Value::BulkString(b"b:2".to_vec()),
                Value::BulkString(b"# Server\r\nredis_version:6.2.14\r\n".to_vec()),
            ),
        ]);
        fields_in(&reply, "redis_version:", &mut found);
        assert_eq!(found, ["7.0.15", "6.2.14"]);
        assert!(at_least_7("7.0.15") && at_least_7("8.0.0") && at_least_7("10.1"));
        assert!(!at_least_7("6.2.14") && !at_least_7("") && !at_least_7("x.1"));
    }
}
