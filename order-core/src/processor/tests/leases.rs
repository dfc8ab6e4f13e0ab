//! Leases: renewed while a handler runs, and given up in time when renewals fail.

use super::*;
use crate::backend::Backend;
use crate::queue::QueueStorage;

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

/// Renewals are written but never answered, as through a pooler whose server died: the
/// repository extends the 6 s lease at each one, and the worker, which cannot know it, stops
/// its handler before the lease it knows of runs out (the first renewal at 2 s, which
/// extends the lease to 8 s; the stop half a renewal period short of 6 s, at 5 s). It then
/// ends the lease, so the order is taken over at once, not once the lease the repository
/// holds runs out (nor, with a queue of its own, once the queue's lease does, at 6 s). With
/// `first_end_hangs`, the first try to end the lease is never answered, as on a connection
/// that died. Returns how long after the first run began the second one did.
async fn takeover_after_unconfirmed_renewals(
    shared_storage: bool,
    first_end_hangs: bool,
) -> Duration {
    let ended_once = std::sync::atomic::AtomicBool::new(false);
    let renewals = move |t: &Transition| match t {
        Transition::Renew { lease, .. } if !lease.is_zero() => Fault::ApplyThenHang,
        Transition::Renew { .. } if first_end_hangs && !ended_once.swap(true, Ordering::SeqCst) => {
            Fault::Hang
        }
        _ => Fault::Pass,
    };
    let step = Arc::new(RecordedStep::new(Duration::from_secs(3600)));
    let processor = if shared_storage {
        let backend = crate::memory::InMemoryBackend::new();
        leased_on(
            &FaultyBackend::around(&backend, renewals, None),
            &step,
            UNCONFIRMED_LEASE,
        )
    } else {
        OrderProcessor::builder(ArcStep(step.clone()))
            .repository(Arc::new(FaultyRepository::new(renewals)))
            .queue(Arc::new(InMemoryQueue::new()))
            .lease(UNCONFIRMED_LEASE)
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    tokio::time::timeout(WAIT, async {
        while step.runs_of(id) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the order was taken over");
    running.shutdown(Duration::from_millis(10)).await;
    let runs = step.runs();
    runs[1].began - runs[0].began
}

/// The lease of [`takeover_after_unconfirmed_renewals`].
const UNCONFIRMED_LEASE: Duration = Duration::from_secs(6);

/// Checks that the order was taken over once the first run stopped (at 5 s), and well before
/// the lease that the first run's queue (6 s) or repository (8 s) held ran out.
fn taken_over_when_stopped(gap: Duration) {
    assert!(
        gap >= Duration::from_millis(4500),
        "taken over {gap:?} after the first run began, before it stopped"
    );
    assert!(
        gap < Duration::from_millis(5600),
        "taken over {gap:?} after the first run began: the lease was not ended"
    );
}

#[tokio::test]
async fn a_run_that_cannot_confirm_its_lease_ends_it_for_a_prompt_takeover() {
    taken_over_when_stopped(takeover_after_unconfirmed_renewals(false, false).await);
}

#[tokio::test]
async fn on_a_shared_backend_a_run_that_cannot_confirm_its_lease_ends_it() {
    taken_over_when_stopped(takeover_after_unconfirmed_renewals(true, false).await);
}

#[tokio::test]
async fn ending_a_lease_on_a_dead_connection_is_tried_again() {
    // The first try hangs: it is given up after 2 s and made again, so the order is taken
    // over at about 7.1 s, before the repository's lease (8 s) would have let it.
    let gap = takeover_after_unconfirmed_renewals(true, true).await;
    assert!(
        gap >= Duration::from_millis(6900) && gap < Duration::from_millis(7700),
        "taken over {gap:?} after the first run began"
    );
}

#[tokio::test]
async fn a_long_handler_keeps_its_lease_and_is_not_run_twice() {
    // Two processors share one repository and one queue, and ask the queue for work every
    // 100 ms; the handler runs for more than three leases.
    const LEASE: Duration = Duration::from_millis(600);
    let repository: Arc<dyn Repository> = Arc::new(InMemoryRepository::new());
    let queue = Arc::new(SlowClaims::around(Arc::new(InMemoryQueue::new()), None));
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

/// How [`SlowClaims`] holds back the answer of a claim.
#[derive(Clone, Copy)]
enum Late {
    /// Before the claim reaches the queue, as a pooler holds a query while it has no server
    /// (across a failover): the orders are taken, and their leases begin, late.
    Sent(Duration),
    /// After the claim took its orders, as a reply stalled on its way back: their leases run
    /// out while the answer is held.
    Answered(Duration),
}

/// A queue around another that notes when each claim was asked for, and holds back the answer
/// of its first claim by `first` (none when `None`).
struct SlowClaims {
    inner: Arc<dyn Queue>,
    first: std::sync::Mutex<Option<Late>>,
    asked: std::sync::Mutex<Vec<tokio::time::Instant>>,
    /// Orders the held-back claim carried, once it answered.
    carried_late: std::sync::atomic::AtomicUsize,
}

impl SlowClaims {
    fn around(inner: Arc<dyn Queue>, first: Option<Late>) -> Self {
        Self {
            inner,
            first: std::sync::Mutex::new(first),
            asked: std::sync::Mutex::default(),
            carried_late: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Queue for SlowClaims {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        self.inner.push(id).await
    }
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        self.asked.lock().unwrap().push(tokio::time::Instant::now());
        let late = self.first.lock().unwrap().take();
        let claims = match late {
            None => return self.inner.claim(max, lease).await,
            Some(Late::Sent(delay)) => {
                tokio::time::sleep(delay).await;
                self.inner.claim(max, lease).await?
            }
            Some(Late::Answered(delay)) => {
                let claims = self.inner.claim(max, lease).await?;
                tokio::time::sleep(delay).await;
                claims
            }
        };
        self.carried_late.store(claims.len(), Ordering::SeqCst);
        Ok(claims)
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
    fn storage(&self) -> QueueStorage {
        self.inner.storage()
    }
}

/// A backend around another whose transitions meet `fault`, and whose first claim may be
/// answered late.
struct FaultyBackend {
    repository: Arc<dyn Repository>,
    queue: Arc<SlowClaims>,
}

impl FaultyBackend {
    fn around(
        inner: &dyn Backend,
        fault: impl Fn(&Transition) -> Fault + Send + Sync + 'static,
        late: Option<Late>,
    ) -> Self {
        Self {
            repository: Arc::new(FaultyRepository::around(inner.repository(), fault)),
            queue: Arc::new(SlowClaims::around(inner.queue(), late)),
        }
    }
}

impl Backend for FaultyBackend {
    fn repository(&self) -> Arc<dyn Repository> {
        self.repository.clone()
    }
    fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }
}

/// A processor on `backend` with a short lease, polling often.
fn leased_on(backend: &dyn Backend, step: &Arc<RecordedStep>, lease: Duration) -> OrderProcessor {
    OrderProcessor::builder(ArcStep(step.clone()))
        .backend(backend)
        .lease(lease)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_claim_answered_late_is_renewed_and_its_order_run_once() {
    // The claim is held 700 ms before it reaches the queue, as PgBouncer holds a query across
    // a failover: when it answers, the lease it began may, for all the worker knows, have run
    // out (600 ms). A renewal fenced by its token proves it held, and the order is run then,
    // once, rather than dropped until the lease it holds runs out.
    const LEASE: Duration = Duration::from_millis(600);
    let backend = crate::memory::InMemoryBackend::new();
    let late = FaultyBackend::around(
        &backend,
        |_| Fault::Slow,
        Some(Late::Sent(Duration::from_millis(700))),
    );
    let step = Arc::new(RecordedStep::new(Duration::from_millis(300)));
    let processor = leased_on(&late, &step, LEASE);
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let running = processor.start();
    let order = done(&processor, id).await;
    assert_eq!(late.queue.carried_late.load(Ordering::SeqCst), 1);
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 1));
    assert_eq!(step.runs_of(id), 1, "{:?}", step.runs());
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_claim_answered_after_a_takeover_never_starts_the_order() {
    // A's claim takes the order, and its answer is held for 1 s, well past the 300 ms lease;
    // meanwhile B takes the order over and runs it for 1.5 s. A's late claim must not start
    // the handler (a payment's first request goes out on its first poll) beside B's run.
    const LEASE: Duration = Duration::from_millis(300);
    let backend = crate::memory::InMemoryBackend::new();
    let late = FaultyBackend::around(
        &backend,
        |_| Fault::Slow,
        Some(Late::Answered(Duration::from_millis(1000))),
    );
    let step = Arc::new(RecordedStep::new(Duration::from_millis(1500)));
    let a = leased_on(&late, &step, LEASE);
    let id = a.submit(new_order("u")).await.unwrap().id;
    let run_a = a.start();
    // B starts once A's claim has taken the order, so that the order is A's first.
    tokio::time::timeout(WAIT, async {
        while a.get(id).await.unwrap().unwrap().status != OrderStatus::Processing {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A's claim took the order");
    let b = leased_on(&backend, &step, LEASE);
    let run_b = b.start();
    let order = done(&b, id).await;
    // A's answer came while B ran; had A started the order, a second run would show.
    assert_eq!(late.queue.carried_late.load(Ordering::SeqCst), 1);
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 2));
    assert_eq!(step.runs_of(id), 1, "{:?}", step.runs());
    run_a.shutdown(WAIT).await;
    run_b.shutdown(WAIT).await;
    assert_eq!(step.runs_of(id), 1, "{:?}", step.runs());
}
