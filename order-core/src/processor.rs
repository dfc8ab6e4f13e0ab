//! The engine: takes orders in, runs them through the handler, retries, recovers.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::Backend;
use crate::changes::ChangeFeed;
use crate::error::TransitionError;
use crate::error::{CancelError, StorageError, SubmitError};
use crate::handler::{HandlerError, OrderHandler};
use crate::idempotency::{DEFAULT_KEY_TTL, Fingerprint, IdempotencyKey, Insertion, KeyRecord};
use crate::memory::{InMemoryQueue, InMemoryRepository};
use crate::order::{NewOrder, Order, OrderId, OrderStatus};
use crate::queue::{Claim, Queue, QueueDepth, QueueError, QueueStorage};
use crate::repository::{OrderMetrics, OrderQuery, Repository, Transition};
use crate::telemetry::{self, count, observe};

mod watch;
pub use watch::OrderWatch;

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
pub struct Submitted {
    /// The order created now, or, for a replay, the order as it is now.
    pub order: Order,
    /// Whether the submission's key named an order already, and nothing was stored.
    pub replayed: bool,
}

/// One page of [`OrderProcessor::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPage {
    /// The orders, in the query's order.
    pub orders: Vec<Order>,
    /// Where the next page starts (the last id of this one), or `None` if this is the last.
    pub next: Option<OrderId>,
}

/// The longest `last_error` kept, in characters: a handler's error should not bloat storage.
const MAX_ERROR_CHARS: usize = 2000;
/// How many orders one recovery sweep asks the repository for at a time.
const SWEEP_PAGE: usize = 500;
/// How many order snapshots a slow [`OrderProcessor::subscribe`] receiver may fall behind.
const EVENT_BUFFER: usize = 1024;
/// After the drain timeout, how long unfinished orders get to be handed back before shutdown
/// returns regardless (a hung backend must not hang shutdown).
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest lease: a worker renews while it works, so a lease only needs to outlast the
/// pause between two renewals.
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// How failed attempts are retried: exponential backoff, then FAILED.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; when the last fails the order is FAILED.
    pub max_attempts: u32,
    /// The delay after the first failed attempt.
    pub initial_backoff: Duration,
    /// No delay is longer than this.
    pub max_backoff: Duration,
    /// Each delay is this many times the one before.
    pub multiplier: f64,
    /// Spreads each delay uniformly over its upper half, so orders that failed together do not
    /// all come back at the same instant.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s then doubling up to 5 minutes, with jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failed_attempts` failed ones (1-based).
    ///
    /// ```
    /// use std::time::Duration;
    /// use order_core::RetryPolicy;
    ///
    /// let policy = RetryPolicy { jitter: false, ..RetryPolicy::default() };
    /// assert_eq!(policy.backoff(1), Duration::from_secs(1));
    /// assert_eq!(policy.backoff(3), Duration::from_secs(4));
    /// assert_eq!(policy.backoff(30), Duration::from_secs(300));
    /// ```
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exponent = i32::try_from(failed_attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let scaled = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = if scaled.is_finite() {
            scaled.min(self.max_backoff.as_secs_f64())
        } else {
            self.max_backoff.as_secs_f64()
        };
        let seconds = if self.jitter {
            capped * rand::random_range(0.5..=1.0)
        } else {
            capped
        };
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max_backoff)
    }
}

