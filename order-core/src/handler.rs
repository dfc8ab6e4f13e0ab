//! The port to the embedding service's own processing step: [`OrderHandler`] and
//! [`HandlerError`] (both at the crate root), and [`SimulatedStep`], a stand-in step for
//! demos, benchmarks and the server's default.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::order::Order;

/// Why a handler could not process an order.
///
/// Its [`message`](Self::message) becomes the order's `last_error`, which clients see (cut to
/// 2,000 characters); the error it came from, kept with [`with_source`](Self::with_source),
/// goes to the logs with its whole chain of causes and is never shown to clients.
///
/// ```
/// use order_core::HandlerError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "gateway did not answer");
/// let err = HandlerError::transient("payment gateway timed out").with_source(io);
/// assert_eq!(err.to_string(), "payment gateway timed out");
/// assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "gateway did not answer");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerError {
    /// What went wrong; recorded as the order's `last_error`.
    pub message: String,
    /// True when trying again cannot help (a declined card, an unknown item): the order fails
    /// at once instead of using up its attempts.
    pub permanent: bool,
    /// The error this one came from, for the logs. An `Arc` keeps the error cloneable.
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl HandlerError {
    /// A failure worth retrying (a timeout, a busy downstream service).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            source: None,
        }
    }

    /// A failure no retry will cure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
            source: None,
        }
    }

    /// The same error, keeping `source` as its cause: logged with its own causes when the
    /// attempt fails, never shown to clients.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// A value that would not serialize or deserialize (a step's output, say) is a permanent
/// failure: trying again reads the same bytes.
impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        HandlerError::permanent(format!("JSON: {err}")).with_source(err)
    }
}

/// Two handler errors are equal when they say the same to the order: the same message and
/// permanence. Their sources are for the logs only.
impl PartialEq for HandlerError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.permanent == other.permanent
    }
}

impl Eq for HandlerError {}

/// `error` and each of its causes, joined with `: `, for a log line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        chain.push_str(": ");
        chain.push_str(&next.to_string());
        cause = next.source();
    }
    chain
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

/// A shared handler: the service keeps its own `Arc` (for its state, or to hand the same
/// handler to several processors).
#[async_trait]
impl<T: OrderHandler + ?Sized> OrderHandler for Arc<T> {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        (**self).process(order).await
    }
}

/// A boxed handler, chosen at run time (`Box<dyn OrderHandler>`).
#[async_trait]
impl<T: OrderHandler + ?Sized> OrderHandler for Box<T> {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        (**self).process(order).await
    }
}

/// A stand-in processing step that takes a fixed time and succeeds: what the service this
/// engine replaces did (2 s), and a zero-delay handler for benchmarks. It can be made to fail
/// a share of its runs ([`failing`](Self::failing)), to watch failures, retries and
/// compensations without writing a handler.
///
/// ```
/// use std::time::Duration;
/// use order_core::handler::SimulatedStep;
///
/// let step = SimulatedStep::new(Duration::ZERO).failing(0.1, true);
/// assert_eq!((step.failure_share(), step.fails_transiently()), (0.1, true));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SimulatedStep {
    delay: Duration,
    /// The share of runs that fail, from 0 to 1.
    failure_share: f64,
    /// Whether a failure is transient (tried again) rather than permanent.
    transient: bool,
}

impl SimulatedStep {
    /// A step that takes `delay` and always succeeds.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            failure_share: 0.0,
            transient: false,
        }
    }

    /// The same step failing `share` of its runs (0 to 1, clamped), each drawn at random: with
    /// a [`HandlerError::transient`] error if `transient`, which the engine tries again, else
    /// a permanent one, which fails the order.
    #[must_use]
    pub fn failing(mut self, share: f64, transient: bool) -> Self {
        self.failure_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self.transient = transient;
        self
    }

    /// How long each order takes.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The share of runs that fail.
    pub fn failure_share(&self) -> f64 {
        self.failure_share
    }

    /// Whether its failures are transient.
    pub fn fails_transiently(&self) -> bool {
        self.transient
    }

    /// Takes the delay, then succeeds, or fails as drawn.
    pub(crate) async fn perform(&self, what: &str) -> Result<(), HandlerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.failure_share > 0.0 && rand::random::<f64>() < self.failure_share {
            let message = format!("{what} failed (simulated)");
            return Err(if self.transient {
                HandlerError::transient(message)
            } else {
                HandlerError::permanent(message)
            });
        }
        Ok(())
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
        self.perform("processing").await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use rust_decimal::Decimal;

    use super::*;
    use crate::OrderProcessor;
    use crate::order::NewOrder;

    /// Counts its calls and succeeds.
    #[derive(Debug, Default)]
    struct Counting(AtomicU32);

    #[async_trait]
    impl OrderHandler for Counting {
        async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn shared_and_boxed_handlers_process_orders() {
        let shared = Arc::new(Counting::default());
        let boxed: Box<dyn OrderHandler> = Box::new(shared.clone());
        for processor in [
            OrderProcessor::builder(shared.clone())
                .in_memory()
                .build()
                .unwrap(),
            OrderProcessor::builder(boxed).in_memory().build().unwrap(),
        ] {
            let running = processor.start();
            let order = processor
                .submit(NewOrder::new("u", ["i"], Decimal::ONE))
                .await
                .unwrap();
            processor.wait_until_done(order.id).await.unwrap();
            running.shutdown(Duration::from_secs(5)).await;
        }
        assert_eq!(
            shared.0.load(Ordering::SeqCst),
            2,
            "both went to the one handler"
        );
    }

    /// An error with a cause of its own.
    #[derive(Debug, thiserror::Error)]
    #[error("connection reset")]
    struct Reset(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_and_equality_ignores_them() {
        let io = std::io::Error::other("peer closed");
        let err = HandlerError::permanent("charge failed").with_source(Reset(io));
        assert_eq!(
            error_chain(&err),
            "charge failed: connection reset: peer closed"
        );
        assert_eq!(err, HandlerError::permanent("charge failed"));
        assert_ne!(err, HandlerError::transient("charge failed"));
    }
}
