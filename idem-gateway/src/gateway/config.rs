//! The gateway's configuration: flags (and their `IDEM_*` variables) over a
//! TOML file over defaults. docs/config.md documents every key.
//!
//! The file's top-level route keys (`ttl`, `methods`, …) are the defaults of
//! every `[[routes]]` entry and the policy of paths no entry matches; a flag
//! replaces the top-level value, and a route's own value stays.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::{HeaderName, Method, Uri};
use idem::{FingerprintMode, KeyRules, PathPattern, Policy, RoutePolicy, StatusSet, WebhookKeys};
use serde::Deserialize;

use crate::cli::GatewayArgs;
use crate::stores::StoreUrl;

/// Declares a TOML table struct holding its own fields plus every route
/// key, and a way to get the route keys out. (serde's `flatten` would do
/// this, but it cannot be combined with `deny_unknown_fields`.)
macro_rules! with_route_keys {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        $vis struct $name {
            $($(#[$fm])* $field: $ty,)*
            methods: Option<Vec<String>>,
            ttl: Option<toml::Value>,
            lock_timeout: Option<toml::Value>,
            key_required: Option<bool>,
            key_min_length: Option<toml::Value>,
            key_max_length: Option<toml::Value>,
            fingerprint: Option<String>,
            no_store: Option<Vec<String>>,
            max_body: Option<toml::Value>,
            max_stored_response: Option<toml::Value>,
            fail_open: Option<bool>,
            wait: Option<toml::Value>,
            require_signed_keys: Option<bool>,
            replay_set_cookie: Option<String>,
            unknown_outcome: Option<String>,
        }

        impl $name {
            fn route_keys(&self) -> RouteFile {
                RouteFile {
                    methods: self.methods.clone(),
                    ttl: self.ttl.clone(),
                    lock_timeout: self.lock_timeout.clone(),
                    key_required: self.key_required,
                    key_min_length: self.key_min_length.clone(),
                    key_max_length: self.key_max_length.clone(),
                    fingerprint: self.fingerprint.clone(),
                    no_store: self.no_store.clone(),
                    max_body: self.max_body.clone(),
                    max_stored_response: self.max_stored_response.clone(),
                    fail_open: self.fail_open,
                    wait: self.wait.clone(),
                    require_signed_keys: self.require_signed_keys,
                    replay_set_cookie: self.replay_set_cookie.clone(),
                    unknown_outcome: self.unknown_outcome.clone(),
                }
            }
        }
    };
}

with_route_keys! {
    /// The file, as written. Values whose type allows several spellings
    /// (durations, sizes) are read as raw TOML values and checked by
    /// [`GatewayConfig::resolve`], so a bad one is reported with its key.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FileConfig {
        upstream: Option<String>,
        listen: Option<String>,
        admin_listen: Option<String>,
        admin_token_file: Option<PathBuf>,
        key_signing_secret_file: Option<PathBuf>,
        store: Option<String>,
        secret_file: Option<PathBuf>,
        scope_header: Option<String>,
        local_cache: Option<toml::Value>,
        problem_base: Option<String>,
        upstream_timeout: Option<toml::Value>,
        drain_timeout: Option<toml::Value>,
        header_read_timeout: Option<toml::Value>,
        body_read_timeout: Option<toml::Value>,
        body_idle_timeout: Option<toml::Value>,
        max_header_bytes: Option<toml::Value>,
        store_timeout: Option<toml::Value>,
        max_connections: Option<toml::Value>,
        max_in_flight: Option<toml::Value>,
        h2_max_streams: Option<toml::Value>,
        memory_capacity: Option<toml::Value>,
        memory_max_bytes: Option<toml::Value>,
        sqlite_capacity: Option<toml::Value>,
        scope_share: Option<toml::Value>,
        scope_key_rate: Option<toml::Value>,
        scope_key_burst: Option<toml::Value>,
        sqlite_max_bytes: Option<toml::Value>,
        workers: Option<toml::Value>,
        runtime: Option<String>,
        #[serde(default)]
        routes: Vec<RouteEntry>,
    }
}

/// Settings of a route (and, at the top level, of every route).
#[derive(Debug, Default, Clone)]
struct RouteFile {
    methods: Option<Vec<String>>,
    ttl: Option<toml::Value>,
    lock_timeout: Option<toml::Value>,
    key_required: Option<bool>,
    key_min_length: Option<toml::Value>,
    key_max_length: Option<toml::Value>,
    fingerprint: Option<String>,
    no_store: Option<Vec<String>>,
    max_body: Option<toml::Value>,
    max_stored_response: Option<toml::Value>,
    fail_open: Option<bool>,
    wait: Option<toml::Value>,
    require_signed_keys: Option<bool>,
    replay_set_cookie: Option<String>,
    unknown_outcome: Option<String>,
}

with_route_keys! {
    /// One `[[routes]]` entry.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RouteEntry {
        path: String,
        webhook: Option<bool>,
        webhook_headers: Option<Vec<String>>,
        webhook_body_hash: Option<bool>,
    }
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// A path prefix without its trailing slash (often empty).
    pub prefix: String,
}

