//! An opt-in rate of new keys per scope: a token bucket per scope and per
//! instance. A scope past its rate gets 429 `idempotency-scope-rate-limited`
//! with the `Retry-After` of its next token; its replays and every other
//! scope's requests go on. Only new records take a token: a retry that
//! replays costs nothing.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::quota::{ScopeTags, TagMap};

/// Buckets kept before full ones are dropped (a full bucket is the same as
/// none): bounds the map under a flood of scopes.
const PRUNE_AT: usize = 4096;

pub(crate) struct KeyRate {
    /// Tokens per second.
    rate: f64,
    /// The most tokens a bucket holds.
    burst: f64,
    tags: ScopeTags,
    // One lock: held for a map update, never across an `.await`.
    buckets: Mutex<TagMap<(f64, Instant)>>,
}

impl KeyRate {
    /// `rate` new keys a second per scope, in bursts of up to `burst`.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tags: ScopeTags::new(),
            buckets: Mutex::default(),
        }
    }

    /// The tag of `scope` (`None`: the anonymous scope).
    pub(crate) fn tag(&self, scope: Option<&[u8]>) -> u64 {
        self.tags.tag(scope)
    }

    /// Takes a token for `tag`, or says how long until the next one.
    pub(crate) fn take(&self, tag: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(tag).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::KeyRate;

    #[tokio::test(start_paused = true)]
    async fn a_scope_gets_its_burst_then_its_rate() {
        let r = KeyRate::new(2.0, 3.0);
        let (a, b) = (r.tag(Some(b"alice")), r.tag(None));
        for _ in 0..3 {
            assert!(r.take(a).is_ok());
        }
        let wait = r.take(a).err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(r.take(b).is_ok(), "another scope is not affected");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(r.take(a).is_ok(), "one token after half a second");
        assert!(r.take(a).is_err());
    }
}
