//! The gateway's configuration, in one pass: the `--config` file's table,
//! then the flags (clap reads each flag's `IDEM_*` variable when the flag is
//! absent) written over its top-level keys, then the table read into typed
//! settings whose defaults live in one place ([`Settings::default`] here,
//! [`idem::RoutePolicy`]'s for route keys), then one [`validate`] of what
//! the types cannot say. Errors name the key (`routes[2].ttl`), or the flag
//! when the value came from one. docs/config.md documents every key.

mod flags;
mod preflight;
mod read;
mod route;
mod scope;
mod store;
mod summary;
#[cfg(test)]
mod tests;
mod upstream;
mod values;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use idem::{PathPattern, Policy};
use serde::Deserialize;

use self::flags::flag_values;
use self::preflight::preflight;
use self::read::{read, read_file, take_keys, Names};
use self::route::{RouteEntry, RouteSettings};
pub use self::scope::JwtKeys;
use self::store::store_timeout;
pub use self::upstream::{Runtime, Upstream};
use self::values::{field_names, Number, Secs, Size};
pub use self::values::{parse_duration, parse_size};
use crate::cli::GatewayArgs;
use crate::stores::StoreUrl;

/// The top-level keys that are not route keys, with their defaults: the
/// one place they are written (a test holds `--help`'s `[default: …]` texts
/// to them).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    upstream: Option<String>,
    upstream_ca_file: Option<PathBuf>,
    listen: String,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    admin_listen: String,
    admin_token_file: Option<PathBuf>,
    readyz_upstream: Option<String>,
    access_log: bool,
    otlp_endpoint: Option<String>,
    otlp_service_name: String,
    key_signing_secret_file: Option<PathBuf>,
    store: String,
    secret_file: Option<PathBuf>,
    scope_header: String,
    scope: Option<String>,
    jwt_hs256_secret_file: Option<PathBuf>,
    jwt_jwks_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_leeway: Secs,
    local_cache: Size,
    problem_base: String,
    upstream_timeout: Secs,
    drain_timeout: Secs,
    header_read_timeout: Secs,
    body_read_timeout: Secs,
    body_idle_timeout: Secs,
    max_header_bytes: Size,
    /// Unset: 5 s, or a quarter of the shortest lease if that is shorter.
    store_timeout: Option<Secs>,
    max_connections: Size,
    max_in_flight: Size,
    h2_max_streams: Size,
    memory_capacity: Size,
    memory_max_bytes: Size,
    sqlite_capacity: Size,
    sqlite_max_bytes: Size,
    redis_key_prefix: String,
    redis_allow_eviction: bool,
    postgres_schema: String,
    postgres_statements: String,
    postgres_pool_size: Size,
    postgres_lanes: Size,
    store_connect_timeout: Secs,
    store_ca_file: Option<PathBuf>,
    scope_share: Number,
    scope_key_rate: Option<Number>,
    /// Unset: one second's worth of `scope_key_rate`, at least 1.
    scope_key_burst: Option<Size>,
    workers: Option<Size>,
    runtime: Runtime,
    /// Read apart: each entry's route keys are layered over the top level's.
    routes: Vec<toml::Table>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            upstream: None,
            upstream_ca_file: None,
            listen: "127.0.0.1:8080".into(),
            tls_cert_file: None,
            tls_key_file: None,
            admin_listen: "127.0.0.1:9090".into(),
            admin_token_file: None,
            readyz_upstream: None,
            access_log: true,
            otlp_endpoint: None,
            otlp_service_name: "idem".into(),
            key_signing_secret_file: None,
            store: "sqlite://idem.db".into(),
            secret_file: None,
            scope_header: "authorization".into(),
            scope: None,
            jwt_hs256_secret_file: None,
            jwt_jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Secs(Duration::from_secs(30)),
            local_cache: Size(0),
            problem_base: idem::problem::DEFAULT_PROBLEM_BASE.to_owned(),
            upstream_timeout: Secs(Duration::from_secs(30)),
            drain_timeout: Secs(Duration::from_secs(30)),
            header_read_timeout: Secs(Duration::from_secs(10)),
            body_read_timeout: Secs(Duration::from_secs(30)),
            body_idle_timeout: Secs(Duration::from_secs(30)),
            max_header_bytes: Size(64 << 10),
            store_timeout: None,
            max_connections: Size(10_000),
            max_in_flight: Size(4_096),
            h2_max_streams: Size(100),
            memory_capacity: Size(1_000_000),
            memory_max_bytes: Size(1 << 30),
            sqlite_capacity: Size(10_000_000),
            sqlite_max_bytes: Size(10 << 30),
            redis_key_prefix: "idem:".into(),
            redis_allow_eviction: false,
            postgres_schema: "public".into(),
            postgres_statements: "unnamed".into(),
            postgres_pool_size: Size(16),
            postgres_lanes: Size(2),
            store_connect_timeout: Secs(Duration::from_secs(2)),
            store_ca_file: None,
            scope_share: Number(0.5),
            scope_key_rate: None,
            scope_key_burst: None,
            workers: None,
            runtime: Runtime::default(),
            routes: Vec::new(),
        }
    }
}

