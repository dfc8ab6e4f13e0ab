//! A claimed order run through the steps of a [`Pipeline`]: each step's outcome checkpointed
//! under the claim, transient errors retried step by step, and the finished steps compensated
//! in reverse when a step fails for good or a cancel was requested.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::under_lease;
use super::worker::{bounded, panicked, release_abandoned};
use super::{Engine, RetryPolicy};
use crate::error::TransitionError;
use crate::handler::HandlerError;
use crate::order::Order;
use crate::queue::Claim;
use crate::repository::Transition;
use crate::step::{Pipeline, Step, StepContext, StepOutput, StepRecord, StepStatus, now};
use crate::telemetry::{self, count, count_step, observe, observe_step};

/// How a pipeline's run ended short of COMPLETED: what the compensations lead to.
enum Unwind {
    /// A cancel was requested: the order ends CANCELLED.
    Cancel,
    /// A step failed for good: the order ends FAILED with this `last_error`.
    Failure(String),
}

/// A run that ended before the pipeline's last step: the order was unwound (a cancel cut in),
/// or the claim is gone (a lost lease, a write that failed for good; the lease brings the order
/// back).
struct Stopped;

/// Runs the claimed `order` through `pipeline` while keeping its lease (which runs from no
/// earlier than `leased_at`), until it is finished, the lease is lost, or shutdown abandons it
/// (then it is handed back). `stop` and `abandon` are the processor's: shutdown begun, and
/// its drain timeout reached.
pub(super) async fn drive(
    engine: &Engine,
    pipeline: &Pipeline,
    claim: &Claim,
    order: Order,
    leased_at: tokio::time::Instant,
    stop: &CancellationToken,
    abandon: &CancellationToken,
) {
    if abandon.is_cancelled() {
        release_abandoned(engine, claim).await;
        return;
    }
    let began = tokio::time::Instant::now();
    let run = Run {
        engine,
        pipeline,
        claim,
        order: Arc::new(order),
    };
    let ended = {
        let running = std::pin::pin!(run.run());
        under_lease(engine, claim, leased_at, abandon, running).await
        // A stopped run is dropped here, before its order is handed back.
    };
    if ended.finished(engine, claim, stop, abandon).await.is_some() {
        observe(telemetry::PROCESSING_DURATION, began.elapsed());
    }
}

/// One worker's run of one order's pipeline.
struct Run<'a> {
    engine: &'a Engine,
    pipeline: &'a Pipeline,
    claim: &'a Claim,
    /// The order as this worker started it.
    order: Arc<Order>,
}

