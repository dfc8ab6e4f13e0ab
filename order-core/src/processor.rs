//! The engine: takes orders in, runs them through the handler, retries, recovers.
//!
//! - this file: [`OrderProcessor`], the embedder's API (submit, get, cancel, list, watch,
//!   metrics), and the engine state every task shares;
//! - [`builder`]: [`OrderProcessorBuilder`], where orders live and the settings;
//! - [`handle`]: starting and stopping the workers ([`ProcessorHandle`]);
//! - [`worker`]: the claim loop and each order's attempt;
//! - [`lease`]: renewing a claim while the handler runs;
//! - [`sweep`]: the recovery sweep;
//! - [`watch`]: one order's changes as a stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::bulk::BulkActions;
use crate::changes::ChangeFeed;
use crate::error::{CancelError, RetryError, StorageError, SubmitError, TransitionError};
use crate::handler::OrderHandler;
use crate::idempotency::{Fingerprint, IdempotencyKey, Insertion, KeyRecord};
use crate::order::{NewOrder, Order, OrderId, OrderStatus};
use crate::queue::{Claim, Queue, QueueDepth, QueueError};
use crate::repository::{OrderMetrics, OrderQuery, Repository, Transition};
use crate::step::{StepRecord, StepStatus};
use crate::telemetry::{self, count};

mod builder;
mod bulk;
mod handle;
mod lease;
mod pipeline;
mod sweep;
mod watch;
mod worker;

pub use crate::retry::RetryPolicy;
use builder::Settings;
pub use builder::{BuildError, OrderProcessorBuilder};
pub use handle::{ProcessorHandle, ShutdownReport};
pub use watch::OrderWatch;
use worker::settle;

/// What [`OrderProcessor::submit`] takes: an order, and maybe an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    order: NewOrder,
    key: Option<IdempotencyKey>,
}

impl Submission {
    /// The order, without a key: each submission creates an order.
    pub fn new(order: NewOrder) -> Self {
        Self { order, key: None }
    }

    /// Submissions with one key are one submission while the key is remembered (see
    /// [`OrderProcessorBuilder::idempotency_ttl`]).
    #[must_use]
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.key = Some(key);
        self
    }
}

impl From<NewOrder> for Submission {
    fn from(order: NewOrder) -> Self {
        Self::new(order)
    }
}

/// What [`OrderProcessor::submit_or_replay`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Submitted {
    /// The order created now, or, for a replay, the order as it is now.
    pub order: Order,
    /// Whether the submission's key named an order already, and nothing was stored.
    pub replayed: bool,
}

/// What [`OrderProcessor::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Cancellation {
    /// The order was PENDING and is CANCELLED now.
    Cancelled(Order),
    /// The order is PROCESSING in a pipeline and stays so, with the cancel recorded, until its
    /// finished steps are compensated; then it is CANCELLED.
    Requested(Order),
}

impl Cancellation {
    /// The order as the cancel left it.
    pub fn order(&self) -> &Order {
        match self {
            Cancellation::Cancelled(order) | Cancellation::Requested(order) => order,
        }
    }

    /// The order as the cancel left it, owned.
    pub fn into_order(self) -> Order {
        match self {
            Cancellation::Cancelled(order) | Cancellation::Requested(order) => order,
        }
    }
}

/// One page of [`OrderProcessor::list`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OrderPage {
    /// The orders, in the query's order.
    pub orders: Vec<Order>,
    /// Where the next page starts (the last id of this one), or `None` if this is the last.
    pub next: Option<OrderId>,
}

/// The order-processing engine: accepts orders, stores them, and runs each through the
/// [`OrderHandler`] with leases, retries and crash recovery.
///
/// Cheap to clone (all clones share one engine). [`submit`](Self::submit), [`get`](Self::get)
/// and [`metrics`](Self::metrics) work whether or not it has been [`start`](Self::start)ed;
/// only a started processor works orders off the queue.
#[derive(Clone)]
pub struct OrderProcessor {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for OrderProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProcessor")
            .field("settings", &self.engine.settings)
            .finish_non_exhaustive()
    }
}

