//! Cases for [`Queue`] implementations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{LONG, SHORT, race, sleep};
use crate::order::OrderId;
use crate::queue::{Queue, QueueDepth, QueueError};

fn id(raw: i64) -> OrderId {
    OrderId::new(raw).unwrap()
}

fn ids(claims: &[crate::queue::Claim]) -> Vec<OrderId> {
    claims.iter().map(|c| c.order_id).collect()
}

/// Pushing an id the queue holds, in any state, changes nothing.
pub async fn push_is_idempotent(queue: Arc<dyn Queue>) {
    assert!(queue.push(id(1)).await.unwrap());
    assert!(!queue.push(id(1)).await.unwrap());
    let claims = queue.claim(10, LONG).await.unwrap();
    assert_eq!(ids(&claims), [id(1)]);
    assert!(!queue.push(id(1)).await.unwrap(), "claimed ids are held");
    assert!(queue.claim(10, LONG).await.unwrap().is_empty());
    queue
        .retry(&claims[0], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!queue.push(id(1)).await.unwrap(), "delayed ids are held");
    assert!(queue.claim(10, LONG).await.unwrap().is_empty());
}

/// Pushing many at once adds the ids the queue does not hold, once each, and says how
/// many.
pub async fn push_many_adds_only_what_is_missing(queue: Arc<dyn Queue>) {
    assert_eq!(queue.push_many(&[]).await.unwrap(), 0);
    queue.push(id(2)).await.unwrap();
    let claimed = queue.claim(1, LONG).await.unwrap();
    assert_eq!(claimed[0].order_id, id(2));
    assert_eq!(
        queue
            .push_many(&[id(1), id(2), id(3), id(3)])
            .await
            .unwrap(),
        2,
        "1 and 3 are new; 2 is held, and 3 is listed twice"
    );
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            ready: 2,
            delayed: 0,
            claimed: 1
        }
    );
    let ready: Vec<_> = queue
        .claim(10, LONG)
        .await
        .unwrap()
        .into_iter()
        .map(|claim| claim.order_id)
        .collect();
    assert_eq!(ready, [id(1), id(3)]);
}

/// Claims come oldest first, no more than asked for, each with its own token.
pub async fn claims_are_oldest_first_and_bounded(queue: Arc<dyn Queue>) {
    for raw in 1..=5 {
        queue.push(id(raw)).await.unwrap();
    }
    let first = queue.claim(2, LONG).await.unwrap();
    assert_eq!(ids(&first), [id(1), id(2)]);
    let rest = queue.claim(10, LONG).await.unwrap();
    assert_eq!(ids(&rest), [id(3), id(4), id(5)]);
    let tokens: HashSet<_> = first.iter().chain(&rest).map(|c| c.token).collect();
    assert_eq!(tokens.len(), 5);
    assert!(first.iter().chain(&rest).all(|c| c.deliveries == 1));
    assert!(queue.claim(10, LONG).await.unwrap().is_empty());
}

/// An acked id is gone; it can be pushed afresh later.
pub async fn ack_removes_the_id(queue: Arc<dyn Queue>) {
    queue.push(id(7)).await.unwrap();
    let claim = queue.claim(1, LONG).await.unwrap().remove(0);
    queue.ack(&claim).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
    assert!(matches!(
        queue.ack(&claim).await,
        Err(QueueError::LeaseLost(lost)) if lost == id(7)
    ));
    assert!(queue.push(id(7)).await.unwrap());
    assert_eq!(ids(&queue.claim(1, LONG).await.unwrap()), [id(7)]);
}

/// A claim not settled within its lease is handed out again with a new token; the old
/// claim can then change nothing.
pub async fn a_lapsed_lease_is_redelivered_and_the_old_claim_fenced(queue: Arc<dyn Queue>) {
    queue.push(id(3)).await.unwrap();
    let old = queue.claim(1, SHORT).await.unwrap().remove(0);
    assert!(queue.claim(1, LONG).await.unwrap().is_empty());
    sleep(SHORT + SHORT / 2).await;
    let new = queue.claim(1, LONG).await.unwrap().remove(0);
    assert_eq!(new.order_id, id(3));
    assert_ne!(new.token, old.token);
    assert_eq!(new.deliveries, 2);
    for result in [
        queue.ack(&old).await,
        queue.retry(&old, Duration::ZERO).await,
        queue.extend(&old, LONG).await,
    ] {
        assert!(
            matches!(result, Err(QueueError::LeaseLost(_))),
            "{result:?}"
        );
    }
    queue.ack(&new).await.unwrap();
}

/// A claim whose lease ran out but that nobody claimed again can still be acked.
pub async fn a_lapsed_lease_not_reclaimed_can_still_ack(queue: Arc<dyn Queue>) {
    queue.push(id(4)).await.unwrap();
    let claim = queue.claim(1, SHORT).await.unwrap().remove(0);
    sleep(SHORT + SHORT / 2).await;
    queue.ack(&claim).await.unwrap();
    assert!(queue.claim(1, LONG).await.unwrap().is_empty());
}

