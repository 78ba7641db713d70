//! The `idem` binary's library: the gateway, key generation, key administration,
//! the conformance tool and the command line; the demo payments service
//! (`idem-demo`) and store URLs (`idem-stores`) are re-exported. `main.rs` only parses flags and calls in.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use idem_gateway::demo::{run, DemoConfig};
//! use idem_gateway::stores::StoreUrl;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = DemoConfig { store: StoreUrl::Memory, ..DemoConfig::default() };
//! run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

/// The demo payments service (`idem demo`): the `idem-demo` crate.
pub use idem_demo as demo;
/// Opening a store from its URL: the `idem-stores` crate.
pub use idem_stores as stores;

pub mod access_log;
pub mod cli;
pub mod conformance;
pub mod gateway;
pub mod keygen;
pub mod keys;
#[cfg(feature = "otlp")]
pub mod otlp;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
