//! Recovery points: an operation of several steps, each committing its
//! business writes together with a note of how far it got, resumes after
//! the last committed step when a retry takes it over (Brandur Leach's
//! atomic phases, inside the idempotency record's own database).
//!
//! The point lives beside the record in the store that shares the
//! application's database (`SqliteStore::phase_with`,
//! `PostgresStore::recovery_point` and `set_recovery_point`). It belongs to
//! the request's fingerprint: a retry of the same request (after a crash, a
//! lease that ran out, or a `5xx` that released the key) finds it; another
//! request reusing the key after its record is gone starts from the start.
//!
//! # Examples
//!
//! ```
//! use idem_core::recovery::{Phases, RecoveryPoint};
//!
//! const TRANSFER: Phases = Phases::new(&["debited", "credited"]);
//! // Nothing committed yet: every phase runs.
//! assert!(TRANSFER.pending(None, "debited").unwrap());
//! // The debit committed before a crash: the retry credits, and only that.
//! let point = RecoveryPoint::new("debited", b"{\"debit\":\"led_1\"}".to_vec());
//! assert!(!TRANSFER.pending(Some(&point), "debited").unwrap());
//! assert!(TRANSFER.pending(Some(&point), "credited").unwrap());
//! ```

use crate::store::StoreError;

/// The last phase of an operation that committed, and the state it left
/// for the phases after it (ids it created, amounts it decided: whatever a
/// resumed execution needs and cannot recompute the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// The phase's name.
    pub phase: String,
    /// Its state, as the application encoded it (JSON, say). Kept small:
    /// it is read at the start of every phase.
    pub state: Vec<u8>,
}

impl RecoveryPoint {
    /// The point after phase `phase`, with `state`.
    pub fn new(phase: impl Into<String>, state: Vec<u8>) -> Self {
        Self {
            phase: phase.into(),
            state,
        }
    }
}

/// The phases of an operation, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases(&'static [&'static str]);

impl Phases {
    /// The phases `names`, in running order.
    pub const fn new(names: &'static [&'static str]) -> Self {
        Self(names)
    }

    /// The names, in running order.
    pub fn names(&self) -> &'static [&'static str] {
        self.0
    }

    /// Whether phase `name` still has to run, given `done`, the record's
    /// recovery point: it does when no phase committed yet or when it comes
    /// after the one that did.
    ///
    /// A point naming a phase this operation does not list (a deployment
    /// renamed or removed it while a request was between phases) is an
    /// error, [`StoreError::UnknownPhase`]: guessing could run a committed
    /// step twice. So is asking about a phase the list does not hold.
    pub fn pending(&self, done: Option<&RecoveryPoint>, name: &str) -> Result<bool, StoreError> {
        let index = |phase: &str| {
            self.0
                .iter()
                .position(|n| *n == phase)
                .ok_or_else(|| StoreError::UnknownPhase {
                    phase: phase.to_owned(),
                    known: self.0.join(", "),
                })
        };
        let at = index(name)?;
        match done {
            None => Ok(true),
            Some(point) => Ok(at > index(&point.phase)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Phases = Phases::new(&["a", "b", "c"]);

    #[test]
    fn phases_after_the_recovery_point_are_pending() {
        let b = RecoveryPoint::new("b", Vec::new());
        let got: Vec<bool> = ["a", "b", "c"]
            .iter()
            .map(|n| P.pending(Some(&b), n).expect("known"))
            .collect();
        assert_eq!(got, [false, false, true]);
        assert!(["a", "b", "c"]
            .iter()
            .all(|n| matches!(P.pending(None, n), Ok(true))));
    }

    #[test]
    fn an_unknown_phase_is_an_error_never_a_guess() {
        let gone = RecoveryPoint::new("renamed", Vec::new());
        let err = P.pending(Some(&gone), "c").expect_err("unknown point");
        assert!(err.to_string().contains("renamed"), "{err}");
        assert!(P.pending(None, "d").is_err());
    }
}
