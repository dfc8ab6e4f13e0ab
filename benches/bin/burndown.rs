//! `bench-burndown`: how fast the engine works off a backlog. It submits `--orders` orders to an
//! order processor that is not started yet, then starts it with a zero-delay handler and times
//! how long until every order is COMPLETED: the engine's own throughput, without HTTP in front.
//!
//! The processor is built by order-server's own [`Config::processor`], from the same flags'
//! defaults and environment variables as the server (`WORKERS`, `DB_MAX_CONNECTIONS`,
//! `LEASE_MS`, `POLL_INTERVAL_MS`, `MAX_ATTEMPTS`, `DATABASE_URL`), with `PROCESSING_DELAY_MS`
//! forced to 0 and `--workers` overriding `WORKERS`: it is the server's engine, in memory or on
//! PostgreSQL, only without the HTTP API.
//!
//! ```text
//! cargo run --release -p benches --bin bench-burndown -- --backend memory --orders 100000
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/order_bench \
//!   cargo run --release -p benches --bin bench-burndown -- --backend postgres --orders 100000
//! ```
//!
//! On PostgreSQL it migrates the database, then TRUNCATEs `order_engine_orders` (its TRUNCATE
//! trigger zeroes the counters) so that each run starts empty: point it at a scratch database
//! that no server is using.
//!
//! It fails (exit 1) unless, at the end, all the orders are COMPLETED and none FAILED. On success
//! it prints one line on stdout for scripts, e.g.
//! `orders_per_sec=12345.6 seconds=8.100 orders=100000 backend=postgres workers=64`;
//! progress goes to stderr, and so do the engine's warnings (`RUST_LOG`, `warn` by default).

#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports on the terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use order_core::{NewOrder, OrderProcessor};
use order_server::Config;
use rust_decimal::Decimal;
use sea_orm::ConnectionTrait;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

/// Where the orders are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The in-memory repository and queue.
    Memory,
    /// PostgreSQL at `DATABASE_URL`.
    Postgres,
}

/// Submits a backlog of orders, then times the engine working it off.
#[derive(Debug, Parser)]
#[command(name = "bench-burndown")]
struct Args {
    /// Where the orders are kept; `postgres` uses `DATABASE_URL`.
    #[arg(long, value_enum)]
    backend: Backend,

    /// How many orders to submit and burn down.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    orders: u64,

    /// Orders processed at once (the engine's concurrency); order-server's `WORKERS` (from the
    /// environment, else its default) unless set.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: Option<u32>,

    /// Tasks submitting the backlog at once (the submission is not timed).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1024))]
    submitters: u64,

