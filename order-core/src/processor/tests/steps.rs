//! Orders processed in steps, on every backend: checkpoints, resuming after a crash, retries
//! of one step, compensation in reverse, and a cancel mid-way.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;
use crate::backend::Backend;
use crate::memory::InMemoryBackend;
use crate::step::{Pipeline, Step, StepContext, StepOutput, StepRecord, StepStatus};

/// Where a test's orders live: each backend the engine runs on.
enum Store {
    Memory(InMemoryBackend),
    #[cfg(feature = "postgres")]
    Postgres(crate::testing::TestDatabase),
}

impl Store {
    async fn all() -> Vec<Store> {
        #[allow(unused_mut)]
        let mut stores = vec![Store::Memory(InMemoryBackend::new())];
        #[cfg(feature = "postgres")]
        stores.push(Store::Postgres(
            crate::testing::TestDatabase::create().await,
        ));
        stores
    }

    fn backend(&self) -> Box<dyn Backend> {
        match self {
            Store::Memory(backend) => Box::new(backend.clone()),
            #[cfg(feature = "postgres")]
            Store::Postgres(db) => Box::new(crate::postgres::PostgresBackend::new(db.pool())),
        }
    }

    fn processor(&self, pipeline: Pipeline) -> OrderProcessor {
        OrderProcessor::pipeline_builder(pipeline)
            .backend(&*self.backend())
            .retry_policy(quick_retries(3))
            .lease(Duration::from_millis(600))
            .poll_interval(Duration::from_millis(20))
            .sweep_interval(Duration::from_millis(200))
            .build()
            .unwrap()
    }
}

/// What the fake services saw, in order, and how each step behaves.
#[derive(Default)]
struct Books {
    calls: Mutex<Vec<String>>,
    /// Transient failures still to come, by step.
    transient: Mutex<HashMap<String, u32>>,
    /// Steps that fail for good.
    permanent: Mutex<Vec<String>>,
    /// Compensation failures still to come, by step.
    compensation_failures: Mutex<HashMap<String, u32>>,
    /// Steps that wait for `gate` before they finish, each once.
    gated: Mutex<Vec<String>>,
    gate: Notify,
    /// Signalled when a gated step starts waiting.
    waiting: Notify,
}

impl Books {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn runs(&self, step: &str) -> usize {
        let run = format!("run {step}");
        self.calls()
            .iter()
            .filter(|call| call.starts_with(&run))
            .count()
    }

