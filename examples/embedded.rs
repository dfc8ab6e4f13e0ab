//! Embeds the order engine in a service of your own, in memory, with your own processing step.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p examples --example embedded
//! ```
//!
//! The step reserves stock: an unknown item fails the order at once (a permanent error), and
//! the warehouse is busy on every first attempt for item "gpu" (a transient error, retried with
//! backoff). Each order is followed to its end, then the metrics are printed.

#![allow(clippy::print_stdout)] // An example's output is its point.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use order_core::{HandlerError, NewOrder, Order, OrderHandler, OrderProcessor, RetryPolicy};
use rust_decimal::Decimal;

/// Reserves one unit of each item of an order.
struct ReserveStock {
    // A std mutex: the critical section never awaits.
    stock: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl OrderHandler for ReserveStock {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        // Stands in for a call to a warehouse service.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if order.attempts == 1 && order.item_ids.iter().any(|item| item == "gpu") {
            return Err(HandlerError::transient("warehouse busy, try again"));
        }
        let mut stock = self
            .stock
            .lock()
            .map_err(|_| HandlerError::transient("stock table unavailable"))?;
        for item in &order.item_ids {
            match stock.get(item) {
                None => return Err(HandlerError::permanent(format!("unknown item {item:?}"))),
                Some(0) => return Err(HandlerError::permanent(format!("{item:?} is sold out"))),
                Some(_) => {}
            }
        }
        for item in &order.item_ids {
            if let Some(count) = stock.get_mut(item) {
                *count -= 1;
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let step = ReserveStock {
        stock: Mutex::new(HashMap::from([
            ("book".to_owned(), 10),
            ("pen".to_owned(), 10),
            ("gpu".to_owned(), 1),
        ])),
    };
    let processor = OrderProcessor::builder(step)
        .in_memory()
        .concurrency(16)
        .retry_policy(
            RetryPolicy::default()
                .backoff_between(Duration::from_millis(100), Duration::from_secs(300)),
        )
        .build()?;
    let running = processor.start();

    let baskets: [(&str, &[&str], i64); 5] = [
        ("ada", &["book", "pen"], 2450),
        ("grace", &["gpu"], 129_900),
        ("linus", &["gpu"], 129_900),
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
        "{} orders: {} completed, {} failed; average processing time {:.3} s",
        metrics.total_orders,
        metrics.statuses.completed,
        metrics.statuses.failed,
        metrics.avg_processing_seconds()
    );
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
