//! What the engine measures, through the [`metrics`] facade.
//!
//! The engine only emits; the embedding service decides where the numbers go by installing a
//! recorder (an exporter such as `metrics-exporter-prometheus`, or its own). Until one is
//! installed every call is a no-op that costs an atomic load, so a service that does not want
//! metrics pays nothing for them.
//!
//! | metric | type | what it measures |
//! |---|---|---|
//! | `order_created_total` | counter | orders accepted by [`OrderProcessor::submit`] |
//! | `order_completed_total` | counter | orders this process completed |
//! | `order_failed_total` | counter | orders this process failed: a permanent error, or the last attempt's |
//! | `order_cancelled_total` | counter | orders cancelled through [`OrderProcessor::cancel`] |
//! | `order_retries_total` | counter | failed attempts that were given another try |
//! | `order_retried_total` | counter | FAILED orders put back in the queue through [`OrderProcessor::retry`] |
//! | `order_leases_lost_total` | counter | attempts abandoned because their lease was lost, or would have run out before it could be renewed; the worker then tries to end what is left of the lease, so that, when the database answers in time, another takes the order over at once |
//! | `order_sweep_requeued_total` | counter | orders the recovery sweep put back in a queue that did not hold them (a queue lost in a crash, a push that failed at submit or had not happened yet) |
//! | `order_processing_duration_seconds` | histogram | time in the handler, per attempt that reached an outcome (success, error or panic) |
//! | `order_queue_wait_seconds` | histogram | from an order's creation to the start of its first attempt |
//! | `order_bulk_page_duration_seconds` | histogram | one page of a bulk action: one transaction, with the page's orders locked |
//! | `order_step_duration_seconds{step}` | histogram | time in one run of a pipeline's step that reached an outcome |
//! | `order_step_failures_total{step}` | counter | runs of a step that failed (transient or permanent) |
//! | `order_step_compensations_total{step}` | counter | compensations of a step that succeeded |
//! | `order_step_compensation_failures_total{step}` | counter | compensations of a step that failed and will be tried again |
//! | `order_notifications_mode{mode}` | gauge | PostgreSQL backends: 1 on the series of the mode the last `NOTIFY` round trip found (`listening` or `polling`), 0 on the other; absent until the first round trip |
//!
//! Counters count what this process did, so a fleet's total is the sum over its processes.
//! The queue wait covers first attempts only: a retry waits out its backoff on purpose, and
//! the time a retry became claimable is known to the queue, not to the order.
//!
//! An order taken over from a crashed process is not counted as such: a successful
//! [`Transition::Start`](crate::backend::Transition::Start) does not say whether it started a PENDING
//! order or took over one whose lease had run out.
//!
//! [`OrderProcessor::submit`]: crate::OrderProcessor::submit
//! [`OrderProcessor::cancel`]: crate::OrderProcessor::cancel
//! [`OrderProcessor::retry`]: crate::OrderProcessor::retry

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};

/// Orders accepted by `submit`.
pub const ORDERS_CREATED: &str = "order_created_total";
/// Orders completed.
pub const ORDERS_COMPLETED: &str = "order_completed_total";
/// Orders failed.
pub const ORDERS_FAILED: &str = "order_failed_total";
/// Orders cancelled.
pub const ORDERS_CANCELLED: &str = "order_cancelled_total";
/// Failed attempts given another try.
pub const RETRIES: &str = "order_retries_total";
/// FAILED orders put back in the queue by an operator.
pub const ORDERS_RETRIED: &str = "order_retried_total";
/// Attempts abandoned because their lease was lost or about to run out.
pub const LEASES_LOST: &str = "order_leases_lost_total";
/// Orders the recovery sweep re-queued.
pub const SWEEP_REQUEUED: &str = "order_sweep_requeued_total";
/// Handler time per attempt, in seconds.
pub const PROCESSING_DURATION: &str = "order_processing_duration_seconds";
/// From creation to the start of the first attempt, in seconds.
pub const QUEUE_WAIT: &str = "order_queue_wait_seconds";