/// Why [`OrderProcessorBuilder::build`] refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The queue keeps its state in a repository's storage
    /// ([`QueueStorage::Repository`]), but did not come with its repository from
    /// [`OrderProcessorBuilder::backend`]: paired with another repository it would start orders
    /// that repository does not hold.
    #[error(
        "this queue shares its repository's storage: set both with .backend(..), not with .queue(..)"
    )]
    QueueWithoutItsRepository,
    /// The repository came from a [`backend`](OrderProcessorBuilder::backend) whose queue
    /// shares its storage, and that queue was replaced: the repository would go on queueing
    /// every order it stores for a queue that nobody claims from. For a queue of another kind,
    /// use a repository of its own (`PostgresRepository::new`, [`InMemoryRepository`]).
    #[error(
        "this repository keeps its backend's queue in step: replace both with .repository(..) and .queue(..), not the queue alone"
    )]
    RepositoryWithoutItsQueue,
    /// A setting is out of range.
    #[error("{setting} {reason}")]
    InvalidSetting {
        /// The builder method's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Builds an [`OrderProcessor`]; see [`OrderProcessor::builder`].
#[must_use]
pub struct OrderProcessorBuilder {
    repository: Option<Arc<dyn Repository>>,
    queue: Option<Arc<dyn Queue>>,
    change_feed: Option<Arc<dyn ChangeFeed>>,
    /// Whether the repository and the queue were last set together, by `backend`.
    from_one_backend: bool,
    /// Whether the repository is a backend's whose queue shares its storage.
    repository_keeps_a_queue: bool,
    handler: Arc<dyn OrderHandler>,
    settings: Settings,
}

impl std::fmt::Debug for OrderProcessorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProcessorBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The builder's settings; each is documented on its builder method.
#[derive(Debug, Clone, Copy)]
struct Settings {
    concurrency: usize,
    lease: Duration,
    retry: RetryPolicy,
    poll_interval: Duration,
    sweep_interval: Duration,
    key_ttl: Duration,
}

impl OrderProcessorBuilder {
    /// The repository, the queue and (if it has one) the change feed of `backend`, in one
    /// call: the way to use a queue that shares its repository's storage, such as
    /// `PostgresBackend`'s or [`InMemoryBackend`](crate::memory::InMemoryBackend)'s.
    pub fn backend(mut self, backend: &dyn Backend) -> Self {
        self.repository = Some(backend.repository());
        let queue = backend.queue();
        self.repository_keeps_a_queue = queue.storage() == QueueStorage::Repository;
        self.queue = Some(queue);
        if let Some(feed) = backend.change_feed() {
            self.change_feed = Some(feed);
        }
        self.from_one_backend = true;
        self
    }

    /// Where orders are stored; in memory unless set. Replaces a [`backend`](Self::backend)'s
    /// repository: then its queue must be one of its own ([`QueueStorage::Own`]), or be
    /// replaced too.
    pub fn repository(mut self, repository: Arc<dyn Repository>) -> Self {
        self.repository = Some(repository);
        self.from_one_backend = false;
        self.repository_keeps_a_queue = false;
        self
    }

    /// The work queue; in memory unless set. It must keep ids of its own
    /// ([`QueueStorage::Own`]): a queue that shares its repository's storage comes with it,
    /// from [`backend`](Self::backend), and that repository goes with it (replace both).
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self.from_one_backend = false;
        self
    }

    /// How [`OrderProcessor::watch`] hears of changes made by other processes that share the
    /// repository (on PostgreSQL, a [`PostgresChangeFeed`](crate::postgres::PostgresChangeFeed)).
    /// Unset, watchers hear of this processor's own changes at once and re-read the order every
    /// `poll_interval` for the rest.
    pub fn change_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.change_feed = Some(feed);
        self
    }

    /// How many orders may be in the handler at once (tasks, not threads); 64 unless set.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency;
        self
    }

    /// How long a worker holds an order before another may take it over, unless renewed (the
    /// worker renews every third of it while the handler runs); 10 s unless set, at most an
    /// hour. A crashed worker's orders are picked up again about this long after it died.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How failed attempts are retried; [`RetryPolicy::default`] unless set.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// The longest an idle worker waits before looking at the queue again, for queues whose
    /// wake-ups can be missed; 1 s unless set.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// How often the recovery sweep re-queues orders a queue may have lost (it also runs at
    /// start); 30 s unless set.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.sweep_interval = interval;
        self
    }

    /// How long an idempotency key is remembered after its submission; 24 h unless set, at
    /// least a second. Expired keys are forgotten by the recovery sweep (and then a
    /// submission with the key creates a new order).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.settings.key_ttl = ttl;
        self
    }

    /// Checks the settings and builds the processor; nothing runs until
    /// [`OrderProcessor::start`].
    pub fn build(self) -> Result<OrderProcessor, BuildError> {
        let s = self.settings;
        let invalid = |setting, reason| Err(BuildError::InvalidSetting { setting, reason });
        if s.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if s.lease < Duration::from_millis(10) || s.lease > MAX_LEASE {
            return invalid("lease", "must be from 10 ms to 1 hour");
        }
        if s.retry.max_attempts == 0 {
            return invalid("retry_policy", "max_attempts must be at least 1");
        }
        if !(s.retry.multiplier.is_finite() && s.retry.multiplier >= 1.0) {
            return invalid("retry_policy", "multiplier must be a finite number >= 1");
        }
        if s.retry.max_backoff > Duration::from_secs(30 * 24 * 3600) {
            return invalid("retry_policy", "max_backoff must be at most 30 days");
        }
        if s.poll_interval.is_zero() || s.poll_interval > Duration::from_secs(3600) {
            return invalid("poll_interval", "must be more than zero and at most 1 hour");
        }
        if s.sweep_interval.is_zero() || s.sweep_interval > Duration::from_secs(24 * 3600) {
            return invalid("sweep_interval", "must be more than zero and at most 1 day");
        }
        if s.key_ttl < Duration::from_secs(1) {
            return invalid("idempotency_ttl", "must be at least 1 second");
        }
        let queue: Arc<dyn Queue> = self.queue.unwrap_or_else(|| Arc::new(InMemoryQueue::new()));
        let shared_storage = queue.storage() == QueueStorage::Repository;
        if shared_storage && !self.from_one_backend {
            return Err(BuildError::QueueWithoutItsRepository);
        }
        if self.repository_keeps_a_queue && !self.from_one_backend {
            return Err(BuildError::RepositoryWithoutItsQueue);
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(OrderProcessor {
            engine: Arc::new(Engine {
                repository: self
                    .repository
                    .unwrap_or_else(|| Arc::new(InMemoryRepository::new())),
                queue,
                shared_storage,
                handler: self.handler,
                settings: s,
                events,
                change_feed: self.change_feed,
                watchers: Arc::default(),
            }),
        })
    }
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

/// What every clone of an [`OrderProcessor`] and every task it starts share.
struct Engine {
    /// The source of truth: every status change is a compare-and-set here.
    repository: Arc<dyn Repository>,
    /// Which orders wait for a worker; rebuilt from the repository by the sweep if lost.
    queue: Arc<dyn Queue>,
    /// Whether the queue keeps its state in the repository's storage
    /// ([`QueueStorage::Repository`]): then the engine leaves out the calls the pair's own
    /// statements make unnecessary.
    shared_storage: bool,
    /// The embedding service's processing step.
    handler: Arc<dyn OrderHandler>,
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
    /// A builder around the embedding service's processing step, with in-memory storage,
    /// 64 concurrent orders, a 10 s lease and [`RetryPolicy::default`] until told otherwise.
    pub fn builder(handler: impl OrderHandler + 'static) -> OrderProcessorBuilder {
        OrderProcessorBuilder {
            repository: None,
            queue: None,
            change_feed: None,
            from_one_backend: false,
            repository_keeps_a_queue: false,
            handler: Arc::new(handler),
            settings: Settings {
                concurrency: 64,
                lease: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                poll_interval: Duration::from_secs(1),
                sweep_interval: Duration::from_secs(30),
                key_ttl: DEFAULT_KEY_TTL,
            },
        }
    }

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
    /// let processor = OrderProcessor::builder(SimulatedStep::default()).build()?;
    /// let order = NewOrder { user_id: "ann".into(), item_ids: vec!["book".into()], total_amount: Decimal::TEN };
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
        self.engine.repository.get(id).await
    }

    /// Cancels a PENDING order; a worker never starts a cancelled order.
    pub async fn cancel(&self, id: OrderId) -> Result<Order, CancelError> {
        let order = self
            .engine
            .repository
            .transition(id, Transition::Cancel)
            .await?;
        count(telemetry::ORDERS_CANCELLED);
        info!(order_id = %id, "order cancelled");
        self.engine.publish(&order);
        Ok(order)
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
    /// let processor = OrderProcessor::builder(SimulatedStep::default()).build()?;
    /// for user in ["ann", "bob", "ann"] {
    ///     let order = NewOrder { user_id: user.into(), item_ids: vec!["i".into()], total_amount: Decimal::ONE };
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
        let mut orders = self.engine.repository.list(&one_more).await?;
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

    /// The order's current state, then each change of its status, until it is COMPLETED,
    /// FAILED or CANCELLED (the stream then ends); `None` if there is no such order.
    ///
    /// Changes this processor makes arrive at once; changes other processes make arrive
    /// through the [change feed](OrderProcessorBuilder::change_feed), or, without one, within
    /// a `poll_interval`: changes made elsewhere in quick succession may arrive as one (the
    /// later state). The stream also ends when [`close_watches`](Self::close_watches) is called.
    pub async fn watch(&self, id: OrderId) -> Result<Option<OrderWatch>, StorageError> {
        watch::watch(&self.engine, id).await
    }

    /// Ends every [`watch`](Self::watch) stream, now and from now on: a server calls this
    /// when it starts shutting down, so that open event streams do not hold its connections.
    pub fn close_watches(&self) {
        self.engine.watchers.closed.cancel();
    }

    /// Resolves once [`close_watches`](Self::close_watches) has been called: for the
    /// embedding service's own long-lived streams (order-server's metrics stream), so that
    /// they end with the order streams and do not hold a draining server open.
    pub async fn watches_closed(&self) {
        self.engine.watchers.closed.cancelled().await;
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

    /// Starts working orders off the queue: a claim loop that keeps up to `concurrency`
    /// orders in the handler, and a recovery sweep (now, then every `sweep_interval`).
    ///
    /// Must be called within a tokio runtime. Keep the returned handle: dropping it stops the
    /// work abruptly, as [`ProcessorHandle::shutdown`] with a zero timeout would. Each call
    /// starts another set of workers, as another process sharing the same backends would.
    pub fn start(&self) -> ProcessorHandle {
        let s = self.engine.settings;
        info!(
            concurrency = s.concurrency,
            lease_ms = s.lease.as_millis(),
            max_attempts = s.retry.max_attempts,
            "order processor started"
        );
        let stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let tracker = TaskTracker::new();
        let claim_loop = tokio::spawn(claim_loop(
            self.engine.clone(),
            stop.clone(),
            abandon.clone(),
            tracker.clone(),
        ));
        let sweeper = tokio::spawn(sweep_loop(self.engine.clone(), stop.clone()));
        ProcessorHandle {
            stop,
            abandon,
            tracker,
            claim_loop: Some(claim_loop),
            sweeper: Some(sweeper),
        }
    }
}

/// A running processor; see [`OrderProcessor::start`].
#[derive(Debug)]
pub struct ProcessorHandle {
    /// Stops claiming and sweeping.
    stop: CancellationToken,
    /// Tells in-flight orders to give up their claims at once.
    abandon: CancellationToken,
    tracker: TaskTracker,
    claim_loop: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

/// What [`ProcessorHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Orders still in the handler when the timeout ran out; each was put back to PENDING for
    /// a later run (or, if that write failed, is picked up when its lease runs out).
    pub abandoned: usize,
}

impl ProcessorHandle {
    /// Stops claiming new orders, lets the ones in the handler finish for up to `timeout`,
    /// then gives the rest back to the queue and returns.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        self.stop.cancel();
        for task in [self.claim_loop.take(), self.sweeper.take()]
            .into_iter()
            .flatten()
        {
            // The loops end at their next await once `stop` is cancelled; a panic in one has
            // already been reported by the runtime.
            let _ = task.await;
        }
        self.tracker.close();
        let in_flight = self.tracker.len();
        if in_flight > 0 {
            info!(in_flight, "draining orders in progress");
        }
        let abandoned = if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let abandoned = self.tracker.len();
            warn!(
                abandoned,
                "drain timeout reached; giving unfinished orders back to the queue"
            );
            self.abandon.cancel();
            if tokio::time::timeout(GIVE_BACK_TIMEOUT, self.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    left = self.tracker.len(),
                    "orders could not be handed back in time; their leases will bring them back"
                );
            }
            abandoned
        } else {
            0
        };
        info!(abandoned, "order processor stopped");
        ShutdownReport { abandoned }
    }
}