impl Run<'_> {
    async fn run(&self) -> Result<(), Stopped> {
        let mut steps = self.order.steps.clone();
        let cancelled = self.order.cancel_requested_at.is_some();
        let unwinding = steps.iter().any(|step| {
            matches!(
                step.status,
                StepStatus::Failed | StepStatus::Compensating | StepStatus::Compensated
            )
        });
        if unwinding {
            // A worker died while compensating: go on where it stopped.
            let reason = if cancelled {
                Unwind::Cancel
            } else {
                let failed = steps.iter().find(|step| step.status == StepStatus::Failed);
                Unwind::Failure(failed.map_or_else(
                    || "failed".to_owned(),
                    |step| failure(&step.name, step.error.as_deref().unwrap_or("failed")),
                ))
            };
            return self.unwind(steps, reason).await;
        }
        let total = self.pipeline.steps.len();
        let mut k = steps
            .iter()
            .take_while(|step| step.status == StepStatus::Succeeded)
            .count();
        if k >= total {
            // Every step's success is stored, but not the completion: finish it.
            return self.complete(steps).await;
        }
        // The step to run now: resumed (its earlier runs are recorded and this one counts), the
        // first step (whose record is the order's own start and attempts until it has an
        // outcome to store), or the next one after a success whose checkpoint a cancel cut
        // short. A step that had started runs to its end even if a cancel was requested
        // meanwhile: an earlier run may have done its work, which is compensated with the
        // rest. The next step does not start once a cancel was requested.
        if k < steps.len() {
            steps[k].attempts = steps[k].attempts.saturating_add(1);
            steps[k].status = StepStatus::Running;
            steps.truncate(k + 1);
            self.checkpoint(&steps).await?;
        } else if k > 0 && cancelled {
            return self.unwind(steps, Unwind::Cancel).await;
        } else if k == 0 {
            let mut first = self.started(0, self.order.attempts_since_retry().max(1));
            // The order's start is the first step's until the step stores its outcome; a
            // retried order's start was its first run's.
            if let Some(started) = self.order.processing_start_time
                && self.order.failures.is_empty()
            {
                first.started_at = started;
            }
            steps.push(first);
        } else {
            steps.push(self.started(k, 1));
            steps = self.advance(steps).await?;
        }
        loop {
            let step = &self.pipeline.steps[k];
            let policy = self.policy(step);
            let attempt = steps[k].attempts;
            if attempt > policy.max_attempts {
                let error = format!("gave up after {} attempts", policy.max_attempts);
                let last = steps[k].error.clone().unwrap_or(error);
                return self.fail_step(steps, k, last).await;
            }
            let cx = self.context(step, &steps[k], &steps[..k]);
            let began = tokio::time::Instant::now();
            let result = run_step(step, cx).await;
            observe_step(step.name(), began.elapsed());
            match result {
                Ok(output) => {
                    let record = &mut steps[k];
                    record.status = StepStatus::Succeeded;
                    record.output = Some(output);
                    record.ended_at = Some(now());
                    info!(step = step.name(), attempt, "step succeeded");
                    if k + 1 == total {
                        return self.complete(steps).await;
                    }
                    k += 1;
                    steps.push(self.started(k, 1));
                    steps = self.advance(steps).await?;
                }
                Err(err) => {
                    count_step(telemetry::STEP_FAILURES, step.name());
                    let error = bounded(&err.message);
                    if err.permanent || attempt >= policy.max_attempts {
                        warn!(step = step.name(), attempt, error = %error, permanent = err.permanent, "step failed");
                        return self.fail_step(steps, k, error).await;
                    }
                    let delay = policy.backoff(attempt);
                    info!(step = step.name(), attempt, error = %error, retry_in_ms = delay.as_millis(), "step failed; retrying");
                    steps[k].status = StepStatus::Retrying;
                    steps[k].error = Some(error);
                    steps = self.advance(steps).await?;
                    count(telemetry::RETRIES);
                    tokio::time::sleep(delay).await;
                    steps[k].attempts = steps[k].attempts.saturating_add(1);
                    steps[k].status = StepStatus::Running;
                }
            }
        }
    }

    /// The step's own retry policy, or the processor's.
    fn policy(&self, step: &Step) -> RetryPolicy {
        step.retry.unwrap_or(self.engine.settings.retry)
    }

    /// The record of step `k` started now, its `attempts`-th run, in the order's current run.
    fn started(&self, k: usize, attempts: u32) -> StepRecord {
        StepRecord::started(self.pipeline.steps[k].name(), attempts).in_retry(self.order.retries())
    }

    /// The context of `step`, whose record is `record`, after the steps `before` it: its
    /// attempt and the run of the order its work belongs to are the record's.
    fn context(&self, step: &Step, record: &StepRecord, before: &[StepRecord]) -> StepContext {
        let outputs = before
            .iter()
            .filter_map(|done| Some((done.name.clone(), done.output.clone()?)))
            .collect();
        StepContext::new(self.order.clone(), step.name(), record.attempts, outputs)
            .in_retry(record.retry)
    }

    /// Writes `steps` under the claim, `advancing` as [`Transition::Checkpoint`] says.
    async fn store(
        &self,
        steps: Vec<StepRecord>,
        advancing: bool,
    ) -> Result<Order, TransitionError> {
        let claim = self.claim.token;
        let checkpoint = Transition::Checkpoint {
            claim,
            steps,
            advancing,
        };
        self.engine.record(self.order.id, checkpoint).await
    }

    /// Stores `steps`, which start or retry a step: refused once a cancel was requested, and
    /// then the run unwinds instead (the steps come back without the one not yet started).
    async fn advance(&self, mut steps: Vec<StepRecord>) -> Result<Vec<StepRecord>, Stopped> {
        let written = self.store(steps.clone(), true).await;
        match written {
            Ok(_) => Ok(steps),
            Err(TransitionError::CancelRequested(_)) => {
                // The step last pushed or retried has not run since the cancel: the steps
                // before it are what there is to undo. A step that was retrying stops. The
                // outcome that came with the refused write is stored on its own.
                if let Some(last) = steps.last_mut() {
                    if last.status == StepStatus::Running && last.attempts == 1 {
                        steps.pop();
                    } else {
                        last.status = StepStatus::Failed;
                        last.error = Some("cancelled before it succeeded".to_owned());
                        last.ended_at = Some(now());
                    }
                }
                self.checkpoint(&steps).await?;
                self.unwind(steps, Unwind::Cancel).await?;
                Err(Stopped)
            }
            Err(err) => {
                warn!(error = %err, "could not record the step; the lease will bring the order back");
                Err(Stopped)
            }
        }
    }

    /// Stores `steps` whatever a cancel says (an outcome, a compensation's progress); returns
    /// whether a cancel was requested.
    async fn checkpoint(&self, steps: &[StepRecord]) -> Result<bool, Stopped> {
        let written = self.store(steps.to_vec(), false).await;
        match written {
            Ok(order) => Ok(order.cancel_requested_at.is_some()),
            Err(err) => {
                warn!(error = %err, "could not record the step; the lease will bring the order back");
                Err(Stopped)
            }
        }
    }

    /// Every step succeeded: COMPLETED, with the last step's outcome in the same write, unless
    /// a cancel was requested meanwhile. The one step of a one-step pipeline that returned no
    /// output and ran once per attempt of the order stores nothing: the order's row says it
    /// all (the engine shows it from there), as for a plain handler.
    async fn complete(&self, steps: Vec<StepRecord>) -> Result<(), Stopped> {
        let said_by_the_row = match steps.as_slice() {
            [only] => {
                self.pipeline.steps.len() == 1
                    && only.attempts == self.order.attempts_since_retry().max(1)
                    && only.retry == 0
                    && only.error.is_none()
                    && only
                        .output
                        .as_ref()
                        .is_none_or(|out| out.as_json() == "null")
            }
            _ => false,
        };
        let stored = (!said_by_the_row).then(|| steps.clone());
        let written = self
            .engine
            .record(
                self.order.id,
                Transition::Complete {
                    claim: self.claim.token,
                    steps: stored,
                },
            )
            .await;
        match written {
            Ok(_) => {
                count(telemetry::ORDERS_COMPLETED);
                info!(attempt = self.order.attempts, "order completed");
                self.engine.dequeue_finished(self.claim).await;
                Ok(())
            }
            Err(TransitionError::CancelRequested(_)) => {
                self.checkpoint(&steps).await?;
                self.unwind(steps, Unwind::Cancel).await
            }
            Err(err) => {
                warn!(error = %err, "could not record completion");
                Err(Stopped)
            }
        }
    }

    /// Step `k` failed for good with `error`: recorded, then the steps before it compensated.
    async fn fail_step(
        &self,
        mut steps: Vec<StepRecord>,
        k: usize,
        error: String,
    ) -> Result<(), Stopped> {
        let record = &mut steps[k];
        record.status = StepStatus::Failed;
        record.error = Some(error.clone());
        record.ended_at = Some(now());
        let error = failure(&record.name, &error);
        self.unwind(steps, Unwind::Failure(error)).await
    }

    /// Compensates every finished step that has a compensation, in reverse order, each until
    /// it succeeds, then ends the order CANCELLED (a cancel was requested, or is found
    /// requested on the way) or FAILED.
    async fn unwind(&self, mut steps: Vec<StepRecord>, mut reason: Unwind) -> Result<(), Stopped> {
        for j in (0..steps.len()).rev() {
            // Found by name: a step the pipeline no longer has cannot be compensated.
            let Some(step) = self
                .pipeline
                .steps
                .iter()
                .find(|step| step.name() == steps[j].name)
            else {
                continue;
            };
            if !steps[j].status.needs_undo() || !step.is_compensable() {
                continue;
            }
            steps[j].status = StepStatus::Compensating;
            steps[j].compensation_attempts = steps[j].compensation_attempts.saturating_add(1);
            if self.checkpoint(&steps).await? {
                reason = Unwind::Cancel;
            }
            let output = steps[j].output.clone().unwrap_or_else(StepOutput::none);
            loop {
                let cx = self.context(step, &steps[j], &steps[..j]);
                match compensate(step, cx, output.clone()).await {
                    Ok(()) => {
                        count_step(telemetry::STEP_COMPENSATIONS, step.name());
                        info!(step = step.name(), "step compensated");
                        steps[j].status = StepStatus::Compensated;
                        steps[j].compensated_at = Some(now());
                        break;
                    }
                    Err(err) => {
                        count_step(telemetry::STEP_COMPENSATION_FAILURES, step.name());
                        let attempt = steps[j].compensation_attempts;
                        // Never given up: backed off as the step's retries are, without a cap.
                        let delay = self.policy(step).backoff(attempt);
                        warn!(step = step.name(), attempt, error = %err.message, retry_in_ms = delay.as_millis(), "compensation failed; retrying");
                        steps[j].error = Some(bounded(&format!("compensation: {}", err.message)));
                        if self.checkpoint(&steps).await? {
                            reason = Unwind::Cancel;
                        }
                        tokio::time::sleep(delay).await;
                        steps[j].compensation_attempts =
                            steps[j].compensation_attempts.saturating_add(1);
                    }
                }
            }
        }
        let claim = self.claim.token;
        let ended = steps.clone();
        let (transition, mut counter) = match reason {
            Unwind::Cancel => (
                Transition::FinishCancel { claim, steps },
                telemetry::ORDERS_CANCELLED,
            ),
            Unwind::Failure(error) => (
                Transition::Fail {
                    claim,
                    error,
                    steps: Some(steps),
                },
                telemetry::ORDERS_FAILED,
            ),
        };
        let failing = matches!(transition, Transition::Fail { .. });
        let mut written = self.engine.record(self.order.id, transition).await;
        if failing && matches!(written, Err(TransitionError::CancelRequested(_))) {
            // A cancel was accepted while the step failed: the order ends as its client was
            // told, with the same steps.
            let cancel = Transition::FinishCancel {
                claim,
                steps: ended,
            };
            counter = telemetry::ORDERS_CANCELLED;
            written = self.engine.record(self.order.id, cancel).await;
        }
        match written {
            Ok(order) => {
                count(counter);
                info!(status = %order.status, "order unwound");
                self.engine.dequeue_finished(self.claim).await;
                Ok(())
            }
            Err(err) => {
                warn!(error = %err, "could not record the order's end");
                Err(Stopped)
            }
        }
    }
}

