//! A `begin` whose caller gave up on it is undone.
//!
//! Once sent, a `begin` runs whether or not its caller waits for the
//! answer: the layer's store timeout drops the call's future while the
//! statement waits in PostgreSQL (a lock, a busy server), and PostgreSQL
//! commits the record it inserts. That record then holds the key in
//! progress, owned by no one, until its lease ends, and the client, told
//! `503` ("nothing executes, retry"), gets `409` on each retry meanwhile.
//! The fence is made here, before the statement is sent, so the store can
//! undo it: when a `begin` ends in an error or is dropped, [`Abandoned`]
//! runs the fenced `release` on the same connection. A connection runs its
//! statements in the order sent (a lane too: tokio-postgres queues a
//! statement when its future is first polled, and a lane's are written in
//! that order), so the release comes after the begin it undoes; fenced, it
//! removes only the record that begin made, and nothing if the begin never
//! ran or found another's record.

use idem_core::{Fence, StoreKey};

use crate::lanes::Conn;
use crate::PostgresStore;

/// Armed from before a `begin` is sent until its answer arrives; holds the
/// connection the begin runs on.
pub(crate) struct Abandoned<'a> {
    store: &'a PostgresStore,
    key: &'a StoreKey,
    /// The fence of the attempt in flight.
    pub(crate) fence: Fence,
    /// `Some` until dropped: [`Abandoned::disarm`] consumes the guard.
    client: Option<Conn>,
}

impl<'a> Abandoned<'a> {
    pub(crate) fn arm(store: &'a PostgresStore, key: &'a StoreKey, client: Conn) -> Self {
        Self {
            store,
            key,
            fence: Fence(0),
            client: Some(client),
        }
    }

    /// The connection the begin runs on.
    pub(crate) fn conn(&self) -> &Conn {
        #[allow(clippy::expect_used)]
        self.client
            .as_ref()
            .expect("taken only when the guard is dropped")
    }

    /// The begin runs again on `client`, after the one in flight failed
    /// (and so wrote nothing).
    pub(crate) fn replace(&mut self, client: Conn) {
        self.client = Some(client);
    }

    /// The answer arrived: the caller knows what the begin did. The
    /// connection goes back to the pool.
    pub(crate) fn disarm(mut self) {
        self.client = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Outside a runtime (a thread being torn down) there is no one to
        // run it: the lease still ends the record.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, fence) = (self.store.clone(), *self.key, self.fence);
        rt.spawn(async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&&key.0[..], &(fence.0 as i64)];
            match store.execute_hot(&client, &store.sql.release, &params).await {
                Ok(1) => tracing::info!(
                    key = %key.short(),
                    "released the record of a begin whose answer was not awaited"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    key = %key.short(),
                    error = %e,
                    "could not release the record of a begin whose answer was not awaited; the key stays in progress until its lease ends"
                ),
            }
        });
    }
}
