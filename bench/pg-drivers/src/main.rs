//! begin + complete, as `idem-postgres-store` runs them (the same two
//! statements), through tokio-postgres + deadpool and through sqlx, side by
//! side at the same concurrency and pool size, alternating runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BEGIN: &str = "WITH ins AS ( \
   INSERT INTO bench_records AS r (key, fingerprint, state, fence, expires_at, response) \
   VALUES ($1, $2, 0, $3, $4, NULL) \
   ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 0, \
     fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at, response = NULL \
   WHERE r.expires_at <= $5 \
   RETURNING 1 \
 ) \
 SELECT true, NULL::bytea, NULL::smallint, NULL::bigint, NULL::bytea FROM ins \
 UNION ALL \
 SELECT false, fingerprint, state, expires_at, response FROM bench_records \
 WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)";
const COMPLETE: &str = "UPDATE bench_records SET state = 1, response = $3, expires_at = $4 \
 WHERE key = $1 AND state = 0 AND fence = $2";
const POOL: usize = 16;

fn key(worker: u64, n: u64, run: u64) -> Vec<u8> {
    let mut k = vec![0u8; 32];
    k[..8].copy_from_slice(&run.to_be_bytes());
    k[8..16].copy_from_slice(&worker.to_be_bytes());
    k[16..24].copy_from_slice(&n.to_be_bytes());
    k
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn tokio_postgres_run(url: &str, secs: u64, conc: u64, run: u64) -> f64 {
    let cfg: tokio_postgres::Config = url.parse().expect("DATABASE_URL");
    let mgr = deadpool_postgres::Manager::new(cfg, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr).max_size(POOL).build().expect("pool");
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let body = vec![7u8; 200];
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (pool, done, body) = (pool.clone(), done.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let c = pool.get().await.expect("connection");
                let begin = c.prepare_cached(BEGIN).await.expect("prepare");
                let k = key(w, n, run);
                let now = now_ms();
                let rows = c
                    .query(&begin, &[&k, &vec![1u8; 32], &(n as i64), &(now + 30_000), &now])
                    .await
                    .expect("begin");
                assert!(rows[0].get::<_, bool>(0));
                drop(c);
                let c = pool.get().await.expect("connection");
                let complete = c.prepare_cached(COMPLETE).await.expect("prepare");
                let updated = c
                    .execute(&complete, &[&k, &(n as i64), &body, &(now + 86_400_000)])
                    .await
                    .expect("complete");
                assert_eq!(updated, 1);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

async fn sqlx_run(url: &str, secs: u64, conc: u64, run: u64) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL as u32)
        .connect(url)
        .await
        .expect("sqlx pool");
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let body = vec![7u8; 200];
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (pool, done, body) = (pool.clone(), done.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let k = key(w, n, run);
                let now = now_ms();
                // sqlx prepares and caches statements per connection by default.
                let (started,): (bool,) = sqlx::query_as(BEGIN)
                    .bind(&k)
                    .bind(vec![1u8; 32])
                    .bind(n as i64)
                    .bind(now + 30_000)
                    .bind(now)
                    .fetch_one(&pool)
                    .await
                    .map(|(s, _, _, _, _): (bool, Option<Vec<u8>>, Option<i16>, Option<i64>, Option<Vec<u8>>)| (s,))
                    .expect("begin");
                assert!(started);
                let r = sqlx::query(COMPLETE)
                    .bind(&k)
                    .bind(n as i64)
                    .bind(&body)
                    .bind(now + 86_400_000)
                    .execute(&pool)
                    .await
                    .expect("complete");
                assert_eq!(r.rows_affected(), 1);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    pool.close().await;
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let conc: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/idem_test".into());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_records; \
             CREATE TABLE bench_records (key bytea PRIMARY KEY, fingerprint bytea NOT NULL, \
               state smallint NOT NULL, fence bigint NOT NULL, expires_at bigint NOT NULL, response bytea); \
             CREATE INDEX bench_records_expires_at ON bench_records (expires_at);",
        )
        .await
        .expect("schema");
    let (mut tp, mut sx) = (Vec::new(), Vec::new());
    println!("driver\trun\tbegin+complete/s");
    for r in 0..runs {
        let a = tokio_postgres_run(&url, secs, conc, 2 * r).await;
        println!("tokio-postgres+deadpool\t{r}\t{a:.0}");
        let b = sqlx_run(&url, secs, conc, 2 * r + 1).await;
        println!("sqlx\t{r}\t{b:.0}");
        tp.push(a);
        sx.push(b);
    }
    let (a, b) = (median(tp), median(sx));
    println!("\nmedians of {runs} runs, {conc} concurrent, pool of {POOL}:");
    println!("tokio-postgres+deadpool {a:.0}/s, sqlx {b:.0}/s, sqlx/tokio-postgres = {:.2}", b / a);
    let _ = client.batch_execute("DROP TABLE IF EXISTS bench_records").await;
}
