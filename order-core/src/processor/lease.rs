//! Leases: a worker renews its claim while the handler runs, and stops when it cannot.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Engine;
use super::worker::{release_abandoned, settle};
use crate::error::TransitionError;
use crate::order::Order;
use crate::queue::{Claim, QueueError};
use crate::repository::Transition;
use crate::retry::RetryPolicy;
use crate::telemetry::{self, count};

/// How long a run that stopped for want of a confirmed lease keeps trying to end that lease,
/// so that another worker takes the order over as soon as the database answers again (after a
/// failover, say) rather than once the lease it may still hold there runs out: about as long
/// as a failover manager takes to promote a standby.
const HAND_BACK_FOR: Duration = Duration::from_secs(30);
/// The longest one try to end a lease may take (half a lease, when that is shorter): a try
/// held by a dead connection is given up, and made again, rather than waited on.
const HAND_BACK_TRY: Duration = Duration::from_secs(2);

/// When the claim's lease is known to run from, for [`keep_lease`]: `claimed_at`, when the claim
/// was asked for, or, for a claim answered so late that less than half its lease may be left
/// (a pooler that held the claim across a failover, a stalled connection), the start of a
/// renewal fenced by the claim's token and made before any work begins. A late claim is not
/// worked on unproven: its lease may have run out and another worker may have started the
/// order meanwhile. `None` when, within half a lease (storage errors tried again), that
/// renewal was refused (the order is held elsewhere, finished or gone) or not answered, or a
/// separate queue says the claim was lost: the run is then given up, as one whose lease was
/// lost ([`lease_lost`]).
pub(super) async fn lease_start(
    engine: &Engine,
    claim: &Claim,
    claimed_at: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    let lease = engine.settings.lease;
    let waited = claimed_at.elapsed();
    if waited < lease / 2 {
        return Some(claimed_at);
    }
    let waited_ms = waited.as_millis();
    let asked_at = tokio::time::Instant::now();
    let deadline = asked_at + lease / 2;
    let mut failures = 0;
    loop {
        let renewal = renew(engine, claim, lease);
        match tokio::time::timeout_at(deadline, renewal).await {
            Ok(Ok(_)) => break,
            Ok(Err(TransitionError::Storage(err))) => {
                failures += 1;
                let pause = RetryPolicy::QUICK.backoff(failures);
                if tokio::time::Instant::now() + pause >= deadline {
                    warn!(error = %err, waited_ms, "a late claim could not be renewed");
                    return None;
                }
                tokio::time::sleep(pause).await;
            }
            Ok(Err(err)) => {
                warn!(error = %err, waited_ms, "a late claim's order is no longer its own");
                return None;
            }
            Err(_) => {
                warn!(waited_ms, "a late claim's renewal was not answered in time");
                return None;
            }
        }
    }
    if !engine.shared_storage {
        // Within the same half lease, so that at least half a lease is left when the work
        // begins; an extension not confirmed by then leaves the repository's renewed lease,
        // which is what fences a takeover.
        if extend_queue_lease(engine, claim, deadline).await.is_err() {
            warn!(waited_ms, "a late claim was lost in the queue");
            return None;
        }
    }
    info!(
        waited_ms,
        "the claim was answered late; its lease was renewed before the work began"
    );
    Some(asked_at)
}

/// How a run of an order (a handler's, a pipeline's) ended.
pub(super) enum Ended<T> {
    /// It went to its end, with this.
    Finished(T),
    /// Shutdown abandoned it.
    Abandoned,
    /// Its lease was lost, or could not be renewed in time.
    LeaseLost,
}

impl<T> Ended<T> {
    /// What the run ended with; `None` for a stopped run, whose order is handed back: at
    /// shutdown to be started again without using up an attempt, and after a lost lease as
    /// [`lease_lost`] does. The stopped run must be dropped before this is called, so that
    /// nothing of it is left when another worker may take the order.
    pub(super) async fn finished(
        self,
        engine: &Engine,
        claim: &Claim,
        stop: &CancellationToken,
        abandon: &CancellationToken,
    ) -> Option<T> {
        match self {
            Ended::Finished(result) => Some(result),
            Ended::Abandoned => {
                release_abandoned(engine, claim).await;
                None
            }
            Ended::LeaseLost => {
                lease_lost(engine, claim, stop, abandon).await;
                None
            }
        }
    }
}

/// Drives `run` to its end while keeping the claim's lease (which runs from no earlier than
/// `leased_at`), unless shutdown abandons it or the lease is lost first. A run that ends on its
/// first poll (a handler or steps that take no time, on a backend that answers at once) took
/// no time, so its lease cannot need renewing: the lease keeper (a timer registered and
/// cancelled per order) and the shutdown watch are set up only for a run that waits.
pub(super) async fn under_lease<F: Future>(
    engine: &Engine,
    claim: &Claim,
    leased_at: tokio::time::Instant,
    abandon: &CancellationToken,
    mut run: Pin<&mut F>,
) -> Ended<F::Output> {
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first_poll {
        return Ended::Finished(result);
    }
    tokio::select! {
        biased;
        () = abandon.cancelled() => Ended::Abandoned,
        () = keep_lease(engine, claim, leased_at) => Ended::LeaseLost,
        result = run => Ended::Finished(result),
    }
}

