//! [`InMemoryBackend`]: the in-memory repository and queue as one backend whose queue shares
//! the repository's storage.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::Backend;
use crate::bulk::BulkActions;
use crate::error::StorageError;
use crate::error::TransitionError;
use crate::idempotency::{Insertion, KeyRecord};
use crate::memory::{InMemoryBulkActions, InMemoryQueue, InMemoryRepository};
use crate::order::{Order, OrderId, ValidatedOrder};
use crate::queue::{Claim, Queue, QueueDepth, QueueError, QueueStorage};
use crate::repository::{OrderMetrics, OrderQuery, Repository, Transition};

/// An [`InMemoryRepository`] and an [`InMemoryQueue`] kept in step inside the backend, so that
/// the engine makes fewer calls per order: a stored order is queued by its insert, a claim
/// starts the orders it hands out, and finishing an order takes it off the queue
/// ([`QueueStorage::Repository`]).
///
/// Like the two it is made of, it keeps everything in this process's memory. Cloning is cheap:
/// clones share the orders and the queue.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use order_core::{NewOrder, OrderProcessor, OrderStatus};
/// use order_core::handler::SimulatedStep;
/// use order_core::memory::InMemoryBackend;
/// use rust_decimal::Decimal;
///
/// let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
///     .backend(&InMemoryBackend::new())
///     .build()?;
/// let running = processor.start();
/// let order = processor
///     .submit(NewOrder::new("u", ["i"], Decimal::ONE))
///     .await?;
/// let done = processor.wait_until_done(order.id).await?.expect("the order exists");
/// assert_eq!(done.status, OrderStatus::Completed);
/// running.shutdown(Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryBackend {
    stores: Arc<Stores>,
    /// Its bulk actions, made on first use around its repository; shared by its clones.
    bulk: Arc<std::sync::OnceLock<InMemoryBulkActions>>,
}

#[derive(Debug, Default)]
struct Stores {
    orders: InMemoryRepository,
    queue: InMemoryQueue,
}

impl InMemoryBackend {
    /// An empty backend, its backlog unbounded.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty backend that holds at most `max` orders PENDING or PROCESSING at once (see
    /// [`InMemoryRepository::with_max_unfinished`]).
    pub fn with_max_unfinished(max: u64) -> Self {
        Self {
            stores: Arc::new(Stores {
                orders: InMemoryRepository::with_max_unfinished(max),
                queue: InMemoryQueue::new(),
            }),
            bulk: Arc::default(),
        }
    }
}

impl Backend for InMemoryBackend {
    fn repository(&self) -> Arc<dyn Repository> {
        Arc::new(Orders(self.stores.clone()))
    }

    fn queue(&self) -> Arc<dyn Queue> {
        Arc::new(Work(self.stores.clone()))
    }

    fn bulk_actions(&self) -> Option<Arc<dyn BulkActions>> {
        let bulk = self
            .bulk
            .get_or_init(|| InMemoryBulkActions::new(self.repository()));
        Some(Arc::new(bulk.clone()))
    }
}

/// The backend's repository: the orders, queueing what they store and taking off the queue
/// what they finish.
#[derive(Debug)]
struct Orders(Arc<Stores>);

/// The backend's queue: claims that start what they claim.
#[derive(Debug)]
struct Work(Arc<Stores>);

/// What the queue's entry does after a transition of its order. The claims are built from the
/// transition's token: only the id and the token matter to the queue's calls.
enum Follow {
    /// A renewal: the claim is held for the new lease.
    Extend(Claim, Duration),
    /// Completed, failed or cancelled under the claim: off the queue.
    Ack(Claim),
    /// Cancelled while PENDING: off the queue, whoever may hold its entry.
    Forget,
    /// Retried after it FAILED: queued again.
    Queue,
    /// Started, retried or released: the engine's own queue calls follow.
    Stay,
}

