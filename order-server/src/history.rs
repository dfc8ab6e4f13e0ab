//! The last minutes of the system's counts, one sample a second, and `GET /metrics/stream`,
//! which streams them: what the dashboard draws its charts and counts from.
//!
//! One task per router reads the counts once a second, however many clients watch, and each
//! stream is woken only when a new sample lands. Every read is an aggregate that costs the same
//! with ten orders or ten million ([`OrderProcessor::metrics`], [`OrderProcessor::queue_depth`],
//! [`OrderProcessor::oldest_pending_age`]). The counts are the storage's, so several servers
//! sharing one PostgreSQL each show the throughput of all of them.

use crate::closing::Closing;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use order_core::{OrderMetrics, OrderProcessor, QueueDepth, StatusCounts};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::error::{ErrorBody, InternalError};
use crate::tags::MONITORING;

/// How often the counts are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: five minutes' worth.
pub const SAMPLES_KEPT: usize = 300;

/// The counts at one moment, and the rates since the moment before.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sample {
    /// When the counts were read.
    at: DateTime<Utc>,
    /// Orders ever accepted.
    total_orders: u64,
    /// Orders in each status.
    statuses: StatusCounts,
    /// What the queue holds.
    queue: QueueDepth,
    /// How long the oldest PENDING order has waited, in seconds; `null` when none is PENDING.
    oldest_pending_age_seconds: Option<f64>,
    /// Orders that reached COMPLETED per second since the previous sample.
    completed_per_second: f64,
    /// Orders that reached FAILED per second since the previous sample.
    failed_per_second: f64,
    /// The mean processing time, in seconds, of the orders that completed since the previous
    /// sample; `null` when none did.
    avg_processing_seconds: Option<f64>,
}

/// One read of the counts.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: DateTime<Utc>,
    /// When it was taken, by a clock that never steps: rates are measured with it.
    taken: Instant,
    metrics: OrderMetrics,
    queue: QueueDepth,
    oldest_pending: Option<Duration>,
}

impl Sample {
    /// The sample of `now`, with its rates measured from `before`. Counts that went down (the
    /// storage was emptied) give rates of 0, not negative ones.
    fn between(before: &Reading, now: &Reading) -> Self {
        // Never less than a millisecond: readings are a second apart, and a rate over a
        // vanishing interval would swamp the charts.
        let seconds = now
            .taken
            .saturating_duration_since(before.taken)
            .as_secs_f64()
            .max(0.001);
        let completed = now
            .metrics
            .statuses
            .completed
            .saturating_sub(before.metrics.statuses.completed);
        let failed = now
            .metrics
            .statuses
            .failed
            .saturating_sub(before.metrics.statuses.failed);
        let processing_micros = now
            .metrics
            .completed_processing_micros
            .saturating_sub(before.metrics.completed_processing_micros);
        // Counts and microseconds stay far below 2^53, where u64 -> f64 would round.
        #[allow(clippy::cast_precision_loss)]
        let (completed, failed, processing_micros) =
            (completed as f64, failed as f64, processing_micros as f64);
        Self {
            at: now.at,
            total_orders: now.metrics.total_orders,
            statuses: now.metrics.statuses,
            queue: now.queue,
            oldest_pending_age_seconds: now.oldest_pending.map(|age| age.as_secs_f64()),
            completed_per_second: completed / seconds,
            failed_per_second: failed / seconds,
            avg_processing_seconds: (completed > 0.0)
                .then(|| processing_micros / completed / 1_000_000.0),
        }
    }
}

/// The samples of the last [`SAMPLES_KEPT`] seconds, and the task that takes them.
#[derive(Debug)]
pub(crate) struct History {
    // A std mutex: held to copy or push a few samples, never across an await.
    samples: Mutex<Samples>,
    /// What the last read brought: streams wait on it.
    newest: watch::Sender<Tick>,
    /// Whether the sampling task has been started.
    sampling: AtomicBool,
}

/// What the last read of the counts brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tick {
    /// The sequence number of the newest sample.
    seq: u64,
    /// The last read failed: the storage did not answer.
    unavailable: bool,
}

#[derive(Debug, Default)]
struct Samples {
    /// Oldest first, each with its sequence number.
    kept: VecDeque<(u64, Arc<Sample>)>,
    /// The last reading, which the next sample's rates are measured from.
    last: Option<Reading>,
    /// The sequence number of the next sample.
    next: u64,
}

