use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use idem_core::problem::DEFAULT_PROBLEM_BASE;
use idem_core::{Policy, Secret, Store, StoreError};
use tower_layer::Layer;

use super::service::Idempotency;

/// Where the secret behind store keys comes from.
pub(crate) enum SecretSource {
    Fixed(Secret),
    /// Read from the store at first use (see [`Store::shared_secret`]), so a
    /// layer can be built while the store is down.
    FromStore(tokio::sync::OnceCell<Secret>),
}

/// Everything the layer needs, shared by every service it makes.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) policy: Policy,
    pub(crate) secret: SecretSource,
    pub(crate) scope_header: Option<HeaderName>,
    pub(crate) problem_base: String,
    pub(crate) store_timeout: Duration,
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
    /// `Authorization`, and a random secret.
    ///
    /// A random secret is right for a [`MemoryStore`](idem_core::MemoryStore);
    /// with a durable or shared store, set the same [`secret`](Self::secret) on
    /// every instance, or records stop matching after a restart.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                policy: Policy::default(),
                secret: SecretSource::Fixed(Secret::generate()),
                scope_header: Some(http::header::AUTHORIZATION),
                problem_base: DEFAULT_PROBLEM_BASE.to_owned(),
                store_timeout: Duration::from_secs(5),
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
                        SecretSource::FromStore(_) => SecretSource::FromStore(Default::default()),
                    },
                    scope_header: s.scope_header.clone(),
                    problem_base: s.problem_base.clone(),
                    store_timeout: s.store_timeout,
                };
                f(&mut copy);
                self.shared = Arc::new(copy);
            }
        }
        self
    }

    /// Sets the policy. The default covers POST and PATCH on every route.
    pub fn policy(self, policy: Policy) -> Self {
        self.with(|s| s.policy = policy)
    }

    /// Sets the secret behind store keys. The default is random per layer.
    pub fn secret(self, secret: Secret) -> Self {
        self.with(|s| s.secret = SecretSource::Fixed(secret))
    }

    /// Uses the secret the store keeps for all its instances
    /// ([`Store::shared_secret`]), read at first use: while the store cannot
    /// be reached, covered requests get 503 like any store failure.
    pub fn secret_from_store(self) -> Self {
        self.with(|s| s.secret = SecretSource::FromStore(Default::default()))
    }

    /// Sets the header naming the scope (the user). The default is
    /// `Authorization`; `None` puts every request in one scope.
    pub fn scope_header(self, header: Option<HeaderName>) -> Self {
        self.with(|s| s.scope_header = header)
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

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }
}

impl Shared {
    /// The secret behind store keys.
    pub(crate) async fn secret(&self) -> Result<&Secret, StoreError> {
        match &self.secret {
            SecretSource::Fixed(s) => Ok(s),
            SecretSource::FromStore(cell) => {
                cell.get_or_try_init(|| async {
                    match tokio::time::timeout(self.store_timeout, self.store.shared_secret()).await
                    {
                        Ok(Ok(Some(s))) => Ok(s),
                        Ok(Ok(None)) => Err(StoreError::backend(
                            self.store.backend(),
                            "this store keeps no shared secret; configure one (a secret file)",
                        )),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(StoreError::Timeout(self.store_timeout)),
                    }
                })
                .await
            }
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self.shared.clone())
    }
}
