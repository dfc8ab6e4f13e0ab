//! Bulk actions in the engine: accepting one ([`OrderProcessor::bulk`]), reading its progress,
//! and the runner that goes through the pages of unfinished ones, whichever process accepted
//! them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::{Engine, OrderProcessor};
use crate::bulk::{Acceptance, BulkAction, BulkError, BulkId, BulkRequest, BulkStatus};
use crate::error::StorageError;
use crate::idempotency::IdempotencyKey;
use crate::order::OrderStatus;
use crate::queue::ClaimToken;
use crate::retry::RetryPolicy;
use crate::telemetry::{self, observe};

/// How long a runner holds a bulk action between two pages before another process may take it
/// over: a page takes milliseconds, so a holder that wrote none for this long has died.
const BULK_LEASE: Duration = Duration::from_secs(30);
/// How often an idle runner looks for bulk actions that other processes accepted, or that a
/// dead holder left.
const BULK_POLL: Duration = Duration::from_secs(2);
/// How often a running action logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What [`OrderProcessor::bulk`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkAccepted {
    /// The action, as accepted or as it is now.
    pub action: BulkAction,
    /// True when the idempotency key named an action accepted before: nothing new was
    /// selected.
    pub replayed: bool,
}

impl OrderProcessor {
    /// Accepts a bulk action: cancelling the PENDING orders, or retrying the FAILED ones, that
    /// `request` selects now (up to its limit, oldest first). Those orders are stored with the
    /// action, which any processor started on the same storage goes through, a page at a
    /// time; [`bulk_action`](Self::bulk_action) reports how far it has got. Under an
    /// idempotency key, a request sent again answers the action it accepted the first time.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use order_core::bulk::{BulkKind, BulkRequest, BulkStatus};
    /// use order_core::{NewOrder, OrderProcessor, OrderStatus};
    /// use order_core::handler::SimulatedStep;
    /// use rust_decimal::Decimal;
    ///
    /// let processor = OrderProcessor::builder(SimulatedStep::default()).in_memory().build()?;
    /// for user in ["ann", "bob", "ann"] {
    ///     processor.submit(NewOrder::new(user, ["book"], Decimal::TEN)).await?;
    /// }
    /// let accepted = processor
    ///     .bulk(BulkRequest::new(BulkKind::Cancel, 100).user("ann"), None)
    ///     .await?;
    /// assert_eq!(accepted.action.matched, 2);
    ///
    /// let running = processor.start();
    /// let done = processor.wait_for_bulk(accepted.action.id).await?.unwrap();
    /// assert_eq!(done.status, BulkStatus::Done);
    /// // The workers start too: an order one of them took first is no longer PENDING, and
    /// // the action skips it.
    /// assert_eq!(done.acted + done.skipped, 2);
    /// assert_eq!(processor.metrics().await?.statuses.cancelled, done.acted);
    /// running.shutdown(std::time::Duration::from_secs(5)).await;
    /// # Ok(()) }
    /// ```
    pub async fn bulk(
        &self,
        request: BulkRequest,
        key: Option<IdempotencyKey>,
    ) -> Result<BulkAccepted, BulkError> {
        let request = request.validate()?;
        match self.engine.bulk.accept(&request, key.as_ref()).await? {
            Acceptance::Accepted(action) => {
                info!(
                    bulk_id = %action.id,
                    kind = action.kind.as_str(),
                    matched = action.matched,
                    "bulk action accepted"
                );
                self.engine.bulk_accepted.notify_one();
                Ok(BulkAccepted {
                    action,
                    replayed: false,
                })
            }
            Acceptance::Replayed(action) => Ok(BulkAccepted {
                action,
                replayed: true,
            }),
            Acceptance::KeyReused(action) => Err(BulkError::KeyReused {
                key: key.map(|key| key.key().to_owned()).unwrap_or_default(),
                action: action.id,
            }),
        }
    }