impl Upstream {
    /// Parses `http://HOST:PORT[/PREFIX]`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let uri: Uri = s
            .parse()
            .map_err(|e| anyhow!("{e}; write it as http://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "https upstreams are not supported yet; put the gateway next to the service and use http://"
            ),
            _ => bail!("it must start with http://, like http://127.0.0.1:3000"),
        }
        let Some(authority) = uri.authority().cloned() else {
            bail!("it has no host; write it as http://HOST:PORT");
        };
        if uri.query().is_some() {
            bail!("it must not have a query string");
        }
        Ok(Self {
            scheme: http::uri::Scheme::HTTP,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// The gateway's resolved settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// The address to listen on. The default is `127.0.0.1:8080`.
    pub listen: String,
    /// The admin listener's address; `None` turns it off. The default is `127.0.0.1:9090`.
    pub admin_listen: Option<String>,
    /// The admin API's bearer token file; `None`: the admin API is off.
    pub admin_token_file: Option<PathBuf>,
    /// The secret that signs keys, for routes that require signed keys.
    pub key_signing_secret_file: Option<PathBuf>,
    /// The store. The default is `sqlite://idem.db`.
    pub store: StoreUrl,
    /// The secret file, if not the store's default.
    pub secret_file: Option<PathBuf>,
    /// The header naming the user. The default is `Authorization`.
    pub scope_header: Option<HeaderName>,
    /// Entries of the local cache of completed records (0: off). The default is 0.
    pub local_cache: usize,
    /// The base of problem `type` URIs. The default is `urn:idem:problem:`.
    pub problem_base: String,
    /// Wait for the upstream's headers, and between its body chunks. The default is 30 s.
    pub upstream_timeout: Duration,
    /// How long a shutdown waits for in-flight requests. The default is 30 s.
    pub drain_timeout: Duration,
    /// How long a client may take to send its headers. The default is 10 s.
    pub header_read_timeout: Duration,
    /// How long a covered request's body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// How long a covered request's body may stop arriving (408 past it).
    pub body_idle_timeout: Duration,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list). The default is 64 KiB.
    pub max_header_bytes: usize,
    /// How long a store call may take. The default is 5 s.
    pub store_timeout: Duration,
    /// Open client connections at most; past it a new connection gets 503
    /// and is closed. The default is 10,000.
    pub max_connections: usize,
    /// Covered requests handled at once at most; past it 503
    /// `server-overloaded`. The default is 4,096.
    pub max_in_flight: usize,
    /// Concurrent HTTP/2 streams one client connection may open at most.
    /// The default is 100.
    pub h2_max_streams: u32,
    /// Records a `memory://` store holds at most; past it new keys get 503
    /// `idempotency-store-full`. The default is 1,000,000.
    pub memory_capacity: usize,
    /// Threads serving requests (`None`: one per CPU core).
    pub workers: Option<usize>,
    /// How the serving threads share the work. The default is
    /// [`Runtime::PerCore`].
    pub runtime: Runtime,
    /// Bytes the records of a `memory://` store account for at most; past
    /// it new keys get 503 `idempotency-store-full`. The default is 1 GiB.
    pub memory_max_bytes: usize,
    /// Records a `sqlite://` store holds at most; past it new keys get 503
    /// `idempotency-store-full`. The default is 10,000,000.
    pub sqlite_capacity: u64,
    /// The share of a bounded store's capacity one scope may hold (0 to 1;
    /// 1: no per-scope bound). The default is 0.5.
    pub scope_share: f64,
    /// New keys one scope may start per second, and the burst; `None`: no
    /// rate (the default).
    pub scope_key_rate: Option<(f64, u32)>,
    /// Bytes the records of a `sqlite://` store account for at most (each
    /// answer plus `ROW_OVERHEAD` per record). The default is 10 GiB.
    pub sqlite_max_bytes: u64,
    /// Which requests are covered, and how.
    pub policy: Policy,
    /// Proxy without the layer (benchmark baseline only).
    pub without_layer: bool,
}

/// Parses a duration: a number of seconds, or a number with `ms`, `s`, `m`,
/// `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; write seconds (30) or 500ms, 30s, 15m, 24h, 7d")
    })?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use ms, s, m, h or d"
            ))
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("{s:?} is too long: at most 3650d (ten years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size in bytes: a number, or a number with `B`, `KiB`, `MiB`,
/// `GiB` (or `KB`, `MB`, `GB`, powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write bytes (1048576) or 64KiB, 1MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use B, KiB, MiB, GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A TOML value as text for the parsers above (numbers as written).
fn value_text(key: &str, v: &toml::Value) -> anyhow::Result<String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(i.to_string()),
        toml::Value::Float(f) if *f >= 0.0 => Ok(f.to_string()),
        toml::Value::String(s) => Ok(s.clone()),
        other => bail!(
            "{key}: expected a number or a string, found {} {other:?}",
            other.type_str()
        ),
    }
}

fn duration_of(key: &str, v: &toml::Value) -> anyhow::Result<Duration> {
    parse_duration(&value_text(key, v)?).map_err(|e| anyhow!("{key}: {e}"))
}

fn size_of(key: &str, v: &toml::Value) -> anyhow::Result<usize> {
    parse_size(&value_text(key, v)?).map_err(|e| anyhow!("{key}: {e}"))
}