impl Drop for ProcessorHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        self.abandon.cancel();
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
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=3 {
            match self.queue.push(id).await {
                Ok(_) => break,
                Err(err) if attempt == 3 || began.elapsed() >= Duration::from_secs(1) => {
                    warn!(order_id = %id, error = %err, "order stored but not queued; the recovery sweep will queue it");
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
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
        // Cloning an order (with up to 1000 item ids) is not free: skip it when nobody listens.
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(order.clone());
        }
        self.watchers.publish(order);
    }

    /// Applies a worker's transition, retrying a storage failure a few times: the handler's
    /// work is done, and losing its outcome would mean doing it again.
    async fn record(&self, id: OrderId, transition: Transition) -> Result<Order, TransitionError> {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            match self.repository.transition(id, transition.clone()).await {
                Err(TransitionError::Storage(err)) if tries < 4 => {
                    warn!(error = %err, retry_in_ms = delay.as_millis(), "could not record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                }
                // A write that failed may have landed all the same: finding the order already
                // where this transition leads, after a failure, means it did.
                Err(TransitionError::Conflict { current, .. })
                    if tries > 0 && current == transition.target() =>
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

/// The longest a claim may go unanswered before the claim loop gives up on it and backs off.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// Once shutdown begins, how long a claim still unanswered may go on before it is dropped:
/// shutdown must not wait out [`CLAIM_TIMEOUT`].
const CLAIM_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

async fn claim_loop(
    engine: Arc<Engine>,
    stop: CancellationToken,
    abandon: CancellationToken,
    tracker: TaskTracker,
) {
    let s = engine.settings;
    let slots = Arc::new(Semaphore::new(s.concurrency));
    let mut error_backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return,
            },
        };
        // Orders finish in batches (a backend that group-commits answers a batch of
        // completions at once): let the rest of the batch give its slots back before
        // counting them, so that one claim takes them all rather than one claim each.
        tokio::task::yield_now().await;
        let wanted = 1 + slots.available_permits();
        // Not raced against `stop`: a durable queue may commit a claim whose reply a dropped
        // future would never read, leaving the orders idle until their leases run out. Only a
        // claim that hangs (a connection to a vanished database host fails no read for
        // minutes) is given up, at that same cost.
        let shutting_down = async {
            stop.cancelled().await;
            tokio::time::sleep(CLAIM_SHUTDOWN_GRACE).await;
        };
        // Each claim's lease, in the queue and (where the claim also starts the order) in the
        // repository, runs from no earlier than this.
        let claimed_at = tokio::time::Instant::now();
        let claims = tokio::select! {
            claims = tokio::time::timeout(CLAIM_TIMEOUT, engine.queue.claim(wanted, s.lease)) => {
                claims.unwrap_or_else(|_| {
                    Err(QueueError::Storage(StorageError::unavailable(format!(
                        "claiming took longer than {CLAIM_TIMEOUT:?}"
                    ))))
                })
            }
            () = shutting_down => return,
        };
        if stop.is_cancelled() {
            for claim in claims.iter().flatten() {
                hand_back(&engine, claim).await;
            }
            return;
        }
        match claims {
            Ok(claims) if claims.is_empty() => {
                drop(first);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = engine.queue.wait(s.poll_interval) => {}
                }
            }
            Ok(claims) => {
                error_backoff = Duration::from_millis(100);
                let mut first = Some(first);
                for claim in claims {
                    // This loop is the semaphore's only taker, so the slots counted above are
                    // still free; `first` covers the first claim.
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match slots.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                hand_back(&engine, &claim).await;
                                continue;
                            }
                        },
                    };
                    let span = info_span!("order", order_id = %claim.order_id, delivery = claim.deliveries);
                    let engine = engine.clone();
                    let abandon = abandon.clone();
                    // Boxed: the order's future is a few kilobytes (the handler's, the lease
                    // keeper's), and a box is built once where the bare future would be
                    // copied into each wrapper and then into the task.
                    tracker.spawn(
                        Box::pin(async move {
                            process(&engine, claim, claimed_at, &abandon).await;
                            drop(permit);
                        })
                        .instrument(span),
                    );
                }
            }
            Err(err) => {
                drop(first);
                warn!(error = %err, retry_in_ms = error_backoff.as_millis(), "could not claim orders");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one claimed order through the handler and records the outcome. `claimed_at` is when
/// the claim was asked for: the lease that Start sets runs from no earlier than that (a queue
/// may start the orders it claims in the claim's own statement).
async fn process(
    engine: &Engine,
    mut claim: Claim,
    claimed_at: tokio::time::Instant,
    abandon: &CancellationToken,
) {
    let s = engine.settings;
    let id = claim.order_id;
    let started = match claim.started.take() {
        // Started by the claim itself.
        Some(order) => Ok(order),
        None => {
            engine
                .repository
                .transition(
                    id,
                    Transition::Start {
                        claim: claim.token,
                        lease: s.lease,
                    },
                )
                .await
        }
    };
    let order = match started {
        Ok(order) => order,
        Err(TransitionError::Conflict {
            current,
            held_by_other,
            ..
        }) => {
            if current.is_terminal() {
                debug!(status = %current, "order already finished; dropping it from the queue");
                settle(engine.queue.ack(&claim).await);
            } else {
                // Another worker holds a live lease: look again once it could have run out.
                debug!(status = %current, held_by_other, "order is held elsewhere");
                settle(engine.queue.retry(&claim, s.lease).await);
            }
            return;
        }
        Err(TransitionError::NotFound(_)) => {
            warn!("queued order does not exist; dropping it from the queue");
            settle(engine.queue.ack(&claim).await);
            return;
        }
        Err(TransitionError::Storage(err)) => {
            warn!(error = %err, "could not start the order; it will be tried again");
            settle(engine.queue.retry(&claim, Duration::from_secs(1)).await);
            return;
        }
    };
    engine.publish(&order);
    // The attempt number is on the events rather than recorded into the span: the JSON log
    // format re-serializes a span's fields on every record.
    info!(attempt = order.attempts, "attempt started");
    if order.attempts == 1 {
        // Both times are the repository's, so a clock that differs from this host's skews
        // nothing; a negative span (a clock stepped back) is left out.
        let start = order.processing_start_time.unwrap_or(order.updated_at);
        if let Ok(waited) = (start - order.created_at).to_std() {
            observe(telemetry::QUEUE_WAIT, waited);
        }
    }

    let handler_began = tokio::time::Instant::now();

    if abandon.is_cancelled() {
        give_back(engine, &claim).await;
        return;
    }
    let mut handling =
        std::pin::pin!(AssertUnwindSafe(engine.handler.process(&order)).catch_unwind());
    // A handler that finishes on its first poll took no time, so its lease cannot need
    // renewing: the lease keeper (a timer registered and cancelled per order) and the
    // shutdown watch are set up only for a handler that waits.
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx))).await;
    let outcome = match first_poll {
        Poll::Ready(result) => result,
        Poll::Pending => tokio::select! {
            biased;
            () = abandon.cancelled() => {
                give_back(engine, &claim).await;
                return;
            }
            () = keep_lease(engine, &claim, claimed_at) => {
                count(telemetry::LEASES_LOST);
                warn!("lease lost to another worker; abandoning this attempt");
                return;
            }
            result = handling.as_mut() => result,
        },
    };
    observe(telemetry::PROCESSING_DURATION, handler_began.elapsed());
    let result = outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(HandlerError::transient(format!(
            "handler panicked: {message}"
        )))
    });

    match result {
        Ok(()) => match engine
            .record(id, Transition::Complete { claim: claim.token })
            .await
        {
            Ok(_) => {
                count(telemetry::ORDERS_COMPLETED);
                info!(attempt = order.attempts, "order completed");
                engine.dequeue_finished(&claim).await;
            }
            Err(err) => warn!(error = %err, "could not record completion"),
        },
        Err(err) => {
            let error: String = err.message.chars().take(MAX_ERROR_CHARS).collect();
            if err.permanent || order.attempts >= s.retry.max_attempts {
                warn!(attempt = order.attempts, error = %error, permanent = err.permanent, "order failed");
                match engine
                    .record(
                        id,
                        Transition::Fail {
                            claim: claim.token,
                            error,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        count(telemetry::ORDERS_FAILED);
                        engine.dequeue_finished(&claim).await;
                    }
                    Err(err) => warn!(error = %err, "could not record the failure"),
                }
            } else {
                let delay = s.retry.backoff(order.attempts);
                info!(attempt = order.attempts, error = %error, retry_in_ms = delay.as_millis(), "attempt failed; retrying");
                match engine
                    .record(
                        id,
                        Transition::Retry {
                            claim: claim.token,
                            error,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        count(telemetry::RETRIES);
                        settle(engine.queue.retry(&claim, delay).await);
                    }
                    Err(err) => warn!(error = %err, "could not record the failed attempt"),
                }
            }
        }
    }
}