/// What processing an order means: one opaque handler call, retried as a whole, or the steps
/// of a pipeline, each checkpointed.
pub(crate) enum Work {
    /// A plain handler: a pipeline of one step whose record is the order itself.
    Handler(Arc<dyn OrderHandler>),
    /// Steps, checkpointed and compensated.
    Pipeline(Arc<crate::step::Pipeline>),
}

/// What every clone of an [`OrderProcessor`] and every task it starts share.
struct Engine {
    /// The source of truth: every status change is a compare-and-set here.
    repository: Arc<dyn Repository>,
    /// Bulk actions, and the orders each selected.
    bulk: Arc<dyn BulkActions>,
    /// Signalled when this process accepts a bulk action, so that its runner starts at once.
    bulk_accepted: tokio::sync::Notify,
    /// Which orders wait for a worker; rebuilt from the repository by the sweep if lost.
    queue: Arc<dyn Queue>,
    /// Whether the queue keeps its state in the repository's storage
    /// ([`QueueStorage::Repository`]): then the engine leaves out the calls the pair's own
    /// statements make unnecessary.
    shared_storage: bool,
    /// The embedding service's processing: one handler, or a pipeline of steps.
    work: Work,
    /// Fixed at build time, checked by the builder.
    settings: Settings,
    /// Snapshots of orders after each change this processor makes, for `subscribe`.
    events: broadcast::Sender<Order>,
    /// Changes made by other processes, for `watch`.
    change_feed: Option<Arc<dyn ChangeFeed>>,
    /// The open `watch` streams, by order.
    watchers: Arc<watch::Watchers>,
}

impl OrderProcessor {
    /// Validates and stores an order, then queues it. When this returns `Ok` the order is
    /// stored (as durably as the repository stores anything) and will be processed: if
    /// queueing fails, the recovery sweep queues it later.
    ///
    /// Takes a [`NewOrder`], or a [`Submission`] that adds an idempotency key: then a retry
    /// of the same submission returns the order the first one created, and creates nothing
    /// ([`submit_or_replay`](Self::submit_or_replay) also says which happened).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use order_core::{IdempotencyKey, NewOrder, OrderProcessor, Submission};
    /// use order_core::handler::SimulatedStep;
    /// use rust_decimal::Decimal;
    ///
    /// let processor = OrderProcessor::builder(SimulatedStep::default()).in_memory().build()?;
    /// let order = NewOrder::new("ann", ["book"], Decimal::TEN);
    /// let key = IdempotencyKey::new("checkout-2291")?;
    /// let first = processor.submit(Submission::new(order.clone()).idempotency_key(key.clone())).await?;
    /// let retry = processor.submit(Submission::new(order).idempotency_key(key)).await?;
    /// assert_eq!(first.id, retry.id);
    /// assert_eq!(processor.metrics().await?.total_orders, 1);
    /// # Ok(()) }
    /// ```
    pub async fn submit(&self, submission: impl Into<Submission>) -> Result<Order, SubmitError> {
        self.submit_or_replay(submission)
            .await
            .map(|submitted| submitted.order)
    }

    /// [`submit`](Self::submit), saying whether the order was created now or, for a
    /// submission whose idempotency key was used before, replayed: then `order` is that
    /// order as it is now, and nothing was stored. A key used before for a different order
    /// is [`SubmitError::KeyReused`].
    pub async fn submit_or_replay(
        &self,
        submission: impl Into<Submission>,
    ) -> Result<Submitted, SubmitError> {
        let Submission { order, key } = submission.into();
        let valid = order.validate()?;
        let order = match key {
            None => self.engine.repository.insert(&valid).await?,
            Some(key) => {
                let record = KeyRecord {
                    fingerprint: Fingerprint::of(&valid),
                    key,
                    ttl: self.engine.settings.key_ttl,
                };
                match self.engine.repository.insert_keyed(&valid, &record).await? {
                    Insertion::Created(order) => order,
                    Insertion::Existing {
                        order,
                        same_request: true,
                    } => {
                        debug!(order_id = %order.id, "submission replayed");
                        return Ok(Submitted {
                            order,
                            replayed: true,
                        });
                    }
                    Insertion::Existing { order, .. } => {
                        return Err(SubmitError::KeyReused {
                            key: record.key,
                            order: order.id,
                        });
                    }
                }
            }
        };
        count(telemetry::ORDERS_CREATED);
        info!(order_id = %order.id, "order accepted");
        self.engine.publish(&order);
        self.engine.queue_stored(order.id).await;
        Ok(Submitted {
            order,
            replayed: false,
        })
    }

