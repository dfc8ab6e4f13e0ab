//! Orders processed in steps: a [`Pipeline`] of named [`Step`]s, each checkpointed under the
//! worker's claim, with compensation when a later step fails or the order is cancelled.
//!
//! A checkout reserves stock, charges a card, then ships. Run as one
//! [`OrderHandler`](crate::OrderHandler), a crash after the charge runs the whole handler
//! again, and a permanent failure after it leaves the reservation and the charge in place. Run as a
//! pipeline:
//!
//! - each step's outcome is stored with the order ([`StepRecord`]: status, attempts, output,
//!   error, times), fenced by the worker's claim like every transition, so a worker that lost
//!   its lease never records a step;
//! - after a crash, the order resumes at the first step without a recorded success, with the
//!   outputs of the steps before it;
//! - a transient error retries that step alone, with its own [`RetryPolicy`] and attempts;
//! - a permanent error, or a step's attempts used up, compensates the finished steps in
//!   reverse order (each compensation retried until it succeeds), and the order ends FAILED
//!   with `last_error` naming the step;
//! - a cancel of a PROCESSING order whose finished and running steps can all be compensated
//!   is recorded; the running step finishes, the finished steps are compensated in reverse,
//!   and the order ends CANCELLED.
//!
//! # Exactly once, or at least once
//!
//! A step runs at least once: a worker that dies after a step's work is done but before its
//! checkpoint is stored leaves no trace of the success, and the next worker runs the step
//! again. Each run of a step gets the same [`StepContext::idempotency_key`] for that order and
//! step; a step that passes it to the service it calls (a payment provider's idempotency key,
//! an inventory reservation id) is done effectively once. Compensations likewise.
//!
//! # Cost
//!
//! A step boundary is one write to the order's row (the finished step's outcome and the next
//! step's start), group-committed with other workers' writes on PostgreSQL; the last step's
//! outcome rides the order's completion. A plain [`OrderHandler`](crate::OrderHandler) records
//! no steps at all: its one step is the order itself.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use order_core::step::{Pipeline, Step, StepContext, StepOutput};
//! use order_core::{HandlerError, NewOrder, OrderProcessor, OrderStatus};
//! use rust_decimal::Decimal;
//!
//! let pipeline = Pipeline::new()
//!     .then(
//!         Step::new("reserve", |cx: StepContext| async move {
//!             Ok(StepOutput::json(&format!("reservation-{}", cx.order().id))?)
//!         })
//!         .compensate(|_cx: StepContext, _output: StepOutput| async { Ok(()) }),
//!     )
//!     .then(Step::new("charge", |cx: StepContext| async move {
//!         let reservation: String = cx.output("reserve").expect("reserve ran first").parse()?;
//!         Ok(StepOutput::json(&format!("charged for {reservation}"))?)
//!     }));
//! let processor = OrderProcessor::pipeline_builder(pipeline).in_memory().build()?;
//! let running = processor.start();
//! let order = processor.submit(NewOrder::new("ann", ["book"], Decimal::TEN)).await?;
//! let done = processor.wait_until_done(order.id).await?.expect("the order exists");
//! assert_eq!(done.status, OrderStatus::Completed);
//! assert_eq!(done.steps.len(), 2);
//! assert_eq!(done.steps[1].output.as_ref().unwrap().as_json(), r#""charged for reservation-1""#);
//! running.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::handler::{HandlerError, SimulatedStep};
use crate::order::Order;
pub(crate) use crate::order::steps::now;
pub use crate::order::steps::{StepOutput, StepRecord, StepStatus};
#[cfg(feature = "postgres")]
pub(crate) use crate::order::steps::{decode_steps, encode_steps};
use crate::retry::RetryPolicy;

/// What a step sees: the order, the outputs of the steps before it, its attempt, and a key
/// that is the same on every run of this step for this order. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StepContext {
    order: Arc<Order>,
    step: Arc<str>,
    attempt: u32,
    retry: u32,
    outputs: Arc<Vec<(String, StepOutput)>>,
}

impl StepContext {
    /// A context for `step` of `order` on `attempt`, after steps that returned `outputs`:
    /// what the engine builds, and what a test of a step builds to call it.
    pub fn new(
        order: Arc<Order>,
        step: &str,
        attempt: u32,
        outputs: Vec<(String, StepOutput)>,
    ) -> Self {
        Self {
            retry: order.retries(),
            order,
            step: Arc::from(step),
            attempt,
            outputs: Arc::new(outputs),
        }
    }

    /// The same context for the step's work in the order's `retry`-th run (by default, the
    /// order's current one): to compensate a step that ran before the order was retried,
    /// with the key it ran with.
    #[must_use]
    pub fn in_retry(mut self, retry: u32) -> Self {
        self.retry = retry;
        self
    }

    /// The order, as it was when this worker started it.
    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// Which run of this step this is (1 for the first), crashes and retries included.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The output of the earlier step named `step`, if it succeeded.
    pub fn output(&self, step: &str) -> Option<&StepOutput> {
        self.outputs
            .iter()
            .find(|(name, _)| name == step)
            .map(|(_, output)| output)
    }