/// Renews the claim's lease, in the queue and in the repository, every third of the lease;
/// returns when the lease was lost to another worker, or is about to run out because renewals
/// keep failing (so that the handler stops before another worker may start the order).
async fn keep_lease(engine: &Engine, claim: &Claim, started_at: tokio::time::Instant) {
    let lease = engine.settings.lease;
    let period = lease / 3;
    let mut held_until = started_at + lease;
    let mut ticks = tokio::time::interval_at(started_at + period, period);
    loop {
        ticks.tick().await;
        let asked_at = tokio::time::Instant::now();
        // A renewal still unanswered when the lease ends (a hung connection, a partitioned
        // database) must not let the handler run on: another worker may take the order
        // over then.
        let renewal = engine.repository.transition(
            claim.order_id,
            Transition::Renew {
                claim: claim.token,
                lease,
            },
        );
        // Half a period short of the lease's end: the queue's lease began at the claim, a
        // little earlier, and a takeover must find this run already stopped.
        let budget = held_until
            .saturating_duration_since(asked_at)
            .saturating_sub(period / 2);
        let Ok(renewed) = tokio::time::timeout(budget, renewal).await else {
            warn!("the lease ran out while renewing it; stopping");
            return;
        };
        match renewed {
            Err(TransitionError::Conflict { .. } | TransitionError::NotFound(_)) => return,
            Err(TransitionError::Storage(err)) => {
                if asked_at + period >= held_until {
                    warn!(error = %err, "could not renew the lease before it runs out; stopping");
                    return;
                }
                warn!(error = %err, "could not renew the lease; trying again");
                continue;
            }
            // The repository counts the lease from when it applied the renewal, no earlier than
            // this call began.
            Ok(_) => held_until = asked_at + lease,
        }
        if engine.shared_storage {
            // The renewal held the queue's entry too: it is the same row.
            continue;
        }
        match tokio::time::timeout(period, engine.queue.extend(claim, lease)).await {
            Ok(Err(QueueError::LeaseLost(_))) => return,
            Ok(Err(err)) => warn!(error = %err, "could not extend the queue lease"),
            Err(_) => warn!("extending the queue lease timed out"),
            Ok(Ok(())) => {}
        }
    }
}