/// The store timeout when none is set (see [`Settings::store_timeout`]).
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway's resolved settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// The CA that issues an `https://` upstream's certificate (`None`: the
    /// system's roots).
    pub upstream_ca_file: Option<PathBuf>,
    /// The TLS settings of an `https://` upstream, made from
    /// `upstream_ca_file` once at start.
    pub upstream_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The address to listen on.
    pub listen: String,
    /// TLS on the listener (`tls_cert_file`, `tls_key_file`), reloaded on
    /// SIGHUP; `None`: cleartext (HTTP/1.1 and h2c).
    pub listener_tls: Option<std::sync::Arc<super::ListenerTls>>,
    /// The admin listener's address; `None` turns it off.
    pub admin_listen: Option<String>,
    /// The admin API's bearer token file; `None`: the admin API is off.
    pub admin_token_file: Option<PathBuf>,
    /// A path on the upstream that `/readyz` asks (`GET`, a 2xx or 3xx
    /// within a second); `None`: the upstream is not checked.
    pub readyz_upstream: Option<String>,
    /// One `info` line per request (target `idem::access`).
    pub access_log: bool,
    /// Access lines as JSON objects rather than text (the `--log-format`,
    /// which is the command line's: set by whoever starts the gateway).
    pub access_log_json: bool,
    /// Where covered requests' spans go (OTLP/HTTP); `None`: nowhere.
    pub otlp_endpoint: Option<http::Uri>,
    /// The `service.name` of the exported spans.
    pub otlp_service_name: String,
    /// The secret that signs keys, for routes that require signed keys.
    pub key_signing_secret_file: Option<PathBuf>,
    /// The store.
    pub store: StoreUrl,
    /// The secret file, if not the store's default.
    pub secret_file: Option<PathBuf>,
    /// Where a request's scope (whom its key belongs to) comes from.
    pub scope: idem::ScopeSource,
    /// The `scope` value (`header:authorization`, `jwt:sub`, `none`).
    pub scope_value: String,
    /// What the scope source trusts, for `--check` (`the verified "sub"
    /// claim (JWKS …)`).
    pub scope_shown: String,
    /// The `jwt_*` keys as given (the verifier is in `scope`).
    pub jwt: JwtKeys,
    /// Entries of the local cache of completed records (0: off).
    pub local_cache: usize,
    /// The base of problem `type` URIs.
    pub problem_base: String,
    /// Wait for the upstream's headers, and between its body chunks.
    pub upstream_timeout: Duration,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a client may take to send its headers.
    pub header_read_timeout: Duration,
    /// How long a covered request's body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// How long a covered request's body may stop arriving (408 past it).
    pub body_idle_timeout: Duration,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// How long a store call may take.
    pub store_timeout: Duration,
    /// Open client connections at most; past it a new connection gets 503
    /// and is closed.
    pub max_connections: usize,
    /// Covered requests handled at once at most; past it 503
    /// `server-overloaded`.
    pub max_in_flight: usize,
    /// Concurrent HTTP/2 streams one client connection may open at most.
    pub h2_max_streams: u32,
    /// Records a `memory://` store holds at most; past it new keys get 503
    /// `idempotency-store-full`.
    pub memory_capacity: usize,
    /// Threads serving requests (`None`: one per CPU core).
    pub workers: Option<usize>,
    /// How the serving threads share the work.
    pub runtime: Runtime,
    /// Bytes the records of a `memory://` store account for at most; past
    /// it new keys get 503 `idempotency-store-full`.
    pub memory_max_bytes: usize,
    /// Records a `sqlite://` store holds at most; past it new keys get 503
    /// `idempotency-store-full`.
    pub sqlite_capacity: u64,
    /// The share of a bounded store's capacity one scope may hold (0 to 1;
    /// 1: no per-scope bound).
    pub scope_share: f64,
    /// New keys one scope may start per second, and the burst; `None`: no
    /// rate.
    pub scope_key_rate: Option<(f64, u32)>,
    /// Bytes the records of a `sqlite://` store account for at most (each
    /// answer plus `ROW_OVERHEAD` per record).
    pub sqlite_max_bytes: u64,
    /// The prefix of every Redis key.
    pub redis_key_prefix: String,
    /// Use a Redis that may evict records (warned) instead of refusing it.
    pub redis_allow_eviction: bool,
    /// The PostgreSQL schema holding idem's tables.
    pub postgres_schema: String,
    /// How statements reach PostgreSQL.
    pub postgres_statements: crate::stores::Statements,
    /// PostgreSQL connections in the pool.
    pub postgres_pool_size: usize,
    /// PostgreSQL connections the hot path's statements share.
    pub postgres_lanes: usize,
    /// How long connecting to Redis or PostgreSQL may take.
    pub store_connect_timeout: Duration,
    /// The CA that signs a TLS store's certificate; `None`: the system's.
    pub store_ca_file: Option<PathBuf>,
    /// Which requests are covered, and how.
    pub policy: Policy,
    /// Proxy without the layer (benchmark baseline only).
    pub without_layer: bool,
}

