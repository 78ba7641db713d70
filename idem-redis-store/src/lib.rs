//! `RedisStore`: idem's records in Redis, standalone or Cluster, so many idem
//! instances share one store.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> Result<(), idem_redis_store::RedisStoreError> {
//! use idem_redis_store::{RedisOptions, RedisStore};
//!
//! let store = RedisStore::new("redis://127.0.0.1:6379/", RedisOptions::default())?;
//! let cluster = RedisStore::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", RedisOptions::default())?;
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **One round trip per phase.** `complete`, `release` and `renew` are Lua
//!   scripts (EVALSHA, falling back to EVAL on NOSCRIPT), each reading and
//!   writing one key atomically, with the fence checked inside the script.
//!   `begin` is plain commands (`SET … NX PX … GET` and `PTTL` in one
//!   `MULTI`, see `plain.rs`) on Redis 7 and later with the server's clock,
//!   else a script too. One key per call is also what lets them run on
//!   Redis Cluster.
//! - **A compact binary record**: a state byte, the 8-byte fence, the 8-byte
//!   big-endian deadline, the 32-byte fingerprint, then the response in
//!   idem's binary encoding (raw body bytes, no base64). The scripts read
//!   times as numbers (exact in Lua's doubles for every millisecond below
//!   2^53) and never compare them as strings: Lua's string `<` is
//!   `strcoll`, and Redis takes `LC_COLLATE` from its environment, so under
//!   a locale such as `en_US.UTF-8` byte strings do not sort bytewise.
//!   Fences are only compared for equality.
//! - **Time is the server's.** Each script reads Redis's own clock (`TIME`)
//!   and computes deadlines itself, so instances whose clocks disagree share
//!   one clock: an instance running ahead cannot take over a live lease or
//!   expire a live answer (SPEC: lifetimes, shared stores). Tests give a
//!   clock of their own ([`RedisOptions::clock`]), sent with each call.
//!   Redis also removes each record itself with `PX` once its lease or TTL
//!   is over.
//! - **Connections.** A `ConnectionManager` (one multiplexed connection that
//!   reconnects by itself) or a Cluster connection per thread that makes
//!   store calls, opened from that thread (`local.rs`: no cross-thread
//!   wake-ups per command); never one per request. The first connection is
//!   made lazily, so idem starts while Redis is down and answers 503 until
//!   it is back (SPEC: lifetimes and availability).
//! - **A `begin` given up on is undone.** The fence is made before the
//!   command is sent; a `begin` whose caller stops waiting (the layer's
//!   store timeout) or whose answer is lost sends a fenced `release` after
//!   it on the same connection, so the client told 503 is not refused with
//!   409 until the lease ends (`abandoned.rs`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use idem_core::clock::millis;
use idem_core::{
    Begin, DecodeError, Fence, Fingerprint, Record, RecordState, Secret, SharedClock, Store,
    StoreError, StoreFuture, StoreKey, StoredResponse,
};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::sync::OnceCell;

pub use redis;

mod abandoned;
mod admin;
mod local;
mod plain;
mod server;

use abandoned::Abandoned;

const BACKEND: &str = "redis";

/// A script with the shared helpers (`lua/prelude.lua`: times as numbers,
/// the clock) in front.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

static BEGIN: LazyLock<Script> = script!("begin.lua");
static COMPLETE: LazyLock<Script> = script!("complete.lua");
static RELEASE: LazyLock<Script> = script!("release.lua");
static RENEW: LazyLock<Script> = script!("renew.lua");
static PURGE: LazyLock<Script> = script!("purge.lua");
static GET: LazyLock<Script> = script!("get.lua");

