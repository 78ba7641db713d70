//! The `idem` command. See `idem --help`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use idem_gateway::cli::{
    Cli, Command, DemoArgs, KeygenArgs, KeysAction, KeysArgs, LogFormat, MigrateArgs,
};
use idem_gateway::demo::{self, DemoConfig};
use idem_gateway::gateway::{self, GatewayConfig};
use idem_gateway::keygen::{self, Strategy};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // The fmt builder's own level (INFO unless set) would cap what the
    // filter lets through, and a level above the filter's would make every
    // disabled event consult its callsite: the builder gets the filter's
    // most verbose level, so levels no target wants stay off statically.
    let most = <tracing_subscriber::filter::Targets as tracing_subscriber::Layer<
        tracing_subscriber::fmt::Subscriber,
    >>::max_level_hint(&cli.log)
    .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let builder = tracing_subscriber::fmt()
        .with_max_level(most)
        .with_writer(std::io::stderr)
        .with_target(false);
    let filter = cli.log.clone();
    // Dormant until a gateway starts exporting (`otlp_endpoint`).
    #[cfg(feature = "otlp")]
    let otlp = idem_gateway::otlp::OtlpLayer;
    #[cfg(not(feature = "otlp"))]
    let otlp = tracing_subscriber::layer::Identity::new();
    match cli.log_format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(filter)
            .with(otlp)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(filter)
            .with(otlp)
            .init(),
    }
    match cli.command {
        Command::Keygen(args) => keygen_cmd(args),
        Command::Gateway(args) => {
            let config = match GatewayConfig::resolve(&args) {
                Ok(c) => GatewayConfig {
                    access_log_json: cli.log_format == LogFormat::Json,
                    ..c
                },
                Err(e) => {
                    eprintln!("idem gateway: invalid configuration: {e:#}");
                    std::process::exit(2);
                }
            };
            if args.check {
                print!("{}", config.summary());
                println!("# configuration OK");
                return runtime(Some(1))?.block_on(check_store(&config));
            }
            match config.runtime {
                // The serving threads start their own runtimes; this one
                // accepts, hands connections out, and serves the admin API.
                gateway::Runtime::PerCore => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?,
                gateway::Runtime::Shared => runtime(config.workers)?,
            }
            .block_on(gateway_cmd(config))
        }
        Command::Demo(args) => runtime(None)?.block_on(demo_cmd(args)),
        Command::Keys(args) => runtime(None)?.block_on(keys_cmd(args)),
        Command::Migrate(args) => runtime(Some(1))?.block_on(migrate_cmd(args)),
        Command::Conformance(args) => runtime(None)?.block_on(conformance_cmd(*args)),
    }
}

/// `--check` on a Redis or PostgreSQL store: can it be used now? Its
/// error is the server's own (a missing grant, an evicting Redis).
async fn check_store(config: &GatewayConfig) -> anyhow::Result<()> {
    let opened = idem_gateway::stores::open_with(
        &config.store,
        config.secret_file.as_deref(),
        0,
        &config.store_options(),
    )?;
    match idem_gateway::stores::check(&opened, config.store_connect_timeout).await {
        None => Ok(()),
        Some(Ok(())) => {
            println!("# store OK ({})", config.store);
            Ok(())
        }
        Some(Err(e)) => {
            eprintln!(
                "idem gateway: the store {} cannot be used: {e:#}",
                config.store
            );
            std::process::exit(1);
        }
    }
}

async fn conformance_cmd(args: idem_gateway::conformance::ConformanceArgs) -> anyhow::Result<()> {
    use idem_gateway::conformance::Format;
    eprintln!(
        "idem conformance: this sends up to {} real requests to {} and creates real operations there; point it at a test environment",
        args.max_requests, args.target
    );
    let report = match idem_gateway::conformance::run(&args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("idem conformance: {e:#}");
            std::process::exit(2);
        }
    };
    match args.format {
        Format::Text => print!("{}", report.text()),
        Format::Json => print!("{}", report.json()),
        Format::Junit => print!("{}", report.junit()),
    }
    if args.format != Format::Text {
        eprintln!("{}", report.tally());
    }
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}

async fn migrate_cmd(args: MigrateArgs) -> anyhow::Result<()> {
    let options = idem_gateway::stores::StoreOptions {
        postgres_schema: args.postgres_schema.clone(),
        connect_timeout: args.store_connect_timeout,
        ca_file: args.store_ca_file.clone(),
        ..Default::default()
    };
    let done = idem_gateway::stores::migrate(&args.store, &options, args.grant.as_deref()).await?;
    println!("{done}");
    Ok(())
}

