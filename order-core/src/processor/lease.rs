//! Leases: a worker renews its claim while the handler runs, and stops when it cannot.

use tracing::warn;

use super::Engine;
use crate::error::TransitionError;
use crate::queue::{Claim, QueueError};
use crate::repository::Transition;

/// Renews the claim's lease, in the queue and in the repository, every third of the lease;
/// returns when the lease was lost to another worker, or is about to run out because renewals
/// keep failing (so that the handler stops before another worker may start the order).
pub(super) async fn keep_lease(engine: &Engine, claim: &Claim, started_at: tokio::time::Instant) {
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
        let renewal = engine.repository.transition(
            claim.order_id,
            Transition::Renew {
                claim: claim.token,
                lease,
            },
        );
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
        match tokio::time::timeout(period, engine.queue.extend(claim, lease)).await {
            Ok(Err(QueueError::LeaseLost(_))) => return,
            Ok(Err(err)) => warn!(error = %err, "could not extend the queue lease"),
            Err(_) => warn!("extending the queue lease timed out"),
            Ok(Ok(())) => {}
        }
    }
}
