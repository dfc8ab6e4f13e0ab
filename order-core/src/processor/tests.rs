use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;

use super::*;
use crate::handler::{HandlerError, MockOrderHandler, SimulatedStep};
use crate::memory::{InMemoryQueue, InMemoryRepository};
use crate::order::OrderStatus;
use crate::queue::ClaimToken;
use crate::repository::MockRepository;
use crate::testing::sample_order;

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

#[tokio::test]
async fn submitted_orders_are_processed_once_each() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 200).await;
    for id in ids {
        let order = done(&processor, id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(order.attempts, 1);
        assert_eq!(order.last_error, None);
        assert!(order.processing_end_time >= order.processing_start_time);
    }
    let metrics = processor.metrics().await.unwrap();
    assert_eq!(metrics.total_orders, 200);
    assert_eq!(metrics.statuses.completed, 200);
    assert_eq!(metrics.statuses.sum(), 200);
    assert_eq!(running.shutdown(WAIT).await.abandoned, 0);
}

#[tokio::test]
async fn invalid_orders_are_refused_and_nothing_is_stored() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let err = processor
        .submit(NewOrder {
            item_ids: vec![],
            ..new_order("u")
        })
        .await
        .unwrap_err();
    match err {
        SubmitError::Invalid(err) => assert_eq!(err.field, "itemIds"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(processor.metrics().await.unwrap().total_orders, 0);
}

/// Starts a processor around `handler`, submits one order and returns it once finished,
/// with the processor for a look at its metrics.
async fn process_one(
    handler: impl OrderHandler + 'static,
    retry: RetryPolicy,
) -> (Order, OrderProcessor) {
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(retry)
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = done(&processor, id).await;
    running.shutdown(WAIT).await;
    (order, processor)
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_backoff_then_succeeds() {
    let step = Arc::new(FlakyStep {
        failures: 2,
        calls: AtomicU32::new(0),
    });
    let (order, _) = process_one(ArcStep(step.clone()), quick_retries(5)).await;
    assert_eq!(order.status, OrderStatus::Completed);
    assert_eq!(order.attempts, 3);
    assert_eq!(
        order.last_error.as_deref(),
        Some("warehouse busy (attempt 2)")
    );
    assert_eq!(step.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn attempts_run_out_and_the_order_fails_with_its_last_error() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(3)
        .returning(|order| Err(HandlerError::transient(format!("down #{}", order.attempts))));
    let (order, processor) = process_one(handler, quick_retries(3)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(order.attempts, 3);
    assert_eq!(order.last_error.as_deref(), Some("down #3"));
    assert!(order.processing_end_time.is_some());
    let metrics = processor.metrics().await.unwrap();
    assert_eq!(
        (metrics.statuses.failed, metrics.statuses.completed),
        (1, 0)
    );
}

#[tokio::test]
async fn a_permanent_error_fails_the_order_at_once() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(1)
        .returning(|_| Err(HandlerError::permanent("card declined")));
    let (order, _) = process_one(handler, quick_retries(5)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(order.attempts, 1);
    assert_eq!(order.last_error.as_deref(), Some("card declined"));
}

/// Panics on every order, counting how often.
struct PanickingStep(AtomicU32);

#[async_trait]
impl OrderHandler for PanickingStep {
    async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("index out of bounds");
    }
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_not_a_lost_order() {
    let step = Arc::new(PanickingStep(AtomicU32::new(0)));
    let (order, _) = process_one(ArcStep(step.clone()), quick_retries(2)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(
        order.last_error.as_deref(),
        Some("handler panicked: index out of bounds")
    );
    assert_eq!(step.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_order_is_never_started() {
    let step = Arc::new(RecordedStep::new(Duration::ZERO));
    let processor = OrderProcessor::builder(ArcStep(step.clone()))
        .in_memory()
        .build()
        .unwrap();
    let cancelled = processor.submit(new_order("u")).await.unwrap().id;
    let kept = processor.submit(new_order("v")).await.unwrap().id;
    assert_eq!(
        processor.cancel(cancelled).await.unwrap().status,
        OrderStatus::Cancelled
    );
    let running = processor.start();
    assert_eq!(done(&processor, kept).await.status, OrderStatus::Completed);
    // The cancelled order's queue entry, ahead of the kept one's, was claimed too: a worker
    // has been past it once the queue is empty, and has finished with it once shut down.
    tokio::time::timeout(WAIT, async {
        while processor.queue_depth().await.unwrap() != QueueDepth::default() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both queue entries were claimed and dropped, not left to come back");
    running.shutdown(WAIT).await;
    let order = processor.get(cancelled).await.unwrap().unwrap();
    assert_eq!(
        (order.status, order.attempts, order.processing_start_time),
        (OrderStatus::Cancelled, 0, None)
    );
    assert_eq!(step.runs_of(cancelled), 0, "the handler never saw it");
    assert_eq!(step.runs_of(kept), 1);
    assert!(matches!(
        processor.cancel(kept).await,
        Err(CancelError::NotCancellable {
            status: OrderStatus::Completed,
            ..
        })
    ));
    assert!(matches!(
        processor.cancel(OrderId::new(999).unwrap()).await,
        Err(CancelError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_sweep_recovers_what_a_crashed_run_left_behind() {
    // A repository as a crashed process left it: one order never queued, one PROCESSING under
    // a dead worker's lapsed lease, one finished. The new process's queue is empty.
    let repository = Arc::new(InMemoryRepository::new());
    let never_queued = repository.insert(&sample_order("a", 1)).await.unwrap().id;
    let orphaned = repository.insert(&sample_order("b", 1)).await.unwrap().id;
    repository
        .transition(
            orphaned,
            Transition::Start {
                claim: ClaimToken::generate(),
                lease: Duration::from_millis(50),
            },
        )
        .await
        .unwrap();
    let finished = repository.insert(&sample_order("c", 1)).await.unwrap().id;
    let claim = ClaimToken::generate();
    repository
        .transition(
            finished,
            Transition::Start {
                claim,
                lease: Duration::from_secs(60),
            },
        )
        .await
        .unwrap();
    repository
        .transition(finished, Transition::Complete { claim })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut handler = MockOrderHandler::new();
    handler.expect_process().times(2).returning(|_| Ok(()));
    let processor = OrderProcessor::builder(handler)
        .repository(repository)
        .queue(Arc::new(InMemoryQueue::new()))
        .build()
        .unwrap();
    let running = processor.start();
    let first = done(&processor, never_queued).await;
    assert_eq!((first.status, first.attempts), (OrderStatus::Completed, 1));
    let second = done(&processor, orphaned).await;
    assert_eq!(
        (second.status, second.attempts),
        (OrderStatus::Completed, 2)
    );
    running.shutdown(WAIT).await;
}

/// A queue whose first `failures` pushes fail, as a broker that is briefly down would, and
/// whose first `hangs` claims never answer, as a connection to a vanished host does not.
struct UnreliablePush {
    inner: InMemoryQueue,
    failures: AtomicU32,
    hangs: AtomicU32,
}

#[async_trait]
impl Queue for UnreliablePush {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StorageError::unavailable("broker down").into());
        }
        self.inner.push(id).await
    }
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        if self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        self.inner.claim(max, lease).await
    }
    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        self.inner.extend(claim, lease).await
    }
    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        self.inner.ack(claim).await
    }
    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        self.inner.retry(claim, delay).await
    }
    async fn wait(&self, timeout: Duration) {
        self.inner.wait(timeout).await;
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_that_never_answers_is_given_up_and_work_goes_on() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(Arc::new(UnreliablePush {
            inner: InMemoryQueue::new(),
            failures: AtomicU32::new(0),
            hangs: AtomicU32::new(1),
        }))
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    // Virtual time: the hung claim is given up after its timeout, and the next one works.
    let order = tokio::time::timeout(Duration::from_secs(120), processor.wait_until_done(id))
        .await
        .expect("processed after the hung claim was given up")
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Completed);
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn an_order_the_queue_refused_is_still_processed() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(Arc::new(UnreliablePush {
            inner: InMemoryQueue::new(),
            // More than submit's own retries: only the sweep can queue it.
            failures: AtomicU32::new(3),
            hangs: AtomicU32::new(0),
        }))
        .sweep_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let running = processor.start();
    // The repository is empty, so the sweep at start pushes nothing: this submit's push is the
    // first, and fails.
    let order = processor.submit(new_order("u")).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(
        done(&processor, order.id).await.status,
        OrderStatus::Completed
    );
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_storage_failure_on_insert_is_reported_and_nothing_is_queued() {
    let mut repository = MockRepository::new();
    repository
        .expect_insert()
        .returning(|_| Err(StorageError::unavailable("connection refused")));
    let queue = Arc::new(InMemoryQueue::new());
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .repository(Arc::new(repository))
        .queue(queue.clone())
        .build()
        .unwrap();
    match processor.submit(new_order("u")).await {
        Err(SubmitError::Storage(err)) => assert!(err.unavailable),
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
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
}

/// An in-memory repository with storage failures on demand, for the failure paths a real
/// database cannot be made to produce at a chosen moment.
struct FaultyRepository {
    inner: InMemoryRepository,
    fault: Box<dyn Fn(&Transition) -> Fault + Send + Sync>,
    stranded_delay: Duration,
    /// How many sweeps have asked for stranded orders.
    stranded_calls: AtomicU32,
}

impl FaultyRepository {
    fn new(fault: impl Fn(&Transition) -> Fault + Send + Sync + 'static) -> Self {
        Self {
            inner: InMemoryRepository::new(),
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

#[tokio::test]
async fn a_storage_failure_while_starting_is_retried() {
    let refused = Arc::new(AtomicU32::new(0));
    let counter = refused.clone();
    let repository = FaultyRepository::new(move |t| {
        if matches!(t, Transition::Start { .. }) && counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Fault::Refuse
        } else {
            Fault::Pass
        }
    });
    let (processor, running) = start_on(
        Arc::new(repository),
        SimulatedStep::new(Duration::ZERO),
        Duration::from_secs(10),
    );
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = done(&processor, id).await;
    assert_eq!(order.status, OrderStatus::Completed);
    assert_eq!(order.attempts, 1, "the refused start did not count");
    assert_eq!(refused.load(Ordering::SeqCst), 2);
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_completion_that_landed_despite_an_error_is_not_done_twice() {
    let repository = FaultyRepository::new(|t| {
        if matches!(t, Transition::Complete { .. }) {
            Fault::ApplyThenFail
        } else {
            Fault::Pass
        }
    });
    let mut handler = MockOrderHandler::new();
    handler.expect_process().times(1).returning(|_| Ok(()));
    let (processor, running) = start_on(Arc::new(repository), handler, Duration::from_secs(10));
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = done(&processor, id).await;
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 1));
    // Acked at once, not left for its lease to run out.
    tokio::time::timeout(WAIT, async {
        while processor.queue_depth().await.unwrap() != QueueDepth::default() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the claim was acked");
    running.shutdown(WAIT).await;
}

/// Counts handler runs that are under way at once, and the most there ever were.
#[derive(Default)]
struct Overlap {
    now: AtomicU32,
    most: AtomicU32,
    started: AtomicU32,
}

struct OverlapGuard<'a>(&'a Overlap);

impl Drop for OverlapGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl OrderHandler for Overlap {
    async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(running, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        let _guard = OverlapGuard(self);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

/// Runs one order whose renewals all meet `fault`, and checks that each run stops by itself
/// before its lease lapses and another run (here, a takeover by the same processor) may start
/// the order: two runs, never at once.
async fn a_run_whose_renewals_stall_stops_in_time(fault: Fault) {
    let repository = FaultyRepository::new(move |t| {
        if matches!(t, Transition::Renew { .. }) {
            fault
        } else {
            Fault::Pass
        }
    });
    let overlap = Arc::new(Overlap::default());
    let (processor, running) = start_on(
        Arc::new(repository),
        ArcStep(overlap.clone()),
        Duration::from_millis(1200),
    );
    let id = processor.submit(new_order("u")).await.unwrap().id;
    tokio::time::timeout(WAIT, async {
        while overlap.started.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the order was taken over after each stopped run");
    assert_eq!(
        overlap.most.load(Ordering::SeqCst),
        1,
        "never two runs at once"
    );
    assert!(processor.get(id).await.unwrap().unwrap().attempts >= 2);
    running.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_worker_that_cannot_renew_stops_before_its_lease_runs_out() {
    a_run_whose_renewals_stall_stops_in_time(Fault::Refuse).await;
}

#[tokio::test]
async fn a_worker_whose_renewal_hangs_stops_before_its_lease_runs_out() {
    // The renewal never answers: the run must not wait on the call while another run takes
    // the order over.
    a_run_whose_renewals_stall_stops_in_time(Fault::Hang).await;
}

#[tokio::test]
async fn a_retry_wakes_an_idle_worker_without_waiting_for_the_poll() {
    let step = Arc::new(FlakyStep {
        failures: 1,
        calls: AtomicU32::new(0),
    });
    let processor = OrderProcessor::builder(ArcStep(step))
        .in_memory()
        .retry_policy(quick_retries(3))
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = tokio::time::timeout(Duration::from_secs(5), processor.wait_until_done(id))
        .await
        .expect("retried within seconds, not after the 60 s poll")
        .unwrap()
        .unwrap();
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 2));
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_slow_sweep() {
    let mut repository = FaultyRepository::new(|_| Fault::Pass);
    repository.stranded_delay = Duration::from_secs(3600);
    let repository = Arc::new(repository);
    let (_, running) = start_on(
        repository.clone(),
        SimulatedStep::new(Duration::ZERO),
        Duration::from_secs(10),
    );
    tokio::time::timeout(WAIT, async {
        while repository.stranded_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first sweep is waiting on storage");
    tokio::time::timeout(
        Duration::from_secs(5),
        running.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("shutdown returned while the sweep was still waiting on storage");
}

#[tokio::test]
async fn a_long_handler_keeps_its_lease_and_is_not_run_twice() {
    // Two processors share one repository and one queue, and ask the queue for work every
    // 100 ms; the handler runs for more than three leases.
    const LEASE: Duration = Duration::from_millis(600);
    let repository: Arc<dyn Repository> = Arc::new(InMemoryRepository::new());
    let queue = Arc::new(ClaimTimes::default());
    let step = Arc::new(RecordedStep::new(Duration::from_millis(2000)));
    let build = || {
        OrderProcessor::builder(ArcStep(step.clone()))
            .repository(repository.clone())
            .queue(queue.clone())
            .lease(LEASE)
            .poll_interval(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (run_a, run_b) = (a.start(), b.start());
    let ids = submit_many(&a, 4).await;
    for &id in &ids {
        // Done, and run once: a second run fails the test as soon as it begins.
        let order = tokio::time::timeout(WAIT, async {
            loop {
                assert!(
                    step.runs_of(id) <= 1,
                    "order {id} run twice: {:?}",
                    step.runs()
                );
                let order = b.get(id).await.unwrap().unwrap();
                if order.status.is_terminal() {
                    return order;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the order finished in time");
        assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 1));
        assert_eq!(step.runs_of(id), 1, "order {id} was run once");
    }
    run_a.shutdown(WAIT).await;
    run_b.shutdown(WAIT).await;
    let runs = step.runs();
    assert_eq!(runs.len(), 4, "{runs:?}");
    // A second run could have begun: while each run went on, well past the lease it began
    // with, workers asked the queue for work, and a lapsed lease would have handed it to them.
    let asked = queue.asked.lock().unwrap().clone();
    for run in &runs {
        let ended = run.ended.expect("each run went to its end");
        assert!(
            asked
                .iter()
                .any(|&at| at > run.began + LEASE * 3 / 2 && at < ended),
            "no worker asked for work while order {} ran past its first lease",
            run.order
        );
    }
}

#[tokio::test]
async fn shutdown_lets_orders_in_progress_finish() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(200)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 5).await;
    until_processing(&processor, 5).await;
    assert_eq!(running.shutdown(WAIT).await.abandoned, 0);
    for id in ids {
        let order = processor.get(id).await.unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Completed);
    }
}

#[tokio::test]
async fn shutdown_past_its_timeout_gives_unfinished_orders_back() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_secs(3600)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    until_processing(&processor, 1).await;
    let report = running.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.abandoned, 1);
    let order = processor.get(id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.attempts, 0, "the unfinished attempt was not counted");
    assert_eq!(order.processing_start_time, None);
    assert_eq!(order.last_error, None);
    let depth = processor.queue_depth().await.unwrap();
    assert_eq!((depth.ready, depth.claimed), (1, 0));
}

#[tokio::test]
async fn events_follow_an_order_through_its_life() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let mut events = processor.subscribe();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let mut seen = Vec::new();
    while seen.last() != Some(&OrderStatus::Completed) {
        let order = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(order.id, id);
        seen.push(order.status);
    }
    assert_eq!(
        seen,
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Completed
        ]
    );
    running.shutdown(WAIT).await;
}

/// Succeeds, fails twice then succeeds, or fails for good, by the order's user id.
struct StepByUser;

#[async_trait]
impl OrderHandler for StepByUser {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        match order.user_id.as_str() {
            "flaky" if order.attempts <= 2 => Err(HandlerError::transient("warehouse busy")),
            "declined" => Err(HandlerError::permanent("card declined")),
            _ => Ok(()),
        }
    }
}

/// The engine's counters and histograms, read from a recorder of this test's own (the global
/// one would count the other tests' orders too). A current-thread runtime keeps every task on
/// the thread the local recorder is set on.
#[test]
fn the_engine_counts_what_it_does() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // One order stored but never queued, as a crash between the two leaves it: the
            // sweep re-queues it.
            let repository = Arc::new(InMemoryRepository::new());
            let stranded = repository.insert(&sample_order("ok", 1)).await.unwrap().id;
            let processor = OrderProcessor::builder(StepByUser)
                .repository(repository)
                .queue(Arc::new(InMemoryQueue::new()))
                .retry_policy(quick_retries(5))
                .build()
                .unwrap();
            let mut ids = vec![stranded];
            for user in ["ok", "flaky", "declined", "cancelled"] {
                ids.push(processor.submit(new_order(user)).await.unwrap().id);
            }
            processor.cancel(ids[4]).await.unwrap();
            let running = processor.start();
            for &id in &ids {
                done(&processor, id).await;
            }
            running.shutdown(WAIT).await;
        });
    });

    let mut counters = std::collections::HashMap::new();
    let mut histograms = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                assert!(samples.iter().all(|s| s.into_inner() >= 0.0), "{name}");
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(
        counter(telemetry::ORDERS_CREATED),
        4,
        "submitted, not inserted"
    );
    assert_eq!(
        counter(telemetry::ORDERS_COMPLETED),
        3,
        "stranded, ok, flaky"
    );
    assert_eq!(counter(telemetry::RETRIES), 2, "flaky's first two attempts");
    assert_eq!(counter(telemetry::ORDERS_FAILED), 1, "declined");
    assert_eq!(counter(telemetry::ORDERS_CANCELLED), 1);
    assert_eq!(counter(telemetry::SWEEP_REQUEUED), 1, "the stranded order");
    assert_eq!(counter(telemetry::LEASES_LOST), 0);
    // Attempts: stranded 1, ok 1, flaky 3, declined 1; first attempts: 4.
    assert_eq!(histograms.get(telemetry::PROCESSING_DURATION), Some(&6));
    assert_eq!(histograms.get(telemetry::QUEUE_WAIT), Some(&4));
}

#[test]
fn the_builder_refuses_settings_that_cannot_work() {
    let step = || SimulatedStep::new(Duration::ZERO);
    let refused = |result: Result<OrderProcessor, BuildError>| match result {
        Err(BuildError::InvalidSetting { setting, .. }) => setting,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("built with a bad setting"),
    };
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .concurrency(0)
                .build()
        ),
        "concurrency"
    );
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .lease(Duration::ZERO)
                .build()
        ),
        "lease"
    );
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .retry_policy(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                })
                .build()
        ),
        "retry_policy"
    );
}

#[test]
fn backoff_doubles_up_to_its_cap_and_jitter_stays_in_the_upper_half() {
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: false,
        ..RetryPolicy::default()
    };
    let delays: Vec<_> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    let jittered = RetryPolicy {
        jitter: true,
        ..policy
    };
    for _ in 0..100 {
        let delay = jittered.backoff(3);
        assert!(delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400));
    }
    assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(1));
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

