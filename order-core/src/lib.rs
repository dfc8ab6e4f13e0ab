//! An order-processing engine to embed in a Rust service: it validates orders, stores them,
//! and runs each through your processing step with leases, retries and crash recovery.
//!
//! ```
//! use std::time::Duration;
//! use order_core::{NewOrder, OrderProcessor, OrderStatus};
//! use order_core::handler::SimulatedStep;
//! use rust_decimal::Decimal;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(10))).in_memory().build()?;
//! let running = processor.start();
//!
//! let order = processor
//!     .submit(NewOrder::new("user-123", ["item1"], Decimal::new(5999, 2)))
//!     .await?;
//! let done = processor.wait_until_done(order.id).await?.expect("the order exists");
//! assert_eq!(done.status, OrderStatus::Completed);
//!
//! running.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! The crate root is the embedder's API; everything a backend author needs is under
//! [`backend`].
//!
//! - The domain, [`order`]: [`Order`], [`NewOrder`] and its validation, [`OrderStatus`] and
//!   the transitions between statuses ([`OrderStatus::may_become`] and
//!   [`OrderStatus::may_reach`], from the [`TransitionKind`](backend::TransitionKind)s the
//!   engine applies), and [`order::exact_amount`] for money as exact JSON numbers.
//! - What processing an order means to you, in [`handler`]: [`OrderHandler`] and
//!   [`HandlerError`] (and [`SimulatedStep`](handler::SimulatedStep), a stand-in); or, in
//!   [`step`], a [`Pipeline`] of named steps, each checkpointed under the worker's claim and
//!   compensated in reverse when a later one fails or the order is cancelled mid-way.
//! - The engine, [`OrderProcessor`]: built by [`OrderProcessorBuilder`] with its storage
//!   chosen explicitly; submit, get, cancel, list, watch, metrics; [`start`](OrderProcessor::start)
//!   runs a claim loop that keeps up to `concurrency` orders in the handler, until its
//!   [`ProcessorHandle`] is shut down.
//! - The ports, in [`backend`]: [`Repository`](backend::Repository) (where orders live, the
//!   source of truth), [`Queue`](backend::Queue) (which orders wait for a worker, and who holds
//!   which), [`ChangeFeed`](backend::ChangeFeed) and [`Backend`](backend::Backend) (a
//!   repository and the queue that shares its storage, built in one call), with their
//!   contract.
//! - The adapters: [`memory`] (in this process) and `postgres` (feature `postgres`).
//! - What the engine measures, in [`telemetry`]: counters and histograms through the `metrics`
//!   facade (recorded only once the embedding service installs a recorder: this crate
//!   installs none), and one tracing span per attempt, carrying `order_id` and `delivery`,
//!   around its log events (acceptance, attempt started with its number, completed, retrying,
//!   failed, cancelled).
//!
//! # Concepts
//!
//! - A **claim** hands one queued order to one worker, with a **lease**: if the worker does not
//!   finish, retry or renew before the lease runs out, the order goes to another worker.
//! - Every claim has a fresh [`ClaimToken`](backend::ClaimToken). Each change a worker makes, in the queue and in
//!   the repository, is a compare-and-set **fenced** by that token, so a worker that lost its
//!   lease can never overwrite what the worker after it wrote.
//! - A failed attempt is **retried** with exponential backoff ([`RetryPolicy`]); when attempts
//!   run out, or the handler says the error is permanent, the order is FAILED with its
//!   `last_error`.
//! - A **recovery sweep** treats the repository as the truth: at start and periodically it
//!   re-queues PENDING orders, and PROCESSING orders whose lease ran out, that the queue does not
//!   hold (after a crash, or with a queue that does not survive restarts).
//!
//! # Guarantees
//!
//! - An order [`OrderProcessor::submit`] accepted is stored before it returns, and is
//!   processed until it is COMPLETED or FAILED (or CANCELLED before it started), however the
//!   queue and workers fail, as long as the repository keeps it.
//! - Delivery is at-least-once: a handler may see an order again after a crash or a lost
//!   lease, so side effects should be keyed by the order id. Two workers never both record an
//!   outcome for one order.
//! - [`OrderProcessor::metrics`] costs the same with ten orders or ten million.
//!
//! # Features
//!
//! None changes how any other crate behaves in your build: amounts are read from the JSON
//! text through serde_json's `raw_value`, never its `arbitrary_precision`.
//!
//! - `postgres` (default): `order_core::postgres`, the PostgreSQL backend with its
//!   migrations, through sea-orm and sqlx. Without it (`default-features = false`) the crate
//!   compiles no database driver, and runs on [`memory`] or a backend of your own.
//! - `mock`: mockall's [`MockOrderHandler`], `backend::MockRepository` and
//!   `backend::MockQueue`, for your tests.
//! - `testing`: the contract suite (`repository_contract_tests!`, `queue_contract_tests!`,
//!   and `backend_contract_tests!` for a backend whose queue shares its repository's storage)
//!   that every `Repository`, `Queue` and such `Backend` must pass; run it against your own
//!   adapter. With `postgres`, also scratch databases for tests (`testing::TestDatabase`).
//! - `openapi`: utoipa's `ToSchema` for [`Order`], [`NewOrder`], [`OrderStatus`], [`OrderId`],
//!   [`StatusCounts`] and [`QueueDepth`], so an HTTP API can document them from the code;
//!   `NewOrder`'s schema carries the limits [`NewOrder::validate`] enforces.
//!
//! # Other crates' types in this API, on purpose
//!
//! - rust_decimal 1 (`Decimal`: amounts) and chrono 0.4 (`DateTime<Utc>`: times), both
//!   re-exported ([`rust_decimal`], [`chrono`]) so that a service uses the versions the engine
//!   was built with.
//! - tokio 1 (`broadcast::Receiver` from [`OrderProcessor::subscribe`] and the change feed),
//!   futures 0.3 (`Stream`, which [`OrderWatch`] is), uuid 1 (a claim token's UUID), and the
//!   `async_trait` attribute on the traits to implement.
//! - With features: mockall 0.15 (`mock`), utoipa 5 (`openapi`).
//!
//! Nothing in the API names sea-orm or sqlx: `postgres` wraps its pool in its own type.
//!
//! # Stability
//!
//! Structs and enums that will grow are `#[non_exhaustive]`: build them with their
//! constructors ([`NewOrder::new`], [`RetryPolicy::default`] and its setters) and match them
//! with a wildcard arm. [`OrderStatus`] is exhaustive on purpose: the statuses are the API's
//! promise. Breaking changes are recorded in CHANGELOG.md and checked by cargo-semver-checks.

