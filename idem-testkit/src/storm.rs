//! A storm of duplicates: 64 concurrent copies of each of 100 keys, spread
//! round-robin over several instances that share one store. Exactly-once
//! across processes is what it checks: every answer is the execution's (or
//! "in progress"), and afterwards every instance replays the same answer for
//! each key.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example(bases: Vec<String>) {
//! use idem_testkit::storm::{storm, Storm};
//! let answers = storm(&bases, &Storm {
//!     path: "/payments",
//!     key_prefix: "storm-key",
//!     body: |k| format!(r#"{{"amount": {}}}"#, k + 1),
//!     headers: &[],
//! })
//! .await;
//! assert_eq!(answers.len(), 100);
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use crate::http::{client, post, send};

/// Keys in a storm.
pub const KEYS: usize = 100;
/// Concurrent copies of each key.
pub const COPIES: usize = 64;

/// What the storm sends.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    /// The path on every instance.
    pub path: &'static str,
    /// Keys are `{key_prefix}-0000` to `{key_prefix}-0099`.
    pub key_prefix: &'static str,
    /// The body for key number `k`.
    pub body: fn(usize) -> String,
    /// Headers sent with the racing copies (not with the replays after).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Storm {
    /// The key of number `k`.
    pub fn key(&self, k: usize) -> String {
        format!("{}-{k:04}", self.key_prefix)
    }
}

/// Runs the storm against `bases` (`http://host:port` each), 256 requests
/// in flight at most; returns each key's answer, which every instance
/// replays alike. Panics on any other status than 201 or 409 during the
/// storm, and on a replay that is missing or differs between instances.
pub async fn storm(bases: &[String], s: &Storm) -> Vec<Bytes> {
    let c = client();
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for d in 0..COPIES {
            let url = format!("{}{}", bases[(k + d) % bases.len()], s.path);
            let (c, limit, s) = (c.clone(), limit.clone(), *s);
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await;
                let key = s.key(k);
                let mut headers = vec![("content-type", "application/json")];
                headers.push(("idempotency-key", &key));
                headers.extend_from_slice(s.headers);
                send(&c, Method::POST, &url, &headers, &(s.body)(k))
                    .await
                    .status
                    .as_u16()
            }));
        }
    }
    let mut statuses = BTreeMap::new();
    for t in tasks {
        let status = t.await.unwrap_or_else(|e| panic!("racer: {e}"));
        *statuses.entry(status).or_insert(0) += 1;
    }
    // Every answer is the execution's (executed or replayed) or "in progress".
    assert!(
        statuses.keys().all(|s| *s == 201 || *s == 409),
        "unexpected statuses: {statuses:?}"
    );
    let mut answers = Vec::with_capacity(KEYS);
    for k in 0..KEYS {
        let key = s.key(k);
        let mut seen: Option<Bytes> = None;
        for base in bases {
            let url = format!("{base}{}", s.path);
            let r = post(&c, &url, Some(&key), &(s.body)(k)).await;
            assert!(r.replayed(), "{key} on {base} ({statuses:?})");
            assert!(
                seen.as_ref().is_none_or(|b| *b == r.body),
                "instances disagree on {key}"
            );
            seen = Some(r.body);
        }
        answers.extend(seen);
    }
    answers
}