impl History {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            samples: Mutex::new(Samples {
                next: 1,
                ..Samples::default()
            }),
            newest: watch::Sender::new(Tick::default()),
            sampling: AtomicBool::new(false),
        })
    }

    fn samples(&self) -> MutexGuard<'_, Samples> {
        // A panic while the lock was held cannot leave the ring half-written (a push and a
        // pop are each one step), so a poisoned lock is taken over.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the task that reads `processor`'s counts every [`SAMPLE_INTERVAL`], unless it
    /// runs already. It must be called within a Tokio runtime; the task ends when the last
    /// reference to this history is dropped.
    pub(crate) fn start_sampling(self: &Arc<Self>, processor: &OrderProcessor) {
        if self.sampling.swap(true, Ordering::AcqRel) {
            return;
        }
        let history = Arc::downgrade(self);
        tokio::spawn(sample(history, processor.clone()));
    }
}

/// Marks the sampling stopped when its task ends, however it ends (a panic in a storage
/// adapter included), so that the next look starts it again.
struct SamplingStopped(Weak<History>);

impl Drop for SamplingStopped {
    fn drop(&mut self) {
        if let Some(history) = self.0.upgrade() {
            history.sampling.store(false, Ordering::Release);
        }
    }
}

impl History {
    /// Adds a reading: a sample once there is a reading before it.
    fn record(&self, reading: Reading) {
        let mut samples = self.samples();
        let Some(before) = samples.last.replace(reading) else {
            return;
        };
        let seq = samples.next;
        samples.next += 1;
        samples
            .kept
            .push_back((seq, Arc::new(Sample::between(&before, &reading))));
        while samples.kept.len() > SAMPLES_KEPT {
            samples.kept.pop_front();
        }
        drop(samples);
        self.newest.send_replace(Tick {
            seq,
            unavailable: false,
        });
    }

    /// A read that failed: every stream is told, once a second while it lasts.
    fn record_failure(&self) {
        self.newest.send_modify(|tick| tick.unavailable = true);
    }

    /// The samples after sequence number `seen`, oldest first, and the newest one's number.
    fn after(&self, seen: u64) -> (Vec<Arc<Sample>>, u64) {
        let samples = self.samples();
        let newer: Vec<_> = samples
            .kept
            .iter()
            .filter(|(seq, _)| *seq > seen)
            .map(|(_, sample)| sample.clone())
            .collect();
        let newest = samples.kept.back().map_or(seen, |(seq, _)| *seq);
        (newer, newest)
    }
}

/// The sampling task: reads the counts every [`SAMPLE_INTERVAL`] until the history is dropped.
async fn sample(history: Weak<History>, processor: OrderProcessor) {
    let _stopped = SamplingStopped(history.clone());
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    // A slow read delays the next one rather than causing a burst of catch-up reads.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        if history.strong_count() == 0 {
            return;
        }
        match read(&processor).await {
            Ok(reading) => {
                if failing {
                    tracing::info!("metrics sampling recovered");
                    failing = false;
                }
                let Some(history) = history.upgrade() else {
                    return;
                };
                history.record(reading);
            }
            Err(err) => {
                // Logged once per outage, not once a second; the gap shows on the charts.
                if !failing {
                    tracing::warn!(error = %err, "metrics sampling failed; retrying every second");
                    failing = true;
                }
                let Some(history) = history.upgrade() else {
                    return;
                };
                history.record_failure();
            }
        }
    }
}

async fn read(processor: &OrderProcessor) -> Result<Reading, String> {
    let metrics = processor.metrics().await.map_err(|err| err.to_string())?;
    let queue = processor
        .queue_depth()
        .await
        .map_err(|err| err.to_string())?;
    let oldest_pending = processor
        .oldest_pending_age()
        .await
        .map_err(|err| err.to_string())?;
    Ok(Reading {
        at: Utc::now(),
        taken: Instant::now(),
        metrics,
        queue,
        oldest_pending,
    })
}

/// The first event of `GET /metrics/stream`: the samples kept so far.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryBody {
    /// Seconds between two samples.
    interval_seconds: u64,
    /// The samples of the last five minutes at most, oldest first.
    #[schema(value_type = Vec<Sample>)]
    samples: Vec<Arc<Sample>>,
}