    /// `order-<id>/<step>`: the same on every run of this step for this order, different for
    /// every other order and step. Pass it to the service the step calls (a payment
    /// provider's idempotency key) so that a run repeated after a lost checkpoint does its
    /// work once.
    ///
    /// Once an operator has retried the order after it FAILED, a step that runs again does
    /// new work (its earlier work was compensated, or failed): its key is
    /// `order-<id>/<step>/retry-<n>` in the `n`-th retry, so that a payment provider does not
    /// hand back the charge that was refunded. Its compensation gets the key its work ran with.
    pub fn idempotency_key(&self) -> String {
        match self.retry {
            0 => format!("order-{}/{}", self.order.id, self.step),
            n => format!("order-{}/{}/retry-{n}", self.order.id, self.step),
        }
    }

    /// Which run of the order this step's work belongs to: 0 before any retry, `n` after the
    /// order's `n`-th.
    pub fn retry(&self) -> u32 {
        self.retry
    }
}

/// A step's work. Implemented for closures `Fn(StepContext) -> impl Future<Output =
/// Result<StepOutput, HandlerError>>`.
///
/// # Contract
///
/// - At least once: the step may run again after a crash or a lost checkpoint, with the same
///   [`StepContext::idempotency_key`].
/// - `Ok(output)` records the step SUCCEEDED with `output`; a transient error retries this
///   step alone; a permanent one, or the step's last attempt's, fails the order after
///   compensating the steps before it.
/// - A panic is a transient error; the future may be dropped (shutdown, a lost lease, a
///   timeout).
#[async_trait]
pub trait StepAction: Send + Sync {
    /// Runs the step.
    async fn run(&self, cx: StepContext) -> Result<StepOutput, HandlerError>;
}

#[async_trait]
impl<F, Fut> StepAction for F
where
    F: Fn(StepContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<StepOutput, HandlerError>> + Send,
{
    async fn run(&self, cx: StepContext) -> Result<StepOutput, HandlerError> {
        self(cx).await
    }
}

/// Undoes a step that succeeded, given its output: releases a reservation, refunds a charge.
/// Implemented for closures `Fn(StepContext, StepOutput) -> impl Future<Output = Result<(),
/// HandlerError>>`.
///
/// # Contract
///
/// - At least once, with the step's [`StepContext::idempotency_key`].
/// - Any error is retried, with the step's backoff, until it succeeds: a compensation is never
///   given up. Each failure is shown on the step and counted
///   (`order_step_compensation_failures_total`).
#[async_trait]
pub trait StepCompensation: Send + Sync {
    /// Undoes the step whose run returned `output`.
    async fn compensate(&self, cx: StepContext, output: StepOutput) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F, Fut> StepCompensation for F
where
    F: Fn(StepContext, StepOutput) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn compensate(&self, cx: StepContext, output: StepOutput) -> Result<(), HandlerError> {
        self(cx, output).await
    }
}

/// One named step of a [`Pipeline`]: its work, and maybe its compensation, retry policy and
/// timeout.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: Arc<str>,
    pub(crate) action: Arc<dyn StepAction>,
    pub(crate) compensation: Option<Arc<dyn StepCompensation>>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensable", &self.compensation.is_some())
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step named `name` (unique in its pipeline) that runs `action`; no compensation, the
    /// processor's retry policy, no timeout.
    pub fn new(name: impl Into<String>, action: impl StepAction + 'static) -> Self {
        Self {
            name: Arc::from(name.into()),
            action: Arc::new(action),
            compensation: None,
            retry: None,
            timeout: None,
        }
    }

    /// The same step, undone by `compensation` when a later step fails or the order is
    /// cancelled.
    #[must_use]
    pub fn compensate(mut self, compensation: impl StepCompensation + 'static) -> Self {
        self.compensation = Some(Arc::new(compensation));
        self
    }

    /// The same step with its own retry policy: its attempts are counted and capped apart
    /// from the other steps'.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The same step, each attempt stopped after `timeout` (a transient error).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it has a compensation.
    pub fn is_compensable(&self) -> bool {
        self.compensation.is_some()
    }
}

/// Steps run in order for every order; see [the module](self).
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    pub(crate) steps: Vec<Step>,
}

/// Why a [`Pipeline`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A pipeline needs at least one step.
    #[error("a pipeline needs at least one step")]
    Empty,
    /// Two steps share a name: checkpoints are found by name.
    #[error("two steps are named {0:?}")]
    DuplicateName(String),
    /// A step's name is empty, or longer than 64 characters.
    #[error("step name {0:?} must be 1 to 64 characters")]
    InvalidName(String),
}

