//! Embeds the order engine in a service of your own, on PostgreSQL: orders and the queue live
//! in the database, so they survive a restart and several processes can share the work.
//!
//! Run it against a database it may create tables in (all named `order_engine_*`):
//!
//! ```text
//! docker compose up -d db
//! DATABASE_URL=postgres://orders:orders@localhost:5432/orders cargo run -p examples --example postgres
//! ```
//!
//! It connects, runs the migrations, and charges a payment for each of a handful of orders: a
//! total over the card limit fails at once (a permanent error), the gateway times out on the
//! first attempt for one customer (a transient error, retried with backoff) and on every attempt
//! for another (FAILED once the attempts run out). Each order is followed to its end, then the
//! metrics, which count every order the database holds, earlier runs' included, are printed.
//!
//! # Beside a migrator of your own
//!
//! [`order_core::postgres::migrate`] applies the schema under an advisory lock, so replicas that
//! start together take turns. A service that runs its own sea-orm-migration migrator can apply
//! ours from the same place instead; ours records itself in `order_engine_migrations`, apart
//! from the service's `seaql_migrations`:
//!
//! ```rust,ignore
//! use sea_orm_migration::MigratorTrait;
//!
//! // The service's own migrations, then the engine's.
//! migration::Migrator::up(&db, None).await?;
//! order_core::postgres::Migrator::up(&db, None).await?;
//! ```
//!
//! Keep the two migrators apart rather than listing our migrations in the service's
//! `migrations()`: they would then be recorded in `seaql_migrations`, and a later
//! `order_core::postgres::migrate` would try to create the tables again.

#![allow(clippy::print_stdout)] // An example's output is its point.

use std::time::Duration;

use async_trait::async_trait;
use order_core::postgres::{self, PoolOptions, PostgresBackend};
use order_core::{HandlerError, NewOrder, Order, OrderHandler, OrderProcessor, RetryPolicy};
use rust_decimal::Decimal;

/// Charges the customer's card for an order.
struct ChargePayment {
    /// Totals above this are declined.
    card_limit: Decimal,
}

#[async_trait]
impl OrderHandler for ChargePayment {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        // Stands in for a call to a payment gateway. A real one would pass the order id as the
        // idempotency key: an order may be delivered again after a crash.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if order.total_amount > self.card_limit {
            return Err(HandlerError::permanent(format!(
                "card declined: {} is over the {} limit",
                order.total_amount, self.card_limit
            )));
        }
        match order.user_id.as_str() {
            "linus" if order.attempts == 1 => {
                Err(HandlerError::transient("payment gateway timed out"))
            }
            "ken" => Err(HandlerError::transient("card issuer unreachable")),
            _ => Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let Ok(url) = std::env::var("DATABASE_URL") else {
        anyhow::bail!(
            "DATABASE_URL is not set; start PostgreSQL with `docker compose up -d db`, then run \
             `DATABASE_URL=postgres://orders:orders@localhost:5432/orders cargo run -p examples \
             --example postgres`"
        );
    };
    let options = PoolOptions::default()
        .max_connections(8)
        .application_name("order-engine-example");
    let db = postgres::connect(&url, &options).await?;
    postgres::migrate(&db).await?;
    println!("connected; migrations applied");

    // The backend's queue shares the orders' storage: the statement that stores an order also
    // queues it, and a claim also starts the order it claims.
    let processor = OrderProcessor::builder(ChargePayment {
        card_limit: Decimal::new(100_000, 2),
    })
    .backend(&PostgresBackend::new(&db))
    .concurrency(8)
    .retry_policy(
        RetryPolicy::default()
            .max_attempts(3)
            .backoff_between(Duration::from_millis(50), Duration::from_secs(300)),
    )
    // Idle workers wake on NOTIFY for new orders; a delayed retry is picked up at the next
    // poll, so keep it short next to the backoff.
    .poll_interval(Duration::from_millis(100))
    .build()?;
    let running = processor.start();

    let baskets: [(&str, &[&str], i64); 5] = [
        ("ada", &["book", "pen"], 2450),
        ("grace", &["gpu"], 129_900),
        ("linus", &["laptop"], 89_900),
        ("ken", &["floppy"], 100),
        ("barbara", &["pen"], 250),
    ];
    let mut ids = Vec::new();
    for (user, items, cents) in baskets {
        let order = processor
            .submit(NewOrder::new(
                user.to_owned(),
                items.iter().copied(),
                Decimal::new(cents, 2),
            ))
            .await?;
        println!(
            "submitted order {} for {user}: {}",
            order.id, order.total_amount
        );
        ids.push(order.id);
    }

    for id in ids {
        let order = tokio::time::timeout(Duration::from_secs(30), processor.wait_until_done(id))
            .await??
            .ok_or_else(|| anyhow::anyhow!("order {id} vanished"))?;
        println!(
            "order {} ({}): {} after {} attempt(s){}",
            order.id,
            order.user_id,
            order.status,
            order.attempts,
            order
                .last_error
                .map(|error| format!(", last error: {error}"))
                .unwrap_or_default()
        );
    }

    let metrics = processor.metrics().await?;
    println!(
        "in the database, all runs: {} orders: {} completed, {} failed, {} pending, {} processing; \
         average processing time {:.3} s",
        metrics.total_orders,
        metrics.statuses.completed,
        metrics.statuses.failed,
        metrics.statuses.pending,
        metrics.statuses.processing,
        metrics.avg_processing_seconds()
    );
    let report = running.shutdown(Duration::from_secs(5)).await;
    println!("shut down; {} order(s) left unfinished", report.abandoned);
    Ok(())
}