/// Hands an unfinished order back at shutdown, without using up an attempt, so the next run
/// starts it at once rather than after its lease runs out.
async fn give_back(engine: &Engine, claim: &Claim) {
    let released = engine
        .record(claim.order_id, Transition::Release { claim: claim.token })
        .await;
    if released.is_ok() {
        settle(engine.queue.retry(claim, Duration::ZERO).await);
    }
}

/// Hands back a claim that no worker will take up (shutdown began while it was being made).
/// A queue may have started the order in the claim's own statement: that start is released,
/// so the order loses no attempt; for an order the claim did not start, the release finds
/// nothing to undo.
async fn hand_back(engine: &Engine, claim: &Claim) {
    let released = engine
        .repository
        .transition(claim.order_id, Transition::Release { claim: claim.token })
        .await;
    if let Ok(order) = released {
        engine.publish(&order);
    }
    settle(engine.queue.retry(claim, Duration::ZERO).await);
}

/// Logs the result of a queue call whose failure is recovered by leases: a claim that could
/// not be acked or retried comes back when its lease runs out.
fn settle(result: Result<(), QueueError>) {
    match result {
        Ok(()) => {}
        Err(QueueError::LeaseLost(id)) => {
            debug!(order_id = %id, "claim already lost; another worker has the order");
        }
        Err(err) => warn!(error = %err, "queue call failed; the lease will bring the order back"),
    }
}

