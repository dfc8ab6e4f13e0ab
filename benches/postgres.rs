//! Throughput of the engine on PostgreSQL, submit -> COMPLETED with a zero-delay handler, beside a
//! bare `INSERT ... RETURNING id` then `UPDATE` per order on the same pool: the cost of two
//! commits per order on this machine, against which the engine's figure reads as a ratio. (The
//! engine's own path takes three statements per order, each shared by a batch: store and queue,
//! claim and start, complete and ack.)
//!
//! It needs a database it may create tables in, and is skipped (exiting 0) when `DATABASE_URL`
//! is unset:
//!
//! ```text
//! psql postgres://postgres@127.0.0.1:5432/postgres -c 'CREATE DATABASE order_bench'
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/order_bench cargo bench -p benches --bench postgres
//! ```
//!
//! The orders it submits stay in `order_engine_orders`; its reference table,
//! `order_bench_reference`, is dropped at the end.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A bench reports on the terminal.

use std::error::Error;
use std::fmt::Display;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use order_core::handler::SimulatedStep;
use order_core::postgres::{self, PoolOptions, PostgresBackend, PostgresPool};
use order_core::{NewOrder, OrderProcessor};
use rust_decimal::Decimal;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use tokio::task::JoinSet;

/// Orders per iteration.
const ORDERS: u64 = 2_000;
/// Tasks submitting at once, as concurrent requests to a server would; the reference runs as
/// many.
const CLIENTS: u64 = 16;
/// Orders each client submits.
const PER_CLIENT: u64 = ORDERS / CLIENTS;
const _: () = assert!(
    ORDERS.is_multiple_of(CLIENTS),
    "every client submits as many orders"
);
/// Orders in the engine's handler at once.
const CONCURRENCY: usize = 32;
/// One iteration taking longer than this means the engine has stalled.
const ITERATION_DEADLINE: Duration = Duration::from_secs(120);

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn order(i: u64) -> NewOrder {
    NewOrder::new(
        format!("user-{i}"),
        vec!["item1".to_owned(), "item2".to_owned()],
        Decimal::new(5999, 2),
    )
}

/// A bench has no caller to hand an error to: say what failed and stop the run.
fn fail(err: &dyn Display) -> ! {
    eprintln!("postgres bench failed: {err}");
    std::process::exit(1)
}

/// Runs `CLIENTS` tasks, each calling `per_order` for its share of the `ORDERS` order numbers.
async fn from_clients<F, Fut>(per_order: F) -> BenchResult<()>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BenchResult<()>> + Send,
{
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let per_order = per_order.clone();
        clients.spawn(async move {
            for i in client * PER_CLIENT..(client + 1) * PER_CLIENT {
                per_order(i).await?;
            }
            BenchResult::Ok(())
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined??;
    }
    Ok(())
}

/// Submits `ORDERS` orders to a fresh, started processor and waits until all are COMPLETED.
async fn submit_and_complete(pool: &PostgresPool) -> BenchResult<Duration> {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .backend(&PostgresBackend::new(pool))
        .concurrency(CONCURRENCY)
        .build()?;
    let running = processor.start();
    // The database may hold earlier iterations' orders (and earlier runs').
    let completed_before = processor.metrics().await?.statuses.completed;
    let began = Instant::now();
    let submitter = processor.clone();
    from_clients(move |i| {
        let processor = submitter.clone();
        async move {
            processor.submit(order(i)).await?;
            Ok(())
        }
    })
    .await?;
    loop {
        let completed = processor
            .metrics()
            .await?
            .statuses
            .completed
            .saturating_sub(completed_before);
        if completed >= ORDERS {
            break;
        }
        if began.elapsed() > ITERATION_DEADLINE {
            return Err(format!(
                "only {completed} of {ORDERS} orders COMPLETED after {ITERATION_DEADLINE:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = began.elapsed();
    running.shutdown(Duration::from_secs(10)).await;
    Ok(took)
}

const CREATE_REFERENCE: &str = "
    DROP TABLE IF EXISTS order_bench_reference;
    CREATE TABLE order_bench_reference (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id text NOT NULL,
        item_ids text[] NOT NULL,
        total_amount numeric(14, 2) NOT NULL,
        status text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )";

/// Inserts each order into the reference table and marks it COMPLETED, one statement (and one
/// commit) each.
async fn insert_and_update(db: &DatabaseConnection) -> BenchResult<Duration> {
    let began = Instant::now();
    let db = db.clone();
    from_clients(move |i| {
        let db = db.clone();
        async move {
            let order = order(i);
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO order_bench_reference (user_id, item_ids, total_amount, status)
                     VALUES ($1, $2, $3, 'PENDING') RETURNING id",
                    [
                        order.user_id.into(),
                        order.item_ids.into(),
                        order.total_amount.into(),
                    ],
                ))
                .await?
                .ok_or("INSERT ... RETURNING returned no row")?;
            let id: i64 = row.try_get("", "id")?;
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE order_bench_reference SET status = 'COMPLETED', updated_at = now()
                  WHERE id = $1",
                [id.into()],
            ))
            .await?;
            Ok(())
        }
    })
    .await?;
    Ok(began.elapsed())
}

fn bench(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    pool: &PostgresPool,
    db: &DatabaseConnection,
) {
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(ORDERS));
    // An iteration of the engine takes a second or two. The same number of iterations in each
    // sample (not 1, 2, ... 10), few samples and a short target keep the whole run under a
    // minute: the engine then runs 10 iterations, one a sample, and criterion warns that they
    // overrun the target.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("submit_to_completed", |b| {
        b.to_async(runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += submit_and_complete(pool)
                    .await
                    .unwrap_or_else(|err| fail(&err));
            }
            total
        });
    });
    group.bench_function("reference_insert_update", |b| {
        b.to_async(runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += insert_and_update(db).await.unwrap_or_else(|err| fail(&err));
            }
            total
        });
    });
    group.finish();
}

fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!(
            "postgres bench skipped: set DATABASE_URL to a PostgreSQL database it may create \
             tables in, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/order_bench"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| fail(&err));
    // The submitting clients, the processor's workers, its LISTEN connection and the metrics
    // poll all draw on the engine's pool; the reference's clients get a pool of the same size.
    let options = PoolOptions::default()
        .max_connections(32)
        .application_name("order-engine-bench");
    let (pool, db) = runtime
        .block_on(async {
            let pool = postgres::connect(&url, &options).await?;
            postgres::migrate(&pool).await?;
            let mut reference = ConnectOptions::new(url.clone());
            reference.max_connections(32).sqlx_logging(false);
            let db = Database::connect(reference).await?;
            db.execute_unprepared(CREATE_REFERENCE).await?;
            BenchResult::Ok((pool, db))
        })
        .unwrap_or_else(|err| fail(&err));

    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &runtime, &pool, &db);
    criterion.final_summary();

    if let Err(err) =
        runtime.block_on(db.execute_unprepared("DROP TABLE IF EXISTS order_bench_reference"))
    {
        fail(&err);
    }
}
