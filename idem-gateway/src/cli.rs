//! Command-line flags (clap derive). Every operator-facing flag has an
//! `IDEM_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::stores::StoreUrl;

/// idem: make any POST safe to retry with the Idempotency-Key header.
#[derive(Debug, Parser)]
#[command(name = "idem", version, about, long_about = None)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "IDEM_LOG", default_value = "info")]
    pub log: tracing::Level,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the demo payments service behind the idempotency layer.
    Demo(DemoArgs),
    /// Print a new idempotency key (UUID v4 by default).
    Keygen(KeygenArgs),
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
    /// Seconds a completed answer is kept.
    #[arg(long, env = "IDEM_TTL", default_value_t = 86_400)]
    pub ttl: u64,
    /// Seconds of the execution lease (renewed while it runs).
    #[arg(long = "lock-timeout", env = "IDEM_LOCK_TIMEOUT", default_value_t = 30)]
    pub lock_timeout: u64,
    /// Milliseconds each payment takes at the (simulated) processor.
    #[arg(long, env = "IDEM_PROCESSING_DELAY_MS", default_value_t = 0)]
    pub processing_delay_ms: u64,
    /// Hold a duplicate of an in-progress request up to this many milliseconds, then replay (instead of 409).
    #[arg(long, env = "IDEM_WAIT_MS")]
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
