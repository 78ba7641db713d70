//! The store contract, run against `MemoryStore`.

use std::sync::Arc;

use idem_core::{MemoryStore, Store};
use idem_testkit::StoreConfig;

async fn memory(config: StoreConfig) -> Option<Arc<dyn Store>> {
    let mut store = MemoryStore::new().with_clock(config.clock);
    if let Some(c) = config.capacity {
        store = store.with_capacity(c);
    }
    Some(Arc::new(store))
}

idem_testkit::store_conformance!(memory);
