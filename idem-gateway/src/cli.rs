//! Command-line flags (clap derive). Every operator-facing flag has an
//! `IDEM_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::stores::StoreUrl;

/// idem: make any POST safe to retry with the Idempotency-Key header.
#[derive(Debug, Parser)]
#[command(name = "idem", version, about, long_about = None)]
pub struct Cli {
    /// What to log: a level (error, warn, info, debug, trace, off), or RUST_LOG-style filters by target, as in info,idem=debug,hyper=warn.
    #[arg(long, global = true, env = "IDEM_LOG", value_name = "FILTER", default_value = "info", value_parser = parse_log_filter)]
    pub log: tracing_subscriber::filter::Targets,
    /// Log format: text (for people) or json (one object per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "IDEM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log`: a level, or `target=level` filters after an optional default
/// level (`info,idem=debug,hyper=warn`).
fn parse_log_filter(s: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    s.trim().parse().map_err(|e| {
        format!("{e}; write a level (error, warn, info, debug, trace, off) or filters such as info,idem=debug,hyper=warn")
    })
}

/// How logs are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span's fields (route, backend, key hash, outcome).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: a reverse proxy that makes an upstream's POSTs idempotent.
    Gateway(Box<GatewayArgs>),
    /// Run the demo payments service behind the idempotency layer.
    Demo(DemoArgs),
    /// Print a new idempotency key (UUID v4 by default).
    Keygen(KeygenArgs),
    /// Inspect, delete, purge and count records in a store.
    Keys(KeysArgs),
    /// Check any server's Idempotency-Key support from outside (creates real operations on the target; docs/conformance.md).
    Conformance(Box<crate::conformance::ConformanceArgs>),
    /// Create or upgrade idem's tables in a PostgreSQL store, once, as a role that may create tables (then the gateway's role needs only to read and write them).
    Migrate(MigrateArgs),
}

/// Flags of `idem migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store: postgres://USER@HOST:PORT/DB (other stores need no migration).
    #[arg(long, env = "IDEM_STORE")]
    pub store: StoreUrl,
    /// PostgreSQL schema holding idem's tables (created if missing).
    #[arg(long, env = "IDEM_POSTGRES_SCHEMA", default_value = "public")]
    pub postgres_schema: String,
    /// Also grant this role what the gateway needs of the tables (schema usage; select, insert, update, delete), and nothing more.
    #[arg(long, value_name = "ROLE")]
    pub grant: Option<String>,
    /// How long connecting may take.
    #[arg(long, env = "IDEM_STORE_CONNECT_TIMEOUT", default_value = "10s", value_parser = crate::gateway::config::parse_duration)]
    pub store_connect_timeout: std::time::Duration,
    /// PEM file of the CA that signs the server's TLS certificate (sslmode=verify-ca|verify-full).
    #[arg(long, env = "IDEM_STORE_CA_FILE", value_name = "PATH")]
    pub store_ca_file: Option<PathBuf>,
}

