//! `idem conformance`: black-box checks of any server's `Idempotency-Key`
//! support, the way h2spec checks HTTP/2 servers. Each check of the
//! [`CATALOGUE`] sends real requests to one endpoint of the target (nothing
//! else: no redirect is followed, no other host is asked), within a budget
//! of requests, and gives a verdict with its evidence. docs/conformance.md
//! says what each proves and does not prove.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use idem_gateway::conformance::{run, ConformanceArgs};
//!
//! let report = run(&ConformanceArgs {
//!     target: "http://127.0.0.1:8080".into(),
//!     ..ConformanceArgs::default()
//! })
//! .await?;
//! println!("{}", report.text());
//! assert!(!report.failed());
//! # Ok(())
//! # }
//! ```

mod catalogue;
mod checks;
mod report;
mod target;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

pub use catalogue::{Check, Outcome, Verdict, CATALOGUE};
pub use report::Report;
use target::Target;

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// JUnit XML, for CI.
    Junit,
}

/// Flags of `idem conformance`.
#[derive(Debug, Clone, Args)]
pub struct ConformanceArgs {
    /// The server to check: http://HOST:PORT or https://HOST:PORT (with an optional path prefix). Only this host is ever asked.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// The endpoint that creates something (an idempotent-keyed operation).
    #[arg(long, default_value = "/payments")]
    pub path: String,
    /// Its method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request body; each {{uuid}} becomes a new UUID per request (for fields the API wants unique). A retry resends the same bytes.
    #[arg(
        long,
        value_name = "JSON",
        default_value = "{\"amount\": 10, \"currency\": \"EUR\", \"recipient\": \"acct_conformance\"}",
        conflicts_with = "body_file"
    )]
    pub body: String,
    /// Read the body template from this file instead.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// A header for every request ('Name: value'); give one header twice (two credentials) to run the scope check.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A header that makes the endpoint answer a 5xx (a test hook such as 'X-Fail: 1'), for the check that failures are not stored [default: that check does not apply].
    #[arg(long, value_name = "NAME: VALUE")]
    pub fail_header: Option<String>,
    /// Requests sent at once with one key by the race check.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How many times the race check repeats (a new key each time).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Requests sent at most, all checks together.
    #[arg(long, default_value_t = 400)]
    pub max_requests: usize,
    /// The CA that issues an https:// target's certificate (PEM) [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Only the checks with these ids (comma-separated; see docs/conformance.md).
    #[arg(long, value_delimiter = ',', value_name = "ID,…")]
    pub only: Vec<String>,
    /// How the report is written (to standard output).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

impl Default for ConformanceArgs {
    fn default() -> Self {
        Self {
            target: String::new(),
            path: "/payments".into(),
            method: "POST".into(),
            body: "{\"amount\": 10, \"currency\": \"EUR\", \"recipient\": \"acct_conformance\"}"
                .into(),
            body_file: None,
            headers: Vec::new(),
            fail_header: None,
            concurrency: 32,
            rounds: 5,
            max_requests: 400,
            ca_file: None,
            only: Vec::new(),
            format: Format::Text,
        }
    }
}

/// Runs the catalogue (or `--only` its named checks) against the target.
pub async fn run(args: &ConformanceArgs) -> anyhow::Result<Report> {
    let template = match &args.body_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --body-file {}", path.display()))?,
        None => args.body.clone(),
    };
    for id in &args.only {
        if !CATALOGUE.iter().any(|c| c.id == id) {
            anyhow::bail!(
                "--only {id:?}: no such check; the checks are {}",
                CATALOGUE
                    .iter()
                    .map(|c| c.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if args.concurrency < 2 {
        anyhow::bail!("--concurrency must be at least 2 (the race check sends duplicates at once)");
    }
    let target = Target::new(args, template)?;
    let ctx = checks::Ctx::new(&target, args.concurrency, args.rounds);
    let mut outcomes = Vec::new();
    for check in CATALOGUE {
        if !args.only.is_empty() && !args.only.iter().any(|id| id == check.id) {
            continue;
        }
        outcomes.push(checks::run(check, &ctx).await);
    }
    Ok(Report {
        target: target.describe(),
        requests: target.sent(),
        outcomes,
    })
}
