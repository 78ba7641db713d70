use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use idem_core::problem::DEFAULT_PROBLEM_BASE;
use idem_core::{Policy, Secret, Store, StoreError};
use tower_layer::Layer;

use super::service::Idempotency;
use crate::metrics::{Metrics, RouteMetrics, ValueKind};
use crate::protocol::{BodyTimeouts, KeyRate, Renewals, ScopeQuota};

/// Where the secret behind store keys comes from.
pub(crate) enum SecretSource {
    Fixed(Secret),
    /// Read from the store at first use (see [`Store::shared_secret`]), so a
    /// layer can be built while the store is down. Boxed: it is twice a
    /// `Secret`'s size (its fallback, a lock), and read once per request.
    FromStore(Box<StoreSecret>),
}

/// The store's secret, once read.
pub(crate) struct StoreSecret {
    cell: OnceLock<Secret>,
    /// Used when the store keeps no secret (an in-memory store: its records
    /// die with the process, so a random secret loses nothing). `None`: the
    /// layer was told to use the store's, so a store without one is an error.
    fallback: Option<Secret>,
    /// One read at a time. Why not `OnceCell::get_or_try_init`: while the
    /// store does not answer, each waiter would start its own read after
    /// the one before failed, and requests would queue one store timeout
    /// each. Here every request waits at most one store timeout in all.
    reading: tokio::sync::Mutex<()>,
}

impl StoreSecret {
    fn new(fallback: Option<Secret>) -> Self {
        Self {
            cell: OnceLock::new(),
            fallback,
            reading: tokio::sync::Mutex::new(()),
        }
    }
}

/// Everything the layer needs, shared by every service it makes.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) policy: Policy,
    pub(crate) secret: SecretSource,
    /// Where each request's scope comes from.
    pub(crate) scope: crate::ScopeSource,
    pub(crate) problem_base: String,
    pub(crate) store_timeout: Duration,
    /// How long a covered request's body may take to arrive (from the
    /// first wait for it) and stop between chunks; past either, 408 and the
    /// in-flight slot is freed.
    pub(crate) body_timeouts: BodyTimeouts,
    pub(crate) signing_secret: Option<Secret>,
    pub(crate) max_in_flight: Option<Arc<Admission>>,
    pub(crate) metrics: Metrics,
    /// One series per policy route, then the default; made at first use so
    /// that builder calls in any order agree.
    pub(crate) route_metrics: OnceLock<Vec<Arc<RouteMetrics>>>,
    /// Set once this layer's gauges are in the registry.
    pub(crate) gauges: OnceLock<()>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) renewals: Arc<Renewals>,
    /// Whether executions get an [`IdempotencyContext`](crate::IdempotencyContext).
    pub(crate) request_context: bool,
    /// Whether the request's span carries `traceparent` and `status`.
    pub(crate) trace_context: bool,
    /// Where access lines go; `None`: no access log.
    pub(crate) access_log: Option<Arc<dyn crate::AccessLog>>,
    /// The share of a bounded store's capacity one scope may hold.
    pub(crate) scope_share: f64,
    /// Made at first use from the store's capacity and `scope_share`;
    /// `None` when the store is unbounded or the share is the whole store.
    pub(crate) scope_quota: OnceLock<Option<Arc<ScopeQuota>>>,
    /// The opt-in rate of new keys per scope.
    pub(crate) key_rate: Option<Arc<KeyRate>>,
}

impl Shared {
    /// The per-scope bound on records, if any (see `scope_share`).
    pub(crate) fn scope_quota(&self) -> Option<&ScopeQuota> {
        self.scope_quota
            .get_or_init(|| {
                let capacity = self.store.capacity()?;
                if !(self.scope_share > 0.0 && self.scope_share < 1.0) {
                    return None;
                }
                let max = (capacity as f64 * self.scope_share).ceil() as usize;
                Some(Arc::new(ScopeQuota::new(max)))
            })
            .as_deref()
    }
}