    async fn run(&self, cx: StepContext) -> Result<StepOutput, HandlerError> {
        let step = cx.step().to_owned();
        self.calls.lock().unwrap().push(format!(
            "run {step} #{} key={} after={:?}",
            cx.attempt(),
            cx.idempotency_key(),
            cx.output("reserve").map(StepOutput::as_json)
        ));
        let gated = {
            let mut gated = self.gated.lock().unwrap();
            let found = gated.iter().position(|name| *name == step);
            found.map(|i| gated.remove(i)).is_some()
        };
        if gated {
            self.waiting.notify_one();
            self.gate.notified().await;
        }
        if let Some(left) = self.transient.lock().unwrap().get_mut(&step)
            && *left > 0
        {
            *left -= 1;
            return Err(HandlerError::transient(format!("{step} busy")));
        }
        if self.permanent.lock().unwrap().contains(&step) {
            return Err(HandlerError::permanent(format!("{step} refused")));
        }
        StepOutput::from_json(format!(r#"{{"{step}": 12.10}}"#))
            .map_err(|err| HandlerError::permanent(err.to_string()))
    }

    async fn compensate(&self, cx: StepContext, output: StepOutput) -> Result<(), HandlerError> {
        let step = cx.step().to_owned();
        self.calls
            .lock()
            .unwrap()
            .push(format!("undo {step} {}", output.as_json()));
        if let Some(left) = self.compensation_failures.lock().unwrap().get_mut(&step)
            && *left > 0
        {
            *left -= 1;
            return Err(HandlerError::transient(format!("{step} undo unavailable")));
        }
        Ok(())
    }
}

/// reserve, charge (both compensable), ship (not), all recorded in `books`.
fn checkout(books: &Arc<Books>) -> Pipeline {
    let step = |name: &str, undo: bool| {
        let runner = books.clone();
        let step = Step::new(name, move |cx: StepContext| {
            let books = runner.clone();
            async move { books.run(cx).await }
        });
        if !undo {
            return step;
        }
        let undoer = books.clone();
        step.compensate(move |cx: StepContext, output: StepOutput| {
            let books = undoer.clone();
            async move { books.compensate(cx, output).await }
        })
    };
    Pipeline::new()
        .then(step("reserve", true))
        .then(step("charge", true))
        .then(step("ship", false))
}

fn statuses(order: &Order) -> Vec<(String, StepStatus)> {
    order
        .steps
        .iter()
        .map(|step| (step.name.clone(), step.status))
        .collect()
}

/// reserve, SUCCEEDED with `output`.
fn reserved(output: &str) -> StepRecord {
    let mut reserve = StepRecord::started("reserve", 1);
    reserve.status = StepStatus::Succeeded;
    reserve.output = Some(StepOutput::from_json(output.to_owned()).unwrap());
    reserve
}

/// An order that a worker started under a short lease, recorded `steps` for (none: it was in
/// its first step) and died holding; returns the order as that worker left it.
async fn died_holding(store: &Store, steps: Vec<StepRecord>) -> Order {
    let repository = store.backend().repository();
    let order = repository.insert(&sample_order("u", 1)).await.unwrap();
    let claim = ClaimToken::generate();
    let lease = Duration::from_millis(300);
    let started = repository
        .transition(order.id, Transition::Start { claim, lease })
        .await
        .unwrap();
    if steps.is_empty() {
        return started;
    }
    let advancing = true;
    repository
        .transition(
            order.id,
            Transition::Checkpoint {
                claim,
                steps,
                advancing,
            },
        )
        .await
        .unwrap()
}

/// Asks for a cancel of `order`, PROCESSING as read.
async fn request_cancel(store: &Store, order: &Order) {
    let seen = order.updated_at;
    store
        .backend()
        .repository()
        .transition(order.id, Transition::RequestCancel { seen })
        .await
        .unwrap();
}

async fn finished(processor: &OrderProcessor) -> Order {
    let order = processor.submit(new_order("u")).await.unwrap();
    done(processor, order.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_runs_once_with_the_outputs_before_it_and_is_recorded() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = finished(&processor).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(
            statuses(&order),
            [
                ("reserve".to_owned(), StepStatus::Succeeded),
                ("charge".to_owned(), StepStatus::Succeeded),
                ("ship".to_owned(), StepStatus::Succeeded),
            ]
        );
        assert!(order.steps.iter().all(|step| step.attempts == 1));
        assert_eq!(
            order.steps[1].output.as_ref().unwrap().as_json(),
            r#"{"charge": 12.10}"#,
            "outputs are kept as written"
        );
        let id = order.id;
        assert_eq!(
            books.calls(),
            [
                format!(r#"run reserve #1 key=order-{id}/reserve after=None"#),
                format!(
                    r#"run charge #1 key=order-{id}/charge after=Some("{{\"reserve\": 12.10}}")"#
                ),
                format!(r#"run ship #1 key=order-{id}/ship after=Some("{{\"reserve\": 12.10}}")"#),
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_error_retries_that_step_alone() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.transient.lock().unwrap().insert("charge".into(), 2);
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = finished(&processor).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!((books.runs("reserve"), books.runs("charge")), (1, 3));
        assert_eq!(order.steps[1].attempts, 3);
        assert_eq!(order.steps[1].error.as_deref(), Some("charge busy"));
        assert_eq!(order.attempts, 1, "one delivery of the order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_compensates_the_finished_steps_in_reverse() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.permanent.lock().unwrap().push("ship".into());
        books
            .compensation_failures
            .lock()
            .unwrap()
            .insert("charge".into(), 2);
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = finished(&processor).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Failed);
        assert_eq!(order.last_error.as_deref(), Some("ship: ship refused"));
        assert_eq!(
            statuses(&order),
            [
                ("reserve".to_owned(), StepStatus::Compensated),
                ("charge".to_owned(), StepStatus::Compensated),
                ("ship".to_owned(), StepStatus::Failed),
            ]
        );
        assert_eq!(order.steps[1].compensation_attempts, 3);
        let undone: Vec<String> = books
            .calls()
            .into_iter()
            .filter(|call| call.starts_with("undo"))
            .collect();
        assert_eq!(
            undone,
            [
                r#"undo charge {"charge": 12.10}"#,
                r#"undo charge {"charge": 12.10}"#,
                r#"undo charge {"charge": 12.10}"#,
                r#"undo reserve {"reserve": 12.10}"#,
            ],
            "the failing compensation was retried until it succeeded, before the one before it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_out_of_attempts_fails_the_order() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.transient.lock().unwrap().insert("reserve".into(), 10);
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = finished(&processor).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Failed);
        assert_eq!(order.last_error.as_deref(), Some("reserve: reserve busy"));
        assert_eq!(books.runs("reserve"), 3, "the processor's 3 attempts");
        assert_eq!(books.runs("charge"), 0);
        assert_eq!(
            statuses(&order),
            [("reserve".to_owned(), StepStatus::Failed)]
        );
    }
}

/// A worker that died after reserve's checkpoint: the next one resumes at charge with
/// reserve's output, and reserve does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_resumes_at_the_first_step_without_a_recorded_success() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        // The dead worker ran reserve, recorded it and began charge.
        let steps = vec![
            reserved(r#"{"reserve": "r-1"}"#),
            StepRecord::started("charge", 1),
        ];
        let order = died_holding(&store, steps).await;

        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(books.runs("reserve"), 0, "its success was recorded");
        assert_eq!(
            books.calls()[0],
            format!(
                r#"run charge #2 key=order-{}/charge after=Some("{{\"reserve\": \"r-1\"}}")"#,
                order.id
            )
        );
        assert_eq!(order.steps[1].attempts, 2, "the crashed run counts");
        assert_eq!(order.attempts, 2);
    }
}

/// A cancel while charge runs: 202-like `Requested`, charge finishes, ship never starts,
/// charge then reserve are compensated, and the order ends CANCELLED. A second cancel
/// answers the same; a plain handler's PROCESSING order cannot be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_way_compensates_and_ends_cancelled() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.gated.lock().unwrap().push("charge".into());
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = processor.submit(new_order("u")).await.unwrap();
        tokio::time::timeout(WAIT, books.waiting.notified())
            .await
            .expect("charge started");

        let requested = processor.cancel(order.id).await.unwrap();
        let Cancellation::Requested(requested) = requested else {
            panic!("a PROCESSING pipeline order's cancel is requested: {requested:?}");
        };
        assert_eq!(requested.status, OrderStatus::Processing);
        assert!(requested.cancel_requested_at.is_some());
        assert!(matches!(
            processor.cancel(order.id).await.unwrap(),
            Cancellation::Requested(_)
        ));
        books.gate.notify_one();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(
            statuses(&order),
            [
                ("reserve".to_owned(), StepStatus::Compensated),
                ("charge".to_owned(), StepStatus::Compensated),
            ]
        );
        assert_eq!(books.runs("ship"), 0);
        let undone: Vec<String> = books
            .calls()
            .into_iter()
            .filter(|call| call.starts_with("undo"))
            .map(|call| call.split(' ').nth(1).unwrap().to_owned())
            .collect();
        assert_eq!(undone, ["charge", "reserve"]);
        assert!(matches!(
            processor.cancel(order.id).await,
            Err(CancelError::NotCancellable {
                status: OrderStatus::Cancelled,
                ..
            })
        ));
    }
}

/// The last step running when the cancel lands: it finishes, and is compensated with the
/// others; a step that cannot be undone refuses the cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_last_step_still_ends_cancelled() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.gated.lock().unwrap().push("ship".into());
        let all_undoable = Pipeline::simulated(["reserve", "charge"], Duration::ZERO).then(
            Step::new("ship", {
                let books = books.clone();
                move |cx: StepContext| {
                    let books = books.clone();
                    async move { books.run(cx).await }
                }
            })
            .compensate(|_cx: StepContext, _output: StepOutput| async { Ok(()) }),
        );
        let processor = store.processor(all_undoable);
        let running = processor.start();
        let order = processor.submit(new_order("u")).await.unwrap();
        tokio::time::timeout(WAIT, books.waiting.notified())
            .await
            .expect("ship started");
        assert!(matches!(
            processor.cancel(order.id).await.unwrap(),
            Cancellation::Requested(_)
        ));
        books.gate.notify_one();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert!(
            order
                .steps
                .iter()
                .all(|step| step.status == StepStatus::Compensated),
            "{order:?}"
        );

        // The checkout's ship cannot be undone: a cancel while it runs is refused.
        let books = Arc::new(Books::default());
        books.gated.lock().unwrap().push("ship".into());
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = processor.submit(new_order("u")).await.unwrap();
        tokio::time::timeout(WAIT, books.waiting.notified())
            .await
            .expect("ship started");
        assert!(matches!(
            processor.cancel(order.id).await,
            Err(CancelError::NotCancellable {
                status: OrderStatus::Processing,
                ..
            })
        ));
        books.gate.notify_one();
        assert_eq!(
            done(&processor, order.id).await.status,
            OrderStatus::Completed
        );
        running.shutdown(WAIT).await;
    }
}

/// A step that takes longer than its timeout is a transient failure.
#[tokio::test]
async fn a_step_past_its_timeout_is_retried() {
    let slow_once = Arc::new(AtomicU32::new(0));
    let runs = slow_once.clone();
    let pipeline = Pipeline::new().then(
        Step::new("slow", move |_cx: StepContext| {
            let runs = runs.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(StepOutput::none())
            }
        })
        .timeout(Duration::from_millis(50))
        .retry(quick_retries(2)),
    );
    let processor = Store::Memory(InMemoryBackend::new()).processor(pipeline);
    let running = processor.start();
    let order = finished(&processor).await;
    running.shutdown(WAIT).await;
    assert_eq!(order.status, OrderStatus::Completed);
    assert_eq!(order.steps[0].attempts, 2);
    assert_eq!(
        order.steps[0].error.as_deref(),
        Some("timed out after 50ms")
    );
    assert_eq!(slow_once.load(Ordering::SeqCst), 2);
}

