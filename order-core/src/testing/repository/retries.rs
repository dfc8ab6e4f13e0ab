//! Cases for a FAILED order put back in the queue ([`Transition::Requeue`]).

use std::sync::Arc;

use super::{conflict, insert, started};
use crate::order::{FailureRecord, Order, OrderId, OrderStatus};
use crate::repository::{Repository, Transition};
use crate::step::{StepOutput, StepRecord, StepStatus};
use crate::testing::{failed_order, race};

/// Starts `id` and fails it with `error`, its steps `steps`; returns the failed order.
async fn failed(
    repo: &dyn Repository,
    id: OrderId,
    error: &str,
    steps: Option<Vec<StepRecord>>,
) -> Order {
    let claim = started(repo, id).await;
    repo.transition(
        id,
        Transition::Fail {
            claim,
            error: error.to_owned(),
            steps,
        },
    )
    .await
    .unwrap()
}

fn requeue(order: &Order, steps: Vec<StepRecord>) -> Transition {
    Transition::Requeue {
        seen: order.updated_at,
        failure: FailureRecord::of(order),
        steps,
    }
}

/// A finished step: a succeeded one has an output, as every backend reads it back.
fn step(name: &str, status: StepStatus) -> StepRecord {
    let mut record = StepRecord::started(name, 1);
    record.status = status;
    record.ended_at = Some(record.started_at);
    if status == StepStatus::Succeeded {
        record.output = Some(StepOutput::from_json(r#"{"reservation":"r-1"}"#.to_owned()).unwrap());
    }
    record
}

/// A FAILED order goes back to PENDING with its failure appended to the earlier ones, the
/// steps given kept, its end cleared, and its attempts and last error as they were; the next
/// start counts on. A requeue compares the `updatedAt` it read: a second one with the same
/// read, or one with an older read, writes nothing; no other status is requeued.
pub async fn a_failed_order_is_requeued_with_its_failure_kept(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let reserve = step("reserve", StepStatus::Succeeded);
    let charge = step("charge", StepStatus::Failed);
    let first = failed(
        &*repo,
        order.id,
        "charge: card declined",
        Some(vec![reserve.clone(), charge]),
    )
    .await;
    assert_eq!(first.status, OrderStatus::Failed);
    let record = FailureRecord::of(&first);
    assert_eq!(
        (
            record.step.as_deref(),
            record.error.as_str(),
            record.attempts
        ),
        (Some("charge"), "charge: card declined", 1)
    );

    let again = repo
        .transition(order.id, requeue(&first, vec![reserve.clone()]))
        .await
        .unwrap();
    assert_eq!(again.status, OrderStatus::Pending);
    assert_eq!(again.attempts, 1);
    assert_eq!(again.last_error.as_deref(), Some("charge: card declined"));
    assert_eq!(again.processing_end_time, None);
    assert_eq!(again.processing_start_time, first.processing_start_time);
    assert_eq!(again.failures, std::slice::from_ref(&record));
    assert_eq!(again.steps, std::slice::from_ref(&reserve));
    assert!(again.updated_at > first.updated_at);
    assert_eq!(repo.get(order.id).await.unwrap(), Some(again.clone()));

    // The same failure, retried twice: the second finds the order PENDING.
    let (current, _) = conflict(&*repo, order.id, requeue(&first, Vec::new())).await;
    assert_eq!(current, OrderStatus::Pending);
    let (current, _) = conflict(&*repo, order.id, requeue(&again, Vec::new())).await;
    assert_eq!(current, OrderStatus::Pending);

    // Started again, it is a second attempt, the first since the retry.
    let second = failed(&*repo, order.id, "ship: no courier", None).await;
    assert_eq!((second.attempts, second.attempts_since_retry()), (2, 1));
    assert_eq!(
        second.steps,
        [reserve],
        "a failure without steps keeps them"
    );
    // A requeue that read the order before its last change writes nothing.
    let (current, _) = conflict(&*repo, order.id, requeue(&again, Vec::new())).await;
    assert_eq!(current, OrderStatus::Failed);
    let third = repo
        .transition(order.id, requeue(&second, Vec::new()))
        .await
        .unwrap();
    assert_eq!(third.failures.len(), 2);
    assert_eq!(third.failures[0], record);
    assert_eq!(third.failures[1].error, "ship: no courier");
    assert_eq!(third.failures[1].attempts, 2);
    assert!(third.steps.is_empty());
    assert_eq!(repo.get(order.id).await.unwrap(), Some(third));

    // Only FAILED orders: not PENDING, PROCESSING, COMPLETED or CANCELLED ones.
    let pending = insert(&*repo).await;
    let (current, _) = conflict(&*repo, pending.id, requeue(&pending, Vec::new())).await;
    assert_eq!(current, OrderStatus::Pending);
    let claim = started(&*repo, pending.id).await;
    let processing = repo.get(pending.id).await.unwrap().unwrap();
    let (current, _) = conflict(&*repo, pending.id, requeue(&processing, Vec::new())).await;
    assert_eq!(current, OrderStatus::Processing);
    let done = repo
        .transition(pending.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    let (current, _) = conflict(&*repo, pending.id, requeue(&done, Vec::new())).await;
    assert_eq!(current, OrderStatus::Completed);
    let cancelled = insert(&*repo).await;
    let cancelled = repo
        .transition(cancelled.id, Transition::Cancel)
        .await
        .unwrap();
    let (current, _) = conflict(&*repo, cancelled.id, requeue(&cancelled, Vec::new())).await;
    assert_eq!(current, OrderStatus::Cancelled);

    let metrics = repo.metrics().await.unwrap();
    assert_eq!(
        (
            metrics.statuses.pending,
            metrics.statuses.failed,
            metrics.statuses.completed,
            metrics.statuses.cancelled
        ),
        (1, 0, 1, 1)
    );
}

/// Of many clients retrying one failed order at once, each through its own handle, exactly one
/// requeues it and one failure is recorded; round after round.
pub async fn concurrent_requeues_of_one_failure_make_one<R>(repos: Vec<Arc<R>>)
where
    R: Repository + ?Sized + 'static,
{
    const ROUNDS: usize = 20;
    let mut orders = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        orders.push(failed_order(&*repos[0], "user-1", "declined").await);
    }
    let orders = Arc::new(orders);
    let rounds = race(
        &repos,
        ROUNDS,
        |repo, _| async move {
            repo.get(OrderId::new(1).unwrap()).await.unwrap();
        },
        |repo, round, _| {
            let orders = orders.clone();
            async move {
                let order = &orders[round];
                repo.transition(order.id, requeue(order, Vec::new()))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    for (round, won) in rounds.iter().enumerate() {
        let winners = won.iter().filter(|won| **won).count();
        assert_eq!(winners, 1, "round {round}");
        let order = repos[0].get(orders[round].id).await.unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Pending, "round {round}");
        assert_eq!(order.failures.len(), 1, "round {round}: one failure kept");
    }
    let metrics = repos[0].metrics().await.unwrap();
    assert_eq!(
        (metrics.statuses.pending, metrics.statuses.failed),
        (ROUNDS as u64, 0)
    );
}
