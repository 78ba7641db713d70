//! Model-based tests: random interleavings of `begin`, `complete`,
//! `release`, `renew` and clock advances by several actors on a few keys,
//! checked step by step against a small reference model of the store
//! contract. Run on every backend by [`store_conformance!`](crate::store_conformance).
//!
//! The model is exact where the contract is: who wins a `begin`, what a live
//! record answers, that a stale fence changes nothing, that a current fence
//! on a live lease always succeeds, and what a replay returns. Where the
//! contract leaves a choice it accepts either answer and follows the store:
//! a holder whose lease ran out but was not taken over may still complete,
//! renew or release (MemoryStore, SQLite, PostgreSQL keep the row) or may not
//! (Redis has already expired the key).
//!
//! `IDEM_MODEL_CASES` sets the number of generated sequences (default 256).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{Begin, Fence, Fingerprint, StoreAdmin, StoreKey, StoredResponse};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::suite::key;
use crate::StoreConfig;

const ACTORS: u8 = 3;
const KEYS: u8 = 2;

/// One step of a generated sequence (fields as the variant docs name them).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    /// `actor` begins `key` with fingerprint `fp` and a lease of `lease_ms`.
    Begin {
        actor: u8,
        key: u8,
        fp: u8,
        lease_ms: u64,
    },
    /// `actor` completes `key` with its last fence, kept `ttl_ms`.
    Complete { actor: u8, key: u8, ttl_ms: u64 },
    /// `actor` releases `key` with its last fence.
    Release { actor: u8, key: u8 },
    /// `actor` renews its lease on `key` to `lease_ms`.
    Renew { actor: u8, key: u8, lease_ms: u64 },
    /// The clock moves forward.
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let actor = 0..ACTORS;
    let k = 0..KEYS;
    prop_oneof![
        3 => (actor.clone(), k.clone(), 0..2u8, 1_000..5_000u64)
            .prop_map(|(actor, key, fp, lease_ms)| Op::Begin { actor, key, fp, lease_ms }),
        2 => (actor.clone(), k.clone(), 1_000..10_000u64)
            .prop_map(|(actor, key, ttl_ms)| Op::Complete { actor, key, ttl_ms }),
        1 => (actor.clone(), k.clone()).prop_map(|(actor, key)| Op::Release { actor, key }),
        1 => (actor, k, 1_000..5_000u64)
            .prop_map(|(actor, key, lease_ms)| Op::Renew { actor, key, lease_ms }),
        2 => (1..4_000u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the model knows of one key.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Absent,
    InProgress {
        fp: u8,
        holder: u8,
        fence: Fence,
        until: u64,
    },
    Completed {
        fp: u8,
        body: Bytes,
        until: u64,
    },
}

fn response(body: Bytes) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: Vec::new(),
        body,
        body_omitted: None,
    }
}