/// A plain handler's PROCESSING order cannot be undone, so it cannot be cancelled.
#[tokio::test]
async fn a_plain_handlers_processing_order_cannot_be_cancelled() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_secs(60)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let order = processor.submit(new_order("u")).await.unwrap();
    until_processing(&processor, 1).await;
    assert!(matches!(
        processor.cancel(order.id).await,
        Err(CancelError::NotCancellable {
            status: OrderStatus::Processing,
            ..
        })
    ));
    let order = processor.get(order.id).await.unwrap().unwrap();
    assert!(order.steps.is_empty() && order.cancel_requested_at.is_none());
    running.shutdown(Duration::from_millis(10)).await;
}

/// A worker died while charge ran; a cancel was accepted before the next worker took over.
/// The charge may have gone through: the next worker runs it to its end, then compensates it
/// and reserve, and the order ends CANCELLED with nothing left RUNNING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_after_a_cancel_finishes_the_running_step_and_undoes_it() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        let steps = vec![reserved(r#""r-1""#), StepRecord::started("charge", 1)];
        let order = died_holding(&store, steps).await;
        request_cancel(&store, &order).await;

        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(
            statuses(&order),
            [
                ("reserve".to_owned(), StepStatus::Compensated),
                ("charge".to_owned(), StepStatus::Compensated),
            ]
        );
        assert_eq!(books.runs("charge"), 1, "charge ran to its end");
        assert_eq!(books.runs("ship"), 0);
    }
}

