//! A lossy link: a TCP relay that loses the first answers on their way back,
//! as a network does, so clients' retries can be tested against a real
//! server (the server executed; the client never heard).
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let server: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
//! let link = idem_testkit::net::LossyLink::start(server, 1).await?;
//! // Requests to link.url() reach the server; the first answer is lost.
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The running relay; it stops when dropped.
pub struct LossyLink {
    addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LossyLink {
    /// Relays to `server`, losing the first `lose` answers: each such
    /// connection's request is delivered, the answer read, and the
    /// connection to the client closed without a byte of it.
    pub async fn start(server: SocketAddr, lose: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let budget = Arc::new(AtomicUsize::new(lose));
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (budget, dropped) = (budget.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(server).await else {
                        return;
                    };
                    let lose = budget
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                        .is_ok();
                    relay(client, upstream, lose, &dropped).await;
                });
            }
        });
        Ok(Self {
            addr,
            dropped,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers lost so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, lose: bool, dropped: &AtomicUsize) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    if lose {
        // Wait for the server's answer, then hang up on the client.
        let mut buf = [0u8; 4096];
        if matches!(ur.read(&mut buf).await, Ok(n) if n > 0) {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
        up.abort();
        drop(cw);
        return;
    }
    let _ = tokio::io::copy(&mut ur, &mut cw).await;
    let _ = cw.shutdown().await;
    up.abort();
}
