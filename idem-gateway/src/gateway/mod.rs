//! `idem gateway`: a reverse proxy that gives any upstream the SPEC's
//! idempotency semantics. It wraps the same [`IdempotencyLayer`] a Rust
//! service would use around a [`Proxy`](proxy::Proxy), so the contract is
//! implemented once.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use idem_gateway::cli::GatewayArgs;
//! use idem_gateway::gateway::{run, GatewayConfig};
//!
//! let config = GatewayConfig::resolve(&GatewayArgs {
//!     upstream: Some("http://127.0.0.1:3000".into()),
//!     store: Some("memory://".into()),
//!     ..Default::default()
//! })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! run(listener, None, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod admin;
pub mod config;
pub mod proxy;
mod upstream_client;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use idem::layer::BoxError;
use idem::{IdempotencyLayer, Metrics};
use tokio::net::TcpListener;
use tower_layer::Layer;

use anyhow::{bail, Context as _};
pub use config::{GatewayConfig, Runtime};
use proxy::Proxy;

use crate::stores;

/// Serves the gateway on `listener` (and the admin API on `admin`) until
/// `shutdown` resolves; then stops accepting, lets in-flight requests finish
/// and store their answers within the drain timeout, and returns.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let opened = stores::open_with(
        &config.store,
        config.secret_file.as_deref(),
        config.local_cache,
        &config.store_options(),
    )?;
    // A shared store is tried now: a server idem must not run with (a
    // Redis that may evict records) stops the start; one that is down, or a
    // role still lacking a grant, is logged, and requests get 503 until it
    // is fixed (idem starts while its store is down).
    if let Some(Err(e)) = stores::check(&opened, config.store_connect_timeout).await {
        if stores::is_unsafe_server(&e) {
            return Err(e.context(format!("cannot use store {}", config.store)));
        }
        tracing::error!(store = %config.store, error = %format!("{e:#}"), "the store cannot be used yet; covered requests get 503 until it can");
    }
    let metrics = Metrics::new();
    let layer = IdempotencyLayer::new(opened.store.clone())
        .scope_share(config.scope_share)
        .policy(config.policy.clone())
        .scope_header(config.scope_header.clone())
        .problem_base(config.problem_base.clone())
        .store_timeout(config.store_timeout)
        .body_read_timeout(config.body_read_timeout)
        .body_idle_timeout(config.body_idle_timeout)
        .max_in_flight(config.max_in_flight)
        // The upstream is another process: nothing reads the extension.
        .request_context(false)
        .metrics(metrics.clone());
    let layer = match config.scope_key_rate {
        Some((rate, burst)) => layer.scope_key_rate(rate, burst),
        None => layer,
    };
    let layer = match &config.key_signing_secret_file {
        Some(path) => layer.key_signing_secret(idem::Secret::read_file(path).map_err(|e| {
            anyhow::anyhow!(
                "key_signing_secret_file {}: {e}; create one with: openssl rand -hex 32 > {}",
                path.display(),
                path.display()
            )
        })?),
        None => layer,
    };
    let layer = match &opened.secret {
        Some(secret) => layer.secret(secret.clone()),
        None => layer.secret_from_store(),
    };

    let draining = Arc::new(AtomicBool::new(false));
    let (admin_stop, admin_task) = match admin {
        Some(admin) => {
            let addr = admin.local_addr()?;
            let token = match &config.admin_token_file {
                Some(path) => Some(read_token(path)?),
                None => None,
            };
            let state = admin::AdminState {
                metrics,
                store: opened.store.clone(),
                draining: draining.clone(),
                keys: crate::keys::KeyAdmin::new(opened.store.clone(), opened.secret.clone()),
                token,
            };
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let served = axum::serve(admin, admin::router(state))
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the admin listener failed");
                }
            });
            tracing::info!("admin API on http://{addr} (/metrics, /healthz, /readyz)");
            (Some(tx), Some(task))
        }
        None => (None, None),
    };

    tracing::info!(
        "idem gateway listening on http://{} -> {} (store: {}{})",
        listener.local_addr()?,
        config.upstream,
        config.store,
        if config.without_layer {
            ", WITHOUT the idempotency layer"
        } else {
            ""
        }
    );
    let served = if config.without_layer {
        let new_proxy = proxy_maker::<Incoming>(&config);
        serve(
            listener,
            &config,
            move || {
                let proxy = new_proxy();
                move |ip| proxy.for_client(ip)
            },
            shutdown,
        )
        .await
    } else {
        let new_proxy = proxy_maker::<idem::layer::RequestBody<Incoming>>(&config);
        let svc_layer = layer.clone();
        let flag = draining.clone();
        let served = serve(
            listener,
            &config,
            move || {
                let (proxy, layer) = (new_proxy(), svc_layer.clone());
                move |ip| layer.layer(proxy.for_client(ip))
            },
            async move {
                shutdown.await;
                flag.store(true, Ordering::SeqCst);
            },
        )
        .await;
        // Executions whose client went away run on in their own tasks
        // (SPEC rule 12): give them the rest of the drain time, counted
        // from the shutdown signal, to store their answers.
        let left = match &served {
            Ok((draining_since, _)) => config
                .drain_timeout
                .saturating_sub(draining_since.elapsed()),
            Err(_) => Duration::ZERO,
        };
        if layer.executions_in_flight() > 0
            && tokio::time::timeout(left.max(Duration::from_millis(100)), layer.drained())
                .await
                .is_err()
        {
            tracing::warn!(
                in_flight = layer.executions_in_flight(),
                "drain timeout: executions still running are abandoned; their keys stay in progress until their leases end"
            );
        }
        served
    };
    let result = match served {
        Ok((_, workers)) => {
            workers.release().await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    if let Some(tx) = admin_stop {
        let _ = tx.send(());
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// Makes the upstream proxy: one per serving thread, each with its own
/// connection pool, so a thread only uses connections its runtime drives.
fn proxy_maker<B>(config: &GatewayConfig) -> impl Fn() -> Proxy<B> + Send + Sync + 'static
where
    B: Body<Data = Bytes> + proxy::Resend + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (upstream, timeout, problem_base, tls) = (
        config.upstream.clone(),
        config.upstream_timeout,
        config.problem_base.clone(),
        config.upstream_tls.clone(),
    );
    move || Proxy::new(upstream.clone(), timeout, problem_base.clone(), tls.clone())
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

/// Reads the admin API's bearer token: the file's content, trimmed.
fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 {
        anyhow::bail!(
            "the admin token in {} is shorter than 16 characters; write a long random one, e.g. openssl rand -hex 32 > {}",
            path.display(),
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "the admin token file {} can be read by other users; chmod 600 it",
                    path.display()
                );
            }
        }
    }
    Ok(Arc::from(token))
}

/// A connection's service, as hyper runs it on a tokio executor: what the
/// accept loop serves (the gateway, or the bare proxy).
trait ConnService<B>:
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
async fn serve<S, B, F, M>(
    listener: TcpListener,
    config: &GatewayConfig,
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
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    tokio::pin!(shutdown);
    match config.runtime {
        Runtime::Shared => {
            let make = new_maker();
            let builder = http_builder(config);
            let graceful = GracefulShutdown::new();
            loop {
                let Some((stream, peer, permit)) =
                    accept(&listener, &connections, config, &mut shutdown).await
                else {
                    break;
                };
                serve_connection(&builder, &graceful, stream, peer, make(peer.ip()), permit);
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
                let (builder, drain_timeout) = (http_builder(config), config.drain_timeout);
                let counter = open.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("idem-worker-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let make = new_maker();
                            worker(rx, &builder, make, &counter, drain_timeout).await;
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
struct Workers {
    threads: Vec<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Workers {
    /// Lets the serving threads end, and waits for them.
    async fn release(self) {
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
    builder: &auto::Builder<TokioExecutor>,
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
            builder,
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
    builder: &auto::Builder<TokioExecutor>,
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
    let conn = builder
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