/// `last_error` of an order whose step `name` failed with `error`.
fn failure(name: &str, error: &str) -> String {
    bounded(&format!("{name}: {error}"))
}

/// One run of `step`: its timeout, and a panic caught as a transient error.
async fn run_step(step: &Step, cx: StepContext) -> Result<StepOutput, HandlerError> {
    guarded(step.timeout, "step", step.action.run(cx)).await
}

/// One try of `step`'s compensation, bounded by the step's timeout.
async fn compensate(step: &Step, cx: StepContext, output: StepOutput) -> Result<(), HandlerError> {
    match &step.compensation {
        Some(compensation) => {
            let undo = compensation.compensate(cx, output);
            guarded(step.timeout, "compensation", undo).await
        }
        None => Ok(()),
    }
}

/// `work` (what a step supplied, named `what`) stopped after `limit` if there is one, with a
/// timeout or a panic as a transient error.
async fn guarded<T>(
    limit: Option<Duration>,
    what: &str,
    work: impl Future<Output = Result<T, HandlerError>>,
) -> Result<T, HandlerError> {
    let work = AssertUnwindSafe(work).catch_unwind();
    let outcome = match limit {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(HandlerError::transient(format!(
                    "timed out after {limit:?}"
                )));
            }
        },
        None => work.await,
    };
    outcome.unwrap_or_else(|panic| Err(panicked(what, &*panic)))
}