impl GatewayConfig {
    /// Reads `args.config` (if any) and applies the flags over it.
    pub fn resolve(args: &GatewayArgs) -> anyhow::Result<Self> {
        let table = match &args.config {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        Self::resolve_table(args, table)
    }

    /// Resolves the configuration `text` (TOML, as in a `--config` file)
    /// under the flags `args` (whose `config` is ignored).
    pub fn from_toml(text: &str, args: &GatewayArgs) -> anyhow::Result<Self> {
        let table = text.parse().map_err(|e| anyhow!("config: {e}"))?;
        Self::resolve_table(args, table)
    }

    fn resolve_table(args: &GatewayArgs, mut table: toml::Table) -> anyhow::Result<Self> {
        let mut flags = HashSet::new();
        for (key, value) in flag_values(args) {
            table.insert(key.to_owned(), value);
            flags.insert(key);
        }
        let names = Names(flags);
        let route_keys = field_names::<RouteSettings>();
        let defaults = take_keys(&mut table, route_keys);
        let top = [field_names::<Settings>(), route_keys];
        let settings: Settings = read(table, "", &top).map_err(|e| names.rename(e))?;
        let default_policy = read::<RouteSettings>(defaults.clone(), "", &top)
            .and_then(|r| r.policy(""))
            .map_err(|e| names.rename(e))?;
        let mut policy = Policy {
            routes: Vec::new(),
            default: default_policy,
        };
        for (i, mut entry) in settings.routes.iter().cloned().enumerate() {
            let at = format!("routes[{i}].");
            // The entry's own route keys over the top level's.
            let mut keys = defaults.clone();
            keys.extend(take_keys(&mut entry, route_keys));
            let known = [field_names::<RouteEntry>(), route_keys];
            let own: RouteEntry = read(entry, &at, &known)?;
            let pattern = PathPattern::parse(&own.path).map_err(|e| anyhow!("{at}path: {e}"))?;
            let mut p = read::<RouteSettings>(keys, &at, &known)?.policy(&at)?;
            own.apply_webhook(&at, &mut p)?;
            policy.routes.push((pattern, p));
        }
        validate(settings, policy, &names, args.bench_without_layer)
    }
}

/// Everything the types cannot say, checked once, into the resolved form.
fn validate(
    s: Settings,
    policy: Policy,
    names: &Names,
    without_layer: bool,
) -> anyhow::Result<GatewayConfig> {
    let n = |key: &str| names.of(key);
    let upstream_text = s.upstream.clone().ok_or_else(|| {
        anyhow!("no upstream: pass --upstream http://HOST:PORT (or set IDEM_UPSTREAM, or upstream in the config file)")
    })?;
    let upstream = Upstream::parse(&upstream_text).with_context(|| {
        format!(
            "{}: {:?}",
            n("upstream"),
            crate::stores::redact(&upstream_text)
        )
    })?;
    let (upstream_tls, listener_tls) = upstream::tls_settings(&s, &upstream, names)?;
    let store: StoreUrl = s.store.parse().with_context(|| n("store"))?;
    store.check_built().with_context(|| n("store"))?;
    let admin_listen = match s.admin_listen.as_str() {
        "none" | "off" | "" => None,
        a => Some(a.to_owned()),
    };
    let (scope, scope_value, scope_shown) = scope::scope_source(&s, names)?;
    let jwt = JwtKeys {
        hs256_secret_file: s.jwt_hs256_secret_file.clone(),
        jwks_file: s.jwt_jwks_file.clone(),
        issuer: s.jwt_issuer.clone(),
        audience: s.jwt_audience.clone(),
        leeway: s.jwt_leeway.0,
    };
    preflight(&s, admin_listen.as_deref(), names)?;
    for (Secs(d), key) in [
        (s.upstream_timeout, "upstream_timeout"),
        (s.header_read_timeout, "header_read_timeout"),
        (s.body_read_timeout, "body_read_timeout"),
        (s.body_idle_timeout, "body_idle_timeout"),
        (s.store_connect_timeout, "store_connect_timeout"),
        (
            s.store_timeout.unwrap_or(Secs(DEFAULT_STORE_TIMEOUT)),
            "store_timeout",
        ),
    ] {
        if d.is_zero() {
            bail!("{}: must be more than 0", n(key));
        }
    }
    let Size(max_header_bytes) = s.max_header_bytes;
    if !(8192..=(16 << 20)).contains(&max_header_bytes) {
        bail!("max_header_bytes: must be between 8KiB and 16MiB, got {max_header_bytes}");
    }
    for (Size(v), key) in [
        (s.max_connections, "max_connections"),
        (s.max_in_flight, "max_in_flight"),
        (s.h2_max_streams, "h2_max_streams"),
        (s.memory_capacity, "memory_capacity"),
        (s.sqlite_capacity, "sqlite_capacity"),
    ] {
        if v == 0 {
            bail!("{}: must be at least 1", n(key));
        }
    }
    let Ok(h2_max_streams) = u32::try_from(s.h2_max_streams.0) else {
        bail!("{}: must be at most {}", n("h2_max_streams"), u32::MAX);
    };
    for (Size(v), key) in [
        (s.memory_max_bytes, "memory_max_bytes"),
        (s.sqlite_max_bytes, "sqlite_max_bytes"),
    ] {
        if v < 1 << 20 {
            bail!("{}: must be at least 1MiB, got {v}", n(key));
        }
    }
    let Number(scope_share) = s.scope_share;
    if !(scope_share > 0.0 && scope_share <= 1.0) {
        bail!(
            "{}: expected a fraction above 0 and at most 1 (0.5: half the store; 1: no per-scope bound), got {scope_share}",
            n("scope_share")
        );
    }
    let scope_key_rate = match s.scope_key_rate {
        None => None,
        Some(Number(rate)) => {
            if rate <= 0.0 {
                bail!(
                    "{}: expected new keys per second, above 0 (20, or 0.5), got {rate}",
                    n("scope_key_rate")
                );
            }
            let burst = match s.scope_key_burst {
                // One second's worth.
                None => rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
                Some(Size(b)) => match u32::try_from(b) {
                    Ok(b) if b >= 1 => b,
                    _ => bail!(
                        "{}: must be between 1 and {}, got {b}",
                        n("scope_key_burst"),
                        u32::MAX
                    ),
                },
            };
            Some((rate, burst))
        }
    };
    let workers = match s.workers {
        Some(Size(w)) if !(1..=1024).contains(&w) => {
            bail!("{}: must be between 1 and 1024, got {w}", n("workers"))
        }
        w => w.map(|Size(w)| w),
    };
    let store_timeout = store_timeout(&s, &policy, names)?;
    let (postgres_statements, postgres_pool_size, postgres_lanes) =
        store::server_settings(&s, names)?;
    let signed_routes = std::iter::once(&policy.default)
        .chain(policy.routes.iter().map(|(_, p)| p))
        .any(|p| p.require_signed_keys && p.webhook.is_none());
    if let Some(path) = &s.readyz_upstream {
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            bail!(
                "{}: must be a path on the upstream such as /healthz, got {path:?}",
                n("readyz_upstream")
            );
        }
    }
    let otlp_endpoint = match s
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty())
    {
        None => None,
        Some(e) => {
            if cfg!(not(feature = "otlp")) {
                bail!(
                    "{}: this idem was built without the otlp feature; build it with --features otlp",
                    n("otlp_endpoint")
                );
            }
            let uri: http::Uri = e.parse().map_err(|err| {
                anyhow!(
                    "{}: {err}; write it as http://HOST:4318",
                    n("otlp_endpoint")
                )
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                bail!(
                    "{}: must be an http:// or https:// URL such as http://127.0.0.1:4318, got {e:?}",
                    n("otlp_endpoint")
                );
            }
            Some(uri)
        }
    };
    if signed_routes && s.key_signing_secret_file.is_none() {
        bail!("require_signed_keys: routes require signed keys, but no key_signing_secret_file (--key-signing-secret-file) is set");
    }
    Ok(GatewayConfig {
        upstream,
        upstream_ca_file: s.upstream_ca_file,
        upstream_tls,
        listen: s.listen,
        listener_tls,
        admin_listen,
        admin_token_file: s.admin_token_file,
        readyz_upstream: s.readyz_upstream,
        access_log: s.access_log,
        access_log_json: false,
        otlp_endpoint,
        otlp_service_name: std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|n| !n.is_empty() && s.otlp_service_name == "idem")
            .unwrap_or(s.otlp_service_name),
        key_signing_secret_file: s.key_signing_secret_file,
        store,
        secret_file: s.secret_file,
        scope,
        scope_value,
        scope_shown,
        jwt,
        local_cache: s.local_cache.0,
        problem_base: s.problem_base,
        upstream_timeout: s.upstream_timeout.0,
        drain_timeout: s.drain_timeout.0,
        header_read_timeout: s.header_read_timeout.0,
        body_read_timeout: s.body_read_timeout.0,
        body_idle_timeout: s.body_idle_timeout.0,
        max_header_bytes,
        store_timeout,
        max_connections: s.max_connections.0,
        max_in_flight: s.max_in_flight.0,
        h2_max_streams,
        memory_capacity: s.memory_capacity.0,
        memory_max_bytes: s.memory_max_bytes.0,
        sqlite_capacity: s.sqlite_capacity.0 as u64,
        scope_share,
        scope_key_rate,
        sqlite_max_bytes: s.sqlite_max_bytes.0 as u64,
        workers,
        runtime: s.runtime,
        redis_key_prefix: s.redis_key_prefix,
        redis_allow_eviction: s.redis_allow_eviction,
        postgres_schema: s.postgres_schema,
        postgres_statements,
        postgres_pool_size,
        postgres_lanes,
        store_connect_timeout: s.store_connect_timeout.0,
        store_ca_file: s.store_ca_file,
        policy,
        without_layer,
    })
}