/// The bound on covered requests handled at once. Requests are admitted or
/// refused, never queued, so a counter does what a semaphore would without
/// the lock a semaphore takes on every release.
pub(crate) struct Admission {
    limit: usize,
    count: AtomicUsize,
}

/// One admitted request; leaving gives its place back.
pub(crate) struct Admitted(Arc<Admission>);

impl Admission {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            count: AtomicUsize::new(0),
        }
    }

    /// A place, if fewer than the limit are taken.
    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<Admitted> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(self.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Executions running in their own tasks (SPEC rule 12), counted so that a
/// shutdown can wait for them to store their answers.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Decrements the in-flight count when an execution task ends, however it ends.
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Applies the idempotency contract (SPEC rules 1–12) to a service.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use axum::{routing::post, Router};
/// use idem::{IdempotencyLayer, MemoryStore, Policy};
///
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "charged" }))
///     .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(Policy::default()));
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("backend", &self.shared.store.backend())
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A layer over `store` with the default policy (POST and PATCH on every
    /// route, key required, 24 h TTL, 30 s lease), the scope taken from
    /// `Authorization`, and the secret the store keeps.
    ///
    /// Durable and shared stores (SQLite, Redis, PostgreSQL) keep one secret
    /// for every instance and restart, read at first use, so records match
    /// after a restart and across replicas; a store that keeps none (a
    /// [`MemoryStore`](idem_core::MemoryStore)) gets a random secret per
    /// layer. [`secret`](Self::secret) sets one instead.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                policy: Policy::default(),
                secret: SecretSource::FromStore(Box::new(StoreSecret::new(Some(
                    Secret::generate(),
                )))),
                scope: crate::ScopeSource::default(),
                problem_base: DEFAULT_PROBLEM_BASE.to_owned(),
                store_timeout: Duration::from_secs(5),
                body_timeouts: BodyTimeouts {
                    total: Duration::from_secs(30),
                    idle: Duration::from_secs(30),
                },
                signing_secret: None,
                max_in_flight: None,
                metrics: Metrics::new(),
                route_metrics: OnceLock::new(),
                gauges: OnceLock::new(),
                in_flight: Arc::default(),
                renewals: Arc::default(),
                request_context: true,
                access_log: None,
                trace_context: false,
                scope_share: 0.5,
                scope_quota: OnceLock::new(),
                key_rate: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(s) => f(s),
            None => {
                let s = &*self.shared;
                let mut copy = Shared {
                    store: s.store.clone(),
                    policy: s.policy.clone(),
                    secret: match &s.secret {
                        SecretSource::Fixed(k) => SecretSource::Fixed(k.clone()),
                        SecretSource::FromStore(s) => {
                            SecretSource::FromStore(Box::new(StoreSecret::new(s.fallback.clone())))
                        }
                    },
                    scope: s.scope.clone(),
                    problem_base: s.problem_base.clone(),
                    store_timeout: s.store_timeout,
                    body_timeouts: s.body_timeouts,
                    signing_secret: s.signing_secret.clone(),
                    max_in_flight: s.max_in_flight.clone(),
                    metrics: s.metrics.clone(),
                    route_metrics: OnceLock::new(),
                    gauges: OnceLock::new(),
                    in_flight: s.in_flight.clone(),
                    renewals: Arc::default(),
                    request_context: s.request_context,
                    access_log: s.access_log.clone(),
                    trace_context: s.trace_context,
                    scope_share: s.scope_share,
                    scope_quota: OnceLock::new(),
                    key_rate: s.key_rate.clone(),
                };
                f(&mut copy);
                self.shared = Arc::new(copy);
            }
        }
        // The routes or the registry may have changed.
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.route_metrics = OnceLock::new();
            s.gauges = OnceLock::new();
            s.scope_quota = OnceLock::new();
        }
        self
    }

    /// Sets the policy. The default covers POST and PATCH on every route.
    pub fn policy(self, policy: Policy) -> Self {
        self.with(|s| s.policy = policy)
    }

    /// Sets the secret behind store keys. The default is the store's (see
    /// [`new`](Self::new)).
    pub fn secret(self, secret: Secret) -> Self {
        self.with(|s| s.secret = SecretSource::Fixed(secret))
    }

    /// Uses the secret the store keeps for all its instances
    /// ([`Store::shared_secret`]), read at first use: while the store cannot
    /// be reached, covered requests get 503 like any store failure. Unlike
    /// the default, a store that keeps no secret is an error (503), never a
    /// random secret.
    pub fn secret_from_store(self) -> Self {
        self.with(|s| s.secret = SecretSource::FromStore(Box::new(StoreSecret::new(None))))
    }

    /// Sets the header naming the scope (the user). The default is
    /// `Authorization`; `None` puts every request in one scope. Shorthand
    /// for [`scope`](Self::scope) with [`ScopeSource::Header`] or
    /// [`ScopeSource::Shared`].
    ///
    /// [`ScopeSource::Header`]: crate::ScopeSource::Header
    /// [`ScopeSource::Shared`]: crate::ScopeSource::Shared
    pub fn scope_header(self, header: Option<HeaderName>) -> Self {
        self.scope(match header {
            Some(h) => crate::ScopeSource::Header(h),
            None => crate::ScopeSource::Shared,
        })
    }

    /// Sets where a request's scope (whom its key belongs to) comes from:
    /// a header, or an identity verified from the request (a bearer JWT's
    /// claim, an extension the service's authentication set); see
    /// [`crate::identity`]. A request whose credentials do not verify gets
    /// `401` `unauthenticated` and nothing executes or replays. The
    /// default is the `Authorization` header.
    pub fn scope(self, source: crate::ScopeSource) -> Self {
        self.with(|s| s.scope = source)
    }

    /// Sets the base of problem `type` URIs. The default is `urn:idem:problem:`.
    pub fn problem_base(self, base: impl Into<String>) -> Self {
        let base = base.into();
        self.with(|s| s.problem_base = base)
    }

    /// Sets how long a store call may take before it counts as a failure
    /// (SPEC rule 10). The default is 5 s.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.store_timeout = timeout)
    }

    /// Sets how long a covered request's body may take to arrive, counted
    /// from the first wait for it; a body that takes longer gets `408`
    /// `request-body-timeout`, nothing executes, and its in-flight slot is
    /// freed. The default is 30 s.
    pub fn body_read_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.body_timeouts.total = timeout)
    }

    /// Sets how long a covered request's body may stop arriving (before its
    /// first byte, or between two chunks); a body that stalls longer gets
    /// `408` `request-body-timeout` like one past the body read timeout. A
    /// client trickling a large body is cut off here without waiting for
    /// the total. The default is 30 s.
    pub fn body_idle_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.body_timeouts.idle = timeout)
    }

    /// Sets the secret that signs keys, for routes whose policy has
    /// [`require_signed_keys`](idem_core::RoutePolicy::require_signed_keys):
    /// their requests must carry `KEY.SIGNATURE` issued by
    /// [`idem_core::signed::sign`] for the request's scope. The default is
    /// none (such routes refuse every key).
    pub fn key_signing_secret(self, secret: Secret) -> Self {
        self.with(|s| s.signing_secret = Some(secret))
    }

    /// The share of a bounded store's capacity (a
    /// [`MemoryStore`](idem_core::MemoryStore)'s or a SQLite store's
    /// records) that one scope may hold: past it, that scope's new keys get
    /// 429 `idempotency-scope-full` with `Retry-After`, while its replays
    /// and every other scope's requests go on. The anonymous scope is a
    /// scope like any other. Counted per layer (per instance). The default
    /// is one half; `1.0` (or any value outside `(0, 1)`) turns it off.
    pub fn scope_share(self, share: f64) -> Self {
        self.with(|s| s.scope_share = share)
    }

    /// Limits each scope to `per_second` new keys a second, in bursts of up
    /// to `burst` (a token bucket per scope, per layer): past it, the
    /// scope's new keys get 429 `idempotency-scope-rate-limited` with the
    /// `Retry-After` of its next token, and nothing executes. Replays take
    /// no token. The default is no rate; a rate that is not above zero
    /// turns it off.
    pub fn scope_key_rate(self, per_second: f64, burst: u32) -> Self {
        self.with(|s| {
            s.key_rate = (per_second > 0.0 && per_second.is_finite())
                .then(|| Arc::new(KeyRate::new(per_second, f64::from(burst))));
        })
    }

    /// Bounds the covered requests handled at once: past `limit`, a covered
    /// request is refused with 503 `server-overloaded` (and `Retry-After`)
    /// as soon as its body has arrived, before anything executes. A request
    /// takes its slot only once its body is here, so clients that send
    /// headers and no body (or a byte a second) cannot hold the slots: the
    /// body read timeout ends them. The default is no limit.
    pub fn max_in_flight(self, limit: usize) -> Self {
        self.with(|s| s.max_in_flight = Some(Arc::new(Admission::new(limit))))
    }

    /// Whether an execution's request carries an
    /// [`IdempotencyContext`](crate::IdempotencyContext) extension (the key,
    /// the scope, batch sub-keys). The default is yes; a service that never
    /// reads it, such as a proxy, saves a few allocations per request with
    /// `false`.
    pub fn request_context(self, on: bool) -> Self {
        self.with(|s| s.request_context = on)
    }

    /// Logs one line per request this layer sees, at `info` with target
    /// `idem::access`: method, path, route, status, outcome (`executed`,
    /// `replayed`, `passed-through`, or the refusal's slug), the key's short
    /// hash, and the total and upstream durations. The default is off; the
    /// subscriber decides the format (text, JSON) and where it goes, and a
    /// filter such as `idem::access=off` turns it off again.
    pub fn access_log(self, on: bool) -> Self {
        self.with(|s| {
            s.access_log =
                on.then(|| Arc::new(crate::access::TracingAccessLog) as Arc<dyn crate::AccessLog>)
        })
    }

    /// Whether each covered request's span (`idempotency`) also records the
    /// request's W3C `traceparent` header and the answer's `status`, for a
    /// tracing layer that exports spans (OpenTelemetry) in the client's
    /// trace. The default is no: a header lookup and a field per request
    /// that only an exporter reads.
    pub fn trace_context(self, on: bool) -> Self {
        self.with(|s| s.trace_context = on)
    }

    /// Writes access lines (see [`access_log`](Self::access_log)) to
    /// `sink` instead of as `tracing` events: a buffered writer of the
    /// service's own, a log pipeline. A subscriber that would drop
    /// `idem::access` at `info` still turns them off.
    pub fn access_log_to(self, sink: Arc<dyn crate::AccessLog>) -> Self {
        self.with(|s| s.access_log = Some(sink))
    }

    /// Records metrics into `metrics`, a registry that may be shared with
    /// other layers. The default is a registry of this layer's own, given by
    /// [`metrics_handle`](Self::metrics_handle).
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.with(|s| s.metrics = metrics)
    }

    /// Makes every route's series and this layer's gauges exist in its
    /// registry now, at zero, so alerts on `rate()` or `absent()` work from
    /// the first scrape. Making the first service does it too; call this
    /// when the layer is built long before it serves.
    pub fn publish_metrics(&self) {
        self.shared.publish_metrics();
    }

    /// The registry this layer records into, to expose as `/metrics`.
    pub fn metrics_handle(&self) -> Metrics {
        self.shared.metrics.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// How many executions are running (each in its own task, so that a
    /// client disconnect cannot cancel it).
    pub fn executions_in_flight(&self) -> usize {
        self.shared.in_flight.count.load(Ordering::SeqCst)
    }

    /// Resolves once no execution is running: a graceful shutdown awaits it
    /// (with a deadline) after it stopped accepting requests, so every
    /// execution stores its answer before the process exits.
    pub async fn drained(&self) {
        let in_flight = &self.shared.in_flight;
        loop {
            let notified = in_flight.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up in between is not lost.
            notified.as_mut().enable();
            if in_flight.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    /// How often the renewal task looks for due leases: a sixth of the
    /// shortest lease (so a renewal is at most that late), within 5 ms..1 s.
    pub(crate) fn renewal_tick(&self) -> Duration {
        let shortest = self
            .policy
            .routes
            .iter()
            .map(|(_, p)| p.lease)
            .chain(std::iter::once(self.policy.default.lease))
            .min()
            .unwrap_or(Duration::from_secs(30));
        (shortest / 6).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// Makes every route's series and this layer's gauges exist in the
    /// registry now, at zero, so that `rate()` and `absent()` alerts work
    /// from the first scrape after a start (not from the first request).
    /// Once per layer, however many services it makes.
    pub(crate) fn publish_metrics(&self) {
        self.route_metrics(None);
        self.gauges.get_or_init(|| {
            let backend = self.store.backend();
            let labels = [("backend", backend)];
            if let Some(admission) = &self.max_in_flight {
                let a = admission.clone();
                self.metrics.register(
                    ValueKind::Gauge,
                    "idempotency_requests_in_flight",
                    "Covered requests being handled (bounded by max_in_flight).",
                    &labels,
                    move || a.count.load(Ordering::Relaxed) as f64,
                );
            }
            let running = self.in_flight.clone();
            self.metrics.register(
                ValueKind::Gauge,
                "idempotency_executions_running",
                "Executions running, whose answers are yet to be stored (a shutdown waits for them).",
                &labels,
                move || running.count.load(Ordering::Relaxed) as f64,
            );
        });
    }

    /// The metrics of route `index` (`None`: the default policy).
    pub(crate) fn route_metrics(&self, index: Option<usize>) -> &RouteMetrics {
        let all = self.route_metrics.get_or_init(|| {
            let backend = self.store.backend();
            self.policy
                .routes
                .iter()
                .map(|(p, _)| self.metrics.route(p.as_str(), backend))
                .chain(std::iter::once(self.metrics.route("*", backend)))
                .collect()
        });
        let i = index.unwrap_or(all.len() - 1).min(all.len() - 1);
        &all[i]
    }

    /// The secret behind store keys, when it is known without waiting: a
    /// fixed one, or the store's once it was read.
    pub(crate) fn secret_ready(&self) -> Option<&Secret> {
        match &self.secret {
            SecretSource::Fixed(s) => Some(s),
            SecretSource::FromStore(s) => s.cell.get(),
        }
    }

    /// The secret behind store keys: at most one store timeout, however
    /// many requests wait for it.
    pub(crate) async fn secret(&self) -> Result<&Secret, StoreError> {
        let s = match &self.secret {
            SecretSource::Fixed(s) => return Ok(s),
            SecretSource::FromStore(s) => s,
        };
        if let Some(secret) = s.cell.get() {
            return Ok(secret);
        }
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        let read = async {
            let _one_at_a_time = s.reading.lock().await;
            // Read by the request that held the lock before this one?
            if let Some(secret) = s.cell.get() {
                return Ok(secret);
            }
            let secret = match self.store.shared_secret().await? {
                Some(secret) => secret,
                None => s.fallback.clone().ok_or_else(|| {
                    StoreError::backend(
                        self.store.backend(),
                        "this store keeps no shared secret; configure one (a secret file)",
                    )
                })?,
            };
            Ok(s.cell.get_or_init(|| secret))
        };
        // The deadline counts the wait for the lock too: behind a read that
        // is timing out, the others time out with it instead of each trying
        // again for a whole store timeout.
        match tokio::time::timeout_at(deadline, read).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.store_timeout)),
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared.publish_metrics();
        Idempotency::new(inner, self.shared.clone())
    }
}