/// Extending moves the end of the lease, so the id is not handed out meanwhile.
pub async fn extend_keeps_the_claim(queue: Arc<dyn Queue>) {
    queue.push(id(5)).await.unwrap();
    let claim = queue.claim(1, SHORT).await.unwrap().remove(0);
    sleep(SHORT * 2 / 3).await;
    queue.extend(&claim, SHORT).await.unwrap();
    sleep(SHORT / 2).await;
    assert!(
        queue.claim(1, LONG).await.unwrap().is_empty(),
        "past the first lease, within the extended one"
    );
    sleep(SHORT).await;
    assert_eq!(ids(&queue.claim(1, LONG).await.unwrap()), [id(5)]);
}

/// A retried id comes back after its delay, not before.
pub async fn retry_delays_the_next_delivery(queue: Arc<dyn Queue>) {
    queue.push(id(9)).await.unwrap();
    let claim = queue.claim(1, LONG).await.unwrap().remove(0);
    queue.retry(&claim, SHORT).await.unwrap();
    assert!(queue.claim(1, LONG).await.unwrap().is_empty());
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            ready: 0,
            delayed: 1,
            claimed: 0
        }
    );
    sleep(SHORT + SHORT / 2).await;
    let again = queue.claim(1, LONG).await.unwrap().remove(0);
    assert_eq!(again.order_id, id(9));
    assert_eq!(again.deliveries, 2);
}

/// A retry without delay is claimable at once.
pub async fn retry_without_delay_is_ready_at_once(queue: Arc<dyn Queue>) {
    queue.push(id(11)).await.unwrap();
    let claim = queue.claim(1, LONG).await.unwrap().remove(0);
    queue.retry(&claim, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&queue.claim(1, LONG).await.unwrap()), [id(11)]);
}

/// Depth counts ready, delayed and claimed ids.
pub async fn depth_counts_each_state(queue: Arc<dyn Queue>) {
    for raw in 1..=4 {
        queue.push(id(raw)).await.unwrap();
    }
    let claims = queue.claim(2, LONG).await.unwrap();
    queue
        .retry(&claims[0], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            ready: 2,
            delayed: 1,
            claimed: 1
        }
    );
}

/// A claim whose lease ran out, and a retry whose delay has passed, count as ready: the
/// next claim takes them.
pub async fn depth_counts_what_has_come_due_as_ready(queue: Arc<dyn Queue>) {
    for raw in 1..=3 {
        queue.push(id(raw)).await.unwrap();
    }
    let claims = queue.claim(3, SHORT).await.unwrap();
    queue.retry(&claims[0], SHORT / 2).await.unwrap();
    queue.extend(&claims[2], LONG).await.unwrap();
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            ready: 0,
            delayed: 1,
            claimed: 2
        }
    );
    sleep(SHORT + SHORT / 2).await;
    assert_eq!(
        queue.depth().await.unwrap(),
        QueueDepth {
            ready: 2,
            delayed: 0,
            claimed: 1
        }
    );
}

/// A waiting worker wakes soon after work arrives, and an idle wait ends at its timeout.
pub async fn wait_wakes_on_new_work(queue: Arc<dyn Queue>) {
    // The first wait may end early, once: a backend that listens for other processes'
    // pushes returns when it starts listening, for its caller to claim again.
    queue.wait(Duration::from_secs(5)).await;
    let began = Instant::now();
    queue.wait(Duration::from_millis(200)).await;
    let idle = began.elapsed();
    assert!(
        idle >= Duration::from_millis(150),
        "an idle wait returned after {idle:?}"
    );

    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            queue.wait(Duration::from_secs(30)).await;
            began.elapsed()
        })
    };
    sleep(Duration::from_millis(100)).await;
    queue.push(id(21)).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
}

/// Claimers racing over one queue, each through its own handle, never get the same id.
pub async fn concurrent_claimers_never_share_an_id<Q>(queues: Vec<Arc<Q>>)
where
    Q: Queue + ?Sized + 'static,
{
    const ORDERS: usize = 400;
    for raw in 1..=ORDERS as i64 {
        queues[0].push(id(raw)).await.unwrap();
    }
    let rounds = race(
        &queues,
        1,
        |queue, _| async move {
            queue.depth().await.unwrap();
        },
        |queue, _, _| async move {
            let mut got = Vec::new();
            loop {
                let claims = queue.claim(7, LONG).await.unwrap();
                if claims.is_empty() {
                    return got;
                }
                got.extend(claims.into_iter().map(|c| c.order_id));
                tokio::task::yield_now().await;
            }
        },
    )
    .await;
    let all: Vec<OrderId> = rounds.into_iter().flatten().flatten().collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), ORDERS);
    assert_eq!(distinct.len(), ORDERS);
}

/// Generates one `#[tokio::test]` per [`Queue`](crate::backend::Queue) contract case, each on a backend
/// from `$factory` (an async closure returning `Arc<dyn Queue>`-compatible values).
#[macro_export]
macro_rules! queue_contract_tests {
    ($factory:expr) => {
        $crate::__contract_tests!(queue, $factory;
            push_is_idempotent,
            push_many_adds_only_what_is_missing,
            claims_are_oldest_first_and_bounded,
            ack_removes_the_id,
            a_lapsed_lease_is_redelivered_and_the_old_claim_fenced,
            a_lapsed_lease_not_reclaimed_can_still_ack,
            extend_keeps_the_claim,
            retry_delays_the_next_delivery,
            retry_without_delay_is_ready_at_once,
            depth_counts_each_state,
            depth_counts_what_has_come_due_as_ready,
            wait_wakes_on_new_work;
            racing:
            concurrent_claimers_never_share_an_id,
        );
    };
}