/// Flags of `idem keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The store: sqlite://PATH, redis://…, redis+cluster://…, postgres://….
    #[arg(
        long,
        global = true,
        env = "IDEM_STORE",
        default_value = "sqlite://idem.db"
    )]
    pub store: StoreUrl,
    /// File holding the secret behind store keys (default for SQLite: PATH.secret; shared stores keep one).
    #[arg(long, global = true, env = "IDEM_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Prefix of the Redis keys (the gateway's redis_key_prefix).
    #[arg(
        long,
        global = true,
        env = "IDEM_REDIS_KEY_PREFIX",
        default_value = "idem:"
    )]
    pub redis_key_prefix: String,
    /// PostgreSQL schema of idem's tables (the gateway's postgres_schema).
    #[arg(
        long,
        global = true,
        env = "IDEM_POSTGRES_SCHEMA",
        default_value = "public"
    )]
    pub postgres_schema: String,
    /// PEM file of the CA that signs the store's TLS certificate (the gateway's store_ca_file).
    #[arg(long, global = true, env = "IDEM_STORE_CA_FILE", value_name = "PATH")]
    pub store_ca_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// `idem keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Show the record of a key: state, fingerprint, expiry, the stored answer.
    Inspect {
        /// The Idempotency-Key as the client sent it.
        key: String,
        /// The scope header's value the client sent (e.g. "Bearer sk_live_…"); omit for the anonymous scope.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove the record of a key, whatever its state: its next request executes again.
    Delete {
        /// The Idempotency-Key as the client sent it.
        key: String,
        /// The scope header's value the client sent; omit for the anonymous scope.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove every expired record now (the gateway also sweeps on its own).
    PurgeExpired {
        /// Records removed per batch (one transaction each).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Count records by state.
    Stats,
    /// Issue a signed key (KEY.SIGNATURE) for a scope (a user), for routes that require signed keys.
    Sign {
        /// The key (a new UUID v4 when omitted).
        key: Option<String>,
        /// The scope the key is for, exactly as the gateway derives it: the scope header's value as requests send it (e.g. "Bearer sk_live_…"), or the verified claim with scope jwt:CLAIM (e.g. the subject "user_42").
        #[arg(long, visible_alias = "user", value_name = "SCOPE")]
        scope: String,
        /// File holding the key-signing secret: the gateway's --key-signing-secret-file.
        #[arg(
            long = "key-signing-secret-file",
            visible_alias = "signing-secret-file",
            env = "IDEM_KEY_SIGNING_SECRET_FILE",
            value_name = "PATH"
        )]
        signing_secret_file: PathBuf,
    },
    /// Check a signed key for a scope: exit 0 and print the key, or exit 1 and say why.
    Verify {
        /// The signed key, KEY.SIGNATURE.
        signed: String,
        /// The scope the key was issued for (see `idem keys sign --help`).
        #[arg(long, visible_alias = "user", value_name = "SCOPE")]
        scope: String,
        /// File holding the key-signing secret: the gateway's --key-signing-secret-file.
        #[arg(
            long = "key-signing-secret-file",
            visible_alias = "signing-secret-file",
            env = "IDEM_KEY_SIGNING_SECRET_FILE",
            value_name = "PATH"
        )]
        signing_secret_file: PathBuf,
    },
}