    /// Give up (exit 1) if the backlog is not worked off in this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// How often the burn-down polls the counters: the timing's resolution.
const POLL: Duration = Duration::from_millis(10);
/// How often progress is reported on stderr.
const PROGRESS: Duration = Duration::from_secs(5);

fn order(i: u64) -> NewOrder {
    NewOrder::new(
        format!("user-{i}"),
        vec!["item1".to_owned(), "item2".to_owned()],
        Decimal::new(5999, 2),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    // order-server's configuration, as the server would read it from this environment.
    let mut config = Config::try_parse_from(["order-server"])
        .context("order-server's settings in the environment are invalid")?;
    config.processing_delay_ms = 0;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if args.backend == Backend::Memory {
        config.database_url = None;
    } else if config.database_url.is_none() {
        bail!("--backend postgres needs DATABASE_URL (a scratch database: it is truncated)");
    }
    // On PostgreSQL, `processor()` connects and migrates as the server does at start; the
    // TRUNCATE comes after it, so a fresh database works too.
    let processor = config.processor().await?;
    if let Some(url) = &config.database_url {
        empty_the_tables(url).await?;
    }
    burn_down(&args, &config, &processor).await
}

/// Empties the engine's tables on a pool of its own; `burn_down` then checks that the counters
/// and the queue followed.
async fn empty_the_tables(url: &str) -> anyhow::Result<()> {
    let db = sea_orm::Database::connect(url).await?;
    db.execute_unprepared("TRUNCATE order_engine_orders RESTART IDENTITY")
        .await
        .context("TRUNCATE of the engine's tables failed")?;
    Ok(())
}

async fn burn_down(args: &Args, config: &Config, processor: &OrderProcessor) -> anyhow::Result<()> {
    let backend = match args.backend {
        Backend::Memory => "memory",
        Backend::Postgres => "postgres",
    };
    let n = args.orders;
    // Runs are independent only if each starts empty (on PostgreSQL, after the TRUNCATE).
    let before = processor.metrics().await?;
    let queued = processor.queue_depth().await?;
    ensure!(
        before.total_orders == 0
            && before.statuses.sum() == 0
            && queued.ready + queued.delayed + queued.claimed == 0,
        "the {backend} backend is not empty before the run: {before:?}, queue {queued:?}"
    );

    eprintln!(
        "bench-burndown: submitting {n} orders ({backend}) from {} tasks, processor not started",
        args.submitters
    );
    let began = Instant::now();
    submit_all(processor, n, args.submitters).await?;
    let submit_secs = began.elapsed().as_secs_f64();
    eprintln!(
        "bench-burndown: submitted {n} in {submit_secs:.1} s ({:.0}/s)",
        n as f64 / submit_secs
    );
    let submitted = processor.metrics().await?;
    ensure!(
        submitted.statuses.pending == n && submitted.total_orders == n,
        "expected {n} PENDING orders after submitting, the counters say {submitted:?}"
    );

    eprintln!(
        "bench-burndown: starting the processor ({} workers, zero-delay handler)",
        config.workers
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let began = Instant::now();
    let running = processor.start();
    let mut reported = began;
    let done = loop {
        let metrics = processor.metrics().await?;
        let s = metrics.statuses;
        if s.completed + s.failed + s.cancelled >= n {
            break metrics;
        }
        let elapsed = began.elapsed();
        if elapsed > timeout {
            running.shutdown(Duration::from_secs(5)).await;
            bail!(
                "only {} of {n} orders COMPLETED after {} s: {s:?}",
                s.completed,
                timeout.as_secs()
            );
        }
        if reported.elapsed() >= PROGRESS {
            reported = Instant::now();
            eprintln!(
                "bench-burndown: {} of {n} COMPLETED after {:.1} s",
                s.completed,
                elapsed.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let seconds = began.elapsed().as_secs_f64();
    let report = running.shutdown(Duration::from_secs(10)).await;

    ensure!(
        done.statuses.completed == n && done.statuses.failed == 0 && done.total_orders == n,
        "expected {n} COMPLETED and none FAILED, the counters say {done:?}"
    );
    let queue = processor.queue_depth().await?;
    if queue.ready + queue.delayed + queue.claimed > 0 || report.abandoned > 0 {
        eprintln!(
            "bench-burndown: warning: after shutdown the queue still holds {queue:?}, {} abandoned",
            report.abandoned
        );
    }
    eprintln!("bench-burndown: {n} orders COMPLETED in {seconds:.2} s");
    println!(
        "orders_per_sec={:.1} seconds={seconds:.3} orders={n} backend={backend} workers={}",
        n as f64 / seconds,
        config.workers
    );
    Ok(())
}

/// Submits orders `0..n` from `submitters` tasks, each taking the next number until none is
/// left, with a progress line every few seconds.
async fn submit_all(processor: &OrderProcessor, n: u64, submitters: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..submitters {
        let processor = processor.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                processor
                    .submit(order(i))
                    .await
                    .with_context(|| format!("submitting order {i} failed"))?;
            }
        });
    }
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            loop {
                tokio::time::sleep(PROGRESS).await;
                eprintln!(
                    "bench-burndown: submitted about {} of {n} after {:.0} s",
                    next.load(Ordering::Relaxed).min(n),
                    began.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(err);
            tasks.abort_all();
            break;
        }
    }
    progress.abort();
    result
}
