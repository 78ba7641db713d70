//! Records: what the store holds for a (scope, key), and their binary encoding.
//!
//! # Examples
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderName, HeaderValue};
//! use idem_core::record::StoredResponse;
//!
//! let response = StoredResponse {
//!     status: 201,
//!     headers: vec![(HeaderName::from_static("content-type"), HeaderValue::from_static("application/json"))],
//!     body: Bytes::from_static(b"{\"id\":\"pay_1\"}"),
//!     body_omitted: None,
//! };
//! let bytes = response.encode();
//! assert_eq!(StoredResponse::decode(&bytes).unwrap(), response);
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::fingerprint::Fingerprint;
use crate::random;

/// A fencing token: proves which holder may complete or release a record.
///
/// Fences are never per-key counters: a key that is released and begun again
/// would restart its count and hand an old holder's number to a new one.
/// Each process draws one random 64-bit base and counts up from it, so a
/// fence is unique within a process, and two processes sharing a store
/// collide only if their bases land within a few billion of each other
/// (about one chance in 2^32 even after 2^32 fences). Fences need to be
/// unique, not secret (clients never see them), so a syscall per fence for
/// fresh randomness would buy nothing.
///
/// Each thread takes its numbers from the process's count in blocks of
/// [`FENCE_BLOCK`], so that making a fence is not an atomic operation on a
/// counter every core writes (measured on the gateway's first executions:
/// that shared cache line cost more than the rest of `begin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence(pub u64);

/// How many fences a thread takes from the process's count at a time.
const FENCE_BLOCK: u64 = 1024;

impl Fence {
    /// A new fence, different from every other this process made.
    pub fn generate() -> Self {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            // The next number of this thread's block, and the block's end.
            static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let n = BLOCK.with(|b| {
            let (mut next, mut end) = b.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(FENCE_BLOCK, Ordering::Relaxed);
                end = next + FENCE_BLOCK;
            }
            b.set((next + 1, end));
            next
        });
        let base = *BASE.get_or_init(random::nonzero_u64);
        // Zero is never a fence (a store may use it as "none").
        Self(base.wrapping_add(n).max(1))
    }
}

/// A response as stored: status, headers in order (repeats kept), body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Headers in the order the handler produced them; repeated names kept.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, byte for byte (empty when `body_omitted`).
    pub body: Bytes,
    /// `Some(len)` when the body was larger than the stored-response limit and
    /// was not stored: a replay says so instead of executing again.
    pub body_omitted: Option<u64>,
}

/// What an execution holds while it runs: its record's key and fence, and
/// how long the answer is kept once stored. A store that shares a database
/// with the application completes the record with it inside the
/// application's own transaction (`SqliteStore::complete_with`,
/// `PostgresStore::complete_in`), so that the business write and the stored
/// answer commit together or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRecord {
    /// The record's key.
    pub key: crate::StoreKey,
    /// This execution's fence: the completion is refused if the record
    /// carries another one.
    pub fence: Fence,
    /// How long the answer is kept.
    pub ttl: std::time::Duration,
}

/// The state of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Someone holds the key and is executing.
    InProgress {
        /// The holder's fence.
        fence: Fence,
        /// When the lease ends, in ms since the epoch, unless renewed.
        lease_until_ms: u64,
    },
    /// The execution finished; its answer is kept until `expires_at_ms`.
    Completed {
        /// The stored answer.
        response: StoredResponse,
        /// When the record expires, in ms since the epoch.
        expires_at_ms: u64,
    },
}

/// What the store holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that created it.
    pub fingerprint: Fingerprint,
    /// In progress or completed.
    pub state: RecordState,
}

impl Record {
    /// When the record stops counting (lease end or TTL end), in ms.
    pub fn deadline_ms(&self) -> u64 {
        match &self.state {
            RecordState::InProgress { lease_until_ms, .. } => *lease_until_ms,
            RecordState::Completed { expires_at_ms, .. } => *expires_at_ms,
        }
    }

    /// Whether the record counts at `now_ms` (SPEC rules 8 and 9: an expired
    /// lease or TTL is treated as no record).
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.deadline_ms()
    }

    /// What this live record means for a request with `fingerprint`, at
    /// `now_ms`: another request's key (rule 6), an execution in progress
    /// with its lease's remaining time (rule 5), or the answer to replay
    /// (rule 4). Every store and the local cache decide with this; whether
    /// the record is live (rules 8 and 9) is for them to check first.
    pub fn into_begin(self, fingerprint: &Fingerprint, now_ms: u64) -> Begin {
        if self.fingerprint != *fingerprint {
            return Begin::Mismatch;
        }
        match self.state {
            RecordState::InProgress { lease_until_ms, .. } => Begin::InProgress {
                lease_remaining: Duration::from_millis(lease_until_ms.saturating_sub(now_ms)),
            },
            RecordState::Completed { response, .. } => Begin::Completed(response),
        }
    }

    /// [`into_begin`](Self::into_begin), with the record's expiry when the
    /// answer is `Completed` (what [`Store::begin_expiring`] returns).
    ///
    /// [`Store::begin_expiring`]: crate::store::Store::begin_expiring
    pub fn into_begin_expiring(
        self,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> (Begin, Option<u64>) {
        let deadline = self.deadline_ms();
        let begun = self.into_begin(fingerprint, now_ms);
        let expiry = matches!(begun, Begin::Completed(_)).then_some(deadline);
        (begun, expiry)
    }
}

