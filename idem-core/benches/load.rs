//! Closed-loop load on `MemoryStore`: the baseline the remote stores' local
//! cache is compared with. Prints operations per second.

use std::sync::Arc;

use idem_core::{MemoryStore, Store};

fn main() {
    let (concurrency, duration, scenario) = idem_testkit::load::args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new().with_capacity(usize::MAX));
    let rate = rt.block_on(idem_testkit::load::run(
        store,
        scenario,
        concurrency,
        duration,
    ));
    println!("{rate:.0}");
}
