//! How the engine retries a processing step that fails: transient errors are retried with
//! exponential backoff until they pass or the attempts run out, a permanent error fails the
//! order at once, and each order keeps its attempts and its `last_error`.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p examples --example retries
//! ```
//!
//! The step charges a payment gateway that behaves the same way on every run, by customer:
//! it is busy on the first attempt for linus and the first two for grace, declines ken's card,
//! and times out on every attempt for barbara. With at most 4 attempts and a backoff of
//! 100 ms doubling (no jitter, so the run is reproducible), all is done in about a second. The
//! example prints each order's outcome and exits with an error if any is not the one expected.

#![allow(clippy::print_stdout)] // An example's output is its point.

use std::time::Duration;

use async_trait::async_trait;
use order_core::{
    HandlerError, NewOrder, Order, OrderHandler, OrderProcessor, OrderStatus, RetryPolicy,
};
use rust_decimal::Decimal;

/// Attempts in all, the first included.
const MAX_ATTEMPTS: u32 = 4;

/// Charges a payment gateway whose failures depend only on the customer and the attempt.
struct FlakyGateway;

#[async_trait]
impl OrderHandler for FlakyGateway {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        // Stands in for the call to the gateway.
        tokio::time::sleep(Duration::from_millis(10)).await;
        // `attempts` counts this attempt too: it is 1 the first time an order is handed over.
        let attempt = order.attempts;
        match order.user_id.as_str() {
            "linus" if attempt <= 1 => Err(HandlerError::transient(format!(
                "gateway busy on attempt {attempt}"
            ))),
            "grace" if attempt <= 2 => Err(HandlerError::transient(format!(
                "gateway busy on attempt {attempt}"
            ))),
            "ken" => Err(HandlerError::permanent("card declined")),
            "barbara" => Err(HandlerError::transient(format!(
                "gateway timed out on attempt {attempt}"
            ))),
            _ => Ok(()),
        }
    }
}

/// What each customer's order should end as.
struct Expected {
    user: &'static str,
    status: OrderStatus,
    attempts: u32,
    last_error: Option<&'static str>,
}

const EXPECTED: [Expected; 5] = [
    Expected {
        user: "ada",
        status: OrderStatus::Completed,
        attempts: 1,
        last_error: None,
    },
    // Completed on a retry: `last_error` still says what the failed attempt met.
    Expected {
        user: "linus",
        status: OrderStatus::Completed,
        attempts: 2,
        last_error: Some("gateway busy on attempt 1"),
    },
    Expected {
        user: "grace",
        status: OrderStatus::Completed,
        attempts: 3,
        last_error: Some("gateway busy on attempt 2"),
    },
    // A permanent error uses up no more attempts.
    Expected {
        user: "ken",
        status: OrderStatus::Failed,
        attempts: 1,
        last_error: Some("card declined"),
    },
    Expected {
        user: "barbara",
        status: OrderStatus::Failed,
        attempts: MAX_ATTEMPTS,
        last_error: Some("gateway timed out on attempt 4"),
    },
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let processor = OrderProcessor::builder(FlakyGateway)
        .in_memory()
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(MAX_ATTEMPTS)
                .backoff_between(Duration::from_millis(100), Duration::from_secs(1))
                .multiplier(2.0)
                // Without jitter the delays are exactly 100, 200 and 400 ms: the same on every
                // run.
                .jitter(false),
        )
        .build()?;
    let running = processor.start();

    let mut submitted = Vec::new();
    for expected in &EXPECTED {
        let order = processor
            .submit(NewOrder::new(
                expected.user.to_owned(),
                vec!["book".to_owned()],
                Decimal::new(2450, 2),
            ))
            .await?;
        submitted.push((order.id, expected));
    }

    let mut wrong = Vec::new();
    for (id, expected) in submitted {
        let order = tokio::time::timeout(Duration::from_secs(10), processor.wait_until_done(id))
            .await??
            .ok_or_else(|| anyhow::anyhow!("order {id} vanished"))?;
        println!(
            "order {} ({}): {} after {} attempt(s), last error: {}",
            order.id,
            order.user_id,
            order.status,
            order.attempts,
            order.last_error.as_deref().unwrap_or("none")
        );
        if order.status != expected.status
            || order.attempts != expected.attempts
            || order.last_error.as_deref() != expected.last_error
        {
            wrong.push(format!(
                "{}: expected {} after {} attempt(s), last error {:?}",
                expected.user, expected.status, expected.attempts, expected.last_error
            ));
        }
    }

    running.shutdown(Duration::from_secs(5)).await;
    anyhow::ensure!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
    println!("every order ended as expected");
    Ok(())
}