/// Errors of the Redis store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL could not be used.
    #[error("invalid Redis URL {url:?}: {source}; use redis://HOST:PORT/DB or redis+cluster://HOST:PORT,HOST:PORT")]
    Url {
        /// The URL, without its password.
        url: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// A command failed or the server could not be reached.
    #[error("Redis error: {}", server::describe(.0))]
    Redis(#[from] redis::RedisError),
    /// The CA file could not be read.
    #[error("cannot read the CA file {path:?}: {source}; give a PEM file holding the CA certificate that signed the server's")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server may evict records, and that was not allowed.
    #[error(
        "Redis may evict idem's records (maxmemory-policy {policy}), and a retry whose record was evicted executes again; \
         set maxmemory-policy noeviction (in redis.conf, or CONFIG SET maxmemory-policy noeviction), \
         or accept the risk with redis_allow_eviction = true (--redis-allow-eviction)"
    )]
    Evicting {
        /// The server's policy.
        policy: String,
    },
    /// A record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
}

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Corrupt(d) => StoreError::Corrupt(d),
            e => StoreError::backend(BACKEND, e),
        }
    }
}

/// Options of [`RedisStore::new`].
#[derive(Clone)]
pub struct RedisOptions {
    /// Prefix of every record key. The default is `idem:`.
    pub prefix: String,
    /// The clock deadlines are read from. The default, `None`, is the Redis
    /// server's own (`TIME` in each script), shared by every instance;
    /// tests set a clock they move by hand.
    pub clock: Option<SharedClock>,
    /// How long connecting may take. The default is 2 s.
    pub connect_timeout: Duration,
    /// How long a command may take. The default is 2 s.
    pub response_timeout: Duration,
    /// Use a server whose `maxmemory-policy` may evict records (anything
    /// but `noeviction`), with a warning. The default, `false`, refuses it:
    /// a retry whose record was evicted executes again.
    pub allow_eviction: bool,
    /// A PEM file of the CA(s) that sign the server's certificate, for
    /// `rediss://`. `None`: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "idem:".into(),
            clock: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            allow_eviction: false,
            ca_file: None,
        }
    }
}

#[derive(Clone)]
enum Target {
    // Boxed: both are large (with TLS) and the store is cloned per use.
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A connection to the store's Redis (standalone or Cluster), for an
/// application keeping its own keys beside idem's (the demo's payments do).
#[derive(Clone)]
pub enum Conn {
    /// A standalone server, through a reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// A Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis store. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    target: Target,
    conn: Arc<OnceCell<Conn>>,
    prefix: Arc<[u8]>,
    options: RedisOptions,
    /// How to reach one node of a Cluster by its address (admin scans).
    nodes: server::Nodes,
    /// Whether `begin` runs as plain commands (see `plain`): set once
    /// connected, when no clock is configured and every server takes them.
    plain_begin: Arc<std::sync::OnceLock<bool>>,
    /// Identifies the store (and its clones) among each thread's
    /// connections, and counts their renewals (see `local`).
    epoch: Arc<local::Epoch>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.target, Target::Cluster(..)))
            .field("prefix", &self.options.prefix)
            .finish()
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

impl RedisStore {
    /// A store at `url`: `redis://HOST:PORT/DB` (or `rediss://` for TLS), or
    /// `redis+cluster://HOST:PORT,HOST:PORT,…` (`rediss+cluster://`) for
    /// Redis Cluster (any nodes; the rest are discovered). TLS checks the
    /// server's certificate against [`RedisOptions::ca_file`], or the
    /// system's roots. Nothing is connected until first use.
    pub fn new(url: &str, options: RedisOptions) -> Result<Self, RedisStoreError> {
        let (target, nodes) = server::target(url, &options)?;
        Ok(Self {
            target,
            nodes,
            conn: Arc::new(OnceCell::new()),
            plain_begin: Arc::new(std::sync::OnceLock::new()),
            epoch: Arc::default(),
            prefix: options.prefix.as_bytes().into(),
            options,
        })
    }

    /// Connects now rather than at first use (and fails if Redis is down).
    pub async fn connect(&self) -> Result<(), RedisStoreError> {
        self.conn().await.map(|_| ())
    }