/// The outcome of [`Store::begin`](crate::store::Store::begin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// No live record existed: one is now `in_progress` and the caller holds it.
    Started(Fence),
    /// Someone else holds a live lease on the same request.
    InProgress {
        /// Time left on that lease.
        lease_remaining: Duration,
    },
    /// The same request completed before: here is its answer.
    Completed(StoredResponse),
    /// A live record exists for a different request (SPEC rule 6).
    Mismatch,
}

/// A stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored response is corrupt: {0}; delete the key (idem keys delete) to let the request execute again")]
pub struct DecodeError(&'static str);

impl DecodeError {
    /// A decode error saying what is wrong.
    pub fn new(what: &'static str) -> Self {
        Self(what)
    }
}

const VERSION: u8 = 1;

impl StoredResponse {
    /// A compact binary encoding: version, status, flags, headers, body.
    /// Bodies are stored raw (no base64), so binary bodies cost nothing extra.
    pub fn encode(&self) -> Vec<u8> {
        let hdr_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.as_bytes().len())
            .sum();
        // Exact: a store may keep this vector as it is (as `Bytes`).
        let omitted = if self.body_omitted.is_some() { 8 } else { 0 };
        let mut out = Vec::with_capacity(16 + omitted + hdr_len + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.push(u8::from(self.body_omitted.is_some()));
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            let n = name.as_str().as_bytes();
            out.extend_from_slice(&(n.len() as u16).to_be_bytes());
            out.extend_from_slice(n);
            out.extend_from_slice(&(value.as_bytes().len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        if let Some(len) = self.body_omitted {
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.body);
        debug_assert_eq!(out.len(), out.capacity());
        out
    }

    /// Decodes [`encode`](Self::encode)'s output, checking every length and
    /// header so corrupt data is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_shared(&Bytes::copy_from_slice(data))
    }

    /// [`decode`](Self::decode) without copying: the header values and the
    /// body are slices of `data` (a store that keeps the encoding in memory
    /// replays from it as it is).
    pub fn decode_shared(data: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader(data);
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown encoding version"));
        }
        let status = r.u16()?;
        if !(100..=999).contains(&status) {
            return Err(DecodeError("status out of range"));
        }
        let flags = r.u8()?;
        if flags > 1 {
            return Err(DecodeError("unknown flags"));
        }
        let count = r.u32()? as usize;
        let mut headers = Vec::with_capacity(count.min(256));
        let slice = |r: &Reader<'_>, part: &[u8]| {
            let end = data.len() - r.0.len();
            data.slice(end - part.len()..end)
        };
        for _ in 0..count {
            let n = r.u16()? as usize;
            let name = HeaderName::from_bytes(r.take(n)?)
                .map_err(|_| DecodeError("invalid header name"))?;
            let v = r.u32()? as usize;
            let value = r.take(v)?;
            let value = HeaderValue::from_maybe_shared(slice(&r, value))
                .map_err(|_| DecodeError("invalid header value"))?;
            headers.push((name, value));
        }
        let body_omitted = if flags == 1 { Some(r.u64()?) } else { None };
        let len = usize::try_from(r.u64()?).map_err(|_| DecodeError("body too long"))?;
        let body = r.take(len)?;
        let body = slice(&r, body);
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            status,
            headers,
            body,
            body_omitted,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_unique_across_threads_and_blocks() {
        // Enough per thread to cross several blocks of FENCE_BLOCK.
        let per_thread = (FENCE_BLOCK * 3 + 7) as usize;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| Fence::generate())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let fences = t.join().expect("thread ran");
            assert!(fences.iter().all(|f| f.0 != 0), "zero is never a fence");
            for f in fences {
                assert!(all.insert(f), "fence {f:?} was made twice");
            }
        }
        assert_eq!(all.len(), per_thread * 8);
    }

    #[test]
    fn roundtrip_binary_and_repeated_headers() {
        let r = StoredResponse {
            status: 200,
            headers: vec![
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("a=1"),
                ),
                (HeaderName::from_static("x-y"), HeaderValue::from_static("")),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("b=2"),
                ),
            ],
            body: Bytes::from((0u8..=255).collect::<Vec<_>>()),
            body_omitted: None,
        };
        assert_eq!(StoredResponse::decode(&r.encode()), Ok(r.clone()));
        let o = StoredResponse {
            body_omitted: Some(1 << 33),
            body: Bytes::new(),
            ..r
        };
        assert_eq!(StoredResponse::decode(&o.encode()), Ok(o.clone()));
        // Every truncation is an error, never a panic.
        let enc = o.encode();
        for i in 0..enc.len() {
            assert!(StoredResponse::decode(&enc[..i]).is_err());
        }
    }
}
