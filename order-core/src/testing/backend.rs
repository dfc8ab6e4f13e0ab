//! Cases for [`Backend`] implementations whose queue shares the repository's storage
//! ([`QueueStorage::Repository`]): the rules the engine relies on when it leaves out the calls
//! the pair's own statements make unnecessary. The backend's repository and queue each pass
//! their own suite too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bulk;

pub use bulk::{
    a_bulk_cancel_acts_on_what_matched_when_accepted, a_bulk_retry_requeues_the_failed_orders,
    concurrent_bulk_requests_with_one_key_accept_one, one_key_names_one_bulk_action,
    pages_are_bounded_and_a_lapsed_holder_is_fenced,
};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{LONG, SHORT, race, sample_order, sleep};
use crate::backend::Backend;
use crate::error::TransitionError;
use crate::idempotency::{Fingerprint, IdempotencyKey, KeyRecord};
use crate::order::{Order, OrderStatus};
use crate::queue::{Claim, QueueDepth, QueueStorage};
use crate::repository::Transition;

/// The one claim a claim of up to 10 gets, with the order it started.
async fn claim_one<B: Backend + ?Sized>(backend: &B, lease: Duration) -> (Claim, Order) {
    let mut claims = backend.queue().claim(10, lease).await.unwrap();
    assert_eq!(claims.len(), 1, "{claims:?}");
    let mut claim = claims.remove(0);
    let started = claim.started.take().expect("the claim started its order");
    (claim, started)
}

async fn depth<B: Backend + ?Sized>(backend: &B) -> QueueDepth {
    backend.queue().depth().await.unwrap()
}

/// The queue says it shares the repository's storage; an order stored is queued by the
/// insert itself, and the claim that takes it starts it under the claim's token.
pub async fn an_insert_queues_and_a_claim_starts<B: Backend + ?Sized>(backend: Arc<B>) {
    assert_eq!(backend.queue().storage(), QueueStorage::Repository);
    let repository = backend.repository();
    let order = repository.insert(&sample_order("ann", 2)).await.unwrap();
    assert_eq!(depth(&*backend).await.ready, 1);
    assert!(
        !backend.queue().push(order.id).await.unwrap(),
        "already queued"
    );

    let (claim, started) = claim_one(&*backend, LONG).await;
    assert_eq!(claim.order_id, order.id);
    assert_eq!(claim.deliveries, 1);
    assert_eq!(
        (started.id, started.status, started.attempts),
        (order.id, OrderStatus::Processing, 1)
    );
    assert!(started.processing_start_time.is_some());
    assert_eq!(repository.get(order.id).await.unwrap(), Some(started));
    assert!(backend.queue().claim(10, LONG).await.unwrap().is_empty());
    // Started under this claim's token: another cannot finish it, this one can.
    let other = crate::queue::ClaimToken::generate();
    assert!(matches!(
        repository
            .transition(
                order.id,
                Transition::Complete {
                    claim: other,
                    steps: None
                }
            )
            .await,
        Err(TransitionError::Conflict { .. })
    ));
    repository
        .transition(
            order.id,
            Transition::Complete {
                claim: claim.token,
                steps: None,
            },
        )
        .await
        .unwrap();
}

/// A keyed insert queues the order it creates, and a replay queues nothing.
pub async fn a_keyed_insert_queues_once<B: Backend + ?Sized>(backend: Arc<B>) {
    let order = sample_order("ann", 1);
    let record = KeyRecord {
        key: IdempotencyKey::new("checkout-1").unwrap(),
        fingerprint: Fingerprint::of(&order),
        ttl: LONG,
    };
    let repository = backend.repository();
    repository.insert_keyed(&order, &record).await.unwrap();
    repository.insert_keyed(&order, &record).await.unwrap();
    assert_eq!(depth(&*backend).await.ready, 1);
    let (_, started) = claim_one(&*backend, LONG).await;
    assert_eq!(started.status, OrderStatus::Processing);
}