async fn sweep_loop(engine: Arc<Engine>, stop: CancellationToken) {
    loop {
        let swept = tokio::select! {
            () = stop.cancelled() => return,
            swept = sweep(&engine) => swept,
        };
        match engine.repository.prune_keys().await {
            Ok(0) => {}
            Ok(pruned) => debug!(pruned, "expired idempotency keys forgotten"),
            Err(err) => warn!(error = %err, "could not prune idempotency keys; will try again"),
        }
        match swept {
            Ok(0) => debug!("recovery sweep found nothing to re-queue"),
            Ok(requeued) => info!(requeued, "recovery sweep re-queued stranded orders"),
            Err(err) => warn!(error = %err, "recovery sweep failed; it will run again"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(engine.settings.sweep_interval) => {}
        }
    }
}

/// Pushes every PENDING order, and every PROCESSING one whose lease ran out, to the queue;
/// returns how many the queue did not hold. Pushing is idempotent, so orders the queue
/// already holds stay as they are.
///
/// A queue that shares the repository's storage cannot lose what the repository holds: its
/// sweep has nothing to do.
async fn sweep(engine: &Engine) -> Result<usize, StorageError> {
    if engine.shared_storage {
        return Ok(0);
    }
    let mut after = None;
    let mut pushed = 0;
    loop {
        let page = engine.repository.stranded(after, SWEEP_PAGE).await?;
        match engine.queue.push_many(&page).await {
            Ok(added) => {
                pushed += added;
                metrics::counter!(telemetry::SWEEP_REQUEUED).increment(added as u64);
            }
            Err(QueueError::LeaseLost(_)) => {}
            Err(QueueError::Storage(err)) => return Err(err),
        }
        match page.last() {
            Some(&last) if page.len() == SWEEP_PAGE => after = Some(last),
            _ => return Ok(pushed),
        }
    }
}

#[cfg(test)]
mod tests;