impl Pipeline {
    /// No steps yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same pipeline with `step` after the others.
    #[must_use]
    pub fn then(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Checks the names: at least one step, each named once, 1 to 64 characters.
    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.steps.is_empty() {
            return Err(PipelineError::Empty);
        }
        for (i, step) in self.steps.iter().enumerate() {
            let chars = step.name.chars().count();
            if chars == 0 || chars > 64 {
                return Err(PipelineError::InvalidName(step.name.to_string()));
            }
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(PipelineError::DuplicateName(step.name.to_string()));
            }
        }
        Ok(())
    }

    /// Whether a cancel may be accepted for an order whose steps are `recorded`: none has
    /// failed (the order is being unwound already), and every step that has finished or may
    /// still finish can be compensated. Those are the recorded ones, or the first step while
    /// none is: once a cancel is recorded no further step starts.
    pub fn can_undo(&self, recorded: &[StepRecord]) -> bool {
        let failing = recorded.iter().any(|step| {
            matches!(
                step.status,
                StepStatus::Failed | StepStatus::Compensating | StepStatus::Compensated
            )
        });
        let reach = recorded.len().max(1).min(self.steps.len());
        !failing && self.steps[..reach].iter().all(Step::is_compensable)
    }
}

/// The stand-in step as a pipeline's step: takes its delay and succeeds with no output, or
/// fails as [`SimulatedStep::failing`] says.
#[async_trait]
impl StepAction for SimulatedStep {
    async fn run(&self, cx: StepContext) -> Result<StepOutput, HandlerError> {
        self.perform(cx.step()).await.map(|()| StepOutput::none())
    }
}

/// The stand-in step's compensation: takes its delay and succeeds.
#[async_trait]
impl StepCompensation for SimulatedStep {
    async fn compensate(&self, _cx: StepContext, _output: StepOutput) -> Result<(), HandlerError> {
        if !self.delay().is_zero() {
            tokio::time::sleep(self.delay()).await;
        }
        Ok(())
    }
}

impl Pipeline {
    /// A pipeline of [`SimulatedStep`]s named `names`, each taking `delay` to run and as long
    /// to compensate: for demos, benchmarks and watching a multi-step order.
    ///
    /// ```
    /// use std::time::Duration;
    /// use order_core::Pipeline;
    ///
    /// let pipeline = Pipeline::simulated(["reserve", "charge", "ship"], Duration::ZERO);
    /// assert_eq!(pipeline.steps().len(), 3);
    /// assert!(pipeline.steps().iter().all(|step| step.is_compensable()));
    /// ```
    pub fn simulated(names: impl IntoIterator<Item = impl Into<String>>, delay: Duration) -> Self {
        Self::simulated_from(names, SimulatedStep::new(delay))
    }

    /// A pipeline of copies of `step` named `names`, among which `step`'s failure share is
    /// spread: a run of the whole pipeline fails with that share, at a step drawn at random.
    ///
    /// ```
    /// use std::time::Duration;
    /// use order_core::Pipeline;
    /// use order_core::handler::SimulatedStep;
    ///
    /// let failing = SimulatedStep::new(Duration::ZERO).failing(0.1, false);
    /// let pipeline = Pipeline::simulated_from(["reserve", "charge", "ship"], failing);
    /// assert_eq!(pipeline.steps().len(), 3);
    /// ```
    pub fn simulated_from(
        names: impl IntoIterator<Item = impl Into<String>>,
        step: SimulatedStep,
    ) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        // Each of n steps fails with p, so that all succeed with (1 - p)^n = 1 - share.
        let steps = i32::try_from(names.len().max(1)).unwrap_or(i32::MAX);
        let share = 1.0 - (1.0 - step.failure_share()).powf(1.0 / f64::from(steps));
        let each = step.failing(share, step.fails_transiently());
        names.into_iter().fold(Pipeline::new(), |pipeline, name| {
            pipeline.then(Step::new(name, each).compensate(each))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_needs_every_step_that_may_have_finished_to_be_undoable() {
        let undoable = |name: &str| {
            Step::new(name, |_cx: StepContext| async { Ok(StepOutput::none()) })
                .compensate(|_cx: StepContext, _o: StepOutput| async { Ok(()) })
        };
        let plain =
            |name: &str| Step::new(name, |_cx: StepContext| async { Ok(StepOutput::none()) });
        let pipeline = Pipeline::new()
            .then(undoable("reserve"))
            .then(undoable("charge"))
            .then(plain("ship"));
        let mut reserved = StepRecord::started("reserve", 1);
        assert!(pipeline.can_undo(&[]), "reserve is running");
        assert!(pipeline.can_undo(std::slice::from_ref(&reserved)));
        reserved.status = StepStatus::Succeeded;
        let charging = vec![reserved.clone(), StepRecord::started("charge", 1)];
        assert!(
            pipeline.can_undo(&charging),
            "charge is running; it can be undone"
        );
        let mut shipping = charging.clone();
        shipping.push(StepRecord::started("ship", 1));
        assert!(!pipeline.can_undo(&shipping), "ship cannot be undone");
        let mut failed = charging;
        failed[1].status = StepStatus::Failed;
        assert!(!pipeline.can_undo(&failed), "already being unwound");
        assert_eq!(pipeline.validate(), Ok(()));
        assert_eq!(
            Pipeline::new().then(plain("a")).then(plain("a")).validate(),
            Err(PipelineError::DuplicateName("a".to_owned()))
        );
        assert_eq!(Pipeline::new().validate(), Err(PipelineError::Empty));
    }
}
