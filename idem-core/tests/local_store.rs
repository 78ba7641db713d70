//! `Store::local`: the in-process store's hot path without an `await`
//! agrees with its `async` one, through a shared handle too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::fingerprint::Fingerprint;
use idem_core::record::{Begin, StoredResponse};
use idem_core::scope::StoreKey;
use idem_core::{MemoryStore, Store, StoreAdmin};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);

fn answer() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from_static(b"{\"id\":1}"),
        body_omitted: None,
    }
}

#[tokio::test]
async fn a_memory_stores_local_calls_are_its_async_calls() {
    let store: Arc<dyn StoreAdmin> = Arc::new(MemoryStore::new());
    let local = store.local().expect("a shared MemoryStore answers at once");
    let (k1, k2) = (StoreKey([1; 32]), StoreKey([2; 32]));
    let fp = Fingerprint([7; 32]);

    // Started at once, seen by the async side as in progress.
    let Begin::Started(fence) = local.begin_now(&k1, &fp, LEASE).expect("begin") else {
        panic!("a new key starts");
    };
    assert!(matches!(
        store.begin(&k1, &fp, LEASE).await.expect("begin"),
        Begin::InProgress { .. }
    ));
    // A wrong fence changes nothing; the right one stores the answer by value.
    assert!(!local
        .complete_now(&k1, idem_core::Fence::generate(), answer(), TTL)
        .expect("complete"));
    assert!(local
        .complete_now(&k1, fence, answer(), TTL)
        .expect("complete"));
    assert_eq!(
        store.begin(&k1, &fp, LEASE).await.expect("begin"),
        Begin::Completed(answer())
    );
    assert_eq!(
        local
            .begin_now(&k1, &Fingerprint([8; 32]), LEASE)
            .expect("begin"),
        Begin::Mismatch
    );

    // Begun by the async side, released at once: the key is free again.
    let Begin::Started(fence) = store.begin(&k2, &fp, LEASE).await.expect("begin") else {
        panic!("a new key starts");
    };
    assert!(local.release_now(&k2, fence).expect("release"));
    assert!(!local.release_now(&k2, fence).expect("release twice"));
    assert!(store.get(&k2).await.expect("get").is_none());
    assert!(matches!(
        local.begin_now(&k2, &fp, LEASE).expect("begin"),
        Begin::Started(_)
    ));
}
