//! Where the demo keeps its payments: in the same backend as the records.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[cfg(feature = "postgres")]
use idem_postgres_store::PostgresStore;
#[cfg(feature = "redis")]
use idem_redis_store::{redis, RedisStore};
#[cfg(feature = "sqlite")]
use idem_sqlite_store::rusqlite::{params, OptionalExtension};
#[cfg(feature = "sqlite")]
use idem_sqlite_store::SqliteStore;
use serde::{Deserialize, Serialize};
#[cfg(feature = "postgres")]
use tokio::sync::OnceCell;

#[cfg(feature = "sqlite")]
use super::unix_now;
use idem_stores::Backend;

/// A payment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Payment {
    /// `pay_…`.
    pub id: String,
    /// As sent, a positive number.
    pub amount: serde_json::Number,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Who is paid.
    pub recipient: String,
    /// `succeeded`, or what a webhook set.
    pub status: String,
    /// Unix seconds.
    pub created: u64,
}

/// Payments in memory, in creation order and by id.
///
/// B-trees, not a `Vec` and a `HashMap`: those grow by reallocating and
/// rehashing everything, a pause of many milliseconds at millions of entries
/// taken while holding the lock, which showed as p99 spikes under load.
#[derive(Default)]
pub(super) struct Table {
    order: BTreeMap<u64, String>,
    by_id: BTreeMap<String, Payment>,
}

/// Where payments are kept: beside the idempotency records, in the same
/// backend, so every demo instance sharing a store shares the payments.
#[derive(Clone)]
pub(super) enum Payments {
    Memory(Arc<Mutex<Table>>),
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore, Arc<OnceCell<()>>),
}

