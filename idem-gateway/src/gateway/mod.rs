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
mod listener_tls;
pub mod proxy;
mod serve;
pub(crate) mod upstream_client;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use idem::layer::BoxError;
use idem::{IdempotencyLayer, Metrics};
use tokio::net::TcpListener;
use tower_layer::Layer;

pub use config::{GatewayConfig, Runtime};
pub use listener_tls::ListenerTls;
use proxy::Proxy;
use serve::serve;

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
    metrics.register_process(&crate::stores::BUILT_WITH.join(","));
    publish_store_metrics(&metrics, &opened);
    let layer = IdempotencyLayer::new(opened.store.clone())
        .scope_share(config.scope_share)
        .policy(config.policy.clone())
        .scope(config.scope.clone())
        .problem_base(config.problem_base.clone())
        .store_timeout(config.store_timeout)
        .body_read_timeout(config.body_read_timeout)
        .body_idle_timeout(config.body_idle_timeout)
        .max_in_flight(config.max_in_flight)
        // The upstream is another process: nothing reads the extension.
        .request_context(false)
        .trace_context(config.otlp_endpoint.is_some())
        .metrics(metrics.clone());
    let access = config
        .access_log
        .then(|| crate::access_log::AccessWriter::start(config.access_log_json));
    let layer = match &access {
        Some(writer) => layer.access_log_to(writer.clone()),
        None => layer,
    };
    start_otlp(&config, &metrics)?;
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
    layer.publish_metrics();
    let errors = &proxy::UPSTREAM_ERRORS;
    for (kind, counter) in [
        ("connect", &errors.connect),
        ("timeout", &errors.timeout),
        ("reset", &errors.reset),
        ("body", &errors.body),
    ] {
        metrics.register(
            idem::ValueKind::Counter,
            "idem_upstream_errors_total",
            "Upstream calls that failed, by how: connect (nothing was sent), timeout (no answer within upstream_timeout), reset (the exchange broke before the answer), body (the answer broke off or stalled).",
            &[("kind", kind)],
            move || counter.load(Ordering::Relaxed) as f64,
        );
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let (open, max) = (connections.clone(), config.max_connections);
    metrics.register(
        idem::ValueKind::Gauge,
        "idem_client_connections",
        "Client connections open now (bounded by max_connections).",
        &[],
        move || max.saturating_sub(open.available_permits()) as f64,
    );

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
                upstream: match &config.readyz_upstream {
                    Some(path) => Some(Arc::new(admin::UpstreamCheck::new(
                        &config.upstream,
                        path,
                        config.upstream_tls.clone(),
                    )?)),
                    None => None,
                },
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

    if let Some(tls) = config.listener_tls.clone() {
        reload_on_sighup(tls)?;
    }
    tracing::info!(
        "idem gateway listening on {}://{} -> {} (store: {}{})",
        if config.listener_tls.is_some() {
            "https"
        } else {
            "http"
        },
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
            connections,
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
            connections,
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
    if let Some(writer) = access {
        writer.flush();
    }
    #[cfg(feature = "otlp")]
    crate::otlp::flush(Duration::from_secs(2)).await;
    if let Some(tx) = admin_stop {
        let _ = tx.send(());
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// Starts exporting covered requests' spans when `otlp_endpoint` is set,
/// with their counts on `/metrics`.
#[cfg(feature = "otlp")]
fn start_otlp(config: &GatewayConfig, metrics: &Metrics) -> anyhow::Result<()> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(());
    };
    let tls = match endpoint.scheme_str() {
        Some("https") => Some(Arc::new(upstream_client::tls_config(None)?)),
        _ => None,
    };
    crate::otlp::start(endpoint, &config.otlp_service_name, tls)?;
    for (result, read) in [
        ("sent", (|| crate::otlp::counts().0) as fn() -> u64),
        ("dropped", || crate::otlp::counts().1),
    ] {
        metrics.register(
            idem::ValueKind::Counter,
            "idem_otlp_spans_total",
            "Spans exported to the OpenTelemetry collector (sent), or lost (dropped: the queue was full, or the collector refused them or could not be reached).",
            &[("result", result)],
            move || read() as f64,
        );
    }
    tracing::info!(endpoint = %endpoint, service = %config.otlp_service_name, "exporting covered requests' spans over OTLP");
    Ok(())
}

#[cfg(not(feature = "otlp"))]
fn start_otlp(_: &GatewayConfig, _: &Metrics) -> anyhow::Result<()> {
    Ok(())
}

/// Reads the listener's certificate again on each SIGHUP (new connections
/// use it; open ones keep theirs). A failed reload keeps the one in use.
fn reload_on_sighup(tls: Arc<ListenerTls>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP (certificate reloads)")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.cert_file().display(),
                    "SIGHUP: reloaded the TLS certificate; new connections use it"
                ),
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "SIGHUP: cannot reload the TLS certificate; still serving the one loaded before"
                ),
            }
        }
    });
    Ok(())
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
    let clients_https = config.listener_tls.is_some();
    move || {
        Proxy::new(upstream.clone(), timeout, problem_base.clone(), tls.clone())
            .clients_over_https(clients_https)
    }
}

/// The gateway's own series about its store: a memory store's records and
/// bytes, the local cache's entries and hits.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "redis", feature = "postgres")),
    allow(irrefutable_let_patterns)
)] // A build with the memory store only has no other backend.
fn publish_store_metrics(metrics: &Metrics, opened: &stores::OpenedStore) {
    use idem::ValueKind::{Counter, Gauge};
    if let stores::Backend::Memory(m) = &opened.backend {
        let (records, bytes) = (m.clone(), m.clone());
        metrics.register(
            Gauge,
            "idem_memory_store_records",
            "Records a memory:// store holds (bounded by memory_capacity).",
            &[],
            move || records.len() as f64,
        );
        metrics.register(
            Gauge,
            "idem_memory_store_bytes",
            "Bytes a memory:// store's records account for (bounded by memory_max_bytes).",
            &[],
            move || bytes.bytes() as f64,
        );
    }
    if let Some(cache) = &opened.cache {
        let (entries, hits) = (cache.clone(), cache.clone());
        metrics.register(
            Gauge,
            "idem_local_cache_entries",
            "Completed records held by the local cache (bounded by local_cache).",
            &[],
            move || entries.len() as f64,
        );
        metrics.register(
            Counter,
            "idem_local_cache_hits_total",
            "Covered requests answered from the local cache, without asking the store.",
            &[],
            move || hits.hits() as f64,
        );
    }
}

/// Reads the admin API's bearer token: the file's content, trimmed.
pub(crate) fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
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