    /// A connection to the store's Redis for this thread: the one this
    /// thread's store calls use (made now if it was not yet), so an
    /// application's own commands beside idem's share it, and find it
    /// reconnected once idem's calls have seen the server come back.
    pub async fn connection(&self) -> Result<Conn, RedisStoreError> {
        self.local_conn().await
    }

    /// Whether `begin` runs as plain commands (`SET … NX PX … GET`, see the
    /// crate's design notes) rather than a script: `None` until connected;
    /// then `true` on Redis 7 and later with the server's clock.
    pub fn begins_with_plain_commands(&self) -> Option<bool> {
        self.plain_begin.get().copied()
    }

    /// The prefix of the store's keys.
    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// The store's first connection, made (and the server checked) once:
    /// the one admin operations use (store calls use `local_conn`).
    async fn conn(&self) -> Result<Conn, RedisStoreError> {
        // A failed first connection leaves the cell empty: the next call tries
        // again, so idem recovers without a restart.
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let conn = self.open().await?;
                server::check_eviction(&conn, true, self.options.allow_eviction).await?;
                // A configured clock (tests) needs the scripts: Redis's own
                // expiry does not follow it.
                let plain = self.options.clock.is_none() && server::takes_set_nx_get(&conn).await?;
                let _ = self.plain_begin.set(plain);
                Ok::<_, RedisStoreError>(conn)
            })
            .await?;
        Ok(conn.clone())
    }

    /// A new connection to the store's server(s).
    async fn open(&self) -> Result<Conn, RedisStoreError> {
        let opened = match &self.target {
            Target::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.options.connect_timeout))
                    .set_response_timeout(Some(self.options.response_timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config((**client).clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        };
        // A server this thread cannot reach is one the other threads'
        // connections may have lost too, unnoticed if they were idle: a
        // thread with no connection yet can be the first to find Redis
        // gone, and its failure must renew the others' as a failed command
        // does, or the application's first command on one of them after
        // the restart fails (`local`).
        Ok(opened.inspect_err(|e| self.saw(e))?)
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, RedisStoreError> {
        let mut conn = self.local_conn().await?;
        inv.invoke_async(&mut conn)
            .await
            .inspect_err(|e| self.saw(e))
            .map_err(Into::into)
    }

    /// Runs a fenced script (complete, release, renew): whether the fence
    /// still held the key, and so the script changed it.
    async fn held(&self, inv: &ScriptInvocation<'_>) -> Result<bool, StoreError> {
        Ok(self.invoke::<i64>(inv).await? == 1)
    }

    fn key(&self, key: &StoreKey) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 32);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&key.0);
        k
    }

    /// On the server's clock, a record's deadline is its `PTTL` (`left`
    /// ms, when it has one) from `now`: a record begun with plain commands
    /// holds no deadline of its own (see `plain`).
    fn server_deadline(&self, record: &mut Record, now: u64, left: i64) {
        if let (None, Ok(left)) = (&self.options.clock, u64::try_from(left)) {
            plain::set_deadline(record, now.saturating_add(left));
        }
    }

    /// The time argument of a script: the configured clock's reading (8
    /// bytes), or empty for the server's own clock.
    fn now_arg(&self) -> Vec<u8> {
        match &self.options.clock {
            Some(clock) => clock.now_ms().to_be_bytes().to_vec(),
            None => Vec::new(),
        }
    }
}

/// Decodes a record as the Lua scripts store it: `P` or `C`, the fence (8
/// bytes), the deadline in ms (8), the fingerprint (32), then for `C` the
/// stored response. Public for tools and the fuzz targets; it never panics,
/// whatever the bytes.
pub fn decode_record(v: &[u8]) -> Result<Record, DecodeError> {
    decode(v)
}

