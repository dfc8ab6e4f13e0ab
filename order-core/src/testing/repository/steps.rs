//! Cases for the step checkpoints a [`Repository`] keeps with its orders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use super::{conflict, insert, start, started};
use crate::error::TransitionError;
use crate::order::OrderStatus;
use crate::repository::{Repository, Transition};
use crate::step::{StepOutput, StepRecord, StepStatus};
use crate::testing::{LONG, SHORT, sleep};

/// A succeeded step whose output holds money and odd spacing, which must come back byte for
/// byte.
fn succeeded(name: &str) -> StepRecord {
    let mut step = StepRecord::started(name, 1);
    step.status = StepStatus::Succeeded;
    step.ended_at = Some(crate::step::now());
    let output = format!(r#"{{"step": "{name}",  "amount": 12345678.91, "fee": 0.10}}"#);
    step.output = Some(StepOutput::from_json(output).unwrap());
    step
}

/// A checkpoint stores the steps under the claim, outputs exactly as written; the completion
/// that carries the last step keeps them; without steps, a completion keeps what is stored.
pub async fn checkpoints_are_stored_with_the_order(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    assert!(order.steps.is_empty());
    assert_eq!(order.cancel_requested_at, None);
    let claim = started(&*repo, order.id).await;
    let steps = vec![succeeded("reserve"), StepRecord::started("charge", 1)];
    let written = repo
        .transition(
            order.id,
            Transition::Checkpoint {
                claim,
                steps: steps.clone(),
                advancing: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(written.status, OrderStatus::Processing);
    assert_eq!(written.steps, steps);
    assert!(written.updated_at > order.updated_at);
    let read = repo.get(order.id).await.unwrap().unwrap();
    assert_eq!(read.steps, steps);
    assert_eq!(
        read.steps[0].output.as_ref().unwrap().as_json(),
        r#"{"step": "reserve",  "amount": 12345678.91, "fee": 0.10}"#
    );

    let done = vec![succeeded("reserve"), succeeded("charge")];
    let completed = repo
        .transition(
            order.id,
            Transition::Complete {
                claim,
                steps: Some(done.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(completed.status, OrderStatus::Completed);
    assert_eq!(repo.get(order.id).await.unwrap().unwrap().steps, done);

    let plain = insert(&*repo).await;
    let claim = started(&*repo, plain.id).await;
    let completed = repo
        .transition(plain.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    assert!(completed.steps.is_empty(), "a plain order records no steps");
}

/// Only the claim's holder records a step: a worker whose lease was taken over cannot.
pub async fn a_checkpoint_is_fenced_by_the_claim(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (old, start_old) = start(SHORT);
    repo.transition(order.id, start_old).await.unwrap();
    sleep(SHORT * 2).await;
    let new = started(&*repo, order.id).await;
    let stale = Transition::Checkpoint {
        claim: old,
        steps: vec![succeeded("reserve")],
        advancing: false,
    };
    assert_eq!(
        conflict(&*repo, order.id, stale).await,
        (OrderStatus::Processing, true)
    );
    let pending = insert(&*repo).await;
    let never_held = Transition::Checkpoint {
        claim: new,
        steps: vec![succeeded("reserve")],
        advancing: false,
    };
    assert_eq!(
        conflict(&*repo, pending.id, never_held).await,
        (OrderStatus::Pending, false)
    );
    assert!(repo.get(order.id).await.unwrap().unwrap().steps.is_empty());
}

/// An order with steps recorded never goes back to PENDING (a cancel of a PENDING order must
/// never leave finished steps undone): Retry and Release refuse it, and a zero lease hands it
/// back still PROCESSING, for the next worker to take over at once.
pub async fn an_order_with_steps_stays_processing(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let claim = started(&*repo, order.id).await;
    let steps = vec![succeeded("reserve"), StepRecord::started("charge", 1)];
    repo.transition(
        order.id,
        Transition::Checkpoint {
            claim,
            steps,
            advancing: true,
        },
    )
    .await
    .unwrap();
    let retry = Transition::Retry {
        claim,
        error: "busy".to_owned(),
    };
    assert_eq!(
        conflict(&*repo, order.id, retry).await.0,
        OrderStatus::Processing
    );
    let release = Transition::Release { claim };
    assert_eq!(
        conflict(&*repo, order.id, release).await.0,
        OrderStatus::Processing
    );
    let lease = Duration::ZERO;
    repo.transition(order.id, Transition::Renew { claim, lease })
        .await
        .unwrap();
    let taken_over = repo
        .transition(
            order.id,
            Transition::Start {
                claim: crate::queue::ClaimToken::generate(),
                lease: LONG,
            },
        )
        .await
        .unwrap();
    assert_eq!(taken_over.attempts, 2);
    assert_eq!(
        taken_over.steps.len(),
        2,
        "the next worker resumes from them"
    );
}

/// A cancel request applies only to the PROCESSING order as it was read (its `updated_at`),
/// once; after it, a completion and a checkpoint that starts a step are refused with
/// `CancelRequested`, while a checkpoint of an outcome and the end of the cancel go through.
pub async fn a_cancel_request_stops_the_steps(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let pending = Transition::RequestCancel {
        seen: order.updated_at,
    };
    assert_eq!(
        conflict(&*repo, order.id, pending).await.0,
        OrderStatus::Pending
    );
    let claim = started(&*repo, order.id).await;
    let read = repo.get(order.id).await.unwrap().unwrap();
    let running = vec![StepRecord::started("reserve", 1)];
    let moved = repo
        .transition(
            order.id,
            Transition::Checkpoint {
                claim,
                steps: running.clone(),
                advancing: true,
            },
        )
        .await
        .unwrap();
    let stale = Transition::RequestCancel {
        seen: read.updated_at,
    };
    assert_eq!(
        conflict(&*repo, order.id, stale).await.0,
        OrderStatus::Processing,
        "a step was recorded since the read"
    );
    let requested = repo
        .transition(
            order.id,
            Transition::RequestCancel {
                seen: moved.updated_at,
            },
        )
        .await
        .unwrap();
    assert_eq!(requested.status, OrderStatus::Processing);
    assert!(requested.cancel_requested_at.is_some());
    let again = Transition::RequestCancel {
        seen: requested.updated_at,
    };
    assert_eq!(
        conflict(&*repo, order.id, again).await.0,
        OrderStatus::Processing
    );

    let next = vec![succeeded("reserve"), StepRecord::started("charge", 1)];
    let advancing = Transition::Checkpoint {
        claim,
        steps: next,
        advancing: true,
    };
    assert!(matches!(
        repo.transition(order.id, advancing).await,
        Err(TransitionError::CancelRequested(id)) if id == order.id
    ));
    let complete = Transition::Complete {
        claim,
        steps: Some(vec![succeeded("reserve")]),
    };
    assert!(matches!(
        repo.transition(order.id, complete).await,
        Err(TransitionError::CancelRequested(_))
    ));
    let fail = Transition::Fail {
        claim,
        error: "charge: declined".to_owned(),
        steps: None,
    };
    assert!(
        matches!(
            repo.transition(order.id, fail).await,
            Err(TransitionError::CancelRequested(_))
        ),
        "an order whose cancel was accepted ends CANCELLED, not FAILED"
    );
    let mut compensating = succeeded("reserve");
    compensating.status = StepStatus::Compensating;
    repo.transition(
        order.id,
        Transition::Checkpoint {
            claim,
            steps: vec![compensating.clone()],
            advancing: false,
        },
    )
    .await
    .unwrap();
    let stranger = Transition::FinishCancel {
        claim: crate::queue::ClaimToken::generate(),
        steps: Vec::new(),
    };
    assert_eq!(
        conflict(&*repo, order.id, stranger).await.0,
        OrderStatus::Processing
    );
    compensating.status = StepStatus::Compensated;
    let cancelled = repo
        .transition(
            order.id,
            Transition::FinishCancel {
                claim,
                steps: vec![compensating.clone()],
            },
        )
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert!(cancelled.processing_end_time.is_some());
    assert_eq!(cancelled.steps, [compensating]);
    let metrics = repo.metrics().await.unwrap();
    assert_eq!(metrics.statuses.cancelled, 1);
    assert_eq!(metrics.statuses.processing, 0);
}

/// A failure after compensation stores the compensated steps with the error.
pub async fn a_failure_keeps_its_compensated_steps(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let claim = started(&*repo, order.id).await;
    let mut reserve = succeeded("reserve");
    reserve.status = StepStatus::Compensated;
    let mut charge = StepRecord::started("charge", 3);
    charge.status = StepStatus::Failed;
    charge.error = Some("card declined".to_owned());
    let steps = vec![reserve, charge];
    let failed = repo
        .transition(
            order.id,
            Transition::Fail {
                claim,
                error: "charge: card declined".to_owned(),
                steps: Some(steps.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status, OrderStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("charge: card declined"));
    assert_eq!(repo.get(order.id).await.unwrap().unwrap().steps, steps);
}
