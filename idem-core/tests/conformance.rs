//! The store contract, run against `MemoryStore`.

use std::sync::Arc;

use idem_core::{MemoryStore, StoreAdmin};
use idem_testkit::StoreConfig;

async fn memory(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
    let mut store = MemoryStore::new().with_clock(config.clock);
    if let Some(c) = config.capacity {
        store = store.with_capacity(c);
    }
    Some(Arc::new(store))
}

idem_testkit::store_conformance!(memory);

/// The same contract through the local cache of completed records.
mod cached {
    use super::*;
    use idem_core::CachedStore;

    async fn cached_memory(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let mut inner = MemoryStore::new().with_clock(config.clock.clone());
        if let Some(c) = config.capacity {
            inner = inner.with_capacity(c);
        }
        Some(Arc::new(CachedStore::new(inner, config.clock).capacity(64)))
    }

    idem_testkit::store_conformance!(cached_memory);
}

/// The same contract with a byte budget set (large enough never to refuse):
/// the accounting must not disturb any rule.
mod byte_budget {
    use super::*;

    async fn memory_with_budget(config: StoreConfig) -> Option<Arc<dyn StoreAdmin>> {
        let mut store = MemoryStore::new()
            .with_clock(config.clock)
            .with_max_bytes(1 << 30);
        if let Some(c) = config.capacity {
            store = store.with_capacity(c);
        }
        Some(Arc::new(store))
    }

    idem_testkit::store_conformance!(memory_with_budget);
}
