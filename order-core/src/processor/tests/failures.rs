//! Storage and queue failures, and the sweep that recovers what a crash left behind.

use super::*;

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
        .transition(finished, Transition::Complete { claim, steps: None })
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
