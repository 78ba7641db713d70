//! One key's record as [`MemoryStore`](super::MemoryStore) keeps it.
//!
//! A [`Record`] in the table took 152 bytes per entry (with the key) and a
//! completed answer three allocations (its header list, the buffer of its
//! header values and body, and that buffer's shared header): about 560
//! bytes of memory per small answer. A slot takes 104 bytes per entry, and
//! its answer is one allocation holding the encoding the durable stores
//! keep ([`StoredResponse::encode`]); a replay reads its header values and
//! body as slices of it, without copying.

use bytes::Bytes;

use crate::fingerprint::Fingerprint;
use crate::record::{DecodeError, Fence, Record, RecordState, StoredResponse};

/// Bytes accounted to every record whatever its answer: the map entry (key
/// and slot, 104 bytes) with the hash table's slack and the answer's
/// allocation header, measured at about this much per record with small
/// answers (`cargo run --release -p idem-core --example record_memory`).
pub const RECORD_OVERHEAD: usize = 256;

#[derive(Debug)]
pub(super) struct Slot {
    fingerprint: Fingerprint,
    /// The lease's end while in progress, the TTL's end once completed (ms
    /// since the epoch).
    deadline_ms: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    InProgress(Fence),
    /// [`StoredResponse::encode`]'s bytes, in an allocation of their own:
    /// nothing else (the buffer the layer read the answer into, say) is
    /// kept alive with them.
    Completed(Bytes),
}

impl Slot {
    pub(super) fn in_progress(fingerprint: Fingerprint, fence: Fence, lease_until_ms: u64) -> Self {
        Self {
            fingerprint,
            deadline_ms: lease_until_ms,
            state: State::InProgress(fence),
        }
    }

    /// Completes this slot with `answer` (encoded) until `expires_at_ms`.
    pub(super) fn complete(&mut self, answer: Bytes, expires_at_ms: u64) {
        self.state = State::Completed(answer);
        self.deadline_ms = expires_at_ms;
    }

    /// Whether the record counts at `now_ms` (rules 8 and 9).
    pub(super) fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.deadline_ms
    }

    /// The holder's fence while in progress.
    pub(super) fn fence(&self) -> Option<Fence> {
        match self.state {
            State::InProgress(fence) => Some(fence),
            State::Completed(_) => None,
        }
    }

    /// Renews the lease of an in-progress slot held with `fence`.
    pub(super) fn renew(&mut self, fence: Fence, lease_until_ms: u64) -> bool {
        if self.fence() != Some(fence) {
            return false;
        }
        self.deadline_ms = lease_until_ms;
        true
    }

    /// The bytes this slot accounts for in the store's budget.
    pub(super) fn bytes(&self) -> usize {
        match &self.state {
            State::InProgress(_) => RECORD_OVERHEAD,
            State::Completed(answer) => RECORD_OVERHEAD + answer.len(),
        }
    }

    /// The record, its answer decoded (header values and body are slices of
    /// the slot's bytes).
    pub(super) fn to_record(&self) -> Result<Record, DecodeError> {
        let state = match &self.state {
            State::InProgress(fence) => RecordState::InProgress {
                fence: *fence,
                lease_until_ms: self.deadline_ms,
            },
            State::Completed(answer) => RecordState::Completed {
                response: StoredResponse::decode_shared(answer)?,
                expires_at_ms: self.deadline_ms,
            },
        };
        Ok(Record {
            fingerprint: self.fingerprint,
            state,
        })
    }
}

/// `response` encoded in an allocation of exactly its size.
pub(super) fn encode(response: &StoredResponse) -> Bytes {
    Bytes::from(response.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_entry_is_104_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 72);
        assert_eq!(std::mem::size_of::<(crate::scope::StoreKey, Slot)>(), 104);
    }
}