impl Follow {
    fn after(id: OrderId, transition: &Transition) -> Self {
        match transition {
            Transition::Renew { claim, lease } => Follow::Extend(Claim::new(id, *claim, 0), *lease),
            Transition::Complete { claim, .. }
            | Transition::Fail { claim, .. }
            | Transition::FinishCancel { claim, .. } => Follow::Ack(Claim::new(id, *claim, 0)),
            Transition::Cancel => Follow::Forget,
            Transition::Requeue { .. } => Follow::Queue,
            Transition::Start { .. }
            | Transition::Retry { .. }
            | Transition::Release { .. }
            | Transition::Checkpoint { .. }
            | Transition::RequestCancel { .. } => Follow::Stay,
        }
    }
}

#[async_trait]
impl Repository for Orders {
    async fn insert(&self, order: &ValidatedOrder) -> Result<Order, StorageError> {
        let stored = self.0.orders.insert(order).await?;
        queue(&self.0.queue, stored.id).await?;
        Ok(stored)
    }

    async fn insert_keyed(
        &self,
        order: &ValidatedOrder,
        record: &KeyRecord,
    ) -> Result<Insertion, StorageError> {
        let inserted = self.0.orders.insert_keyed(order, record).await?;
        if let Insertion::Created(stored) = &inserted {
            queue(&self.0.queue, stored.id).await?;
        }
        Ok(inserted)
    }

    async fn prune_keys(&self) -> Result<u64, StorageError> {
        self.0.orders.prune_keys().await
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        self.0.orders.get(id).await
    }

    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError> {
        let follow = Follow::after(id, &transition);
        let order = self.0.orders.transition(id, transition).await?;
        // The order changed under this claim; the queue's entry follows. A queue entry that
        // another claim holds meanwhile (its lease lapsed and it was handed out again) is that
        // claim's to settle: its start finds the order where this change left it.
        match follow {
            Follow::Extend(claim, lease) => {
                let _ = self.0.queue.extend(&claim, lease).await;
            }
            Follow::Ack(claim) => {
                let _ = self.0.queue.ack(&claim).await;
            }
            Follow::Forget => self.0.queue.forget(id),
            Follow::Queue => queue(&self.0.queue, id).await?,
            Follow::Stay => {}
        }
        Ok(order)
    }

    async fn stranded(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StorageError> {
        self.0.orders.stranded(after, limit).await
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StorageError> {
        self.0.orders.list(query).await
    }

    async fn metrics(&self) -> Result<OrderMetrics, StorageError> {
        self.0.orders.metrics().await
    }

    async fn check_ready(&self) -> Result<(), StorageError> {
        self.0.orders.check_ready().await
    }
}

/// Queues a stored order; the in-memory queue never fails.
async fn queue(work: &InMemoryQueue, id: OrderId) -> Result<(), StorageError> {
    match work.push(id).await {
        Ok(_) | Err(QueueError::LeaseLost(_)) => Ok(()),
        Err(QueueError::Storage(err)) => Err(err),
    }
}

#[async_trait]
impl Queue for Work {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        self.0.queue.push(id).await
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        let mut claims = self.0.queue.claim(max, lease).await?;
        for claim in &mut claims {
            let start = Transition::Start {
                claim: claim.token,
                lease,
            };
            // An order that cannot be started (cancelled after it was queued, or held under
            // another claim's live lease) goes to the worker unstarted: its own Start says why.
            claim.started = self.0.orders.transition(claim.order_id, start).await.ok();
        }
        Ok(claims)
    }

    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        self.0.queue.extend(claim, lease).await
    }

    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        self.0.queue.ack(claim).await
    }

    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        self.0.queue.retry(claim, delay).await
    }

    async fn wait(&self, timeout: Duration) {
        self.0.queue.wait(timeout).await;
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.0.queue.depth().await
    }

    fn storage(&self) -> QueueStorage {
        QueueStorage::Repository
    }
}