impl Payments {
    pub(super) async fn open(backend: &Backend) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Memory(_) => Self::Memory(Arc::default()),
            // Connected at first use, like the store: the demo starts while
            // Redis or PostgreSQL is down.
            #[cfg(feature = "redis")]
            Backend::Redis(store) => Self::Redis(store.clone()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => Self::Postgres(store.clone(), Arc::default()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                let store = store.clone();
                store
                    .call(|c| {
                        c.execute_batch(
                            "CREATE TABLE IF NOT EXISTS demo_payments (
                                id TEXT PRIMARY KEY, amount TEXT NOT NULL, currency TEXT NOT NULL,
                                recipient TEXT NOT NULL, status TEXT NOT NULL, created INTEGER NOT NULL);
                             CREATE TABLE IF NOT EXISTS demo_webhook_events (
                                seq INTEGER PRIMARY KEY AUTOINCREMENT, payment_id TEXT NOT NULL,
                                status TEXT NOT NULL, received INTEGER NOT NULL);",
                        )
                    })
                    .await?;
                #[cfg(feature = "sqlite")]
                Self::Sqlite(store)
            }
        })
    }

    fn lock(m: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn insert(&self, p: Payment) -> anyhow::Result<()> {
        match self {
            Self::Memory(m) => {
                let mut g = Self::lock(m);
                let seq = g.order.len() as u64;
                g.order.insert(seq, p.id.clone());
                g.by_id.insert(p.id.clone(), p);
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => {
                s.call(move |c| sqlite_insert(c, &p)).await?;
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => {
                let (hash, order) = redis_keys(r);
                let json = serde_json::to_string(&p)?;
                // One slot on a Cluster (the {demo} hash tag), so MULTI works.
                redis::pipe()
                    .atomic()
                    .hset(&hash, &p.id, json)
                    .zadd(&order, &p.id, p.created as f64)
                    .query_async::<()>(&mut r.connection().await?)
                    .await?;
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pg, ready) => {
                let c = pg_client(pg, ready).await?;
                pg_insert(&**c, pg, &p).await?;
            }
        }
        Ok(())
    }

    /// Inserts `p` and completes the request's record (`held`) with
    /// `answer` in one transaction, where the backend is a database the
    /// records share (SQLite, PostgreSQL): a crash after the commit then
    /// cannot make a retry pay again. `Ok(false)`, with nothing written,
    /// where it cannot (memory, Redis): insert as usual then.
    pub(super) async fn insert_answered(
        &self,
        p: Payment,
        held: idem::HeldRecord,
        answer: idem::StoredResponse,
    ) -> anyhow::Result<bool> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => {
                s.complete_with(held, move |c| {
                    sqlite_insert(c, &p)?;
                    Ok(((), answer))
                })
                .await?;
                Ok(true)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pg, ready) => {
                let mut c = pg_client(pg, ready).await?;
                let tx = c.transaction().await?;
                pg_insert(&*tx, pg, &p).await?;
                // Fenced: if a retry took the key over, this fails and the
                // dropped transaction takes the payment back with it.
                pg.complete_in(&tx, &held, &answer).await?;
                tx.commit().await?;
                Ok(true)
            }
            _ => {
                let _ = (p, held, answer);
                Ok(false)
            }
        }
    }

    pub(super) async fn get(&self, id: String) -> anyhow::Result<Option<Payment>> {
        Ok(match self {
            Self::Memory(m) => Self::lock(m).by_id.get(&id).cloned(),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => {
                s.call(move |c| {
                    c.prepare_cached("SELECT id, amount, currency, recipient, status, created FROM demo_payments WHERE id = ?1")?
                        .query_row([id], row_to_payment)
                        .optional()
                })
                .await?
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => {
                let (hash, _) = redis_keys(r);
                let json: Option<String> = redis::cmd("HGET")
                    .arg(&hash)
                    .arg(&id)
                    .query_async(&mut r.connection().await?)
                    .await?;
                json.map(|j| serde_json::from_str(&j)).transpose()?
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pg, ready) => {
                let c = pg_client(pg, ready).await?;
                c.query_opt(&format!("{} WHERE id = $1", pg_select(pg)), &[&id])
                    .await?
                    .map(|r| pg_payment(&r))
            }
        })
    }

    pub(super) async fn list(&self) -> anyhow::Result<(u64, Vec<Payment>)> {
        Ok(match self {
            Self::Memory(m) => {
                let g = Self::lock(m);
                let latest = g.order.values().rev().take(100).filter_map(|id| g.by_id.get(id).cloned()).collect();
                (g.order.len() as u64, latest)
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => {
                s.call(|c| {
                    let n: i64 = c.query_row("SELECT count(*) FROM demo_payments", [], |r| r.get(0))?;
                    let mut stmt = c.prepare_cached(
                        "SELECT id, amount, currency, recipient, status, created FROM demo_payments ORDER BY rowid DESC LIMIT 100",
                    )?;
                    let rows = stmt.query_map([], row_to_payment)?.collect::<Result<Vec<_>, _>>()?;
                    Ok((n as u64, rows))
                })
                .await?
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => {
                let (hash, order) = redis_keys(r);
                let mut conn = r.connection().await?;
                let n: u64 = redis::cmd("HLEN").arg(&hash).query_async(&mut conn).await?;
                let ids: Vec<String> = redis::cmd("ZREVRANGE")
                    .arg(&order)
                    .arg(0)
                    .arg(99)
                    .query_async(&mut conn)
                    .await?;
                let mut latest = Vec::with_capacity(ids.len());
                if !ids.is_empty() {
                    let rows: Vec<Option<String>> = redis::cmd("HMGET")
                        .arg(&hash)
                        .arg(&ids)
                        .query_async(&mut conn)
                        .await?;
                    for j in rows.into_iter().flatten() {
                        latest.push(serde_json::from_str(&j)?);
                    }
                }
                (n, latest)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pg, ready) => {
                let c = pg_client(pg, ready).await?;
                let n: i64 = c
                    .query_one(&format!("SELECT count(*) FROM {}.demo_payments", pg.schema()), &[])
                    .await?
                    .get(0);
                let rows = c
                    .query(&format!("{} ORDER BY created DESC, id DESC LIMIT 100", pg_select(pg)), &[])
                    .await?;
                (n as u64, rows.iter().map(pg_payment).collect())
            }
        })
    }

    pub(super) async fn set_status(&self, id: String, status: String) -> anyhow::Result<bool> {
        Ok(match self {
            Self::Memory(m) => match Self::lock(m).by_id.get_mut(&id) {
                Some(p) => {
                    p.status = status;
                    true
                }
                None => false,
            },
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => {
                s.call(move |c| {
                    let n = c
                        .prepare_cached("UPDATE demo_payments SET status = ?1 WHERE id = ?2")?
                        .execute(params![status, id])?;
                    if n == 1 {
                        c.prepare_cached("INSERT INTO demo_webhook_events (payment_id, status, received) VALUES (?1, ?2, ?3)")?
                            .execute(params![id, status, unix_now() as i64])?;
                    }
                    Ok(n == 1)
                })
                .await?
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => {
                // The webhook route runs once per delivery (the layer), so a
                // read-modify-write is enough for the demo.
                match self.get(id.clone()).await? {
                    Some(mut p) => {
                        p.status = status;
                        let (hash, _) = redis_keys(r);
                        redis::cmd("HSET")
                            .arg(&hash)
                            .arg(&id)
                            .arg(serde_json::to_string(&p)?)
                            .query_async::<()>(&mut r.connection().await?)
                            .await?;
                        true
                    }
                    None => false,
                }
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pg, ready) => {
                let c = pg_client(pg, ready).await?;
                c.execute(
                    &format!("UPDATE {}.demo_payments SET status = $1 WHERE id = $2", pg.schema()),
                    &[&status, &id],
                )
                .await?
                    == 1
            }
        })
    }
}

#[cfg(feature = "redis")]
/// The demo's Redis keys, under the store's prefix, in one Cluster slot.
fn redis_keys(r: &RedisStore) -> (String, String) {
    (
        format!("{}{{demo}}:payments", r.prefix()),
        format!("{}{{demo}}:payment-order", r.prefix()),
    )
}

#[cfg(feature = "postgres")]
/// The advisory lock the demo's table is created under (any fixed number
/// no other code of idem's takes).
const DEMO_TABLE_LOCK: i64 = 0x1de3_de30;

#[cfg(feature = "postgres")]
/// A pooled client, with the demo's table created on first use.
async fn pg_client(
    pg: &PostgresStore,
    ready: &OnceCell<()>,
) -> anyhow::Result<idem_postgres_store::deadpool_postgres::Object> {
    pg_client_with(
        pg,
        ready,
        &format!(
            "CREATE TABLE IF NOT EXISTS {}.demo_payments (
                id text PRIMARY KEY, amount text NOT NULL, currency text NOT NULL,
                recipient text NOT NULL, status text NOT NULL, created bigint NOT NULL);",
            pg.schema()
        ),
    )
    .await
}

#[cfg(feature = "postgres")]
/// A pooled client, with the tables `ddl` makes created on first use
/// (`ready` remembers it was done).
pub(super) async fn pg_client_with(
    pg: &PostgresStore,
    ready: &OnceCell<()>,
    ddl: &str,
) -> anyhow::Result<idem_postgres_store::deadpool_postgres::Object> {
    let c = pg.pool().get().await?;
    ready
        .get_or_try_init(|| async {
            // Under a transaction-scoped advisory lock: instances starting at
            // once would otherwise race in CREATE TABLE IF NOT EXISTS, and
            // PostgreSQL answers the loser with a unique violation on its
            // catalog (seen as a 500 in the three-instance storm test).
            let created = c
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({DEMO_TABLE_LOCK}); {ddl} COMMIT;"
                ))
                .await;
            if created.is_err() {
                // Never hand a connection back in a failed transaction.
                let _ = c.batch_execute("ROLLBACK").await;
            }
            created
        })
        .await?;
    Ok(c)
}

#[cfg(feature = "sqlite")]
fn sqlite_insert(
    c: &idem_sqlite_store::rusqlite::Connection,
    p: &Payment,
) -> idem_sqlite_store::rusqlite::Result<usize> {
    c.prepare_cached("INSERT INTO demo_payments VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![
            p.id,
            p.amount.to_string(),
            p.currency,
            p.recipient,
            p.status,
            p.created as i64
        ])
}