/// Renews the claim's lease, in the queue and in the repository, every third of the lease;
/// returns when the lease was lost to another worker, or is about to run out because renewals
/// keep failing (so that the handler stops before another worker may start the order).
async fn keep_lease(engine: &Engine, claim: &Claim, started_at: tokio::time::Instant) {
    let lease = engine.settings.lease;
    let period = lease / 3;
    let mut held_until = started_at + lease;
    let mut ticks = tokio::time::interval_at(started_at + period, period);
    loop {
        ticks.tick().await;
        let asked_at = tokio::time::Instant::now();
        // A renewal still unanswered when the lease ends (a hung connection, a partitioned
        // database) must not let the handler run on: another worker may take the order
        // over then.
        let renewal = renew(engine, claim, lease);
        // Half a period short of the lease's end: the queue's lease began at the claim, a
        // little earlier, and a takeover must find this run already stopped.
        let budget = held_until
            .saturating_duration_since(asked_at)
            .saturating_sub(period / 2);
        let Ok(renewed) = tokio::time::timeout(budget, renewal).await else {
            warn!("the lease ran out while renewing it; stopping");
            return;
        };
        match renewed {
            Err(
                TransitionError::Conflict { .. }
                | TransitionError::NotFound(_)
                | TransitionError::CancelRequested(_),
            ) => return,
            Err(TransitionError::Storage(err)) => {
                if asked_at + period >= held_until {
                    warn!(error = %err, "could not renew the lease before it runs out; stopping");
                    return;
                }
                warn!(error = %err, "could not renew the lease; trying again");
                continue;
            }
            // The repository counts the lease from when it applied the renewal, no earlier than
            // this call began.
            Ok(_) => held_until = asked_at + lease,
        }
        if engine.shared_storage {
            // The renewal held the queue's entry too: it is the same row.
            continue;
        }
        if extend_queue_lease(engine, claim, tokio::time::Instant::now() + period)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Gives up a run whose lease was lost, or could not be confirmed in time: the handler has
/// been dropped. The lease is then ended at once, fenced by the claim's token (a takeover
/// already made refuses it): the database may still count the lease as this run's (a renewal
/// applied whose answer was lost, a pooler that held it across a failover), and the order
/// would otherwise wait for it to run out. Each try is bounded by [`HAND_BACK_TRY`] (or half
/// a lease); a failed or unanswered one is tried again, backing off, for up to
/// [`HAND_BACK_FOR`]. Once the processor begins to stop (`stop`) no try is begun again, and
/// once its drain timeout is reached (`abandon`) the try under way is dropped: the lease then
/// brings the order back, as it would have without this.
pub(super) async fn lease_lost(
    engine: &Engine,
    claim: &Claim,
    stop: &CancellationToken,
    abandon: &CancellationToken,
) {
    count(telemetry::LEASES_LOST);
    warn!("lease lost or unconfirmed; abandoning this attempt");
    let try_for = HAND_BACK_TRY.min(engine.settings.lease / 2);
    let deadline = tokio::time::Instant::now() + HAND_BACK_FOR;
    let mut failures = 0;
    loop {
        let try_until = deadline.min(tokio::time::Instant::now() + try_for);
        let ending = tokio::time::timeout_at(try_until, renew(engine, claim, Duration::ZERO));
        let ended = tokio::select! {
            () = abandon.cancelled() => return,
            ended = ending => ended,
        };
        let failure = match ended {
            Ok(Ok(_)) => {
                if !engine.shared_storage {
                    let handing_back =
                        tokio::time::timeout(try_for, engine.queue.retry(claim, Duration::ZERO));
                    tokio::select! {
                        () = abandon.cancelled() => return,
                        handed_back = handing_back => match handed_back {
                            Ok(result) => settle(result),
                            Err(_) => warn!("handing the claim back to the queue timed out"),
                        },
                    }
                }
                info!("the order's lease was ended for another worker to take it over");
                return;
            }
            Ok(Err(TransitionError::Storage(err))) => err.to_string(),
            Err(_) => "not answered in time".to_owned(),
            // Another worker holds the order, or it is finished or gone: nothing to end.
            Ok(Err(_)) => return,
        };
        failures += 1;
        let pause = RetryPolicy::RECONNECT.backoff(failures);
        if tokio::time::Instant::now() + pause >= deadline {
            warn!(error = %failure, "could not end the lease; it will run out by itself");
            return;
        }
        debug!(error = %failure, retry_in_ms = pause.as_millis(), "could not end the lease yet");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Extends the claim's lease in a queue of its own, waiting until `until` at most; `Err` when
/// the queue says the claim was lost. A failure or a timeout is logged and left: the
/// repository's lease, renewed first, is what fences a takeover.
async fn extend_queue_lease(
    engine: &Engine,
    claim: &Claim,
    until: tokio::time::Instant,
) -> Result<(), QueueError> {
    let extension = engine.queue.extend(claim, engine.settings.lease);
    match tokio::time::timeout_at(until, extension).await {
        Ok(Err(lost @ QueueError::LeaseLost(_))) => return Err(lost),
        Ok(Err(err)) => warn!(error = %err, "could not extend the queue lease"),
        Err(_) => warn!("extending the queue lease timed out"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

/// The claim's lease renewed for `lease` from now (ended now, for zero), fenced by the claim's
/// token.
async fn renew(engine: &Engine, claim: &Claim, lease: Duration) -> Result<Order, TransitionError> {
    let renewal = Transition::Renew {
        claim: claim.token,
        lease,
    };
    engine.repository.transition(claim.order_id, renewal).await
}