/// Runs `ops` on fresh keys of `store`, checking each answer.
async fn check(store: &dyn StoreAdmin, config: &StoreConfig, ops: &[Op]) -> Result<(), String> {
    let keys: Vec<StoreKey> = (0..KEYS).map(|_| key()).collect();
    let mut model: Vec<State> = vec![State::Absent; KEYS as usize];
    // Each actor's last fence per key.
    let mut fences: HashMap<(u8, u8), Fence> = HashMap::new();
    let clock = &config.manual;
    for (step, op) in ops.iter().enumerate() {
        let now = idem_core::Clock::now_ms(&**clock);
        let at = |what: String| format!("step {step} ({op:?}): {what}");
        match *op {
            Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
            Op::Begin {
                actor,
                key: k,
                fp,
                lease_ms,
            } => {
                let got = store
                    .begin(
                        &keys[k as usize],
                        &Fingerprint([fp; 32]),
                        Duration::from_millis(lease_ms),
                    )
                    .await
                    .map_err(|e| at(format!("store error {e}")))?;
                let state = &mut model[k as usize];
                let live = match state {
                    State::Absent => false,
                    State::InProgress { until, .. } | State::Completed { until, .. } => {
                        now < *until
                    }
                };
                match (&*state, live, got) {
                    (_, false, Begin::Started(fence)) => {
                        fences.insert((actor, k), fence);
                        *state = State::InProgress {
                            fp,
                            holder: actor,
                            fence,
                            until: now + lease_ms,
                        };
                    }
                    (
                        State::InProgress { fp: f, .. } | State::Completed { fp: f, .. },
                        true,
                        Begin::Mismatch,
                    ) if *f != fp => {}
                    (
                        State::InProgress { fp: f, until, .. },
                        true,
                        Begin::InProgress { lease_remaining },
                    ) if *f == fp => {
                        if lease_remaining > Duration::from_millis(until - now) {
                            return Err(at(format!(
                                "lease_remaining {lease_remaining:?} is longer than the lease"
                            )));
                        }
                    }
                    (State::Completed { fp: f, body, .. }, true, Begin::Completed(r))
                        if *f == fp =>
                    {
                        if r.body != *body {
                            return Err(at(format!("replayed {:?}, stored {:?}", r.body, body)));
                        }
                    }
                    (state, live, got) => {
                        return Err(at(format!(
                            "model {state:?} (live: {live}) but the store answered {got:?}"
                        )))
                    }
                }
            }
            Op::Complete {
                actor,
                key: k,
                ttl_ms,
            } => {
                let Some(&fence) = fences.get(&(actor, k)) else {
                    continue;
                };
                let body = Bytes::from(format!("answer of actor {actor} at step {step}"));
                let ok = store
                    .complete(
                        &keys[k as usize],
                        fence,
                        &response(body.clone()),
                        Duration::from_millis(ttl_ms),
                    )
                    .await
                    .map_err(|e| at(format!("store error {e}")))?;
                let state = &mut model[k as usize];
                match holds(state, fence, now) {
                    Hold::Live if ok => {
                        *state = State::Completed {
                            fp: fp_of(state),
                            body,
                            until: now + ttl_ms,
                        }
                    }
                    Hold::Expired if ok => {
                        *state = State::Completed {
                            fp: fp_of(state),
                            body,
                            until: now + ttl_ms,
                        }
                    }
                    Hold::Expired => *state = State::Absent,
                    Hold::Stale if !ok => {}
                    hold => {
                        return Err(at(format!(
                            "complete returned {ok} with {hold:?} on {state:?}"
                        )))
                    }
                }
            }
            Op::Release { actor, key: k } => {
                let Some(&fence) = fences.get(&(actor, k)) else {
                    continue;
                };
                let ok = store
                    .release(&keys[k as usize], fence)
                    .await
                    .map_err(|e| at(format!("store error {e}")))?;
                let state = &mut model[k as usize];
                match holds(state, fence, now) {
                    Hold::Live if ok => *state = State::Absent,
                    Hold::Expired => *state = State::Absent,
                    Hold::Stale if !ok => {}
                    hold => {
                        return Err(at(format!(
                            "release returned {ok} with {hold:?} on {state:?}"
                        )))
                    }
                }
            }
            Op::Renew {
                actor,
                key: k,
                lease_ms,
            } => {
                let Some(&fence) = fences.get(&(actor, k)) else {
                    continue;
                };
                let ok = store
                    .renew(&keys[k as usize], fence, Duration::from_millis(lease_ms))
                    .await
                    .map_err(|e| at(format!("store error {e}")))?;
                let state = &mut model[k as usize];
                match holds(state, fence, now) {
                    Hold::Live | Hold::Expired if ok => {
                        if let State::InProgress { until, .. } = state {
                            *until = now + lease_ms;
                        }
                    }
                    Hold::Expired => *state = State::Absent,
                    Hold::Stale if !ok => {}
                    hold => {
                        return Err(at(format!(
                            "renew returned {ok} with {hold:?} on {state:?}"
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

/// How `fence` stands on a key in `state` at `now`.
#[derive(Debug)]
enum Hold {
    /// It holds a live lease: the operation must succeed.
    Live,
    /// It held the lease, which ran out, and nobody took over: either answer.
    Expired,
    /// Someone else holds the key, or it completed, or nothing is there: the
    /// operation must fail and change nothing.
    Stale,
}

fn holds(state: &State, fence: Fence, now: u64) -> Hold {
    match state {
        State::InProgress {
            fence: f, until, ..
        } if *f == fence && now < *until => Hold::Live,
        State::InProgress { fence: f, .. } if *f == fence => Hold::Expired,
        _ => Hold::Stale,
    }
}

fn fp_of(state: &State) -> u8 {
    match state {
        State::InProgress { fp, .. } | State::Completed { fp, .. } => *fp,
        State::Absent => 0,
    }
}

/// Generates `IDEM_MODEL_CASES` sequences of up to 40 steps and checks each
/// against the model; a failure is shrunk to a short sequence and reported.
pub async fn model_interleavings(store: std::sync::Arc<dyn StoreAdmin>, config: StoreConfig) {
    let cases = std::env::var("IDEM_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let handle = tokio::runtime::Handle::current();
    // proptest drives synchronously; each case runs on this runtime.
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            handle
                .block_on(check(&*store, &config, &ops))
                .map_err(TestCaseError::fail)
        });
        if let Err(e) = result {
            panic!("the store departs from the model: {e}");
        }
    });
    eprintln!("model: {cases} generated sequences agreed with the model");
}