/// Flags of `idem gateway`. Each overrides the same key of the `--config`
/// file (docs/config.md); unset, the file's value or the default applies.
#[derive(Debug, Args, Default, Clone)]
pub struct GatewayArgs {
    /// The service to protect: http://HOST:PORT[/PREFIX], or https://… (TLS, HTTP/2 by ALPN).
    #[arg(long, env = "IDEM_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// PEM file of the CA that issues an https:// upstream's certificate [default: the system's roots].
    #[arg(long, env = "IDEM_UPSTREAM_CA_FILE", value_name = "PATH")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "IDEM_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve TLS with this certificate chain (PEM; with --tls-key-file), HTTP/2 or 1.1 by ALPN; SIGHUP reloads it.
    #[arg(long, env = "IDEM_TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, env = "IDEM_TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// Where records live: sqlite://PATH, memory://, redis://… (rediss:// for TLS), redis+cluster://… (rediss+cluster://), postgres://… (?sslmode=verify-full for TLS) [default: sqlite://idem.db].
    #[arg(long, env = "IDEM_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// A TOML file with these settings and per-route rules (docs/config.md).
    #[arg(long, env = "IDEM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, try a Redis or PostgreSQL store, print both, and exit (0: valid and the store usable, 1: the store cannot be used, 2: invalid).
    #[arg(long)]
    pub check: bool,
    /// How long a completed answer is kept: seconds, or 500ms, 30s, 15m, 24h, 7d [default: 24h].
    #[arg(long, env = "IDEM_TTL", value_name = "DURATION")]
    pub ttl: Option<String>,
    /// The execution lease, renewed while the upstream works; a crashed holder blocks its key this long [default: 30s].
    #[arg(
        long = "lock-timeout",
        env = "IDEM_LOCK_TIMEOUT",
        value_name = "DURATION"
    )]
    pub lock_timeout: Option<String>,
    /// Largest covered request body: bytes, or 64KiB, 1MiB; larger ones get 413 [default: 1MiB].
    #[arg(long, env = "IDEM_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<String>,
    /// Largest response body stored in full: bytes, or 64KiB, 1MiB [default: 1MiB].
    #[arg(long, env = "IDEM_MAX_STORED_RESPONSE", value_name = "SIZE")]
    pub max_stored_response: Option<String>,
    /// Header naming the user (scope); "none" puts every request in one scope [default: authorization].
    #[arg(long, env = "IDEM_SCOPE_HEADER", value_name = "NAME")]
    pub scope_header: Option<String>,
    /// Whom a key belongs to: header:NAME (a header's value; header:x-user-id when a trusted proxy sets it), jwt:CLAIM (a verified bearer token's claim, as in jwt:sub; 401 when it does not verify) or none [default: header:authorization].
    #[arg(long, env = "IDEM_SCOPE", value_name = "SOURCE")]
    pub scope: Option<String>,
    /// File holding the HS256 secret that verifies bearer tokens, for scope jwt:CLAIM.
    #[arg(long, env = "IDEM_JWT_HS256_SECRET_FILE", value_name = "PATH")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// File holding the issuer's JSON Web Key Set (RS256, ES256, …), for scope jwt:CLAIM.
    #[arg(long, env = "IDEM_JWT_JWKS_FILE", value_name = "PATH")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The issuer (iss) bearer tokens must name [default: any].
    #[arg(long, env = "IDEM_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// The audience (aud) bearer tokens must name [default: any].
    #[arg(long, env = "IDEM_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// How far past exp (or before nbf) a bearer token is still accepted [default: 30s].
    #[arg(long, env = "IDEM_JWT_LEEWAY", value_name = "DURATION")]
    pub jwt_leeway: Option<String>,
    /// File holding the secret behind store keys [default for SQLite: PATH.secret; shared stores keep one].
    #[arg(long, env = "IDEM_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Address of the admin listener (/metrics, /healthz, /readyz); "none" turns it off [default: 127.0.0.1:9090].
    #[arg(long, env = "IDEM_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// File holding the bearer token of the admin API (/admin/…); without it the admin API is off.
    #[arg(long, env = "IDEM_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// A path on the upstream that /readyz asks (GET; ready on a 2xx or 3xx within a second), so a load balancer stops sending while the upstream is down [default: off].
    #[arg(long, env = "IDEM_READYZ_UPSTREAM", value_name = "PATH")]
    pub readyz_upstream: Option<String>,
    /// One info line per request on standard error (method, path, route, status, outcome, key hash, durations), in the --log-format [default: on].
    #[arg(long, env = "IDEM_ACCESS_LOG", value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: Option<bool>,
    /// Send each covered request's span to this OpenTelemetry collector (OTLP/HTTP, JSON), e.g. http://127.0.0.1:4318; OTEL_EXPORTER_OTLP_ENDPOINT is read when unset [default: off].
    #[arg(long, env = "IDEM_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The service.name of exported spans; OTEL_SERVICE_NAME is read when unset [default: idem].
    #[arg(long, env = "IDEM_OTLP_SERVICE_NAME", value_name = "NAME")]
    pub otlp_service_name: Option<String>,
    /// Require keys signed for their user (KEY.SIGNATURE; see `idem keys sign`) on every covered route.
    #[arg(long, env = "IDEM_REQUIRE_SIGNED_KEYS", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_signed_keys: bool,
    /// File holding the secret that signs keys (needed with signed keys).
    #[arg(long, env = "IDEM_KEY_SIGNING_SECRET_FILE", value_name = "PATH")]
    pub key_signing_secret_file: Option<PathBuf>,
    /// How long to wait for the upstream's response headers, and between its body chunks [default: 30s].
    #[arg(long, env = "IDEM_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish [default: 30s].
    #[arg(long, env = "IDEM_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// How long a client may take to send its request headers [default: 10s].
    #[arg(long, env = "IDEM_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// How long a covered request's body may take to arrive; a slower one gets 408 and frees its in-flight slot [default: 30s].
    #[arg(long, env = "IDEM_BODY_READ_TIMEOUT", value_name = "DURATION")]
    pub body_read_timeout: Option<String>,
    /// How long a covered request's body may stop arriving (before its first byte or between two chunks); past it 408 and its in-flight slot is freed [default: 30s].
    #[arg(long, env = "IDEM_BODY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub body_idle_timeout: Option<String>,
    /// How long one store operation may take before the request gets 503; the lock timeout must be longer than three of these [default: 5s].
    #[arg(long, env = "IDEM_STORE_TIMEOUT", value_name = "DURATION")]
    pub store_timeout: Option<String>,
    /// Hold a duplicate of an in-progress request up to this long, then replay (instead of 409) [default: off].
    #[arg(long, env = "IDEM_WAIT", value_name = "DURATION")]
    pub wait: Option<String>,
    /// Keep up to this many completed answers in a local cache in front of a remote store [default: 0, off].
    #[arg(long, env = "IDEM_LOCAL_CACHE", value_name = "ENTRIES")]
    pub local_cache: Option<String>,
    /// Open client connections at most; a new one past it gets 503 and is closed [default: 10000].
    #[arg(long, env = "IDEM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Covered requests handled at once at most; past it 503 server-overloaded [default: 4096].
    #[arg(long, env = "IDEM_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<String>,
    /// Concurrent HTTP/2 streams a client connection may open at most (SETTINGS_MAX_CONCURRENT_STREAMS) [default: 100].
    #[arg(long, env = "IDEM_H2_MAX_STREAMS", value_name = "N")]
    pub h2_max_streams: Option<String>,
    /// Records a memory:// store holds at most; past it new keys get 503 idempotency-store-full [default: 1000000].
    #[arg(long, env = "IDEM_MEMORY_CAPACITY", value_name = "RECORDS")]
    pub memory_capacity: Option<String>,
    /// Bytes the records of a memory:// store account for at most (answers plus 256 per record); past it new keys get 503 idempotency-store-full [default: 1GiB].
    #[arg(long, env = "IDEM_MEMORY_MAX_BYTES", value_name = "SIZE")]
    pub memory_max_bytes: Option<String>,
    /// The share of a memory:// or sqlite:// store's capacity one scope (one client, or the anonymous scope) may hold; past it that scope's new keys get 429 idempotency-scope-full, 1 turns it off [default: 0.5].
    #[arg(long, env = "IDEM_SCOPE_SHARE", value_name = "FRACTION")]
    pub scope_share: Option<String>,
    /// New keys one scope may start per second (a token bucket per scope and instance); past it 429 idempotency-scope-rate-limited [default: no limit].
    #[arg(long, env = "IDEM_SCOPE_KEY_RATE", value_name = "PER_SECOND")]
    pub scope_key_rate: Option<String>,
    /// New keys one scope may start at once before its rate applies [default: one second's worth, at least 1].
    #[arg(long, env = "IDEM_SCOPE_KEY_BURST", value_name = "N")]
    pub scope_key_burst: Option<String>,
    /// Records a sqlite:// store holds at most; past it new keys get 503 idempotency-store-full [default: 10000000].
    #[arg(long, env = "IDEM_SQLITE_CAPACITY", value_name = "RECORDS")]
    pub sqlite_capacity: Option<String>,
    /// Bytes the records of a sqlite:// store account for at most (answers plus 160 per record); past it new keys get 503 idempotency-store-full [default: 10GiB].
    #[arg(long, env = "IDEM_SQLITE_MAX_BYTES", value_name = "SIZE")]
    pub sqlite_max_bytes: Option<String>,
    /// Prefix of every Redis key; services sharing one Redis each need their own [default: idem:].
    #[arg(long, env = "IDEM_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Run with a Redis whose maxmemory-policy may evict records (a retry whose record was evicted executes again); without it such a Redis is refused at start.
    #[arg(long, env = "IDEM_REDIS_ALLOW_EVICTION", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_allow_eviction: bool,
    /// PostgreSQL schema holding idem's tables [default: public].
    #[arg(long, env = "IDEM_POSTGRES_SCHEMA", value_name = "NAME")]
    pub postgres_schema: Option<String>,
    /// How statements reach PostgreSQL: unnamed (works behind PgBouncer in transaction mode) or prepared (direct connections only; faster) [default: unnamed].
    #[arg(
        long,
        env = "IDEM_POSTGRES_STATEMENTS",
        value_name = "unnamed|prepared"
    )]
    pub postgres_statements: Option<String>,
    /// PostgreSQL connections in the pool [default: 16].
    #[arg(long, env = "IDEM_POSTGRES_POOL_SIZE", value_name = "N")]
    pub postgres_pool_size: Option<String>,
    /// PostgreSQL connections, beside the pool, that the hot path's statements share, pipelined (0: every statement on a pooled connection of its own) [default: 2].
    #[arg(long, env = "IDEM_POSTGRES_LANES", value_name = "N")]
    pub postgres_lanes: Option<String>,
    /// How long connecting to Redis or PostgreSQL may take [default: 2s].
    #[arg(long, env = "IDEM_STORE_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub store_connect_timeout: Option<String>,
    /// PEM file of the CA that signs the store's TLS certificate (rediss://, PostgreSQL sslmode=verify-ca|verify-full) [default: the system's roots].
    #[arg(long, env = "IDEM_STORE_CA_FILE", value_name = "PATH")]
    pub store_ca_file: Option<PathBuf>,
    /// Threads serving requests [default: one per CPU core]. Fewer than the cores leaves room for processes sharing the machine (docs/BENCHMARKS.md).
    #[arg(long, env = "IDEM_WORKERS", value_name = "N")]
    pub workers: Option<String>,
    /// per-core: each thread serves its own connections, with its own upstream pool (least CPU per request); shared: one work-stealing runtime, so a few busy connections still use every core [default: per-core].
    #[arg(long, env = "IDEM_RUNTIME", value_name = "per-core|shared")]
    pub runtime: Option<String>,
    /// Proxy WITHOUT the idempotency layer: a benchmark baseline only.
    #[arg(long, hide = true)]
    pub bench_without_layer: bool,
}