/// A cancel accepted while the running step then fails for good: the order still ends
/// CANCELLED, as its client was told, with the steps before it compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_after_a_cancel_ends_cancelled() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.gated.lock().unwrap().push("charge".into());
        books.permanent.lock().unwrap().push("charge".into());
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = processor.submit(new_order("u")).await.unwrap();
        tokio::time::timeout(WAIT, books.waiting.notified())
            .await
            .expect("charge started");
        assert!(matches!(
            processor.cancel(order.id).await.unwrap(),
            Cancellation::Requested(_)
        ));
        books.gate.notify_one();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(
            statuses(&order),
            [
                ("reserve".to_owned(), StepStatus::Compensated),
                ("charge".to_owned(), StepStatus::Failed),
            ]
        );
    }
}

/// While the first step of a fresh order runs, nothing is stored for it, yet clients see it
/// RUNNING: its record is the order's own start.
#[tokio::test]
async fn the_first_step_shows_while_it_runs() {
    let books = Arc::new(Books::default());
    books.gated.lock().unwrap().push("reserve".into());
    let store = Store::Memory(InMemoryBackend::new());
    let processor = store.processor(checkout(&books));
    let running = processor.start();
    let order = processor.submit(new_order("u")).await.unwrap();
    tokio::time::timeout(WAIT, books.waiting.notified())
        .await
        .expect("reserve started");
    let seen = processor.get(order.id).await.unwrap().unwrap();
    assert_eq!(
        statuses(&seen),
        [("reserve".to_owned(), StepStatus::Running)]
    );
    assert_eq!(Some(seen.steps[0].started_at), seen.processing_start_time);
    let stored = store
        .backend()
        .repository()
        .get(order.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.steps.is_empty(), "no write for it");
    books.gate.notify_one();
    let order = done(&processor, order.id).await;
    assert_eq!(order.steps[0].started_at, seen.steps[0].started_at);
    running.shutdown(WAIT).await;
}