/// Completing, failing or cancelling an order takes it off the queue: nothing is left to
/// ack, and no claim sees it again.
pub async fn finishing_takes_the_order_off_the_queue<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let completed = repository.insert(&sample_order("a", 1)).await.unwrap();
    let failed = repository.insert(&sample_order("b", 1)).await.unwrap();
    let cancelled = repository.insert(&sample_order("c", 1)).await.unwrap();
    repository
        .transition(cancelled.id, Transition::Cancel)
        .await
        .unwrap();
    let claims = backend.queue().claim(10, LONG).await.unwrap();
    let claimed: Vec<_> = claims.iter().map(|c| c.order_id).collect();
    assert_eq!(
        claimed,
        [completed.id, failed.id],
        "the cancelled one is gone"
    );
    repository
        .transition(
            completed.id,
            Transition::Complete {
                claim: claims[0].token,
                steps: None,
            },
        )
        .await
        .unwrap();
    repository
        .transition(
            failed.id,
            Transition::Fail {
                claim: claims[1].token,
                error: "card declined".to_owned(),
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(depth(&*backend).await, QueueDepth::default());
    sleep(SHORT).await;
    assert!(backend.queue().claim(10, SHORT).await.unwrap().is_empty());
}

/// After Retry or Release the order stays held by its claim until the queue's
/// [`retry`](crate::backend::Queue::retry) says when it may be claimed again; the next claim starts
/// it again, as a new attempt after a Retry and as the same one after a Release.
pub async fn retry_and_release_wait_for_the_queue<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let order = repository.insert(&sample_order("a", 1)).await.unwrap();
    let (claim, _) = claim_one(&*backend, LONG).await;
    let retried = repository
        .transition(
            order.id,
            Transition::Retry {
                claim: claim.token,
                error: "busy".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(retried.status, OrderStatus::Pending);
    assert!(
        backend.queue().claim(10, LONG).await.unwrap().is_empty(),
        "held until the queue's retry"
    );
    backend.queue().retry(&claim, Duration::ZERO).await.unwrap();
    let (claim, started) = claim_one(&*backend, LONG).await;
    assert_eq!((started.attempts, claim.deliveries), (2, 2));

    repository
        .transition(order.id, Transition::Release { claim: claim.token })
        .await
        .unwrap();
    assert!(backend.queue().claim(10, LONG).await.unwrap().is_empty());
    backend.queue().retry(&claim, Duration::ZERO).await.unwrap();
    let (_, started) = claim_one(&*backend, LONG).await;
    assert_eq!(started.attempts, 2, "a release costs no attempt");
}

/// A FAILED order that is requeued is queued by the requeue itself: the next claim takes it
/// at once and starts it as a new attempt; finishing it takes it off the queue again.
pub async fn a_requeued_order_is_claimed_again<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let order = repository.insert(&sample_order("a", 1)).await.unwrap();
    let (claim, _) = claim_one(&*backend, LONG).await;
    let failed = repository
        .transition(
            order.id,
            Transition::Fail {
                claim: claim.token,
                error: "card declined".to_owned(),
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(depth(&*backend).await, QueueDepth::default());
    repository
        .transition(
            order.id,
            Transition::Requeue {
                seen: failed.updated_at,
                failure: crate::order::FailureRecord::of(&failed),
                steps: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(depth(&*backend).await.ready, 1);
    let (again, started) = claim_one(&*backend, LONG).await;
    assert_eq!(again.order_id, order.id);
    assert_eq!(
        (
            started.status,
            started.attempts,
            started.attempts_since_retry()
        ),
        (OrderStatus::Processing, 2, 1)
    );
    repository
        .transition(
            order.id,
            Transition::Complete {
                claim: again.token,
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(depth(&*backend).await, QueueDepth::default());
}

/// A renewal holds the queue's claim too: no other claim takes the order while the
/// renewed lease runs, though the first one has run out.
pub async fn a_renewal_holds_the_claim<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let order = repository.insert(&sample_order("a", 1)).await.unwrap();
    let (claim, _) = claim_one(&*backend, SHORT).await;
    sleep(SHORT / 3).await;
    repository
        .transition(
            order.id,
            Transition::Renew {
                claim: claim.token,
                lease: LONG,
            },
        )
        .await
        .unwrap();
    sleep(SHORT).await;
    assert!(backend.queue().claim(10, LONG).await.unwrap().is_empty());
    assert_eq!(depth(&*backend).await.claimed, 1);
    repository
        .transition(
            order.id,
            Transition::Complete {
                claim: claim.token,
                steps: None,
            },
        )
        .await
        .unwrap();
}

/// A claim whose lease ran out is taken over by the next claim, which starts the order
/// again as a new attempt; the old claim is fenced off.
pub async fn a_lapsed_claim_is_taken_over<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let order = repository.insert(&sample_order("a", 1)).await.unwrap();
    let (first, _) = claim_one(&*backend, SHORT).await;
    sleep(SHORT + SHORT / 2).await;
    let (second, started) = claim_one(&*backend, LONG).await;
    assert_ne!(second.token, first.token);
    assert_eq!((started.attempts, second.deliveries), (2, 2));
    assert!(matches!(
        repository
            .transition(
                order.id,
                Transition::Complete {
                    claim: first.token,
                    steps: None
                }
            )
            .await,
        Err(TransitionError::Conflict { .. })
    ));
    repository
        .transition(
            order.id,
            Transition::Complete {
                claim: second.token,
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(depth(&*backend).await, QueueDepth::default());
}

/// Claimers racing through separate handles start each order exactly once, each under the
/// claim that took it.
pub async fn concurrent_claimers_start_each_order_once<B>(backends: Vec<Arc<B>>)
where
    B: Backend + ?Sized + 'static,
{
    const ORDERS: usize = 200;
    let repository = backends[0].repository();
    for i in 0..ORDERS {
        repository
            .insert(&sample_order(&format!("user-{i}"), 1))
            .await
            .unwrap();
    }
    let rounds = race(
        &backends,
        1,
        |backend, _| async move {
            backend.queue().depth().await.unwrap();
        },
        |backend, _, _| async move {
            let queue = backend.queue();
            let mut got = Vec::new();
            loop {
                let claims = queue.claim(7, LONG).await.unwrap();
                if claims.is_empty() {
                    return got;
                }
                got.extend(claims);
                tokio::task::yield_now().await;
            }
        },
    )
    .await;
    let claims: Vec<Claim> = rounds.into_iter().flatten().flatten().collect();
    assert_eq!(claims.len(), ORDERS);
    let distinct: HashSet<_> = claims.iter().map(|c| c.order_id).collect();
    assert_eq!(distinct.len(), ORDERS);
    for claim in claims {
        let started = claim
            .started
            .clone()
            .expect("every claim started its order");
        assert_eq!(
            (started.status, started.attempts),
            (OrderStatus::Processing, 1)
        );
        // Held by this claim: it, and only it, may complete the order.
        repository
            .transition(
                claim.order_id,
                Transition::Complete {
                    claim: claim.token,
                    steps: None,
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(depth(&*backends[0]).await, QueueDepth::default());
}

/// Generates one `#[tokio::test]` per [`Backend`](crate::backend::Backend) contract case (for a backend
/// whose queue shares its repository's storage), each on a backend from `$factory` (an async
/// closure returning `Arc<impl Backend>`-compatible values).
#[macro_export]
macro_rules! backend_contract_tests {
    ($factory:expr) => {
        $crate::__contract_tests!(backend, $factory;
            an_insert_queues_and_a_claim_starts,
            a_keyed_insert_queues_once,
            finishing_takes_the_order_off_the_queue,
            retry_and_release_wait_for_the_queue,
            a_renewal_holds_the_claim,
            a_requeued_order_is_claimed_again,
            a_lapsed_claim_is_taken_over,
            a_bulk_cancel_acts_on_what_matched_when_accepted,
            a_bulk_retry_requeues_the_failed_orders,
            pages_are_bounded_and_a_lapsed_holder_is_fenced,
            one_key_names_one_bulk_action;
            racing:
            concurrent_claimers_start_each_order_once,
            concurrent_bulk_requests_with_one_key_accept_one,
        );
    };
}