/// Flags of `idem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where records and payments live: sqlite://PATH or memory://.
    #[arg(long, env = "IDEM_STORE", default_value = "sqlite://idem.db")]
    pub store: StoreUrl,
    /// Address to listen on.
    #[arg(long, env = "IDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// File holding the secret behind store keys (default for SQLite: PATH.secret, created once).
    #[arg(long, env = "IDEM_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Header naming the user (scope); "none" puts every request in one scope.
    #[arg(long, env = "IDEM_SCOPE_HEADER", default_value = "authorization")]
    pub scope_header: String,
    /// How long a completed answer is kept: seconds, or 500ms, 30s, 15m, 24h, 7d.
    #[arg(long, env = "IDEM_TTL", value_name = "DURATION", default_value = "24h", value_parser = crate::gateway::config::parse_duration)]
    pub ttl: Duration,
    /// The execution lease (renewed while it runs), at least 1s.
    #[arg(long = "lock-timeout", env = "IDEM_LOCK_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = crate::gateway::config::parse_duration)]
    pub lock_timeout: Duration,
    /// How long each payment takes at the (simulated) processor.
    #[arg(long, env = "IDEM_PROCESSING_DELAY", value_name = "DURATION", default_value = "0s", value_parser = crate::gateway::config::parse_duration)]
    pub processing_delay: Duration,
    /// The former spelling of --processing-delay, in milliseconds.
    #[arg(
        long,
        env = "IDEM_PROCESSING_DELAY_MS",
        value_name = "MILLISECONDS",
        hide = true,
        conflicts_with = "processing_delay"
    )]
    pub processing_delay_ms: Option<u64>,
    /// Hold a duplicate of an in-progress request up to this long, then replay (instead of 409) [default: off].
    #[arg(long, env = "IDEM_WAIT", value_name = "DURATION", value_parser = crate::gateway::config::parse_duration)]
    pub wait: Option<Duration>,
    /// The former spelling of --wait, in milliseconds.
    #[arg(
        long,
        env = "IDEM_WAIT_MS",
        value_name = "MILLISECONDS",
        hide = true,
        conflicts_with = "wait"
    )]
    pub wait_ms: Option<u64>,
    /// Keep up to this many completed answers in a local cache in front of the store (0: off).
    #[arg(long, env = "IDEM_LOCAL_CACHE", default_value_t = 0)]
    pub local_cache: usize,
    /// Serve the handlers WITHOUT the idempotency layer: a benchmark baseline only.
    #[arg(long, hide = true)]
    pub bench_without_layer: bool,
}