pub mod backend;
pub mod bulk;
mod changes;
mod error;
pub mod handler;
mod idempotency;
pub mod memory;
pub mod order;
#[cfg(feature = "postgres")]
pub mod postgres;
mod processor;
mod queue;
mod repository;
mod retry;
pub mod step;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use bulk::BulkError;
pub use chrono;
pub use error::{CancelError, RetryError, StorageError, SubmitError};
#[cfg(any(test, feature = "mock"))]
pub use handler::MockOrderHandler;
pub use handler::{HandlerError, OrderHandler};
pub use idempotency::{IdempotencyKey, InvalidIdempotencyKey};
pub use order::{
    FailureRecord, NewOrder, Order, OrderId, OrderStatus, ParseOrderIdError, UnknownStatus,
    ValidationError,
};
pub use processor::{
    BuildError, BulkAccepted, Cancellation, OrderPage, OrderProcessor, OrderProcessorBuilder,
    OrderWatch, ProcessorHandle, RetryPolicy, ShutdownReport, Submission, Submitted,
};
pub use queue::{QueueDepth, QueueError};
pub use repository::{OrderMetrics, OrderQuery, StatusCounts};
pub use rust_decimal;
pub use step::Pipeline;

/// Locks `mutex`, going on past poisoning: no critical section in this crate panics between
/// two writes, so a poisoned lock still guards consistent state.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