/// `wait = "off"` / `false` / `0` turn wait mode off.
fn wait_of(key: &str, v: &toml::Value) -> anyhow::Result<Option<Duration>> {
    match v {
        toml::Value::Boolean(false) => Ok(None),
        toml::Value::String(s) if s == "off" || s == "none" => Ok(None),
        v => {
            let d = duration_of(key, v)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn header_name(key: &str, s: &str) -> anyhow::Result<HeaderName> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| anyhow!("{key}: {s:?} is not a valid header name"))
}

impl RouteFile {
    /// `self` with `over`'s values where it has them.
    fn overlay(&self, over: &RouteFile) -> RouteFile {
        macro_rules! pick {
            ($($f:ident),*) => { RouteFile { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        pick!(
            methods,
            ttl,
            lock_timeout,
            key_required,
            key_min_length,
            key_max_length,
            fingerprint,
            no_store,
            max_body,
            max_stored_response,
            fail_open,
            wait,
            require_signed_keys,
            replay_set_cookie,
            unknown_outcome
        )
    }

    /// The policy these settings give; `at` names the table in errors
    /// (`""` for the top level, `"routes[2]."` for an entry).
    fn policy(&self, at: &str) -> anyhow::Result<RoutePolicy> {
        let mut p = RoutePolicy::default();
        if let Some(methods) = &self.methods {
            p.methods = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                        .map_err(|_| anyhow!("{at}methods: {m:?} is not an HTTP method"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = &self.ttl {
            p.ttl = duration_of(&format!("{at}ttl"), v)?;
            if p.ttl.is_zero() {
                bail!("{at}ttl: must be more than 0");
            }
        }
        if let Some(v) = &self.lock_timeout {
            p.lease = duration_of(&format!("{at}lock_timeout"), v)?;
            if p.lease < Duration::from_millis(100) {
                bail!("{at}lock_timeout: must be at least 100ms (it is renewed every third of it)");
            }
        }
        if let Some(v) = self.key_required {
            p.key_required = v;
        }
        let mut rules = KeyRules::default();
        if let Some(v) = &self.key_min_length {
            rules.min_len = size_of(&format!("{at}key_min_length"), v)?;
        }
        if let Some(v) = &self.key_max_length {
            rules.max_len = size_of(&format!("{at}key_max_length"), v)?;
        }
        if rules.min_len == 0 || rules.min_len > rules.max_len || rules.max_len > 8192 {
            bail!(
                "{at}key_min_length/key_max_length: need 1 <= min <= max <= 8192, got {}..{}",
                rules.min_len,
                rules.max_len
            );
        }
        p.key_rules = rules;
        if let Some(f) = &self.fingerprint {
            p.fingerprint =
                FingerprintMode::from_str(f).map_err(|e| anyhow!("{at}fingerprint: {e}"))?;
        }
        if let Some(list) = &self.no_store {
            p.no_store = StatusSet::parse(list.iter().map(String::as_str))
                .map_err(|e| anyhow!("{at}no_store: {e}"))?;
        }
        if let Some(v) = &self.max_body {
            p.max_request_body = size_of(&format!("{at}max_body"), v)?;
        }
        if let Some(v) = &self.max_stored_response {
            p.max_stored_response = size_of(&format!("{at}max_stored_response"), v)?;
        }
        if let Some(v) = self.fail_open {
            p.fail_open = v;
        }
        if let Some(v) = &self.wait {
            p.wait = wait_of(&format!("{at}wait"), v)?;
        }
        if let Some(v) = self.require_signed_keys {
            p.require_signed_keys = v;
        }
        if let Some(v) = &self.replay_set_cookie {
            p.replay_set_cookie = v
                .parse()
                .map_err(|e| anyhow!("{at}replay_set_cookie: {e}"))?;
        }
        if let Some(v) = &self.unknown_outcome {
            p.unknown_outcome = v.parse().map_err(|e| anyhow!("{at}unknown_outcome: {e}"))?;
        }
        Ok(p)
    }
}

/// How the gateway's serving threads share the work (`--runtime`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Each thread runs an event loop of its own, with its own upstream
    /// connection pool, and serves the client connections handed to it
    /// (new connections go to the thread with the fewest). A request stays
    /// on one thread from accept to answer: no hand-offs between threads,
    /// the least CPU per request. One connection's requests use one core.
    #[default]
    PerCore,
    /// One work-stealing runtime (tokio's multi-threaded scheduler): any
    /// thread may run any request, so a few busy connections (an HTTP/2
    /// connection from a load balancer carrying everything, say) still
    /// spread over every core, at some CPU per request for the hand-offs.
    Shared,
}

impl std::str::FromStr for Runtime {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "per-core" => Ok(Self::PerCore),
            "shared" => Ok(Self::Shared),
            other => bail!("runtime: must be \"per-core\" or \"shared\", got {other:?}"),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerCore => "per-core",
            Self::Shared => "shared",
        })
    }
}

/// A flag's value as the TOML value the file would hold.
fn flag(v: &Option<String>) -> Option<toml::Value> {
    v.as_ref().map(|s| toml::Value::String(s.clone()))
}

impl GatewayConfig {
    /// Reads `args.config` (if any) and applies the flags over it.
    pub fn resolve(args: &GatewayArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve_file(args, file)
    }

    /// Resolves the configuration `text` (TOML, as in a `--config` file)
    /// under the flags `args` (whose `config` is ignored).
    pub fn from_toml(text: &str, args: &GatewayArgs) -> anyhow::Result<Self> {
        let file: FileConfig = toml::from_str(text).map_err(|e| anyhow!("config: {e}"))?;
        Self::resolve_file(args, file)
    }

    fn resolve_file(args: &GatewayArgs, file: FileConfig) -> anyhow::Result<Self> {
        let file_defaults = file.route_keys();
        let from = |flag_name: &str, key: &str| -> String {
            if args.config.is_some() {
                format!("{flag_name} (or {key} in the config file)")
            } else {
                flag_name.to_owned()
            }
        };

        let upstream_text = args
            .upstream
            .clone()
            .or(file.upstream)
            .ok_or_else(|| anyhow!("no upstream: pass --upstream http://HOST:PORT (or set IDEM_UPSTREAM, or upstream in the config file)"))?;
        let upstream = Upstream::parse(&upstream_text)
            .with_context(|| format!("{}: {upstream_text:?}", from("--upstream", "upstream")))?;

        let store_text = args
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "sqlite://idem.db".into());
        let store: StoreUrl = store_text
            .parse()
            .with_context(|| from("--store", "store"))?;

        let listen = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let admin_listen = match args
            .admin_listen
            .clone()
            .or(file.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:9090".into())
        {
            s if s == "none" || s == "off" || s.is_empty() => None,
            s => Some(s),
        };
        let scope_header = match args
            .scope_header
            .clone()
            .or(file.scope_header)
            .unwrap_or_else(|| "authorization".into())
        {
            s if s.eq_ignore_ascii_case("none") || s.is_empty() => None,
            s => Some(header_name(&from("--scope-header", "scope_header"), &s)?),
        };

        let dur = |flag_v: &Option<String>,
                   file_v: &Option<toml::Value>,
                   name: &str,
                   key: &str,
                   default: Duration|
         -> anyhow::Result<Duration> {
            match flag(flag_v).or_else(|| file_v.clone()) {
                Some(v) => duration_of(&from(name, key), &v),
                None => Ok(default),
            }
        };
        let upstream_timeout = dur(
            &args.upstream_timeout,
            &file.upstream_timeout,
            "--upstream-timeout",
            "upstream_timeout",
            Duration::from_secs(30),
        )?;
        let drain_timeout = dur(
            &args.drain_timeout,
            &file.drain_timeout,
            "--drain-timeout",
            "drain_timeout",
            Duration::from_secs(30),
        )?;
        let header_read_timeout = dur(
            &args.header_read_timeout,
            &file.header_read_timeout,
            "--header-read-timeout",
            "header_read_timeout",
            Duration::from_secs(10),
        )?;
        let body_read_timeout = dur(
            &args.body_read_timeout,
            &file.body_read_timeout,
            "--body-read-timeout",
            "body_read_timeout",
            Duration::from_secs(30),
        )?;
        let body_idle_timeout = dur(
            &args.body_idle_timeout,
            &file.body_idle_timeout,
            "--body-idle-timeout",
            "body_idle_timeout",
            Duration::from_secs(30),
        )?;
        let mut store_timeout = dur(
            &args.store_timeout,
            &file.store_timeout,
            "--store-timeout",
            "store_timeout",
            Duration::from_secs(5),
        )?;
        for (d, name) in [
            (upstream_timeout, "upstream_timeout"),
            (header_read_timeout, "header_read_timeout"),
            (body_read_timeout, "body_read_timeout"),
            (body_idle_timeout, "body_idle_timeout"),
            (store_timeout, "store_timeout"),
        ] {
            if d.is_zero() {
                bail!("{name}: must be more than 0");
            }
        }
        let max_header_bytes = match &file.max_header_bytes {
            Some(v) => size_of("max_header_bytes", v)?,
            None => 64 << 10,
        };
        if !(8192..=(16 << 20)).contains(&max_header_bytes) {
            bail!("max_header_bytes: must be between 8KiB and 16MiB, got {max_header_bytes}");
        }
        let count = |flag_v: &Option<String>,
                     file_v: &Option<toml::Value>,
                     name: &str,
                     key: &str,
                     default: usize|
         -> anyhow::Result<usize> {
            match flag(flag_v).or_else(|| file_v.clone()) {
                Some(v) => size_of(&from(name, key), &v),
                None => Ok(default),
            }
        };
        let max_connections = count(
            &args.max_connections,
            &file.max_connections,
            "--max-connections",
            "max_connections",
            10_000,
        )?;
        let max_in_flight = count(
            &args.max_in_flight,
            &file.max_in_flight,
            "--max-in-flight",
            "max_in_flight",
            4_096,
        )?;
        let memory_capacity = count(
            &args.memory_capacity,
            &file.memory_capacity,
            "--memory-capacity",
            "memory_capacity",
            1_000_000,
        )?;
        let h2_max_streams = count(
            &args.h2_max_streams,
            &file.h2_max_streams,
            "--h2-max-streams",
            "h2_max_streams",
            100,
        )?;
        if max_connections == 0 || max_in_flight == 0 || memory_capacity == 0 || h2_max_streams == 0
        {
            bail!("max_connections, max_in_flight, h2_max_streams and memory_capacity must be at least 1");
        }
        let Ok(h2_max_streams) = u32::try_from(h2_max_streams) else {
            bail!("h2_max_streams must be at most {}", u32::MAX);
        };
        let memory_max_bytes = count(
            &args.memory_max_bytes,
            &file.memory_max_bytes,
            "--memory-max-bytes",
            "memory_max_bytes",
            1 << 30,
        )?;
        if memory_max_bytes < 1 << 20 {
            bail!("memory_max_bytes: must be at least 1MiB, got {memory_max_bytes}");
        }
        let sqlite_capacity = count(
            &args.sqlite_capacity,
            &file.sqlite_capacity,
            "--sqlite-capacity",
            "sqlite_capacity",
            10_000_000,
        )?;
        if sqlite_capacity == 0 {
            bail!("sqlite_capacity: must be at least 1");
        }
        let scope_share = match flag(&args.scope_share).or_else(|| file.scope_share.clone()) {
            None => 0.5,
            Some(v) => {
                let key = from("--scope-share", "scope_share");
                let text = value_text(&key, &v)?;
                match text.trim().parse::<f64>() {
                    Ok(x) if x > 0.0 && x <= 1.0 => x,
                    _ => bail!(
                        "{key}: expected a fraction above 0 and at most 1 (0.5: half the store; 1: no per-scope bound), got {text}"
                    ),
                }
            }
        };
        let scope_key_rate = match flag(&args.scope_key_rate)
            .or_else(|| file.scope_key_rate.clone())
        {
            None => None,
            Some(v) => {
                let key = from("--scope-key-rate", "scope_key_rate");
                let text = value_text(&key, &v)?;
                let rate = match text.trim().parse::<f64>() {
                    Ok(x) if x > 0.0 && x.is_finite() => x,
                    _ => bail!(
                        "{key}: expected new keys per second, above 0 (20, or 0.5), got {text}"
                    ),
                };
                let burst =
                    match flag(&args.scope_key_burst).or_else(|| file.scope_key_burst.clone()) {
                        None => rate.ceil().max(1.0) as u32,
                        Some(b) => {
                            let n = size_of(&from("--scope-key-burst", "scope_key_burst"), &b)?;
                            match u32::try_from(n) {
                                Ok(n) if n >= 1 => n,
                                _ => bail!(
                                    "scope_key_burst: must be between 1 and {}, got {n}",
                                    u32::MAX
                                ),
                            }
                        }
                    };
                Some((rate, burst))
            }
        };
        let sqlite_max_bytes = count(
            &args.sqlite_max_bytes,
            &file.sqlite_max_bytes,
            "--sqlite-max-bytes",
            "sqlite_max_bytes",
            10 << 30,
        )?;
        if sqlite_max_bytes < 1 << 20 {
            bail!("sqlite_max_bytes: must be at least 1MiB, got {sqlite_max_bytes}");
        }
        let workers = match flag(&args.workers).or_else(|| file.workers.clone()) {
            Some(v) => {
                let n = size_of(&from("--workers", "workers"), &v)?;
                if !(1..=1024).contains(&n) {
                    bail!("workers: must be between 1 and 1024, got {n}");
                }
                Some(n)
            }
            None => None,
        };
        let runtime = match args.runtime.as_deref().or(file.runtime.as_deref()) {
            Some(text) => text.parse()?,
            None => Runtime::default(),
        };
        let local_cache = count(
            &args.local_cache,
            &file.local_cache,
            "--local-cache",
            "local_cache",
            0,
        )?;

        // Flags replace the file's top-level route defaults.
        let flags = RouteFile {
            ttl: flag(&args.ttl),
            lock_timeout: flag(&args.lock_timeout),
            max_body: flag(&args.max_body),
            max_stored_response: flag(&args.max_stored_response),
            wait: flag(&args.wait),
            require_signed_keys: args.require_signed_keys.then_some(true),
            ..RouteFile::default()
        };
        let defaults = file_defaults.overlay(&flags);
        let default_policy = defaults.policy("").map_err(|e| {
            // Name the flag when the bad value came from one.
            let msg = e.to_string();
            for (key, name, set) in [
                ("ttl", "--ttl", args.ttl.is_some()),
                (
                    "lock_timeout",
                    "--lock-timeout",
                    args.lock_timeout.is_some(),
                ),
                ("max_body", "--max-body", args.max_body.is_some()),
                (
                    "max_stored_response",
                    "--max-stored-response",
                    args.max_stored_response.is_some(),
                ),
                ("wait", "--wait", args.wait.is_some()),
            ] {
                if set && msg.starts_with(&format!("{key}:")) {
                    return anyhow!("{name}{}", &msg[key.len()..]);
                }
            }
            e
        })?;
        let mut policy = Policy {
            routes: Vec::new(),
            default: default_policy,
        };
        for (i, entry) in file.routes.iter().enumerate() {
            let at = format!("routes[{i}].");
            let pattern = PathPattern::parse(&entry.path).map_err(|e| anyhow!("{at}path: {e}"))?;
            let mut p = defaults.overlay(&entry.route_keys()).policy(&at)?;
            let webhook_keys = entry.webhook_headers.is_some() || entry.webhook_body_hash.is_some();
            if entry.webhook.unwrap_or(webhook_keys) {
                let mut w = WebhookKeys::default();
                if let Some(headers) = &entry.webhook_headers {
                    if headers.is_empty() {
                        bail!("{at}webhook_headers: name at least one header");
                    }
                    w.headers = headers
                        .iter()
                        .map(|h| header_name(&format!("{at}webhook_headers"), h))
                        .collect::<anyhow::Result<_>>()?;
                }
                if let Some(b) = entry.webhook_body_hash {
                    w.body_hash_fallback = b;
                }
                p.webhook = Some(w);
            } else if webhook_keys {
                bail!("{at}webhook_headers/webhook_body_hash: only apply with webhook = true");
            }
            policy.routes.push((pattern, p));
        }
        // Unless set, the store timeout is the default's or a quarter of
        // the shortest lease, whichever is shorter: a short lease alone is
        // a valid configuration.
        if args.store_timeout.is_none() && file.store_timeout.is_none() {
            let shortest = std::iter::once(&policy.default)
                .chain(policy.routes.iter().map(|(_, p)| p))
                .map(|p| p.lease)
                .min()
                .unwrap_or(store_timeout);
            store_timeout = store_timeout.min(shortest / 4);
        }
        // The lease is renewed until the answer is stored, and one renewal
        // (or one try of storing) may take a store timeout: a lease no
        // longer than three of them can run out while its holder is alive,
        // and a duplicate would execute again.
        let leases = std::iter::once(("", &policy.default)).chain(
            policy
                .routes
                .iter()
                .map(|(pattern, p)| (pattern.as_str(), p)),
        );
        for (i, (pattern, p)) in leases.enumerate() {
            if p.lease > store_timeout * 3 {
                continue;
            }
            let lease_name = match i {
                0 if args.lock_timeout.is_some() => "--lock-timeout".to_owned(),
                0 => "lock_timeout".to_owned(),
                _ => format!("routes[{}].lock_timeout ({pattern})", i - 1),
            };
            let timeout_name = if args.store_timeout.is_some() {
                "--store-timeout"
            } else {
                "store_timeout"
            };
            bail!(
                "{lease_name}: {:?} must be longer than three times {timeout_name} ({store_timeout:?}): the lease is renewed until the answer is stored, and a store this slow would let it run out while its holder is alive; raise {lease_name} above {:?} or lower {timeout_name}",
                p.lease,
                store_timeout * 3
            );
        }

        let key_signing_secret_file = args
            .key_signing_secret_file
            .clone()
            .or(file.key_signing_secret_file);
        let signed_routes = std::iter::once(&policy.default)
            .chain(policy.routes.iter().map(|(_, p)| p))
            .any(|p| p.require_signed_keys && p.webhook.is_none());
        if signed_routes && key_signing_secret_file.is_none() {
            bail!("require_signed_keys: routes require signed keys, but no key_signing_secret_file (--key-signing-secret-file) is set");
        }
        Ok(Self {
            upstream,
            listen,
            admin_listen,
            store,
            secret_file: args.secret_file.clone().or(file.secret_file),
            admin_token_file: args.admin_token_file.clone().or(file.admin_token_file),
            key_signing_secret_file,
            scope_header,
            local_cache,
            problem_base: file
                .problem_base
                .unwrap_or_else(|| idem::problem::DEFAULT_PROBLEM_BASE.to_owned()),
            upstream_timeout,
            drain_timeout,
            header_read_timeout,
            body_read_timeout,
            body_idle_timeout,
            max_header_bytes,
            store_timeout,
            max_connections,
            max_in_flight,
            h2_max_streams,
            memory_capacity,
            memory_max_bytes,
            sqlite_capacity: sqlite_capacity as u64,
            scope_share,
            scope_key_rate,
            sqlite_max_bytes: sqlite_max_bytes as u64,
            workers,
            runtime,
            policy,
            without_layer: args.bench_without_layer,
        })
    }

    /// A readable summary, printed by `--check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "upstream      {}", self.upstream);
        let _ = writeln!(out, "listen        {}", self.listen);
        let _ = writeln!(
            out,
            "admin_listen  {}",
            self.admin_listen.as_deref().unwrap_or("off")
        );
        let _ = writeln!(out, "store         {}", self.store);
        let _ = writeln!(out, "store_timeout {:?}", self.store_timeout);
        let _ = writeln!(
            out,
            "scope_header  {}",
            self.scope_header.as_ref().map_or("none", |h| h.as_str())
        );
        let _ = writeln!(
            out,
            "limits        max_connections={} max_in_flight={} h2_max_streams={}",
            self.max_connections, self.max_in_flight, self.h2_max_streams
        );
        let _ = writeln!(
            out,
            "workers       {}",
            self.workers
                .map_or_else(|| "one per CPU core".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(out, "runtime       {}", self.runtime);
        if matches!(self.store, StoreUrl::Memory) {
            let _ = writeln!(
                out,
                "memory_store  capacity={} records, max_bytes={}",
                self.memory_capacity, self.memory_max_bytes
            );
        }
        if matches!(self.store, StoreUrl::Sqlite(_)) {
            let _ = writeln!(
                out,
                "sqlite_store  capacity={} records, max_bytes={}",
                self.sqlite_capacity, self.sqlite_max_bytes
            );
        }
        let line = |name: &str, p: &RoutePolicy| {
            let methods: Vec<&str> = p.methods.iter().map(Method::as_str).collect();
            format!(
                "{name:<24} methods={} ttl={:?} lock_timeout={:?} key_required={} fingerprint={:?} max_body={} wait={:?} webhook={} signed_keys={} unknown_outcome={:?}",
                if methods.is_empty() { "-".to_owned() } else { methods.join(",") },
                p.ttl,
                p.lease,
                p.key_required,
                p.fingerprint,
                p.max_request_body,
                p.wait,
                p.webhook.is_some(),
                p.require_signed_keys,
                p.unknown_outcome
            )
        };
        for (pattern, p) in &self.policy.routes {
            let _ = writeln!(out, "route {}", line(pattern.as_str(), p));
        }
        let _ = writeln!(out, "route {}", line("(other paths)", &self.policy.default));
        out
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str, args: GatewayArgs) -> anyhow::Result<GatewayConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("idem.toml");
        std::fs::write(&path, text)?;
        GatewayConfig::resolve(&GatewayArgs {
            config: Some(path),
            ..args
        })
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1TB").is_err());
    }

    #[test]
    fn routes_inherit_the_top_level_and_flags_override_it() -> anyhow::Result<()> {
        let text = r#"
            upstream = "http://127.0.0.1:3000/api/"
            ttl = "1h"
            max_body = "64KiB"

            [[routes]]
            path = "/payments/**"
            ttl = "24h"

            [[routes]]
            path = "/webhooks/**"
            webhook = true
            webhook_headers = ["X-Delivery"]
        "#;
        let c = resolve_text(
            text,
            GatewayArgs {
                ttl: Some("7d".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.upstream.prefix, "/api");
        assert_eq!(c.policy.default.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.policy.default.max_request_body, 64 << 10);
        assert_eq!(c.policy.routes[0].1.ttl, Duration::from_secs(86_400));
        assert_eq!(c.policy.routes[0].1.max_request_body, 64 << 10);
        let webhook = c.policy.routes[1]
            .1
            .webhook
            .as_ref()
            .expect("webhook route");
        assert_eq!(webhook.headers, vec![HeaderName::from_static("x-delivery")]);
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("upstream = \"http://a:1\"\nttll = 3\n", "ttll"),
            (
                "upstream = \"http://a:1\"\n[[routes]]\npath = \"/x\"\nfingerprint = \"sha\"\n",
                "routes[0].fingerprint",
            ),
            (
                "upstream = \"http://a:1\"\n[[routes]]\npath = \"x\"\n",
                "routes[0].path",
            ),
            (
                "upstream = \"http://a:1\"\nlock_timeout = \"forever\"\n",
                "lock_timeout",
            ),
            (
                "upstream = \"http://a:1\"\nno_store = [\"6xx\"]\n",
                "no_store",
            ),
            ("upstream = \"ftp://a:1\"\n", "upstream"),
            (
                "upstream = \"http://a:1\"\nstore = \"mongodb://x\"\n",
                "store",
            ),
            (
                "upstream = \"http://a:1\"\n[[routes]]\npath = \"/x\"\nmethods = [\"PO ST\"]\n",
                "routes[0].methods",
            ),
            (
                "upstream = \"http://a:1\"\nmemory_max_bytes = \"64KiB\"\n",
                "memory_max_bytes",
            ),
            (
                "upstream = \"http://a:1\"\nmemory_max_bytes = \"lots\"\n",
                "memory_max_bytes",
            ),
        ];
        for (text, key) in cases {
            let err = match resolve_text(text, GatewayArgs::default()) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(key), "{key} not named in: {err}");
        }
    }

    #[test]
    fn the_runtime_comes_from_the_flag_or_the_file_and_bad_names_are_refused() -> anyhow::Result<()>
    {
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert_eq!(c.runtime, Runtime::PerCore);
        assert!(
            c.summary().contains("runtime       per-core"),
            "{}",
            c.summary()
        );
        let c = resolve_text(
            "upstream = \"http://a:1\"\nruntime = \"shared\"\n",
            GatewayArgs::default(),
        )?;
        assert_eq!(c.runtime, Runtime::Shared);
        let c = resolve_text(
            "upstream = \"http://a:1\"\nruntime = \"shared\"\n",
            GatewayArgs {
                runtime: Some("per-core".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.runtime, Runtime::PerCore);
        for (text, flag) in [("runtime = \"percore\"\n", None), ("", Some("threads"))] {
            let err = resolve_text(
                &format!("upstream = \"http://a:1\"\n{text}"),
                GatewayArgs {
                    runtime: flag.map(Into::into),
                    ..Default::default()
                },
            )
            .map_err(|e| format!("{e:#}"));
            assert!(
                matches!(&err, Err(e) if e.contains("runtime") && e.contains("per-core")),
                "{err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn h2_max_streams_comes_from_the_flag_or_the_file_and_defaults_to_100() -> anyhow::Result<()> {
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert_eq!(c.h2_max_streams, 100);
        let c = resolve_text(
            "upstream = \"http://a:1\"\nh2_max_streams = 8\n",
            GatewayArgs::default(),
        )?;
        assert_eq!(c.h2_max_streams, 8);
        assert!(c.summary().contains("h2_max_streams=8"), "{}", c.summary());
        let c = resolve_text(
            "upstream = \"http://a:1\"\nh2_max_streams = 8\n",
            GatewayArgs {
                h2_max_streams: Some("2".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.h2_max_streams, 2);
        let err = resolve_text(
            "upstream = \"http://a:1\"\nh2_max_streams = 0\n",
            GatewayArgs::default(),
        )
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.contains("h2_max_streams")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn scope_share_is_a_fraction_from_the_flag_or_the_file() -> anyhow::Result<()> {
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert!((c.scope_share - 0.5).abs() < f64::EPSILON);
        let c = resolve_text(
            "upstream = \"http://a:1\"\nscope_share = 0.25\n",
            GatewayArgs::default(),
        )?;
        assert!((c.scope_share - 0.25).abs() < f64::EPSILON);
        let c = resolve_text(
            "upstream = \"http://a:1\"\n",
            GatewayArgs {
                scope_share: Some("1".into()),
                ..Default::default()
            },
        )?;
        assert!((c.scope_share - 1.0).abs() < f64::EPSILON);
        for bad in ["0", "1.5", "half"] {
            let err = resolve_text(
                "upstream = \"http://a:1\"\n",
                GatewayArgs {
                    scope_share: Some(bad.into()),
                    ..Default::default()
                },
            )
            .map_err(|e| format!("{e:#}"));
            assert!(
                matches!(&err, Err(e) if e.contains("--scope-share")),
                "{bad}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn scope_key_rate_is_off_by_default_and_its_burst_follows_it() -> anyhow::Result<()> {
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert_eq!(c.scope_key_rate, None);
        let c = resolve_text(
            "upstream = \"http://a:1\"\nscope_key_rate = 2.5\n",
            GatewayArgs::default(),
        )?;
        assert_eq!(c.scope_key_rate, Some((2.5, 3)));
        let c = resolve_text(
            "upstream = \"http://a:1\"\n",
            GatewayArgs {
                scope_key_rate: Some("0.2".into()),
                scope_key_burst: Some("5".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.scope_key_rate, Some((0.2, 5)));
        for bad in ["0", "-1", "fast"] {
            let err = resolve_text(
                "upstream = \"http://a:1\"\n",
                GatewayArgs {
                    scope_key_rate: Some(bad.into()),
                    ..Default::default()
                },
            )
            .map_err(|e| format!("{e:#}"));
            assert!(
                matches!(&err, Err(e) if e.contains("--scope-key-rate")),
                "{bad}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_memory_byte_budget_comes_from_the_flag_or_the_file() -> anyhow::Result<()> {
        let c = resolve_text(
            "upstream = \"http://a:1\"\nstore = \"memory://\"\nmemory_max_bytes = \"64MiB\"\n",
            GatewayArgs::default(),
        )?;
        assert_eq!(c.memory_max_bytes, 64 << 20);
        assert!(
            c.summary()
                .contains("memory_store  capacity=1000000 records, max_bytes=67108864"),
            "{}",
            c.summary()
        );
        let c = resolve_text(
            "upstream = \"http://a:1\"\nmemory_max_bytes = \"64MiB\"\n",
            GatewayArgs {
                memory_max_bytes: Some("2GiB".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.memory_max_bytes, 2 << 30);
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert_eq!(c.memory_max_bytes, 1 << 30);
        Ok(())
    }

    #[test]
    fn workers_come_from_the_flag_or_the_file_and_are_bounded() -> anyhow::Result<()> {
        let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
        assert_eq!(c.workers, None);
        assert!(c.summary().contains("workers       one per CPU core"));
        let c = resolve_text(
            "upstream = \"http://a:1\"\nworkers = 3\n",
            GatewayArgs::default(),
        )?;
        assert_eq!(c.workers, Some(3));
        let c = resolve_text(
            "upstream = \"http://a:1\"\nworkers = 3\n",
            GatewayArgs {
                workers: Some("1".into()),
                ..Default::default()
            },
        )?;
        assert_eq!(c.workers, Some(1));
        for (text, flag) in [("workers = 0\n", None), ("", Some("many"))] {
            let err = resolve_text(
                &format!("upstream = \"http://a:1\"\n{text}"),
                GatewayArgs {
                    workers: flag.map(Into::into),
                    ..Default::default()
                },
            )
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
            assert!(
                matches!(&err, Err(e) if e.contains("workers")),
                "{text:?} {flag:?}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_bad_flag_is_named_as_a_flag() {
        let err = GatewayConfig::resolve(&GatewayArgs {
            upstream: Some("http://127.0.0.1:1".into()),
            lock_timeout: Some("abc".into()),
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.starts_with("--lock-timeout")),
            "{err:?}"
        );
    }
}
