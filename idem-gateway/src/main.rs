//! The `idem` command. See `idem --help`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use idem_gateway::cli::{Cli, Command, DemoArgs, KeygenArgs, LogFormat, MigrateArgs};
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
        Command::Keys(args) => runtime(None)?.block_on(idem_gateway::keys::command::run(args)),
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