/// A record as the scripts store it.
fn decode(v: &[u8]) -> Result<Record, DecodeError> {
    if v.len() < 49 {
        return Err(DecodeError::new("record shorter than its header"));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let fence = Fence(u64_at(1));
    let deadline = u64_at(9);
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&v[17..49]);
    let state = match v[0] {
        b'P' => RecordState::InProgress {
            fence,
            lease_until_ms: deadline,
        },
        b'C' => RecordState::Completed {
            response: StoredResponse::decode(&v[49..])?,
            expires_at_ms: deadline,
        },
        _ => return Err(DecodeError::new("unknown record state")),
    };
    Ok(Record {
        fingerprint: Fingerprint(fp),
        state,
    })
}

fn px(ms: u64) -> u64 {
    ms.max(1)
}

/// The time a script answered with (decimal ms).
fn parse_now(now: &str) -> Result<u64, RedisStoreError> {
    now.parse().map_err(|_| {
        RedisStoreError::Corrupt(DecodeError::new(
            "a script answered a time that is not a number",
        ))
    })
}

#[async_trait]
impl Store for RedisStore {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Begin> {
        StoreFuture::pending(
            async move { Ok(self.begin_expiring(key, fingerprint, lease).await?.0) },
        )
    }

    async fn begin_expiring(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<(Begin, Option<u64>), StoreError> {
        // Connecting (on first use) reads whether the servers take plain commands.
        let mut conn = self.local_conn().await?;
        let fence = Fence::generate();
        // Undoes the begin if this future is dropped or fails once it may
        // have been sent (see `abandoned`).
        let pending = Abandoned::arm(self, key, fence, &conn);
        if self.plain_begin.get() == Some(&true) {
            if let Some(begun) = self
                .begin_plain(&mut conn, key, fence, fingerprint, lease)
                .await?
            {
                pending.disarm();
                return Ok(begun);
            }
        }
        let (existing, now, left): (Vec<u8>, String, i64) = BEGIN
            .key(self.key(key))
            .arg(self.now_arg())
            .arg(&fingerprint.0[..])
            .arg(&fence.0.to_be_bytes()[..])
            .arg(px(millis(lease)))
            .invoke_async(&mut conn)
            .await
            .inspect_err(|e| self.saw(e))
            .map_err(RedisStoreError::from)?;
        pending.disarm();
        if existing.is_empty() {
            return Ok((Begin::Started(fence), None));
        }
        let mut record = decode(&existing).map_err(RedisStoreError::from)?;
        let now = parse_now(&now)?;
        self.server_deadline(&mut record, now, left);
        Ok(record.into_begin_expiring(fingerprint, now))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            self.held(
                COMPLETE
                    .key(self.key(key))
                    .arg(&fence.0.to_be_bytes()[..])
                    .arg(self.now_arg())
                    .arg(response.encode())
                    .arg(px(millis(ttl))),
            )
            .await
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, fence: Fence) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            self.held(RELEASE.key(self.key(key)).arg(&fence.0.to_be_bytes()[..]))
                .await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        fence: Fence,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::pending(async move {
            self.held(
                RENEW
                    .key(self.key(key))
                    .arg(&fence.0.to_be_bytes()[..])
                    .arg(self.now_arg())
                    .arg(px(millis(lease))),
            )
            .await
        })
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn shared_secret(&self) -> Result<Option<Secret>, StoreError> {
        let mut key = self.prefix.to_vec();
        key.extend_from_slice(b"secret");
        let candidate = idem_core::key::hex(Secret::generate().as_bytes());
        // SET NX: the first instance's secret wins; every instance reads it.
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(&candidate).arg("NX");
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let mut conn = self.conn().await?;
        set.query_async::<()>(&mut conn)
            .await
            .map_err(RedisStoreError::from)?;
        let value: Vec<u8> = get
            .query_async(&mut conn)
            .await
            .map_err(RedisStoreError::from)?;
        Secret::from_bytes(value)
            .map(Some)
            .map_err(|e| StoreError::backend(BACKEND, e))
    }
}