/// Inserts `p` through `c`: a pooled client, or a transaction.
#[cfg(feature = "postgres")]
async fn pg_insert(
    c: &impl idem_postgres_store::tokio_postgres::GenericClient,
    pg: &PostgresStore,
    p: &Payment,
) -> Result<u64, idem_postgres_store::tokio_postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO {}.demo_payments VALUES ($1, $2, $3, $4, $5, $6)",
            pg.schema()
        ),
        &[
            &p.id,
            &p.amount.to_string(),
            &p.currency,
            &p.recipient,
            &p.status,
            &(p.created as i64),
        ],
    )
    .await
}

#[cfg(feature = "postgres")]
fn pg_select(pg: &PostgresStore) -> String {
    format!(
        "SELECT id, amount, currency, recipient, status, created FROM {}.demo_payments",
        pg.schema()
    )
}

#[cfg(feature = "postgres")]
fn pg_payment(r: &idem_postgres_store::tokio_postgres::Row) -> Payment {
    let amount: String = r.get(1);
    Payment {
        id: r.get(0),
        amount: amount
            .parse()
            .unwrap_or_else(|_| serde_json::Number::from(0)),
        currency: r.get(2),
        recipient: r.get(3),
        status: r.get(4),
        created: r.get::<_, i64>(5) as u64,
    }
}

#[cfg(feature = "sqlite")]
fn row_to_payment(
    r: &idem_sqlite_store::rusqlite::Row<'_>,
) -> idem_sqlite_store::rusqlite::Result<Payment> {
    let amount: String = r.get(1)?;
    Ok(Payment {
        id: r.get(0)?,
        amount: amount
            .parse()
            .unwrap_or_else(|_| serde_json::Number::from(0)),
        currency: r.get(2)?,
        recipient: r.get(3)?,
        status: r.get(4)?,
        created: r.get::<_, i64>(5)? as u64,
    })
}
