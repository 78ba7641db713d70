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
//! (`bench/redis-gateway.sh`, docs/BENCHMARKS.md). Here each thread that
//! runs store calls opens its own connection, from that thread, so its
//! driver runs where its requests do; commands of concurrent requests on
//! one thread still share (pipeline on) its connection. The first
//! connection (`RedisStore::conn`) keeps the server checks and the admin
//! operations.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use tokio::sync::OnceCell;

use crate::{Conn, RedisStore, RedisStoreError};

type Cell = Arc<OnceCell<Conn>>;

thread_local! {
    /// This thread's connection of each live store.
    static CONNS: RefCell<Vec<(Weak<()>, Cell)>> = const { RefCell::new(Vec::new()) };
}

impl RedisStore {
    /// This thread's connection (opened now if it has none yet), after the
    /// store's first connection has checked the server.
    pub(crate) async fn local_conn(&self) -> Result<Conn, RedisStoreError> {
        if self.conn.get().is_none() {
            self.conn().await?;
        }
        let Ok(cell) = CONNS.try_with(|conns| self.cell(&mut conns.borrow_mut())) else {
            // A thread being torn down: the first connection serves.
            return self.conn().await;
        };
        // A failed open leaves the cell empty: the next call tries again.
        Ok(cell.get_or_try_init(|| self.open()).await?.clone())
    }

    fn cell(&self, conns: &mut Vec<(Weak<()>, Cell)>) -> Cell {
        let me = Arc::as_ptr(&self.alive);
        if let Some((_, cell)) = conns.iter().find(|(w, _)| w.as_ptr() == me) {
            return cell.clone();
        }
        // Connections of dropped stores close here, not at the thread's end.
        conns.retain(|(w, _)| w.strong_count() > 0);
        let cell = Cell::default();
        conns.push((Arc::downgrade(&self.alive), cell.clone()));
        cell
    }
}