    /// How many orders `request` would select now (at most its limit), storing nothing: what
    /// to show in a confirmation before [`bulk`](Self::bulk).
    pub async fn bulk_preview(&self, request: BulkRequest) -> Result<u64, BulkError> {
        let request = request.validate()?;
        Ok(self.engine.bulk.preview(&request).await?)
    }

    /// The bulk action with this id, as far as it has got; `None` if there is none.
    pub async fn bulk_action(&self, id: BulkId) -> Result<Option<BulkAction>, StorageError> {
        self.engine.bulk.get(id).await
    }

    /// Waits until the bulk action is done and returns it; `None` if there is none. It is
    /// gone through by a started processor on the same storage: wrap the wait in
    /// `tokio::time::timeout` to bound it.
    pub async fn wait_for_bulk(&self, id: BulkId) -> Result<Option<BulkAction>, StorageError> {
        loop {
            match self.engine.bulk.get(id).await? {
                Some(action) if action.status == BulkStatus::Running => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done => return Ok(done),
            }
        }
    }
}

/// Goes through unfinished bulk actions, one at a time, until `stop`: those this process
/// accepts at once, the others within [`BULK_POLL`].
pub(super) async fn bulk_loop(engine: Arc<Engine>, stop: CancellationToken) {
    let mut failures = 0;
    loop {
        let claimed = tokio::select! {
            () = stop.cancelled() => return,
            claimed = engine.bulk.claim(BULK_LEASE) => claimed,
        };
        match claimed {
            Ok(Some((action, claim))) => {
                failures = 0;
                let span = info_span!("bulk", bulk_id = %action.id, kind = action.kind.as_str());
                go_through(&engine, &action, claim, &stop)
                    .instrument(span)
                    .await;
                continue;
            }
            Ok(None) => failures = 0,
            Err(err) => {
                failures += 1;
                warn!(error = %err, "could not look for bulk actions; will try again");
            }
        }
        let pause = if failures == 0 {
            BULK_POLL
        } else {
            RetryPolicy::RECONNECT.backoff(failures)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = engine.bulk_accepted.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Goes through `action`'s pages under `claim` until it is done, the claim is lost, or `stop`.
async fn go_through(
    engine: &Engine,
    action: &BulkAction,
    claim: ClaimToken,
    stop: &CancellationToken,
) {
    info!(
        matched = action.matched,
        processed = action.processed(),
        "going through a bulk action"
    );
    let mut last_said = tokio::time::Instant::now();
    let mut failures = 0;
    while !stop.is_cancelled() {
        let began = tokio::time::Instant::now();
        let page = engine.bulk.page(action.id, claim, BULK_LEASE).await;
        match page {
            Ok(Some(page)) => {
                failures = 0;
                observe(telemetry::BULK_PAGE_DURATION, began.elapsed());
                for order in &page.changed {
                    engine.publish(order);
                    if order.status == OrderStatus::Pending {
                        // A retried order: queued by the page's own write when the queue
                        // shares the storage, pushed onto one of its own otherwise.
                        engine.queue_stored(order.id).await;
                    }
                }
                let progress = &page.action;
                if progress.status == BulkStatus::Done {
                    info!(
                        matched = progress.matched,
                        acted = progress.acted,
                        skipped = progress.skipped,
                        "bulk action done"
                    );
                    return;
                }
                if last_said.elapsed() >= PROGRESS_EVERY {
                    last_said = tokio::time::Instant::now();
                    info!(
                        matched = progress.matched,
                        processed = progress.processed(),
                        acted = progress.acted,
                        "bulk action in progress"
                    );
                }
            }
            Ok(None) => {
                warn!("bulk action taken over by another process; leaving it to that one");
                return;
            }
            Err(err) => {
                failures += 1;
                let pause = RetryPolicy::RECONNECT.backoff(failures);
                warn!(error = %err, retry_in_ms = pause.as_millis(), "a page of the bulk action failed; will try again");
                if pause >= BULK_LEASE {
                    // The lease will have run out: another process (or this one) claims it again.
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
