//! A `begin` whose caller gave up on it is undone.
//!
//! Once sent, a `begin` runs whether or not its caller waits for the
//! answer: the layer's store timeout drops the call's future while the
//! command sits in Redis's queue (a busy or restarting server), and a
//! broken connection loses the answer, not the command. The record it
//! made then holds the key in progress, owned by no one, until its lease
//! ends, and the client, told `503` ("nothing executes, retry"), gets
//! `409` on each retry meanwhile. Since the fence is made here, before
//! the command is sent, the store can undo it: when a `begin` ends in an
//! error or is dropped, [`Abandoned`] sends `release` with that fence on
//! the same connection. Redis runs a connection's commands in the order
//! sent, so the release comes after the begin it undoes; fenced, it
//! removes only the record that begin made, and nothing if the begin never
//! ran or found another's record.

use idem_core::{Fence, StoreKey};

use crate::{Conn, RedisStore, RELEASE};

/// Armed from before a `begin` is sent until its answer arrives.
pub(crate) struct Abandoned<'a> {
    store: &'a RedisStore,
    key: &'a StoreKey,
    fence: Fence,
    conn: Option<Conn>,
}

impl<'a> Abandoned<'a> {
    pub(crate) fn arm(store: &'a RedisStore, key: &'a StoreKey, fence: Fence, conn: &Conn) -> Self {
        Self {
            store,
            key,
            fence,
            conn: Some(conn.clone()),
        }
    }

    /// The answer arrived: the caller knows what the begin did.
    pub(crate) fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Outside a runtime (a thread being torn down) there is no one to
        // send it: the lease still ends the record.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut release = RELEASE.key(self.store.key(self.key));
        release.arg(&self.fence.0.to_be_bytes()[..]);
        let short = self.key.short();
        rt.spawn(async move {
            match release.invoke_async::<i64>(&mut conn).await {
                Ok(1) => tracing::info!(
                    key = %short,
                    "released the record of a begin whose answer was not awaited"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    key = %short,
                    error = %e,
                    "could not release the record of a begin whose answer was not awaited; the key stays in progress until its lease ends"
                ),
            }
        });
    }
}