/// Flags of `idem keygen`.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct KeygenArgs {
    /// A random UUID v4 (the default).
    #[arg(long)]
    pub uuid: bool,
    /// SHA-256 of this file's canonical JSON content ("-" reads standard input).
    #[arg(long, value_name = "FILE")]
    pub content: Option<PathBuf>,
    /// Milliseconds since the epoch and 64 random bits.
    #[arg(long)]
    pub time: bool,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    fn visible_args(cmd: &clap::Command, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            out.push((cmd.get_name().to_owned(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            visible_args(sub, out);
        }
    }

    /// One syntax for durations and sizes on every subcommand: their value
    /// names say so, and no flag counts in a unit of its own.
    #[test]
    fn durations_and_sizes_are_written_one_way_on_every_subcommand() {
        let mut args = Vec::new();
        visible_args(&Cli::command(), &mut args);
        let mut durations = 0;
        for (sub, arg) in &args {
            let long = arg.get_long().unwrap_or_default();
            let values: Vec<String> = arg
                .get_value_names()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            for unit in ["SECONDS", "SECS", "MS", "MILLISECONDS", "BYTES"] {
                assert!(!values.iter().any(|v| v == unit), "{sub} --{long} <{unit}>");
            }
            for suffix in ["-ms", "-secs", "-seconds"] {
                assert!(!long.ends_with(suffix), "{sub} --{long}");
            }
            durations += usize::from(values.iter().any(|v| v == "DURATION"));
        }
        assert!(durations >= 12, "only {durations} duration flags");
    }

    #[test]
    fn demo_durations_parse_like_the_gateways() {
        let cli = Cli::try_parse_from([
            "idem",
            "demo",
            "--ttl",
            "24h",
            "--lock-timeout",
            "2s",
            "--wait",
            "500ms",
            "--processing-delay",
            "10ms",
        ])
        .expect("parse");
        let Command::Demo(demo) = cli.command else {
            panic!("not demo")
        };
        assert_eq!(demo.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(demo.lock_timeout, Duration::from_secs(2));
        assert_eq!(demo.wait, Some(Duration::from_millis(500)));
        assert_eq!(demo.processing_delay, Duration::from_millis(10));
        // Bare numbers are seconds, as in the gateway.
        let cli = Cli::try_parse_from(["idem", "demo", "--ttl", "60"]).expect("parse");
        let Command::Demo(demo) = cli.command else {
            panic!("not demo")
        };
        assert_eq!(demo.ttl, Duration::from_secs(60));
        let bad = Cli::try_parse_from(["idem", "demo", "--ttl", "soon"]);
        assert!(bad.is_err());
    }
}
