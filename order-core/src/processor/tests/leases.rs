//! Leases: renewed while a handler runs, and given up in time when renewals fail.

use super::*;

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