async fn keys_cmd(args: KeysArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    match &args.action {
        KeysAction::Sign {
            key,
            scope,
            signing_secret_file,
        } => {
            let secret = read_signing_secret(signing_secret_file)?;
            let key = key.clone().unwrap_or_else(idem_core::key::generate_uuid_v4);
            idem_core::KeyRules::new(1, 8192)
                .validate(&key)
                .with_context(|| format!("{key:?} cannot be signed"))?;
            println!(
                "{}",
                idem_core::signed::sign(&secret, &key, scope.as_bytes())
            );
            return Ok(());
        }
        KeysAction::Verify {
            signed,
            scope,
            signing_secret_file,
        } => {
            let secret = read_signing_secret(signing_secret_file)?;
            match idem_core::signed::verify(&secret, signed, scope.as_bytes()) {
                Ok(key) => {
                    println!("valid: key {key} signed for this scope");
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {}
    }
    let options = idem_gateway::stores::StoreOptions {
        redis_key_prefix: args.redis_key_prefix.clone(),
        postgres_schema: args.postgres_schema.clone(),
        ca_file: args.store_ca_file.clone(),
        // A store that may evict is still worth inspecting.
        redis_allow_eviction: true,
        ..Default::default()
    };
    let admin = idem_gateway::keys::KeyAdmin::open_with(
        &args.store,
        args.secret_file.as_deref(),
        &options,
    )?;
    let json = args.json;
    let print = |v: serde_json::Value, text: String| {
        if json {
            println!("{v}");
        } else {
            print!("{text}");
        }
    };
    match args.action {
        KeysAction::Inspect { key, scope } => match admin.inspect(&key, scope.as_deref()).await? {
            Some(view) => print(serde_json::to_value(&view)?, view.to_string()),
            None => {
                print(
                    serde_json::Value::Null,
                    format!(
                        "no live record for {key:?}{}\n",
                        if scope.is_some() {
                            " in that scope"
                        } else {
                            " in the anonymous scope (pass --scope if the client sent one)"
                        }
                    ),
                );
                std::process::exit(1);
            }
        },
        KeysAction::Delete { key, scope } => {
            let deleted = admin.delete(&key, scope.as_deref()).await?;
            print(
                serde_json::json!({ "deleted": deleted }),
                if deleted {
                    format!("deleted the record of {key:?}\n")
                } else {
                    format!("no record for {key:?}; nothing deleted\n")
                },
            );
            if !deleted {
                std::process::exit(1);
            }
        }
        KeysAction::PurgeExpired { batch } => {
            // Counted first, so that progress has a length and a time left.
            let expected = admin.stats().await?.expired;
            let started = std::time::Instant::now();
            let total = if json {
                admin.purge_expired(batch.max(1), |_| {}).await?
            } else if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(expected);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {human_pos}/{human_len} expired records purged ({per_sec}, {eta} left)",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let total = admin
                    .purge_expired(batch.max(1), |n| {
                        // Records that expired meanwhile are purged too.
                        bar.set_length(expected.max(n));
                        bar.set_position(n);
                    })
                    .await?;
                bar.finish_and_clear();
                total
            } else {
                eprintln!("purging {expected} expired records");
                let mut last = std::time::Instant::now();
                admin
                    .purge_expired(batch.max(1), |n| {
                        if last.elapsed() >= std::time::Duration::from_secs(1) {
                            last = std::time::Instant::now();
                            eprintln!("{}", purge_progress(n, expected, started.elapsed()));
                        }
                    })
                    .await?
            };
            let secs = started.elapsed().as_secs_f64();
            print(
                serde_json::json!({ "purged": total, "expected": expected, "seconds": secs }),
                format!("purged {total} expired records in {secs:.2}s\n"),
            );
        }
        KeysAction::Sign { .. } | KeysAction::Verify { .. } => unreachable!("handled above"),
        KeysAction::Stats => {
            let s = admin.stats().await?;
            print(
                serde_json::json!({ "in_progress": s.in_progress, "completed": s.completed, "expired": s.expired }),
                format!(
                    "in_progress  {}\ncompleted    {}\nexpired      {}\n",
                    s.in_progress, s.completed, s.expired
                ),
            );
        }
    }
    Ok(())
}

/// One line of `idem keys purge-expired`'s progress off a terminal: done,
/// rate, and time left at that rate.
fn purge_progress(done: u64, expected: u64, elapsed: std::time::Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-6);
    let left = expected.saturating_sub(done);
    let eta = if rate > 0.0 {
        format!("{:.0}s left", left as f64 / rate)
    } else {
        "time left unknown".to_owned()
    };
    format!("purged {done} of {expected} expired records ({rate:.0}/s, {eta})")
}

fn read_signing_secret(path: &std::path::Path) -> anyhow::Result<idem_core::Secret> {
    idem_core::Secret::read_file(path).with_context(|| {
        format!(
            "cannot read the key-signing secret {}; create one with: openssl rand -hex 32 > {}",
            path.display(),
            path.display()
        )
    })
}

/// The async runtime: `workers` threads serve requests (`None`: one per
/// CPU core).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn gateway_cmd(config: GatewayConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let admin = match &config.admin_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--admin-listen; \"none\" turns it off)")
        })?),
        None => None,
    };
    gateway::run(listener, admin, config, idem_gateway::shutdown_signal()).await
}

fn keygen_cmd(args: KeygenArgs) -> anyhow::Result<()> {
    let strategy = match (args.content, args.time) {
        (Some(path), _) => Strategy::Content(path),
        (None, true) => Strategy::Time,
        (None, false) => Strategy::Uuid,
    };
    println!("{}", keygen::generate(&strategy)?);
    Ok(())
}

async fn demo_cmd(args: DemoArgs) -> anyhow::Result<()> {
    let scope_header = match args.scope_header.to_ascii_lowercase().as_str() {
        "none" | "" => None,
        name => Some(
            http::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("--scope-header {name:?} is not a valid header name"))?,
        ),
    };
    let config = DemoConfig {
        store: args.store,
        secret_file: args.secret_file,
        scope_header,
        processing_delay: args
            .processing_delay_ms
            .map_or(args.processing_delay, Duration::from_millis),
        ttl: args.ttl,
        lease: args.lock_timeout.max(Duration::from_secs(1)),
        wait: args.wait.or(args.wait_ms.map(Duration::from_millis)),
        local_cache: args.local_cache,
        without_layer: args.bench_without_layer,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    demo::run(listener, config, idem_gateway::shutdown_signal()).await
}