/// Time of one page of a bulk action (one transaction, its orders locked), in seconds.
pub const BULK_PAGE_DURATION: &str = "order_bulk_page_duration_seconds";

/// Time in one run of a pipeline's step, in seconds, labelled `step`.
pub const STEP_DURATION: &str = "order_step_duration_seconds";
/// Runs of a step that failed, labelled `step`.
pub const STEP_FAILURES: &str = "order_step_failures_total";
/// Compensations that succeeded, labelled `step`.
pub const STEP_COMPENSATIONS: &str = "order_step_compensations_total";
/// Compensations that failed and will be tried again, labelled `step`.
pub const STEP_COMPENSATION_FAILURES: &str = "order_step_compensation_failures_total";

/// Whether other processes' `NOTIFY` reaches this one, labelled `mode` (`listening`,
/// `polling`): 1 on the current mode's series, 0 on the other.
pub const NOTIFICATIONS_MODE: &str = "order_notifications_mode";

/// The per-step series, for [`describe`]: they carry a `step` label, so they appear with the
/// first step that records one.
const STEP_COUNTERS: [(&str, &str); 3] = [
    (STEP_FAILURES, "Runs of a pipeline's step that failed."),
    (
        STEP_COMPENSATIONS,
        "Compensations of a step that succeeded.",
    ),
    (
        STEP_COMPENSATION_FAILURES,
        "Compensations of a step that failed and will be tried again.",
    ),
];

/// Every counter above, for [`describe`].
const COUNTERS: [(&str, &str); 8] = [
    (ORDERS_CREATED, "Orders accepted."),
    (ORDERS_COMPLETED, "Orders completed."),
    (
        ORDERS_FAILED,
        "Orders failed: a permanent error, or attempts ran out.",
    ),
    (ORDERS_CANCELLED, "Orders cancelled before they started."),
    (RETRIES, "Failed attempts given another try."),
    (
        ORDERS_RETRIED,
        "FAILED orders put back in the queue by an operator.",
    ),
    (
        LEASES_LOST,
        "Attempts abandoned because their lease was lost or about to run out.",
    ),
    (
        SWEEP_REQUEUED,
        "Orders the recovery sweep put back in a queue that did not hold them.",
    ),
];

/// Tells the installed recorder what each of the engine's metrics means and registers each at
/// zero, so that a scrape shows every family before the first order arrives. Call it once,
/// after installing the recorder; without one it does nothing.
pub fn describe() {
    for (name, help) in COUNTERS {
        describe_counter!(name, Unit::Count, help);
        counter!(name).increment(0);
    }
    describe_histogram!(
        PROCESSING_DURATION,
        Unit::Seconds,
        "Time in the handler per attempt that reached an outcome."
    );
    describe_histogram!(
        BULK_PAGE_DURATION,
        Unit::Seconds,
        "Time of one page of a bulk action: one transaction, its orders locked."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from an order's creation to the start of its first attempt."
    );
    for (name, help) in STEP_COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Time in one run of a pipeline's step that reached an outcome."
    );
    describe_gauge!(
        NOTIFICATIONS_MODE,
        Unit::Count,
        "1 on the notification mode (listening or polling) the last NOTIFY round trip found."
    );
    // A histogram handle that has recorded nothing still shows up, with empty buckets.
    let _ = histogram!(PROCESSING_DURATION);
    let _ = histogram!(QUEUE_WAIT);
}

/// Counts one event.
pub(crate) fn count(name: &'static str) {
    counter!(name).increment(1);
}

/// Records a duration in seconds.
pub(crate) fn observe(name: &'static str, duration: Duration) {
    histogram!(name).record(duration.as_secs_f64());
}

/// Counts one event of the step named `step`.
pub(crate) fn count_step(name: &'static str, step: &str) {
    counter!(name, "step" => step.to_owned()).increment(1);
}

/// Records the duration of one run of the step named `step`.
pub(crate) fn observe_step(step: &str, duration: Duration) {
    histogram!(STEP_DURATION, "step" => step.to_owned()).record(duration.as_secs_f64());
}
