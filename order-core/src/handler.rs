//! The port to the embedding service's own processing step.

use std::time::Duration;

use async_trait::async_trait;

use crate::order::Order;

/// Why a handler could not process an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong; recorded as the order's `last_error`.
    pub message: String,
    /// True when trying again cannot help (a declined card, an unknown item): the order fails
    /// at once instead of using up its attempts.
    pub permanent: bool,
}

impl HandlerError {
    /// A failure worth retrying (a timeout, a busy downstream service).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure no retry will cure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// What "processing an order" means for the embedding service: reserve stock, charge, ship...
///
/// # Contract
///
/// - Delivery is at-least-once: after a crash or a lapsed lease the same order may be handed
///   to `process` again, so the work must be idempotent (key side effects by the order id).
/// - `Ok(())` completes the order. A transient error is retried with exponential backoff until
///   the processor's `max_attempts`; a permanent one, or the last attempt's, fails it.
/// - A panic is caught and treated as a transient error.
/// - The future may be dropped mid-way: at shutdown past the drain timeout, or when the lease
///   was lost to another worker.
///
/// ```
/// use async_trait::async_trait;
/// use order_core::{HandlerError, Order, OrderHandler};
///
/// struct ChargeCard;
///
/// #[async_trait]
/// impl OrderHandler for ChargeCard {
///     async fn process(&self, order: &Order) -> Result<(), HandlerError> {
///         if order.total_amount.is_zero() {
///             return Err(HandlerError::permanent("nothing to charge"));
///         }
///         Ok(())
///     }
/// }
/// ```
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait OrderHandler: Send + Sync {
    /// Processes one order; the order is PROCESSING while this runs.
    async fn process(&self, order: &Order) -> Result<(), HandlerError>;
}

/// A stand-in processing step that takes a fixed time and always succeeds: what the service
/// this engine replaces did (2 s), and a zero-delay handler for benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedStep {
    delay: Duration,
}

impl SimulatedStep {
    /// A step that takes `delay`.
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// How long each order takes.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl Default for SimulatedStep {
    /// Two seconds, as the service this replaces.
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

#[async_trait]
impl OrderHandler for SimulatedStep {
    async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}
