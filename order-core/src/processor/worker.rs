//! The worker: a claim loop that keeps up to `concurrency` orders in the handler, each order's
//! attempt from its start to its recorded outcome, and claims handed back unfinished.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::lease::{lease_lost, lease_start, under_lease};
use super::{Engine, RetryPolicy, Work};
use crate::error::{StorageError, TransitionError};
use crate::handler::{HandlerError, error_chain};
use crate::order::{Order, OrderStatus};
use crate::queue::{Claim, QueueError};
use crate::repository::Transition;
use crate::telemetry::{self, count, observe};

/// The longest `last_error` kept, in characters: a handler's error should not bloat storage.
const MAX_ERROR_CHARS: usize = 2000;

/// The longest a claim may go unanswered before the claim loop gives up on it and backs off.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// Once shutdown begins, how long a claim still unanswered may go on before it is dropped:
/// shutdown must not wait out [`CLAIM_TIMEOUT`].
const CLAIM_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub(super) async fn claim_loop(
    engine: Arc<Engine>,
    stop: CancellationToken,
    abandon: CancellationToken,
    tracker: TaskTracker,
) {
    let s = engine.settings;
    let slots = Arc::new(Semaphore::new(s.concurrency));
    // Failed claims in a row, for the pause before the next.
    let mut failures = 0;
    loop {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return,
            },
        };
        // Orders finish in batches (a backend that group-commits answers a batch of
        // completions at once): let the rest of the batch give its slots back before
        // counting them, so that one claim takes them all rather than one claim each.
        tokio::task::yield_now().await;
        let wanted = 1 + slots.available_permits();
        // Not raced against `stop`: a durable queue may commit a claim whose reply a dropped
        // future would never read, leaving the orders idle until their leases run out. Only a
        // claim that hangs (a connection to a vanished database host fails no read for
        // minutes) is given up, at that same cost.
        let shutting_down = async {
            stop.cancelled().await;
            tokio::time::sleep(CLAIM_SHUTDOWN_GRACE).await;
        };
        // Each claim's lease, in the queue and (where the claim also starts the order) in the
        // repository, runs from no earlier than this.
        let claimed_at = tokio::time::Instant::now();
        let claims = tokio::select! {
            claims = tokio::time::timeout(CLAIM_TIMEOUT, engine.queue.claim(wanted, s.lease)) => {
                claims.unwrap_or_else(|_| {
                    Err(QueueError::Storage(StorageError::unavailable(format!(
                        "claiming took longer than {CLAIM_TIMEOUT:?}"
                    ))))
                })
            }
            () = shutting_down => return,
        };
        if stop.is_cancelled() {
            for claim in claims.iter().flatten() {
                release_untaken(&engine, claim).await;
            }
            return;
        }
        match claims {
            Ok(claims) if claims.is_empty() => {
                drop(first);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = engine.queue.wait(s.poll_interval) => {}
                }
            }
            Ok(claims) => {
                failures = 0;
                let mut first = Some(first);
                for claim in claims {
                    // This loop is the semaphore's only taker, so the slots counted above are
                    // still free; `first` covers the first claim.
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match slots.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                release_untaken(&engine, &claim).await;
                                continue;
                            }
                        },
                    };
                    let span = info_span!("order", order_id = %claim.order_id, delivery = claim.deliveries);
                    let engine = engine.clone();
                    let stop = stop.clone();
                    let abandon = abandon.clone();
                    // Boxed: the order's future is a few kilobytes (the handler's, the lease
                    // keeper's), and a box is built once where the bare future would be
                    // copied into each wrapper and then into the task.
                    tracker.spawn(
                        Box::pin(async move {
                            process(&engine, claim, claimed_at, &stop, &abandon).await;
                            drop(permit);
                        })
                        .instrument(span),
                    );
                }
            }
            Err(err) => {
                drop(first);
                failures += 1;
                let pause = RetryPolicy::RECONNECT.backoff(failures);
                warn!(error = %err, retry_in_ms = pause.as_millis(), "could not claim orders");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Runs one claimed order through the handler and records the outcome. `claimed_at` is when
/// the claim was asked for: the lease that Start sets runs from no earlier than that (a queue
/// may start the orders it claims in the claim's own statement).
async fn process(
    engine: &Engine,
    mut claim: Claim,
    claimed_at: tokio::time::Instant,
    stop: &CancellationToken,
    abandon: &CancellationToken,
) {
    let s = engine.settings;
    let id = claim.order_id;
    let started = match claim.started.take() {
        // Started by the claim itself.
        Some(order) => Ok(order),
        None => {
            engine
                .repository
                .transition(
                    id,
                    Transition::Start {
                        claim: claim.token,
                        lease: s.lease,
                    },
                )
                .await
        }
    };
    let order = match started {
        Ok(order) => order,
        Err(TransitionError::Conflict {
            current,
            held_by_other,
            ..
        }) => {
            if current.is_terminal() {
                debug!(status = %current, "order already finished; dropping it from the queue");
                settle(engine.queue.ack(&claim).await);
            } else {
                // Another worker holds a live lease: look again once it could have run out.
                debug!(status = %current, held_by_other, "order is held elsewhere");
                settle(engine.queue.retry(&claim, s.lease).await);
            }
            return;
        }
        Err(TransitionError::NotFound(_)) => {
            warn!("queued order does not exist; dropping it from the queue");
            settle(engine.queue.ack(&claim).await);
            return;
        }
        // A start is never refused for a cancel; were it, the order would come back later.
        Err(TransitionError::CancelRequested(_)) => {
            settle(engine.queue.retry(&claim, s.lease).await);
            return;
        }
        Err(TransitionError::Storage(err)) => {
            warn!(error = %err, "could not start the order; it will be tried again");
            settle(engine.queue.retry(&claim, Duration::from_secs(1)).await);
            return;
        }
    };
    engine.publish(&order);
    // The attempt number is on the events rather than recorded into the span: the JSON log
    // format re-serializes a span's fields on every record.
    info!(attempt = order.attempts, "attempt started");
    if order.attempts == 1 {
        // Both times are the repository's, so a clock that differs from this host's skews
        // nothing; a negative span (a clock stepped back) is left out.
        let start = order.processing_start_time.unwrap_or(order.updated_at);
        if let Ok(waited) = (start - order.created_at).to_std() {
            observe(telemetry::QUEUE_WAIT, waited);
        }
    }

    let Some(leased_at) = lease_start(engine, &claim, claimed_at).await else {
        lease_lost(engine, &claim, stop, abandon).await;
        return;
    };
    let handler = match &engine.work {
        Work::Handler(handler) => handler,
        Work::Pipeline(pipeline) => {
            super::pipeline::drive(engine, pipeline, &claim, order, leased_at, stop, abandon).await;
            return;
        }
    };
    let handler_began = tokio::time::Instant::now();

    if abandon.is_cancelled() {
        release_abandoned(engine, &claim).await;
        return;
    }
    let ended = {
        let handling = std::pin::pin!(AssertUnwindSafe(handler.process(&order)).catch_unwind());
        under_lease(engine, &claim, leased_at, abandon, handling).await
        // A stopped handler is dropped here, before its order is handed back.
    };
    let Some(outcome) = ended.finished(engine, &claim, stop, abandon).await else {
        return;
    };
    observe(telemetry::PROCESSING_DURATION, handler_began.elapsed());
    let result = outcome.unwrap_or_else(|panic| Err(panicked("handler", &*panic)));

    match result {
        Ok(()) => match engine
            .record(
                id,
                Transition::Complete {
                    claim: claim.token,
                    steps: None,
                },
            )
            .await
        {
            Ok(_) => {
                count(telemetry::ORDERS_COMPLETED);
                info!(attempt = order.attempts, "order completed");
                engine.dequeue_finished(&claim).await;
            }
            Err(err) => warn!(error = %err, "could not record completion"),
        },
        Err(err) => {
            let error = bounded(&err.message);
            // The whole chain of causes goes to the log; clients see the bounded message.
            let cause = std::error::Error::source(&err).map(error_chain);
            // A retried order gets a full set of attempts: those before its retry do not count.
            let attempt = order.attempts_since_retry();
            if err.permanent || attempt >= s.retry.max_attempts {
                warn!(attempt = order.attempts, error = %error, cause, permanent = err.permanent, "order failed");
                match engine
                    .record(
                        id,
                        Transition::Fail {
                            claim: claim.token,
                            error,
                            steps: None,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        count(telemetry::ORDERS_FAILED);
                        engine.dequeue_finished(&claim).await;
                    }
                    Err(err) => warn!(error = %err, "could not record the failure"),
                }
            } else {
                let delay = s.retry.backoff(attempt);
                info!(attempt = order.attempts, error = %error, cause, retry_in_ms = delay.as_millis(), "attempt failed; retrying");
                match engine
                    .record(
                        id,
                        Transition::Retry {
                            claim: claim.token,
                            error,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        count(telemetry::RETRIES);
                        settle(engine.queue.retry(&claim, delay).await);
                    }
                    Err(err) => warn!(error = %err, "could not record the failed attempt"),
                }
            }
        }
    }
}

/// A panic caught in `what` (the handler, a step, a compensation), as the transient error it
/// counts as.
pub(super) fn panicked(what: &str, panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    HandlerError::transient(format!("{what} panicked: {message}"))
}

/// `error`'s message cut to [`MAX_ERROR_CHARS`], as it is stored.
pub(super) fn bounded(message: &str) -> String {
    message.chars().take(MAX_ERROR_CHARS).collect()
}

/// Hands the claimed order back: PENDING without using up an attempt
/// ([`Transition::Release`]), or, for an order with steps recorded (which never goes back to
/// PENDING), PROCESSING with its lease ended now, so that the next worker takes it over at
/// once.
async fn release(engine: &Engine, claim: &Claim) -> Result<Order, TransitionError> {
    let id = claim.order_id;
    let token = claim.token;
    match engine
        .repository
        .transition(id, Transition::Release { claim: token })
        .await
    {
        Err(TransitionError::Conflict {
            current: OrderStatus::Processing,
            held_by_other: false,
            ..
        }) => {
            let lease = Duration::ZERO;
            engine
                .repository
                .transition(
                    id,
                    Transition::Renew {
                        claim: token,
                        lease,
                    },
                )
                .await
        }
        released => released,
    }
}

/// Hands an unfinished order back at shutdown, without using up an attempt, so the next run
/// starts it at once rather than after its lease runs out.
pub(super) async fn release_abandoned(engine: &Engine, claim: &Claim) {
    if let Ok(order) = release(engine, claim).await {
        engine.publish(&order);
        settle(engine.queue.retry(claim, Duration::ZERO).await);
    }
}

/// Hands back a claim that no worker will take up (shutdown began while it was being made).
/// A queue may have started the order in the claim's own statement: that start is released,
/// so the order loses no attempt; for an order the claim did not start, the release finds
/// nothing to undo.
async fn release_untaken(engine: &Engine, claim: &Claim) {
    if let Ok(order) = release(engine, claim).await {
        engine.publish(&order);
    }
    settle(engine.queue.retry(claim, Duration::ZERO).await);
}

/// Logs the result of a queue call whose failure is recovered by leases: a claim that could
/// not be acked or retried comes back when its lease runs out.
pub(super) fn settle(result: Result<(), QueueError>) {
    match result {
        Ok(()) => {}
        Err(QueueError::LeaseLost(id)) => {
            debug!(order_id = %id, "claim already lost; another worker has the order");
        }
        Err(err) => warn!(error = %err, "queue call failed; the lease will bring the order back"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use rust_decimal::Decimal;

    use crate::OrderProcessor;
    use crate::handler::{HandlerError, OrderHandler};
    use crate::order::{NewOrder, Order, OrderStatus};

    /// Fails every order for good, with a cause that has a cause.
    struct Declines;

    #[async_trait]
    impl OrderHandler for Declines {
        async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
            let io = std::io::Error::other("issuer unreachable");
            Err(HandlerError::permanent("card declined").with_source(io))
        }
    }

    /// Log lines, written where the test reads them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a client sees stays the handler's message; the log names every cause.
    #[tokio::test]
    async fn a_failure_logs_its_causes_and_shows_clients_only_its_message() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let processor = OrderProcessor::builder(Declines)
            .in_memory()
            .build()
            .unwrap();
        let running = processor.start();
        let order = processor
            .submit(NewOrder::new("u", ["i"], Decimal::ONE))
            .await
            .unwrap();
        let done = processor.wait_until_done(order.id).await.unwrap().unwrap();
        running.shutdown(std::time::Duration::from_secs(5)).await;

        assert_eq!(done.status, OrderStatus::Failed);
        assert_eq!(done.last_error.as_deref(), Some("card declined"));
        let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let failed = log
            .lines()
            .find(|line| line.contains("order failed"))
            .unwrap_or_else(|| panic!("no failure logged in:\n{log}"));
        assert!(failed.contains("cause=\"issuer unreachable\""), "{failed}");
    }
}
