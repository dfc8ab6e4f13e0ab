//! Starting and stopping the workers: [`OrderProcessor::start`] and its [`ProcessorHandle`].

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::OrderProcessor;
use super::bulk::bulk_loop;
use super::sweep::sweep_loop;
use super::worker::claim_loop;

/// After the drain timeout, how long unfinished orders get to be handed back before shutdown
/// returns regardless (a hung backend must not hang shutdown).
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);

impl OrderProcessor {
    /// Starts working orders off the queue: a claim loop that keeps up to `concurrency`
    /// orders in the handler, and a recovery sweep (now, then every `sweep_interval`).
    ///
    /// Must be called within a tokio runtime. Keep the returned handle: dropping it stops the
    /// work abruptly, as [`ProcessorHandle::shutdown`] with a zero timeout would. Each call
    /// starts another set of workers, as another process sharing the same backends would.
    #[must_use = "dropping the handle stops the workers at once"]
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
        // Tracked with the orders in progress: shutdown lets the page in hand finish.
        tracker.spawn(bulk_loop(self.engine.clone(), stop.clone()));
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
///
/// Dropping it stops the workers at once, as a [`shutdown`](Self::shutdown) with a zero
/// timeout would: keep it for as long as orders should be processed.
#[derive(Debug)]
#[must_use = "dropping the handle stops the workers at once; keep it, and call .shutdown() to stop"]
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
#[non_exhaustive]
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