/// An in-memory queue that notes when each claim was asked for.
#[derive(Default)]
struct ClaimTimes {
    inner: InMemoryQueue,
    asked: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait]
impl Queue for ClaimTimes {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        self.inner.push(id).await
    }
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        self.asked.lock().unwrap().push(tokio::time::Instant::now());
        self.inner.claim(max, lease).await
    }
    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        self.inner.extend(claim, lease).await
    }
    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        self.inner.ack(claim).await
    }
    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        self.inner.retry(claim, delay).await
    }
    async fn wait(&self, timeout: Duration) {
        self.inner.wait(timeout).await;
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

/// The statuses a watch stream yields until it ends, failing after `WAIT`.
async fn watched(watch: OrderWatch) -> Vec<OrderStatus> {
    use futures::StreamExt;
    tokio::time::timeout(WAIT, watch.map(|order| order.status).collect())
        .await
        .expect("the stream ended")
}

#[tokio::test]
async fn a_watch_follows_the_order_to_its_end() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(50)))
        .in_memory()
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let watch = processor.watch(order.id).await.unwrap().unwrap();
    let seen = tokio::spawn(watched(watch));
    let running = processor.start();
    assert_eq!(
        seen.await.unwrap(),
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Completed
        ]
    );
    // After the end: the final state alone.
    let late = processor.watch(order.id).await.unwrap().unwrap();
    assert_eq!(watched(late).await, [OrderStatus::Completed]);
    assert!(
        processor
            .watch(OrderId::new(999).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_watch_sees_a_retry_and_a_cancel() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(1)
        .returning(|_| Err(HandlerError::transient("try again")));
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(RetryPolicy {
            initial_backoff: Duration::from_secs(60),
            ..quick_retries(3)
        })
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let watch = processor.watch(order.id).await.unwrap().unwrap();
    let seen = tokio::spawn(watched(watch));
    let running = processor.start();
    // Retried, and waiting out its backoff: cancel it.
    tokio::time::timeout(WAIT, async {
        while processor.get(order.id).await.unwrap().unwrap().attempts == 0
            || processor.get(order.id).await.unwrap().unwrap().status != OrderStatus::Pending
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    processor.cancel(order.id).await.unwrap();
    assert_eq!(
        seen.await.unwrap(),
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Pending,
            OrderStatus::Cancelled
        ]
    );
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn closing_watches_ends_the_streams_of_unfinished_orders() {
    use futures::StreamExt;

    let processor = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let mut watch = processor.watch(order.id).await.unwrap().unwrap();
    let first = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(first.map(|order| order.status), Some(OrderStatus::Pending));
    // Polled before close_watches (and so waiting on it), not merely not yet polled.
    let closed = processor.watches_closed();
    tokio::pin!(closed);
    assert!(
        futures::poll!(&mut closed).is_pending(),
        "watches_closed resolved before close_watches"
    );
    processor.close_watches();
    let rest = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the stream ends once close_watches is called");
    assert_eq!(rest, None, "nothing after the first state");
    tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .expect("watches_closed resolves once close_watches is called");
    let after = processor.watch(order.id).await.unwrap().unwrap();
    assert_eq!(watched(after).await, [OrderStatus::Pending]);
}

#[tokio::test]
async fn list_pages_newest_first_with_a_cursor() {
    let processor = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .build()
        .unwrap();
    let ids = submit_many(&processor, 5).await;
    let first = processor.list(&OrderQuery::newest_first(2)).await.unwrap();
    let listed = |page: &OrderPage| page.orders.iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(listed(&first), [ids[4], ids[3]]);
    assert_eq!(first.next, Some(ids[3]));
    let second = processor
        .list(&OrderQuery::newest_first(2).after(ids[3]))
        .await
        .unwrap();
    assert_eq!(
        (listed(&second), second.next),
        (vec![ids[2], ids[1]], Some(ids[1]))
    );
    let last = processor
        .list(&OrderQuery::newest_first(2).after(ids[1]))
        .await
        .unwrap();
    assert_eq!((listed(&last), last.next), (vec![ids[0]], None));
    let exact = processor.list(&OrderQuery::newest_first(5)).await.unwrap();
    assert_eq!(
        (exact.orders.len(), exact.next),
        (5, None),
        "no empty page after"
    );
}

#[tokio::test]
async fn a_dropped_or_finished_watch_leaves_nothing_registered() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(10)))
        .in_memory()
        .build()
        .unwrap();
    let waiting = processor.submit(new_order("ann")).await.unwrap();
    let finishing = processor.submit(new_order("bob")).await.unwrap();
    let dropped = processor.watch(waiting.id).await.unwrap().unwrap();
    let followed = processor.watch(finishing.id).await.unwrap().unwrap();
    let registered = || processor.engine.watchers.registered();
    assert_eq!(registered(), (2, 2));
    drop(dropped);
    let running = processor.start();
    assert_eq!(
        watched(followed).await.last(),
        Some(&OrderStatus::Completed)
    );
    tokio::time::timeout(WAIT, async {
        while registered() != (0, 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both watchers deregistered");
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_keyed_submission_is_processed_once_and_replays_after() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(5)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let key = crate::IdempotencyKey::new("pay-1").unwrap();
    let keyed = |order: NewOrder| Submission::new(order).idempotency_key(key.clone());
    let first = processor
        .submit_or_replay(keyed(new_order("ann")))
        .await
        .unwrap();
    assert!(!first.replayed);
    let done = done(&processor, first.order.id).await;
    assert_eq!((done.status, done.attempts), (OrderStatus::Completed, 1));

    let again = processor
        .submit_or_replay(keyed(new_order("ann")))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.order, done, "the order as it is now");
    assert_eq!(
        again.order.as_accepted(),
        first.order,
        "and as it was accepted"
    );

    let err = processor
        .submit_or_replay(keyed(new_order("bob")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::KeyReused { order, .. } if *order == first.order.id),
        "{err}"
    );
    // An invalid order is refused before its key is looked at.
    let invalid = NewOrder {
        user_id: String::new(),
        ..new_order("ann")
    };
    assert!(matches!(
        processor.submit(keyed(invalid)).await,
        Err(SubmitError::Invalid(_))
    ));
    assert_eq!(processor.metrics().await.unwrap().total_orders, 1);
    running.shutdown(WAIT).await;
}

#[test]
fn an_idempotency_ttl_under_a_second_is_refused() {
    let err = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .idempotency_ttl(Duration::from_millis(10))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("idempotency_ttl"), "{err}");
}

/// A queue that shares its repository's storage only comes with it, and its repository with
/// it: the builder refuses either one replaced alone, and takes both replaced.
#[test]
fn a_queue_that_shares_its_repository_comes_only_with_it() {
    use crate::backend::Backend;
    use crate::memory::InMemoryBackend;

    let step = || SimulatedStep::new(Duration::ZERO);
    let backend = InMemoryBackend::new();
    let alone = OrderProcessor::builder(step())
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(backend.queue())
        .build();
    assert!(matches!(alone, Err(BuildError::QueueWithoutItsRepository)));
    let other_repository = OrderProcessor::builder(step())
        .backend(&backend)
        .repository(Arc::new(InMemoryRepository::new()))
        .build();
    assert!(matches!(
        other_repository,
        Err(BuildError::QueueWithoutItsRepository)
    ));
    let with_its_repository = OrderProcessor::builder(step())
        .repository(backend.repository())
        .queue(backend.queue())
        .build();
    assert!(
        matches!(
            with_its_repository,
            Err(BuildError::QueueWithoutItsRepository)
        ),
        "only .backend() pairs them"
    );
    OrderProcessor::builder(step())
        .backend(&backend)
        .build()
        .unwrap();
    let other_queue = OrderProcessor::builder(step())
        .backend(&backend)
        .queue(Arc::new(InMemoryQueue::new()))
        .build();
    assert!(
        matches!(other_queue, Err(BuildError::RepositoryWithoutItsQueue)),
        "its repository would queue every order for a queue nobody claims from"
    );
    OrderProcessor::builder(step())
        .backend(&backend)
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(Arc::new(InMemoryQueue::new()))
        .build()
        .unwrap();
}

/// The engine's fast path, on the in-memory backend: no push, no separate start, no ack, no
/// extend and no sweep, and every order is still processed once, retried, failed or
/// cancelled as on separate ports; the queue ends empty.
#[tokio::test]
async fn on_a_shared_backend_orders_are_processed_retried_and_cancelled() {
    use crate::memory::InMemoryBackend;

    let processor = OrderProcessor::builder(FlakyStep {
        failures: 1,
        calls: AtomicU32::new(0),
    })
    .backend(&InMemoryBackend::new())
    .retry_policy(quick_retries(3))
    .build()
    .unwrap();
    let cancelled = processor.submit(new_order("cancel-me")).await.unwrap();
    processor.cancel(cancelled.id).await.unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 50).await;
    for id in ids {
        let order = done(&processor, id).await;
        assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 2));
    }
    let failing = OrderProcessor::builder(FlakyStep {
        failures: 5,
        calls: AtomicU32::new(0),
    })
    .backend(&InMemoryBackend::new())
    .retry_policy(quick_retries(2))
    .build()
    .unwrap();
    let failing_run = failing.start();
    let failed = failing.submit(new_order("declined")).await.unwrap();
    let failed = done(&failing, failed.id).await;
    assert_eq!((failed.status, failed.attempts), (OrderStatus::Failed, 2));
    assert_eq!(
        processor.get(cancelled.id).await.unwrap().unwrap().status,
        OrderStatus::Cancelled
    );
    for (engine, run) in [(&processor, running), (&failing, failing_run)] {
        assert_eq!(run.shutdown(WAIT).await.abandoned, 0);
        assert_eq!(engine.queue_depth().await.unwrap(), QueueDepth::default());
    }
}

/// On the shared backend a renewal alone holds the queue's claim (the engine no longer
/// extends it apart): a handler that runs past three leases is not handed to another worker.
#[tokio::test]
async fn on_a_shared_backend_a_long_handler_keeps_its_lease() {
    use crate::memory::InMemoryBackend;

    const LEASE: Duration = Duration::from_millis(600);
    let backend = InMemoryBackend::new();
    let step = Arc::new(RecordedStep::new(Duration::from_millis(2000)));
    let build = || {
        OrderProcessor::builder(ArcStep(step.clone()))
            .backend(&backend)
            .lease(LEASE)
            .poll_interval(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (run_a, run_b) = (a.start(), b.start());
    let ids = submit_many(&a, 4).await;
    for &id in &ids {
        let order = done(&b, id).await;
        assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 1));
        assert_eq!(step.runs_of(id), 1, "order {id} was run once");
    }
    run_a.shutdown(WAIT).await;
    run_b.shutdown(WAIT).await;
    assert_eq!(a.queue_depth().await.unwrap(), QueueDepth::default());
}
