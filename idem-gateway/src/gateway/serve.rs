//! The accept loop: connections taken under `max_connections`, handed to
//! the serving threads (`runtime = "per-core"`) or served on the shared
//! runtime, each served by hyper (HTTP/1.1 and HTTP/2), then drained on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use idem::layer::BoxError;
use tokio::net::TcpListener;

use super::{GatewayConfig, ListenerTls, Runtime};

/// What every connection is served with: hyper's builder, and TLS with its
/// handshake's time limit when the listener serves TLS.
#[derive(Clone)]
struct ConnSetup {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<ListenerTls>>,
    handshake_timeout: Duration,
}

impl ConnSetup {
    fn new(config: &GatewayConfig) -> Self {
        Self {
            builder: http_builder(config),
            tls: config.listener_tls.clone(),
            // As long as a client may take for its headers: the handshake
            // comes before them.
            handshake_timeout: config.header_read_timeout,
        }
    }
}

/// Answers a connection over `max_connections` with 503 and closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, problem_base: String) {
    use tokio::io::AsyncWriteExt;
    let answer = idem::Problem::new(
        idem::ProblemKind::Overloaded,
        "too many open connections; retry after the Retry-After delay",
    )
    .with_retry_after(1)
    .to_http1(&problem_base);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection's service, as hyper runs it on a tokio executor: what the
/// accept loop serves (the gateway, or the bare proxy).
pub(super) trait ConnService<B>:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: tower_service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A connection handed to a serving thread, with its place under
/// `max_connections`.
type Handoff = (
    std::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// The accept loop, for any service (the gateway, or the bare proxy the
/// benchmarks compare it with). `new_maker` is called once per serving
/// thread for the function that makes each connection's service, so that
/// what it holds (the upstream connection pool) belongs to that thread.
/// Returns when the connections have drained, with the instant the shutdown
/// began and the serving threads of [`Runtime::PerCore`], whose runtimes
/// stay up (for executions still finishing in tasks of their own) until
/// [`Workers::release`].
pub(super) async fn serve<S, B, F, M>(
    listener: TcpListener,
    config: &GatewayConfig,
    connections: Arc<tokio::sync::Semaphore>,
    new_maker: M,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(tokio::time::Instant, Workers)>
where
    M: Fn() -> F + Send + Sync + 'static,
    F: Fn(IpAddr) -> S,
    S: ConnService<B>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    tokio::pin!(shutdown);
    match config.runtime {
        Runtime::Shared => {
            let make = new_maker();
            let setup = ConnSetup::new(config);
            let graceful = GracefulShutdown::new();
            loop {
                let Some((stream, peer, permit)) =
                    accept(&listener, &connections, config, &mut shutdown).await
                else {
                    break;
                };
                serve_connection(&setup, &graceful, stream, peer, make(peer.ip()), permit);
            }
            drop(listener);
            let draining_since = tokio::time::Instant::now();
            tracing::info!(
                connections = graceful.count(),
                "shutting down: no new connections; letting in-flight requests finish"
            );
            drain(graceful, config.drain_timeout).await;
            Ok((draining_since, Workers::default()))
        }
        Runtime::PerCore => {
            let threads = config.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let new_maker = Arc::new(new_maker);
            let mut workers = Workers::default();
            let mut senders = Vec::with_capacity(threads);
            let mut drained = Vec::with_capacity(threads);
            for i in 0..threads {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
                let open = Arc::new(AtomicUsize::new(0));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a serving thread's runtime")?;
                let new_maker = new_maker.clone();
                let (setup, drain_timeout) = (ConnSetup::new(config), config.drain_timeout);
                let counter = open.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("idem-worker-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let make = new_maker();
                            worker(rx, &setup, make, &counter, drain_timeout).await;
                            let _ = done_tx.send(());
                            // Keep this runtime up while executions started
                            // here finish in tasks of their own, and while
                            // other threads may use store connections it runs.
                            let _ = release_rx.await;
                        });
                    })
                    .context("cannot start a serving thread")?;
                senders.push((tx, open));
                drained.push(done_rx);
                workers.threads.push((thread, release_tx));
            }
            let mut lost_thread = false;
            loop {
                let Some((stream, peer, permit)) =
                    accept(&listener, &connections, config, &mut shutdown).await
                else {
                    break;
                };
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cannot hand the connection over");
                        continue;
                    }
                };
                // The thread with the fewest open connections takes it.
                let Some((tx, open)) = senders
                    .iter()
                    .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
                else {
                    break;
                };
                open.fetch_add(1, Ordering::Relaxed);
                if tx.send((stream, peer, permit)).is_err() {
                    open.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!("a serving thread has stopped; stopping the gateway");
                    lost_thread = true;
                    break;
                }
            }
            drop(listener);
            let draining_since = tokio::time::Instant::now();
            tracing::info!(
                connections = senders
                    .iter()
                    .map(|(_, open)| open.load(Ordering::Relaxed))
                    .sum::<usize>(),
                "shutting down: no new connections; letting in-flight requests finish"
            );
            // Closing the channels tells each thread to drain.
            drop(senders);
            for done in drained {
                let _ = done.await;
            }
            if lost_thread {
                // Only a bug ends a serving thread early: exit non-zero so
                // that a supervisor restarts the gateway.
                bail!(
                    "a serving thread stopped unexpectedly (see the log); the gateway has stopped"
                );
            }
            Ok((draining_since, workers))
        }
    }
}

