//! `order-server`: parses its configuration, installs the Prometheus recorder, binds, and
//! serves the order API until Ctrl-C or SIGTERM, then drains requests and orders in progress.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use futures::FutureExt;
use order_server::{Config, LogFormat, app, run, shutdown_signal};
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: a request allocates and frees a few dozen small
/// blocks across two threads, and glibc's malloc and free were a fifth of the instructions
/// of a `GET /orders/{id}`. The binary's choice only: the library leaves it to its users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a log file or a journal are noise, and
    // styling each field of each request's span was half the cost of making the span.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    // First, so that the recorder sees everything the engine counts, from the migration and
    // the first sweep on; the binary is the composition root, so this global is its to set.
    let exporter = order_server::prometheus::install_recorder()?;
    let processor = config.processor().await?;
    let listener = TcpListener::bind(config.listen_address())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_address()))?;
    info!(
        address = %listener.local_addr()?,
        workers = config.workers,
        storage = if config.database_url.is_some() { "postgresql" } else { "memory" },
        processing_delay_ms = config.processing_delay_ms,
        "listening"
    );
    if config.simulated_failure_rate > 0.0 {
        warn!(
            share = config.simulated_failure_rate,
            kind = ?config.simulated_failure,
            "SIMULATED_FAILURE_RATE is set: the simulated processing fails that share of orders on purpose"
        );
    }
    if config.open_beyond_loopback() {
        warn!(
            address = %config.listen_address(),
            "API_TOKEN is not set and the server listens beyond this machine: anyone who can reach it may create and cancel orders"
        );
    }
    if config.database_url.is_none() {
        warn!("storage is in memory: orders are lost on exit; set DATABASE_URL for PostgreSQL");
    }

    let mut options = config.serve_options();
    options.router.prometheus = Some(exporter);
    let app = app(processor.clone(), &options);
    let running = if config.workers == 0 {
        info!("WORKERS=0: serving the API only; other servers process the orders");
        None
    } else {
        Some(processor.start())
    };
    // One signal stops both at once: the workers claim nothing more from the moment it
    // arrives, and the orders in their hands drain while the requests in progress do. Waiting
    // for the HTTP drain first would let the workers take more orders after the signal.
    let signal = shutdown_signal().boxed().shared();
    let closing = options.router.closing.clone();
    let http_stop = {
        let signal = signal.clone();
        async move {
            signal.await;
            // Open event streams would otherwise hold their connections, and the drain, open.
            closing.close();
        }
    };
    let orders_drain = async {
        if let Some(running) = running {
            signal.await;
            let report = running.shutdown(config.shutdown_timeout()).await;
            info!(abandoned = report.abandoned, "stopped");
        }
    };
    let (served, ()) = tokio::join!(run(listener, app, http_stop), orders_drain);
    served.context("server failed")?;
    Ok(())
}
