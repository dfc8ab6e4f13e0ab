//! The recovery sweep: the repository is the truth, and what a queue lost is queued again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Engine;
use crate::error::StorageError;
use crate::queue::QueueError;
use crate::telemetry;

/// How many orders one recovery sweep asks the repository for at a time.
const SWEEP_PAGE: usize = 500;

pub(super) async fn sweep_loop(engine: Arc<Engine>, stop: CancellationToken) {
    loop {
        let swept = tokio::select! {
            () = stop.cancelled() => return,
            swept = sweep(&engine) => swept,
        };
        match engine.repository.prune_keys().await {
            Ok(0) => {}
            Ok(pruned) => debug!(pruned, "expired idempotency keys forgotten"),
            Err(err) => warn!(error = %err, "could not prune idempotency keys; will try again"),
        }
        match swept {
            Ok(0) => debug!("recovery sweep found nothing to re-queue"),
            Ok(requeued) => info!(requeued, "recovery sweep re-queued stranded orders"),
            Err(err) => warn!(error = %err, "recovery sweep failed; it will run again"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(engine.settings.sweep_interval) => {}
        }
    }
}

/// Pushes every PENDING order, and every PROCESSING one whose lease ran out, to the queue;
/// returns how many the queue did not hold. Pushing is idempotent, so orders the queue
/// already holds stay as they are.
///
/// A queue that shares the repository's storage cannot lose what the repository holds: its
/// sweep has nothing to do.
pub(super) async fn sweep(engine: &Engine) -> Result<usize, StorageError> {
    if engine.shared_storage {
        return Ok(0);
    }
    let mut after = None;
    let mut pushed = 0;
    loop {
        let page = engine.repository.stranded(after, SWEEP_PAGE).await?;
        match engine.queue.push_many(&page).await {
            Ok(added) => {
                pushed += added;
                metrics::counter!(telemetry::SWEEP_REQUEUED).increment(added as u64);
            }
            Err(QueueError::LeaseLost(_)) => {}
            Err(QueueError::Storage(err)) => return Err(err),
        }
        match page.last() {
            Some(&last) if page.len() == SWEEP_PAGE => after = Some(last),
            _ => return Ok(pushed),
        }
    }
}
