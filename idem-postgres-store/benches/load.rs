//! Closed-loop load on `PostgresStore` (`DATABASE_URL`). Prints operations
//! per second. `PG_STATEMENTS=prepared` measures named prepared statements
//! instead of the default unnamed ones. See docs/BENCHMARKS.md and
//! bench/stores.sh.

use std::sync::Arc;

use idem_core::Store;
use idem_postgres_store::{PostgresOptions, PostgresStore, Statements};

fn main() {
    let (concurrency, duration, scenario) = idem_testkit::load::args();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| panic!("set DATABASE_URL"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let rate = rt.block_on(async {
        let options = PostgresOptions {
            schema: "idem_bench".into(),
            pool_size: concurrency.clamp(1, 64),
            statements: std::env::var("PG_STATEMENTS")
                .map_or(Ok(Statements::default()), |s| s.parse())
                .unwrap_or_else(|e| panic!("PG_STATEMENTS: {e}")),
            ..PostgresOptions::default()
        };
        let store = PostgresStore::new(&url, options).unwrap_or_else(|e| panic!("{e}"));
        store.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn Store> = Arc::new(store);
        idem_testkit::load::run(store, scenario, concurrency, duration).await
    });
    println!("{rate:.0}");
}
