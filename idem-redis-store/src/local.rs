//! One connection per thread for the hot path.
//!
//! A multiplexed connection's driver is a task of the runtime that opened
//! it, and every command goes to that task through a channel and comes back
//! through another. With one connection for the whole process, opened at
//! start on the main runtime, every `begin` and `complete` of a request
//! served on another runtime (the gateway's per-core runtimes, a
//! multi-thread runtime's other workers) woke a thread on each side: two
//! cross-thread wake-ups (an eventfd write and a context switch each) per
//! command, which measured as most of the gateway's CPU per first execution
//! (`bench/store-gateway.sh redis`, docs/BENCHMARKS.md). Here each thread that
//! runs store calls opens its own connection, from that thread, so its
//! driver runs where its requests do; commands of concurrent requests on
//! one thread still share (pipeline on) its connection. The first
//! connection (`RedisStore::conn`) keeps the server checks and the admin
//! operations. A failure that says a connection is broken renews every
//! thread's connection (see [`Epoch`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::OnceCell;

use crate::{Conn, RedisStore, RedisStoreError};

type Cell = Arc<OnceCell<Conn>>;

/// One thread's connection of one store, and the store's epoch it belongs
/// to. A cell, so that the calls of one thread that find no connection
/// wait for one opening instead of each opening its own (hundreds of TLS
/// handshakes at once when a busy thread starts).
struct Local {
    store: Weak<Epoch>,
    epoch: u64,
    cell: Cell,
}

thread_local! {
    /// This thread's connection of each live store.
    static CONNS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Counts the times a store call found its connection broken. A thread's
/// connection from an older epoch is replaced before its next use: after a
/// Redis restart, the first failure (a 503, answered before anything ran)
/// renews every thread's connection, so no later command of a request that
/// has begun (its `complete`, the application's own keys) fails on a
/// connection of another thread that had not noticed yet.
#[derive(Default)]
pub(crate) struct Epoch(AtomicU64);

impl RedisStore {
    /// This thread's connection (opened now if it has none of the current
    /// epoch), after the store's first connection has checked the server.
    pub(crate) async fn local_conn(&self) -> Result<Conn, RedisStoreError> {
        if self.conn.get().is_none() {
            self.conn().await?;
        }
        let epoch = self.epoch.0.load(Ordering::Acquire);
        let Ok(cell) = CONNS.try_with(|conns| self.cell(&mut conns.borrow_mut(), epoch)) else {
            // A thread being torn down: the first connection serves.
            return self.conn().await;
        };
        // A failed open leaves the cell empty: the next call tries again.
        Ok(cell.get_or_try_init(|| self.open()).await?.clone())
    }

    /// This thread's cell for the store at `epoch`, a new one if it had
    /// none or one of an older epoch.
    fn cell(&self, conns: &mut Vec<Local>, epoch: u64) -> Cell {
        if let Some(l) = conns.iter().find(|l| self.owns(l) && l.epoch == epoch) {
            return l.cell.clone();
        }
        // Connections of dropped stores, and this store's older one, close
        // here rather than at the thread's end.
        conns.retain(|l| l.store.strong_count() > 0 && !self.owns(l));
        let cell = Cell::default();
        conns.push(Local {
            store: Arc::downgrade(&self.epoch),
            epoch,
            cell: cell.clone(),
        });
        cell
    }

    fn owns(&self, local: &Local) -> bool {
        std::ptr::eq(local.store.as_ptr(), Arc::as_ptr(&self.epoch))
    }

    /// Starts a new epoch when `e` says the connection is broken (a Redis
    /// that went away, a reset, a refused connect) or a command timed out
    /// (redis-rs reports a response timeout as an I/O error): a connection
    /// whose server vanished without closing it (a host crash, a network
    /// partition) only ever times out, and the connection manager does not
    /// replace it by itself. On a merely slow server this costs each thread
    /// one handshake.
    pub(crate) fn saw(&self, e: &redis::RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            self.epoch.0.fetch_add(1, Ordering::AcqRel);
        }
    }
}