/// The serving threads of [`Runtime::PerCore`], kept up until released.
#[derive(Default)]
pub(super) struct Workers {
    threads: Vec<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Workers {
    /// Lets the serving threads end, and waits for them.
    pub(super) async fn release(self) {
        for (thread, release) in self.threads {
            let _ = release.send(());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// One serving thread of [`Runtime::PerCore`]: serves the connections handed
/// to it until the channel closes, then drains them.
async fn worker<S, B>(
    mut handed: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    setup: &ConnSetup,
    make: impl Fn(IpAddr) -> S,
    open: &Arc<AtomicUsize>,
    drain_timeout: Duration,
) where
    S: ConnService<B>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Counts the connection out when it ends.
    struct Open(Arc<AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer, permit)) = handed.recv().await {
        let counted = Open(open.clone());
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot take the connection over");
                continue;
            }
        };
        serve_connection(
            setup,
            &graceful,
            stream,
            peer,
            make(peer.ip()),
            (permit, counted),
        );
    }
    drain(graceful, drain_timeout).await;
}

/// The next connection to serve, or `None` once `shutdown` resolves. A
/// connection over `max_connections` is answered 503 and closed here.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<tokio::sync::Semaphore>,
    config: &GatewayConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut *shutdown => return None,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: say so and hang up, instead of holding
            // buffers for a connection there is no room for.
            tokio::spawn(refuse_connection(stream, config.problem_base.clone()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, permit));
    }
}

/// HTTP/1.1 and h2c, with the hostile-client limits.
fn http_builder(config: &GatewayConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.h2_max_streams);
    builder
}

/// Serves one connection in a task of its own; `guard` lives as long as it.
fn serve_connection<S, B>(
    setup: &ConnSetup,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    service: S,
    guard: impl Send + 'static,
) where
    S: ConnService<B>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(tls) = &setup.tls {
        // The handshake runs in the connection's own task, so a slow or
        // silent client holds up no other; the acceptor is the one current
        // now (a SIGHUP reload changes it for later connections only).
        let (acceptor, watcher) = (tls.acceptor(), graceful.watcher());
        let (builder, timeout) = (setup.builder.clone(), setup.handshake_timeout);
        tokio::spawn(async move {
            let _guard = guard;
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake did not finish in time");
                    return;
                }
            };
            let conn = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        return;
    }
    let conn = setup
        .builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// Lets the watched connections finish, for `timeout` at most.
async fn drain(graceful: GracefulShutdown, timeout: Duration) {
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout of {timeout:?} reached with requests still in flight");
    }
}