    /// The order with this id, or `None`.
    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        self.engine.read(id).await
    }

    /// Cancels an order, if it can still be undone.
    ///
    /// - A PENDING order is CANCELLED now ([`Cancellation::Cancelled`]); no worker starts it.
    /// - A PROCESSING order of a [`Pipeline`](crate::step::Pipeline) whose finished steps, and
    ///   the step running, can all be compensated has the cancel recorded
    ///   ([`Cancellation::Requested`]: it stays PROCESSING, with `cancel_requested_at` set): the
    ///   running step finishes, no further step starts, the finished steps are compensated in
    ///   reverse, and the order ends CANCELLED. Asking again answers the same.
    /// - Any other order is [`CancelError::NotCancellable`]: one processed by a plain
    ///   [`OrderHandler`](crate::OrderHandler), whose work cannot be undone, while it is
    ///   PROCESSING; a pipeline's whose steps cannot be; one that is finished.
    pub async fn cancel(&self, id: OrderId) -> Result<Cancellation, CancelError> {
        // The decision reads the order and the write compares what was read: a step that
        // starts, or a status that moves, in between makes the write refuse, and the decision
        // is made again on what is there now.
        for _ in 0..16 {
            let order = self.get(id).await?.ok_or(CancelError::NotFound(id))?;
            let transition = match order.status {
                OrderStatus::Pending => Transition::Cancel,
                OrderStatus::Processing if order.cancel_requested_at.is_some() => {
                    return Ok(Cancellation::Requested(order));
                }
                OrderStatus::Processing if self.undoable(&order) => Transition::RequestCancel {
                    seen: order.updated_at,
                },
                status => return Err(CancelError::NotCancellable { id, status }),
            };
            let requested = matches!(transition, Transition::RequestCancel { .. });
            match self.engine.repository.transition(id, transition).await {
                Ok(order) => {
                    self.engine.publish(&order);
                    if requested {
                        info!(order_id = %id, "cancel requested; compensating the finished steps");
                        return Ok(Cancellation::Requested(self.engine.present(order)));
                    }
                    count(telemetry::ORDERS_CANCELLED);
                    info!(order_id = %id, "order cancelled");
                    return Ok(Cancellation::Cancelled(order));
                }
                Err(TransitionError::Conflict { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Err(CancelError::Storage(StorageError::unavailable(
            "the order kept changing while it was being cancelled; try again",
        )))
    }

    /// Puts a FAILED order back in the queue: PENDING again, to be processed as if new, but
    /// with `attempts` counting on and its failure kept in [`Order::failures`] (when, which
    /// step, what error). It gets a full set of attempts.
    ///
    /// An order processed in steps keeps the steps whose work stands (the leading SUCCEEDED
    /// ones) and resumes after them: at the step that failed, or at the first step whose work
    /// its failure compensated. A step that runs again gets a new
    /// [`idempotency_key`](crate::step::StepContext::idempotency_key), so that a payment
    /// provider does not hand back a charge that was refunded.
    ///
    /// Any other status is [`RetryError::NotFailed`]. Of two retries of one failure, one
    /// applies and the other finds the order PENDING: each failure is retried once.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use order_core::{HandlerError, NewOrder, Order, OrderHandler, OrderProcessor, OrderStatus};
    /// use rust_decimal::Decimal;
    ///
    /// /// Declines every order's first attempt for good, then accepts.
    /// struct DeclinesFirst;
    ///
    /// #[async_trait::async_trait]
    /// impl OrderHandler for DeclinesFirst {
    ///     async fn process(&self, order: &Order) -> Result<(), HandlerError> {
    ///         match order.attempts {
    ///             1 => Err(HandlerError::permanent("card declined")),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    ///
    /// let processor = OrderProcessor::builder(DeclinesFirst).in_memory().build()?;
    /// let running = processor.start();
    /// let order = processor.submit(NewOrder::new("ann", ["book"], Decimal::TEN)).await?;
    /// let failed = processor.wait_until_done(order.id).await?.unwrap();
    /// assert_eq!(failed.status, OrderStatus::Failed);
    ///
    /// let retried = processor.retry(order.id).await?;
    /// assert_eq!(retried.status, OrderStatus::Pending);
    /// let done = processor.wait_until_done(order.id).await?.unwrap();
    /// assert_eq!((done.status, done.attempts), (OrderStatus::Completed, 2));
    /// assert_eq!(done.failures[0].error, "card declined");
    /// running.shutdown(std::time::Duration::from_secs(5)).await;
    /// # Ok(()) }
    /// ```
    pub async fn retry(&self, id: OrderId) -> Result<Order, RetryError> {
        // As for a cancel: the write compares the `updated_at` that was read, and a retry
        // that lost the race reads again and finds the order PENDING.
        for _ in 0..16 {
            let order = self
                .engine
                .repository
                .get(id)
                .await?
                .ok_or(RetryError::NotFound(id))?;
            if order.status != OrderStatus::Failed {
                return Err(RetryError::NotFailed {
                    id,
                    status: order.status,
                });
            }
            let requeue = Transition::requeue(&order);
            match self.engine.repository.transition(id, requeue).await {
                Ok(order) => {
                    count(telemetry::ORDERS_RETRIED);
                    info!(order_id = %id, retry = order.retries(), "failed order retried");
                    self.engine.publish(&order);
                    self.engine.queue_stored(id).await;
                    return Ok(self.engine.present(order));
                }
                Err(TransitionError::Conflict { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Err(RetryError::Storage(StorageError::unavailable(
            "the order kept changing while it was being retried; try again",
        )))
    }

    /// Whether this processor can undo what was done of `order` so far.
    fn undoable(&self, order: &Order) -> bool {
        match &self.engine.work {
            Work::Handler(_) => false,
            Work::Pipeline(pipeline) => pipeline.can_undo(&order.steps),
        }
    }

    /// A page of orders that `query` selects, and the cursor of the next page: pass it as
    /// `query.after` to go on. `next` is `None` on the last page. Costs one indexed read of
    /// `query.limit + 1` orders, however many are stored.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use order_core::{NewOrder, OrderProcessor, OrderQuery};
    /// use order_core::handler::SimulatedStep;
    /// use rust_decimal::Decimal;
    ///
    /// let processor = OrderProcessor::builder(SimulatedStep::default()).in_memory().build()?;
    /// for user in ["ann", "bob", "ann"] {
    ///     let order = NewOrder::new(user, ["i"], Decimal::ONE);
    ///     processor.submit(order).await?;
    /// }
    /// let page = processor.list(&OrderQuery::newest_first(1).user("ann")).await?;
    /// assert_eq!(page.orders[0].id.get(), 3);
    /// let rest = processor.list(&OrderQuery::newest_first(1).user("ann").after(page.next.unwrap())).await?;
    /// assert_eq!((rest.orders[0].id.get(), rest.next), (1, None));
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, query: &OrderQuery) -> Result<OrderPage, StorageError> {
        let mut one_more = query.clone();
        one_more.limit = query.limit.saturating_add(1);
        let mut orders: Vec<Order> = (self.engine.repository.list(&one_more).await?)
            .into_iter()
            .map(|order| self.engine.present(order))
            .collect();
        let next = if orders.len() > query.limit {
            orders.truncate(query.limit);
            orders.last().map(|order| order.id)
        } else {
            None
        };
        Ok(OrderPage { orders, next })
    }

    /// How long the oldest PENDING order has waited since it was accepted (waiting for a
    /// worker, or for a retry); `None` when no order is PENDING. One indexed read. A backlog
    /// that is not being worked off shows here first.
    pub async fn oldest_pending_age(&self) -> Result<Option<Duration>, StorageError> {
        let oldest = OrderQuery::oldest_first(1).status(OrderStatus::Pending);
        let page = self.engine.repository.list(&oldest).await?;
        Ok(page.first().map(|order| {
            (chrono::Utc::now() - order.created_at)
                .to_std()
                .unwrap_or_default()
        }))
    }

    /// The order's current state, then each change of its status (and, for an order processed
    /// in steps, of its steps and cancel request), until it is COMPLETED, FAILED or CANCELLED
    /// (the stream then ends); `None` if there is no such order.
    ///
    /// Changes this processor makes arrive at once; changes other processes make arrive
    /// through the [change feed](OrderProcessorBuilder::change_feed), or, without one, within
    /// a `poll_interval`: changes made elsewhere in quick succession may arrive as one (the
    /// later state). The stream also ends when [`close_watches`](Self::close_watches) is called.
    pub async fn watch(&self, id: OrderId) -> Result<Option<OrderWatch>, StorageError> {
        watch::watch(&self.engine, id).await
    }

    /// Ends every [`watch`](Self::watch) stream, now and from now on: for a service that
    /// streams watches to its clients, when it starts shutting down, so that open streams do
    /// not hold its connections.
    pub fn close_watches(&self) {
        self.engine.watchers.closed.cancel();
    }

    /// Counts over all orders; costs the same however many there are.
    pub async fn metrics(&self) -> Result<OrderMetrics, StorageError> {
        self.engine.repository.metrics().await
    }

    /// `Ok` when the repository can serve (reachable, schema in place): for readiness probes.
    pub async fn check_ready(&self) -> Result<(), StorageError> {
        self.engine.repository.check_ready().await
    }

    /// How many orders the queue holds, by state.
    pub async fn queue_depth(&self) -> Result<QueueDepth, QueueError> {
        self.engine.queue.depth().await
    }

    /// A stream of order snapshots, one after each change this processor makes (submit,
    /// start, completion, retry, failure, cancel). A receiver that falls more than 1024
    /// behind gets [`broadcast::error::RecvError::Lagged`] and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Order> {
        self.engine.events.subscribe()
    }

    /// Waits until the order is COMPLETED, FAILED or CANCELLED and returns it; `None` if there
    /// is no such order. Wrap it in `tokio::time::timeout` to bound the wait.
    pub async fn wait_until_done(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        let mut events = self.subscribe();
        loop {
            // Read after subscribing, so a change between the two is not missed.
            match self.get(id).await? {
                Some(order) if order.status.is_terminal() => return Ok(Some(order)),
                None => return Ok(None),
                Some(_) => {}
            }
            // Wake on this processor's own changes; look again every so often for changes made
            // by another process sharing the repository.
            let next = tokio::time::timeout(self.engine.settings.poll_interval, async {
                loop {
                    match events.recv().await {
                        Ok(order) if order.id == id && order.status.is_terminal() => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            });
            let _ = next.await;
        }
    }
}

impl Engine {
    /// Queues an order just stored, unless the queue shares the repository's storage: then the
    /// statement that stored it queued it.
    async fn queue_stored(&self, id: OrderId) {
        if self.shared_storage {
            return;
        }
        // A connection cut by a database restart fails once; a couple of quick retries spare
        // the order a wait for the recovery sweep. They stop after a second, so that a
        // database that is down does not hold the request much past its first failure.
        let began = tokio::time::Instant::now();
        let retry = RetryPolicy::QUICK.max_attempts(3);
        for attempt in 1..=retry.max_attempts {
            match self.queue.push(id).await {
                Ok(_) => break,
                Err(err)
                    if attempt == retry.max_attempts
                        || began.elapsed() >= Duration::from_secs(1) =>
                {
                    warn!(order_id = %id, error = %err, "order stored but not queued; the recovery sweep will queue it");
                    break;
                }
                Err(_) => tokio::time::sleep(retry.backoff(attempt)).await,
            }
        }
    }

    /// Takes a finished order's claim off the queue, unless the queue shares the repository's
    /// storage: then the transition that finished it did.
    async fn dequeue_finished(&self, claim: &Claim) {
        if !self.shared_storage {
            settle(self.queue.ack(claim).await);
        }
    }

    fn publish(&self, order: &Order) {
        let presented = self.first_step_of(order).map(|first| {
            let mut order = order.clone();
            order.steps.push(first);
            order
        });
        let order = presented.as_ref().unwrap_or(order);
        // Cloning an order (with up to 1000 item ids) is not free: skip it when nobody listens.
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(order.clone());
        }
        self.watchers.publish(order);
    }

    /// The order as its clients see it: see [`first_step_of`](Self::first_step_of).
    fn present(&self, mut order: Order) -> Order {
        if let Some(first) = self.first_step_of(&order) {
            order.steps.push(first);
        }
        order
    }

    /// The first step of a pipeline's order whose row holds it: a PROCESSING order with no
    /// step stored is in its first step, RUNNING, its record the order's own start and
    /// attempts until the step stores an outcome (sparing every order a write at the first
    /// step's start); a COMPLETED order of a one-step pipeline with no step stored completed
    /// that step with no output to keep (sparing it the bytes of a record the row already
    /// says).
    fn first_step_of(&self, order: &Order) -> Option<StepRecord> {
        let Work::Pipeline(pipeline) = &self.work else {
            return None;
        };
        if !order.steps.is_empty() {
            return None;
        }
        let mut first = StepRecord::started(
            pipeline.steps().first()?.name(),
            order.attempts_since_retry().max(1),
        )
        .in_retry(order.retries());
        // A retried order's start was its first run's; this run's is its latest write.
        first.started_at = match order.processing_start_time {
            Some(started) if order.failures.is_empty() => started,
            _ => order.updated_at,
        };
        match order.status {
            OrderStatus::Processing => {}
            OrderStatus::Completed if pipeline.steps().len() == 1 => {
                first.status = StepStatus::Succeeded;
                first.ended_at = order.processing_end_time;
                first.output = Some(crate::step::StepOutput::none());
            }
            _ => return None,
        }
        Some(first)
    }

    /// The order with this id, as its clients see it.
    async fn read(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        let order = self.repository.get(id).await?;
        Ok(order.map(|order| self.present(order)))
    }

    /// Applies a worker's transition, retrying a storage failure a few times: the handler's
    /// work is done, and losing its outcome would mean doing it again.
    async fn record(&self, id: OrderId, transition: Transition) -> Result<Order, TransitionError> {
        let retry = RetryPolicy::QUICK;
        let mut tries = 0;
        loop {
            match self.repository.transition(id, transition.clone()).await {
                Err(TransitionError::Storage(err)) if tries + 1 < retry.max_attempts => {
                    tries += 1;
                    let delay = retry.backoff(tries);
                    warn!(error = %err, retry_in_ms = delay.as_millis(), "could not record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                }
                // A write that failed may have landed all the same: finding the order already
                // where this transition leads, after a failure, means it did. Not for a change
                // that stays PROCESSING: a takeover by another worker looks the same.
                Err(TransitionError::Conflict { current, .. })
                    if tries > 0
                        && current == transition.target()
                        && current != OrderStatus::Processing =>
                {
                    return match self.repository.get(id).await? {
                        Some(order) => Ok(order),
                        None => Err(TransitionError::NotFound(id)),
                    };
                }
                Ok(order) => {
                    self.publish(&order);
                    return Ok(order);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

pub use bulk::BulkAccepted;

#[cfg(test)]
mod tests;