/// A worker died in the first step, which records nothing until it ends, and a cancel was
/// accepted then: the next worker runs the first step to its end and undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_after_a_cancel_in_the_first_step_undoes_it() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        let order = died_holding(&store, Vec::new()).await;
        request_cancel(&store, &order).await;

        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let order = done(&processor, order.id).await;
        running.shutdown(WAIT).await;
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(
            statuses(&order),
            [("reserve".to_owned(), StepStatus::Compensated)]
        );
        assert_eq!((books.runs("reserve"), books.runs("charge")), (1, 0));
        assert_eq!(order.steps[0].attempts, 2, "the dead worker's run counts");
    }
}

/// reserve (not undoable), charge (undoable), ship (not), all recorded in `books`.
fn reserve_once(books: &Arc<Books>) -> Pipeline {
    let step = |name: &str| {
        let runner = books.clone();
        Step::new(name, move |cx: StepContext| {
            let books = runner.clone();
            async move { books.run(cx).await }
        })
    };
    let undoer = books.clone();
    Pipeline::new()
        .then(step("reserve"))
        .then(
            step("charge").compensate(move |cx: StepContext, output: StepOutput| {
                let books = undoer.clone();
                async move { books.compensate(cx, output).await }
            }),
        )
        .then(step("ship"))
}

/// A retried pipeline runs again what its failure undid: the steps its failure compensated and
/// the one that failed, each with a new key; the order COMPLETES with its failure kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_order_runs_again_what_its_failure_undid_with_new_keys() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.permanent.lock().unwrap().push("ship".into());
        let processor = store.processor(checkout(&books));
        let running = processor.start();
        let failed = finished(&processor).await;
        assert_eq!(failed.status, OrderStatus::Failed);
        let id = failed.id;

        books.permanent.lock().unwrap().clear();
        books.calls.lock().unwrap().clear();
        let retried = processor.retry(id).await.unwrap();
        assert_eq!(retried.status, OrderStatus::Pending);
        assert!(retried.steps.is_empty(), "reserve and charge were undone");
        let order = done(&processor, id).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(order.attempts, 2);
        assert!(
            order
                .steps
                .iter()
                .all(|step| step.status == StepStatus::Succeeded && step.retry == 1),
            "{:?}",
            order.steps
        );
        assert_eq!(order.failures.len(), 1);
        assert_eq!(order.failures[0].step.as_deref(), Some("ship"));
        assert_eq!(order.failures[0].error, "ship: ship refused");
        assert_eq!(
            books.calls(),
            [
                format!(r#"run reserve #1 key=order-{id}/reserve/retry-1 after=None"#),
                format!(
                    r#"run charge #1 key=order-{id}/charge/retry-1 after=Some("{{\"reserve\": 12.10}}")"#
                ),
                format!(
                    r#"run ship #1 key=order-{id}/ship/retry-1 after=Some("{{\"reserve\": 12.10}}")"#
                ),
            ]
        );
    }
}

/// A retried pipeline resumes at the step that failed when the steps before it stand (they
/// could not be undone): they do not run again, and their outputs reach the steps after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_order_resumes_at_the_step_that_failed() {
    for store in Store::all().await {
        let books = Arc::new(Books::default());
        books.permanent.lock().unwrap().push("charge".into());
        let processor = store.processor(reserve_once(&books));
        let running = processor.start();
        let failed = finished(&processor).await;
        assert_eq!(
            statuses(&failed),
            [
                ("reserve".to_owned(), StepStatus::Succeeded),
                ("charge".to_owned(), StepStatus::Failed),
            ]
        );
        let id = failed.id;

        books.permanent.lock().unwrap().clear();
        let retried = processor.retry(id).await.unwrap();
        assert_eq!(
            statuses(&retried),
            [("reserve".to_owned(), StepStatus::Succeeded)]
        );
        let order = done(&processor, id).await;
        running.shutdown(WAIT).await;

        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(books.runs("reserve"), 1, "reserve's work stood");
        assert_eq!(books.runs("charge"), 2);
        assert_eq!(
            order
                .steps
                .iter()
                .map(|step| step.retry)
                .collect::<Vec<_>>(),
            [0, 1, 1]
        );
        let charges: Vec<String> = books
            .calls()
            .into_iter()
            .filter(|call| call.starts_with("run charge"))
            .collect();
        assert_eq!(
            charges,
            [
                format!(
                    r#"run charge #1 key=order-{id}/charge after=Some("{{\"reserve\": 12.10}}")"#
                ),
                format!(
                    r#"run charge #1 key=order-{id}/charge/retry-1 after=Some("{{\"reserve\": 12.10}}")"#
                ),
            ]
        );
    }
}
