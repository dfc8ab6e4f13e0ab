use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;

use super::*;
use crate::error::RetryError;
use crate::handler::{HandlerError, MockOrderHandler, SimulatedStep};
use crate::memory::{InMemoryQueue, InMemoryRepository};
use crate::order::OrderStatus;
use crate::queue::ClaimToken;
use crate::repository::MockRepository;
use crate::testing::sample_order;

mod failures;
mod leases;
mod observability;
mod queries;
mod retries;
mod shared_backend;
mod shutdown;
mod steps;
mod submit;

const WAIT: Duration = Duration::from_secs(10);

fn new_order(user: &str) -> NewOrder {
    NewOrder {
        user_id: user.into(),
        item_ids: vec!["item1".into()],
        total_amount: Decimal::new(1050, 2),
    }
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        multiplier: 2.0,
        jitter: false,
    }
}

async fn submit_many(processor: &OrderProcessor, count: usize) -> Vec<OrderId> {
    let mut ids = Vec::new();
    for i in 0..count {
        let order = processor.submit(new_order(&format!("u{i}"))).await.unwrap();
        ids.push(order.id);
    }
    ids
}

/// Waits until `count` orders are in the handler.
async fn until_processing(processor: &OrderProcessor, count: u64) {
    tokio::time::timeout(WAIT, async {
        while processor.metrics().await.unwrap().statuses.processing < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the workers started the orders");
}

async fn done(processor: &OrderProcessor, id: OrderId) -> Order {
    tokio::time::timeout(WAIT, processor.wait_until_done(id))
        .await
        .expect("the order finished in time")
        .unwrap()
        .expect("the order exists")
}

/// Fails the first `failures` attempts of every order, then succeeds.
struct FlakyStep {
    failures: u32,
    calls: AtomicU32,
}

#[async_trait]
impl OrderHandler for FlakyStep {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if order.attempts <= self.failures {
            Err(HandlerError::transient(format!(
                "warehouse busy (attempt {})",
                order.attempts
            )))
        } else {
            Ok(())
        }
    }
}

/// What [`FaultyRepository`] does with one transition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Passes it through.
    Pass,
    /// Fails it with a storage error, writing nothing.
    Refuse,
    /// Writes it, then reports a storage error (a reply lost on the way back).
    ApplyThenFail,
    /// Never answer, as a connection to a partitioned database does not.
    Hang,
    /// Writes it, then never answers, as a reply stalled on its way back.
    ApplyThenHang,
    /// Passes it through after a round trip of a few milliseconds, as a database answers.
    Slow,
}

/// A repository (in memory unless told otherwise) with storage failures on demand, for the
/// failure paths a real database cannot be made to produce at a chosen moment.
struct FaultyRepository {
    inner: Arc<dyn Repository>,
    fault: Box<dyn Fn(&Transition) -> Fault + Send + Sync>,
    stranded_delay: Duration,
    /// How many sweeps have asked for stranded orders.
    stranded_calls: AtomicU32,
}

impl FaultyRepository {
    fn new(fault: impl Fn(&Transition) -> Fault + Send + Sync + 'static) -> Self {
        Self::around(Arc::new(InMemoryRepository::new()), fault)
    }

    fn around(
        inner: Arc<dyn Repository>,
        fault: impl Fn(&Transition) -> Fault + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            fault: Box::new(fault),
            stranded_delay: Duration::ZERO,
            stranded_calls: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Repository for FaultyRepository {
    async fn insert(&self, order: &crate::order::ValidatedOrder) -> Result<Order, StorageError> {
        self.inner.insert(order).await
    }
    async fn insert_keyed(
        &self,
        order: &crate::order::ValidatedOrder,
        record: &crate::backend::KeyRecord,
    ) -> Result<crate::backend::Insertion, StorageError> {
        self.inner.insert_keyed(order, record).await
    }
    async fn prune_keys(&self) -> Result<u64, StorageError> {
        self.inner.prune_keys().await
    }
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        self.inner.get(id).await
    }
    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError> {
        match (self.fault)(&transition) {
            Fault::Pass => self.inner.transition(id, transition).await,
            Fault::Refuse => Err(StorageError::unavailable("connection reset").into()),
            Fault::ApplyThenFail => {
                self.inner.transition(id, transition).await?;
                Err(StorageError::unavailable("reply lost").into())
            }
            Fault::Hang => std::future::pending().await,
            Fault::ApplyThenHang => {
                self.inner.transition(id, transition).await?;
                std::future::pending().await
            }
            Fault::Slow => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.inner.transition(id, transition).await
            }
        }
    }
    async fn stranded(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StorageError> {
        self.stranded_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.stranded_delay).await;
        self.inner.stranded(after, limit).await
    }
    async fn list(&self, query: &crate::OrderQuery) -> Result<Vec<Order>, StorageError> {
        self.inner.list(query).await
    }
    async fn metrics(&self) -> Result<crate::OrderMetrics, StorageError> {
        self.inner.metrics().await
    }
}

/// Builds a processor on `repository`, with quick retries, and starts it.
fn start_on(
    repository: Arc<dyn Repository>,
    handler: impl OrderHandler + 'static,
    lease: Duration,
) -> (OrderProcessor, ProcessorHandle) {
    let processor = OrderProcessor::builder(handler)
        .repository(repository)
        .queue(Arc::new(InMemoryQueue::new()))
        .lease(lease)
        .retry_policy(quick_retries(5))
        .build()
        .unwrap();
    let running = processor.start();
    (processor, running)
}

/// Lets a test keep its own `Arc` to a handler it hands to the processor.
struct ArcStep<H>(Arc<H>);

#[async_trait]
impl<H: OrderHandler> OrderHandler for ArcStep<H> {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        self.0.process(order).await
    }
}

/// Runs each order for `delay`, noting each run as it begins (so that a run still under way
/// counts) and when it ends.
struct RecordedStep {
    delay: Duration,
    runs: std::sync::Mutex<Vec<Run>>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    order: OrderId,
    began: tokio::time::Instant,
    /// `None` while under way, or when the run was stopped before its end.
    ended: Option<tokio::time::Instant>,
}

impl RecordedStep {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            runs: std::sync::Mutex::default(),
        }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// How many runs of `order` have begun.
    fn runs_of(&self, order: OrderId) -> usize {
        self.runs().iter().filter(|run| run.order == order).count()
    }
}

#[async_trait]
impl OrderHandler for RecordedStep {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(Run {
                order: order.id,
                began: tokio::time::Instant::now(),
                ended: None,
            });
            runs.len() - 1
        };
        tokio::time::sleep(self.delay).await;
        self.runs.lock().unwrap()[run].ended = Some(tokio::time::Instant::now());
        Ok(())
    }
}
