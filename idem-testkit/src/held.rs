//! Holding a record as an execution does, for tests of what a handler does
//! while it holds one (completing it in its own transaction, recording
//! recovery points): a key, a request's fingerprint, and `begin`.

use std::time::Duration;

use bytes::Bytes;
use idem_core::{
    Begin, Fingerprint, FingerprintMode, HeldRecord, Secret, Store, StoreKey, StoredResponse,
};

/// The store key of `k` in the anonymous scope, under a fixed secret.
pub fn key(k: &str) -> StoreKey {
    let secret = Secret::from_bytes([9u8; 32]).unwrap_or_else(|e| panic!("{e}"));
    StoreKey::derive(&secret, None, k)
}

/// The fingerprint of `POST path` with `body`.
pub fn fingerprint(path: &str, body: &[u8]) -> Fingerprint {
    Fingerprint::compute(FingerprintMode::Json, &http::Method::POST, path, body)
}

/// The record `k` as an execution holds it (answer kept `ttl`), when
/// `begin` with `lease` started one; `None` when the key was not free.
pub async fn try_begin(
    store: &impl Store,
    k: &StoreKey,
    fp: &Fingerprint,
    lease: Duration,
    ttl: Duration,
) -> Option<HeldRecord> {
    match store
        .begin(k, fp, lease)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    {
        Begin::Started(fence) => Some(HeldRecord {
            key: *k,
            fence,
            ttl,
        }),
        _ => None,
    }
}

/// A 201 answer with `body`, as a handler stores it.
pub fn answer(body: &'static str) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: Bytes::from_static(body.as_bytes()),
        body_omitted: None,
    }
}