/// Stream the system's counts.
///
/// Server-Sent Events: a `history` event with the samples of the last five minutes, then a
/// `sample` event each second, or an `unavailable` event (`{"error": ...}`) each second that
/// the storage does not answer. Each sample holds the counts by status, the queue depth, the
/// oldest PENDING order's age, and the completed and failed orders per second and mean
/// processing time since the sample before. The counts are read once a second whatever the
/// number of clients.
#[utoipa::path(
    get,
    path = "/metrics/stream",
    operation_id = "streamMetrics",
    tag = MONITORING,
    responses(
        (status = 200, description = "A `history` event whose `data` is a `HistoryBody`, then \
            a `sample` event whose `data` is a `Sample` every second, or an `unavailable` event \
            whose `data` is an `ErrorBody` every second that the storage does not answer; it \
            ends when the server shuts down.", content_type = "text/event-stream", body = String),
        (status = 500, response = InternalError),
    ),
)]
pub(crate) async fn metrics_stream(
    State(processor): State<OrderProcessor>,
    Extension(history): Extension<Arc<History>>,
    Extension(closing): Extension<Closing>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    history.start_sampling(&processor);
    let newest = history.newest.subscribe();
    let (backlog, seen) = history.after(0);
    let first = event(
        "history",
        &HistoryBody {
            interval_seconds: SAMPLE_INTERVAL.as_secs(),
            samples: backlog,
        },
    );
    let rest = futures::stream::unfold(
        (history, newest, seen, closing),
        |(history, mut newest, seen, closing)| async move {
            tokio::select! {
                // Shutting down: end the stream so that the connection can drain.
                () = closing.closed() => None,
                changed = newest.changed() => {
                    // The history is gone only with the router that serves this stream.
                    changed.ok()?;
                    let unavailable = newest.borrow_and_update().unavailable;
                    let (samples, seen) = history.after(seen);
                    let mut events: Vec<_> = samples
                        .iter()
                        .map(|sample| Ok(event("sample", sample.as_ref())))
                        .collect();
                    if unavailable {
                        let body = ErrorBody {
                            error: UNAVAILABLE.to_owned(),
                            field: None,
                        };
                        events.push(Ok(event("unavailable", &body)));
                    }
                    Some((
                        futures::stream::iter(events),
                        (history, newest, seen, closing),
                    ))
                }
            }
        },
    );
    let events = futures::stream::once(async move { Ok(first) }).chain(rest.flatten());
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// What an `unavailable` event says; the cause is in the server's log.
const UNAVAILABLE: &str = "the counts cannot be read: storage unavailable";

fn event(name: &str, data: &impl Serialize) -> Event {
    // Samples are numbers, timestamps and counts: serialising them cannot fail.
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event("error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

    fn reading(seconds: i64, completed: u64, failed: u64, micros: u64) -> Reading {
        let mut metrics = OrderMetrics::default();
        metrics.statuses.completed = completed;
        metrics.statuses.failed = failed;
        metrics.total_orders = completed + failed;
        metrics.completed_processing_micros = micros;
        Reading {
            at: DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default(),
            taken: *START + Duration::from_secs(seconds.unsigned_abs()),
            metrics,
            queue: QueueDepth::default(),
            oldest_pending: Some(Duration::from_millis(1500)),
        }
    }

    #[test]
    fn rates_are_measured_between_two_readings() {
        let sample = Sample::between(&reading(0, 10, 1, 1_000_000), &reading(2, 30, 5, 5_000_000));
        assert_eq!(sample.completed_per_second, 10.0);
        assert_eq!(sample.failed_per_second, 2.0);
        // 4 s of processing over 20 completions.
        assert_eq!(sample.avg_processing_seconds, Some(0.2));
        assert_eq!(sample.oldest_pending_age_seconds, Some(1.5));
        assert_eq!(sample.total_orders, 35);
    }

    #[test]
    fn no_completion_has_no_processing_time_and_counts_that_fall_give_no_negative_rate() {
        let idle = Sample::between(&reading(0, 10, 0, 100), &reading(1, 10, 0, 100));
        assert_eq!(idle.completed_per_second, 0.0);
        assert_eq!(idle.avg_processing_seconds, None);
        let emptied = Sample::between(&reading(0, 10, 3, 100), &reading(1, 0, 0, 0));
        assert_eq!(emptied.completed_per_second, 0.0);
        assert_eq!(emptied.failed_per_second, 0.0);
    }

    #[test]
    fn the_history_keeps_five_minutes_and_hands_out_only_newer_samples() {
        let history = History::new();
        history.record(reading(0, 0, 0, 0));
        assert_eq!(
            history.after(0).0.len(),
            0,
            "one reading makes no sample yet"
        );
        for second in 1..=(SAMPLES_KEPT as u64 + 10) {
            history.record(reading(i64::try_from(second).unwrap(), second, 0, 0));
        }
        let (all, newest) = history.after(0);
        assert_eq!(all.len(), SAMPLES_KEPT);
        assert_eq!(newest, SAMPLES_KEPT as u64 + 10);
        assert_eq!(history.newest.borrow().seq, newest);
        let (newer, _) = history.after(newest - 2);
        assert_eq!(newer.len(), 2);
        assert_eq!(newer[1].total_orders, SAMPLES_KEPT as u64 + 10);
    }
}
