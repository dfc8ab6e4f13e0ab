//! Cases for [`Repository`] implementations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod keys;
mod retries;
mod steps;

pub use keys::{
    a_burst_through_one_handle_makes_one_order_per_key, a_key_creates_one_order,
    concurrent_submissions_with_one_key_create_one_order,
    concurrent_takeovers_of_an_expired_key_create_one_order, expired_keys_are_forgotten,
};
pub use retries::{
    a_failed_order_is_requeued_with_its_failure_kept, concurrent_requeues_of_one_failure_make_one,
};
pub use steps::{
    a_cancel_request_stops_the_steps, a_checkpoint_is_fenced_by_the_claim,
    a_failure_keeps_its_compensated_steps, an_order_with_steps_stays_processing,
    checkpoints_are_stored_with_the_order,
};

use std::collections::HashSet;
use std::sync::Arc;

use super::{LONG, SHORT, race, sample_order, sleep};
use crate::error::TransitionError;
use crate::order::{Order, OrderId, OrderStatus};
use crate::queue::ClaimToken;
use crate::repository::{OrderQuery, Repository, Transition};

fn start(lease: std::time::Duration) -> (ClaimToken, Transition) {
    let claim = ClaimToken::generate();
    (claim, Transition::Start { claim, lease })
}

async fn conflict(repo: &dyn Repository, id: OrderId, t: Transition) -> (OrderStatus, bool) {
    match repo.transition(id, t).await {
        Err(TransitionError::Conflict {
            id: got,
            current,
            held_by_other,
            ..
        }) => {
            assert_eq!(got, id);
            (current, held_by_other)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Starts the order under a fresh claim with a long lease; returns the claim.
async fn started(repo: &dyn Repository, id: OrderId) -> ClaimToken {
    let (claim, start_it) = start(LONG);
    repo.transition(id, start_it).await.unwrap();
    claim
}

async fn insert(repo: &dyn Repository) -> Order {
    repo.insert(&sample_order("user-1", 2)).await.unwrap()
}

/// A new order is PENDING, untouched, with an id above every earlier one, and reads back
/// exactly as it was returned.
pub async fn insert_stores_a_pending_order(repo: Arc<dyn Repository>) {
    let first = repo.insert(&sample_order("user-1", 2)).await.unwrap();
    let second = repo.insert(&sample_order("user-2", 1)).await.unwrap();
    assert!(second.id > first.id);
    assert_eq!(first.user_id, "user-1");
    assert_eq!(first.item_ids, ["item-1", "item-2"]);
    assert_eq!(first.total_amount.to_string(), "59.99");
    assert_eq!(first.status, OrderStatus::Pending);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.created_at, first.updated_at);
    assert_eq!(
        (first.processing_start_time, first.processing_end_time),
        (None, None)
    );
    assert_eq!(first.last_error, None);
    assert_eq!(repo.get(first.id).await.unwrap(), Some(first));
    assert_eq!(repo.get(second.id).await.unwrap(), Some(second));
}

/// Reading or changing an id that was never assigned finds nothing.
pub async fn unknown_ids_are_not_found(repo: Arc<dyn Repository>) {
    let missing = OrderId::new(987_654_321).unwrap();
    assert_eq!(repo.get(missing).await.unwrap(), None);
    assert!(matches!(
        repo.transition(missing, Transition::Cancel).await,
        Err(TransitionError::NotFound(id)) if id == missing
    ));
}

/// PENDING -> PROCESSING -> COMPLETED under one claim, with times and attempts recorded.
pub async fn start_then_complete(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (claim, start) = start(LONG);
    let started = repo.transition(order.id, start).await.unwrap();
    assert_eq!(started.status, OrderStatus::Processing);
    assert_eq!(started.attempts, 1);
    let start_time = started.processing_start_time.expect("start time is set");
    assert!(start_time >= order.created_at);
    assert!(started.updated_at >= order.updated_at);

    let done = repo
        .transition(order.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    assert_eq!(done.status, OrderStatus::Completed);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.processing_start_time, Some(start_time));
    assert!(done.processing_end_time.expect("end time is set") >= start_time);
    assert_eq!(repo.get(order.id).await.unwrap(), Some(done));
}

/// Only the claim that started an order may finish, retry, fail or renew it.
pub async fn changes_are_fenced_by_the_claim(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (_, start) = start(LONG);
    let started = repo.transition(order.id, start).await.unwrap();
    let stranger = ClaimToken::generate();
    for t in [
        Transition::Complete {
            claim: stranger,
            steps: None,
        },
        Transition::Retry {
            claim: stranger,
            error: "x".into(),
        },
        Transition::Fail {
            claim: stranger,
            error: "x".into(),
            steps: None,
        },
        Transition::Renew {
            claim: stranger,
            lease: LONG,
        },
        Transition::Release { claim: stranger },
    ] {
        assert_eq!(
            conflict(&*repo, order.id, t).await,
            (OrderStatus::Processing, true)
        );
    }
    assert_eq!(repo.get(order.id).await.unwrap(), Some(started));
}

/// A second start is refused while the first claim's lease lives, and takes over once it
/// has run out; the old claim can then change nothing.
pub async fn a_lapsed_lease_is_taken_over_and_the_old_claim_fenced(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (old, first_start) = start(SHORT);
    let first = repo.transition(order.id, first_start).await.unwrap();
    let (_, early) = start(LONG);
    assert_eq!(
        conflict(&*repo, order.id, early).await,
        (OrderStatus::Processing, true)
    );

    sleep(SHORT + SHORT / 2).await;
    let (new, takeover) = start(LONG);
    let second = repo.transition(order.id, takeover).await.unwrap();
    assert_eq!(second.status, OrderStatus::Processing);
    assert_eq!(second.attempts, 2);
    assert_eq!(
        second.processing_start_time, first.processing_start_time,
        "the start time is the first attempt's"
    );

    assert_eq!(
        conflict(
            &*repo,
            order.id,
            Transition::Complete {
                claim: old,
                steps: None
            }
        )
        .await,
        (OrderStatus::Processing, true)
    );
    let done = repo
        .transition(
            order.id,
            Transition::Complete {
                claim: new,
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, OrderStatus::Completed);
}

/// A claim whose lease ran out but that nobody took over may still finish its order.
pub async fn a_lapsed_lease_not_taken_over_still_completes(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (claim, start) = start(SHORT);
    repo.transition(order.id, start).await.unwrap();
    sleep(SHORT + SHORT / 2).await;
    let done = repo
        .transition(order.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    assert_eq!(done.status, OrderStatus::Completed);
}

/// Renewing moves the end of the lease, so nobody takes the order over meanwhile.
pub async fn renew_extends_the_lease(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (claim, start) = start(SHORT);
    let started = repo.transition(order.id, start).await.unwrap();
    sleep(SHORT * 2 / 3).await;
    let renewed = repo
        .transition(
            order.id,
            Transition::Renew {
                claim,
                lease: SHORT,
            },
        )
        .await
        .unwrap();
    assert_eq!(renewed.status, OrderStatus::Processing);
    assert_eq!(renewed.attempts, 1);
    assert_eq!(
        renewed.updated_at, started.updated_at,
        "a renewal is not news"
    );
    sleep(SHORT / 2).await;
    // Past the first lease, within the renewed one.
    let (_, takeover) = self::start(LONG);
    assert_eq!(
        conflict(&*repo, order.id, takeover).await,
        (OrderStatus::Processing, true)
    );
    sleep(SHORT).await;
    let (_, takeover) = self::start(LONG);
    assert_eq!(
        repo.transition(order.id, takeover).await.unwrap().attempts,
        2
    );
}

/// A failed attempt goes back to PENDING with its error; the next attempt counts on; a
/// final failure is FAILED with an end time.
pub async fn retry_then_fail(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let (first, start_first) = start(LONG);
    repo.transition(order.id, start_first).await.unwrap();
    let pending = repo
        .transition(
            order.id,
            Transition::Retry {
                claim: first,
                error: "warehouse busy".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(pending.status, OrderStatus::Pending);
    assert_eq!(pending.last_error.as_deref(), Some("warehouse busy"));
    assert_eq!(pending.processing_end_time, None);
    assert_eq!(
        conflict(
            &*repo,
            order.id,
            Transition::Complete {
                claim: first,
                steps: None
            }
        )
        .await,
        (OrderStatus::Pending, false),
        "the retried claim no longer holds the order"
    );

    let (second, start_second) = start(LONG);
    let started = repo.transition(order.id, start_second).await.unwrap();
    assert_eq!(started.attempts, 2);
    let failed = repo
        .transition(
            order.id,
            Transition::Fail {
                claim: second,
                error: "card declined".into(),
                steps: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status, OrderStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("card declined"));
    assert!(failed.processing_end_time.is_some());
}

/// Giving an unfinished attempt back makes the order PENDING as if the attempt had not
/// been made; only the claim that holds it can.
pub async fn release_gives_an_unfinished_attempt_back(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let claim = started(&*repo, order.id).await;
    assert_eq!(
        conflict(
            &*repo,
            order.id,
            Transition::Release {
                claim: ClaimToken::generate()
            }
        )
        .await,
        (OrderStatus::Processing, true)
    );
    let released = repo
        .transition(order.id, Transition::Release { claim })
        .await
        .unwrap();
    assert_eq!(released.status, OrderStatus::Pending);
    assert_eq!(released.attempts, 0);
    assert_eq!(released.processing_start_time, None);
    assert_eq!(released.last_error, None);
    assert_eq!(repo.metrics().await.unwrap().statuses.pending, 1);

    // After a failed attempt, a released second one leaves the first counted.
    let (first, start_first) = start(LONG);
    let started = repo.transition(order.id, start_first).await.unwrap();
    repo.transition(
        order.id,
        Transition::Retry {
            claim: first,
            error: "busy".into(),
        },
    )
    .await
    .unwrap();
    let (second, start_second) = start(LONG);
    repo.transition(order.id, start_second).await.unwrap();
    let released = repo
        .transition(order.id, Transition::Release { claim: second })
        .await
        .unwrap();
    assert_eq!(released.attempts, 1);
    assert_eq!(
        released.processing_start_time,
        started.processing_start_time
    );
    assert_eq!(released.last_error.as_deref(), Some("busy"));
}

/// Only a PENDING order can be cancelled, and a cancelled order is never started.
pub async fn only_pending_orders_cancel(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let cancelled = repo.transition(order.id, Transition::Cancel).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let (_, start_cancelled) = start(LONG);
    assert_eq!(
        conflict(&*repo, order.id, start_cancelled).await,
        (OrderStatus::Cancelled, false)
    );

    let busy = insert(&*repo).await;
    let (_, start_busy) = start(LONG);
    repo.transition(busy.id, start_busy).await.unwrap();
    assert_eq!(
        conflict(&*repo, busy.id, Transition::Cancel).await,
        (OrderStatus::Processing, true)
    );
}

fn listed(orders: &[Order]) -> Vec<i64> {
    orders.iter().map(|order| order.id.get()).collect()
}

/// Listings are newest first (or oldest first), filtered by status and user, bounded by
/// the limit, and page from the cursor without gaps or repeats.
pub async fn list_filters_and_pages(repo: Arc<dyn Repository>) {
    // ann: 1 2 4 5, bob: 3; 2 cancelled, 4 started.
    let mut ids = Vec::new();
    for user in ["ann", "ann", "bob", "ann", "ann"] {
        ids.push(repo.insert(&sample_order(user, 1)).await.unwrap().id);
    }
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    repo.transition(ids[1], Transition::Cancel).await.unwrap();
    started(&*repo, ids[3]).await;

    let all = repo.list(&OrderQuery::newest_first(10)).await.unwrap();
    assert_eq!(listed(&all), [raw[4], raw[3], raw[2], raw[1], raw[0]]);
    assert_eq!(
        all[1].status,
        OrderStatus::Processing,
        "orders come back whole"
    );
    assert_eq!(all[1], repo.get(ids[3]).await.unwrap().unwrap());

    let oldest = repo.list(&OrderQuery::oldest_first(2)).await.unwrap();
    assert_eq!(listed(&oldest), [raw[0], raw[1]]);
    let next = repo
        .list(&OrderQuery::oldest_first(2).after(ids[1]))
        .await
        .unwrap();
    assert_eq!(listed(&next), [raw[2], raw[3]]);

    let ann = OrderQuery::newest_first(2).user("ann");
    let page = repo.list(&ann).await.unwrap();
    assert_eq!(listed(&page), [raw[4], raw[3]]);
    let page = repo.list(&ann.clone().after(ids[3])).await.unwrap();
    assert_eq!(listed(&page), [raw[1], raw[0]]);
    let page = repo.list(&ann.clone().after(ids[0])).await.unwrap();
    assert!(page.is_empty(), "past the oldest there is nothing");

    let pending = OrderQuery::newest_first(10).status(OrderStatus::Pending);
    assert_eq!(
        listed(&repo.list(&pending).await.unwrap()),
        [raw[4], raw[2], raw[0]]
    );
    assert_eq!(
        listed(&repo.list(&pending.clone().user("ann")).await.unwrap()),
        [raw[4], raw[0]]
    );
    assert_eq!(
        listed(&repo.list(&pending.clone().after(ids[2])).await.unwrap()),
        [raw[0]]
    );
    let cancelled = OrderQuery::newest_first(10).status(OrderStatus::Cancelled);
    assert_eq!(listed(&repo.list(&cancelled).await.unwrap()), [raw[1]]);
    let oldest_pending = OrderQuery::oldest_first(1).status(OrderStatus::Pending);
    assert_eq!(listed(&repo.list(&oldest_pending).await.unwrap()), [raw[0]]);

    assert!(
        repo.list(&OrderQuery::newest_first(10).user("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        repo.list(&OrderQuery::newest_first(0))
            .await
            .unwrap()
            .is_empty(),
        "a limit of 0 lists nothing"
    );
}

/// Nothing moves an order out of COMPLETED, CANCELLED, or FAILED but a requeue (see
/// [`a_failed_order_is_requeued_with_its_failure_kept`]).
pub async fn finished_orders_never_change(repo: Arc<dyn Repository>) {
    let order = insert(&*repo).await;
    let claim = started(&*repo, order.id).await;
    let done = repo
        .transition(order.id, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    let (_, restart) = start(LONG);
    for t in [
        restart,
        Transition::Cancel,
        Transition::Complete { claim, steps: None },
        Transition::Retry {
            claim,
            error: "late".into(),
        },
        Transition::Fail {
            claim,
            error: "late".into(),
            steps: None,
        },
        Transition::Renew { claim, lease: LONG },
        Transition::Release { claim },
        Transition::Requeue {
            seen: done.updated_at,
            failure: crate::order::FailureRecord::of(&done),
            steps: Vec::new(),
        },
    ] {
        let (current, _) = conflict(&*repo, order.id, t).await;
        assert_eq!(current, OrderStatus::Completed);
    }
    assert_eq!(repo.get(order.id).await.unwrap(), Some(done));
}

/// Of many workers starting one order at once, each through its own handle, exactly one
/// wins; round after round.
pub async fn concurrent_starts_have_one_winner<R>(repos: Vec<Arc<R>>)
where
    R: Repository + ?Sized + 'static,
{
    const ROUNDS: usize = 20;
    let mut orders = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        orders.push(
            repos[0]
                .insert(&sample_order("user-1", 2))
                .await
                .unwrap()
                .id,
        );
    }
    let rounds = race(
        &repos,
        ROUNDS,
        |repo, _| async move {
            repo.get(OrderId::new(1).unwrap()).await.unwrap();
        },
        |repo, round, _| {
            let id = orders[round];
            async move { repo.transition(id, start(LONG).1).await.is_ok() }
        },
    )
    .await;
    for (round, won) in rounds.iter().enumerate() {
        let winners = won.iter().filter(|won| **won).count();
        assert_eq!(winners, 1, "round {round}");
        let order = repos[0].get(orders[round]).await.unwrap().unwrap();
        assert_eq!(order.attempts, 1, "round {round}: started once");
    }
}

/// Inserts made at once through many handles get distinct ids, and the total counts each
/// once.
pub async fn concurrent_inserts_get_distinct_ids<R>(repos: Vec<Arc<R>>)
where
    R: Repository + ?Sized + 'static,
{
    const ROUNDS: usize = 10;
    let rounds = race(
        &repos,
        ROUNDS,
        |repo, _| async move {
            repo.get(OrderId::new(1).unwrap()).await.unwrap();
        },
        |repo, _, place| async move {
            let order = sample_order(&format!("user-{place}"), 1);
            repo.insert(&order).await.unwrap().id
        },
    )
    .await;
    let ids: Vec<OrderId> = rounds.into_iter().flatten().collect();
    let distinct: HashSet<_> = ids.iter().collect();
    let expected = repos.len() * ROUNDS;
    assert_eq!(distinct.len(), expected);
    let metrics = repos[0].metrics().await.unwrap();
    assert_eq!(metrics.total_orders, expected as u64);
    assert_eq!(metrics.statuses.pending, expected as u64);
}

/// Recovery finds PENDING orders and PROCESSING ones whose lease ran out, in id order,
/// a page at a time; it skips live leases and finished orders.
pub async fn stranded_finds_what_a_lost_queue_held(repo: Arc<dyn Repository>) {
    let pending = insert(&*repo).await.id;
    let live = insert(&*repo).await.id;
    repo.transition(live, start(LONG).1).await.unwrap();
    let lapsed = insert(&*repo).await.id;
    repo.transition(lapsed, start(SHORT).1).await.unwrap();
    let completed = insert(&*repo).await.id;
    let claim = started(&*repo, completed).await;
    repo.transition(completed, Transition::Complete { claim, steps: None })
        .await
        .unwrap();
    let cancelled = insert(&*repo).await.id;
    repo.transition(cancelled, Transition::Cancel)
        .await
        .unwrap();
    let retried = insert(&*repo).await.id;
    let claim = started(&*repo, retried).await;
    repo.transition(
        retried,
        Transition::Retry {
            claim,
            error: "again".into(),
        },
    )
    .await
    .unwrap();

    assert_eq!(repo.stranded(None, 100).await.unwrap(), [pending, retried]);
    sleep(SHORT + SHORT / 2).await;
    assert_eq!(
        repo.stranded(None, 100).await.unwrap(),
        [pending, lapsed, retried]
    );
    assert_eq!(repo.stranded(None, 2).await.unwrap(), [pending, lapsed]);
    assert_eq!(repo.stranded(Some(lapsed), 2).await.unwrap(), [retried]);
    assert_eq!(repo.stranded(Some(retried), 2).await.unwrap(), []);
}

/// Metrics count every status, add up to the total, and average the processing time of
/// completed orders.
pub async fn metrics_follow_every_change(repo: Arc<dyn Repository>) {
    let empty = repo.metrics().await.unwrap();
    assert_eq!(empty.total_orders, 0);
    assert_eq!(empty.avg_processing_seconds(), 0.0);

    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(insert(&*repo).await.id);
    }
    // ids[0] stays PENDING; [1] PROCESSING; [2] and [3] COMPLETED; [4] FAILED; [5] CANCELLED.
    repo.transition(ids[1], start(LONG).1).await.unwrap();
    let mut expected_micros = 0;
    for &id in &ids[2..4] {
        let claim = started(&*repo, id).await;
        sleep(std::time::Duration::from_millis(20)).await;
        let done = repo
            .transition(id, Transition::Complete { claim, steps: None })
            .await
            .unwrap();
        let took = done.processing_end_time.unwrap() - done.processing_start_time.unwrap();
        expected_micros += took.num_microseconds().unwrap();
    }
    let claim = started(&*repo, ids[4]).await;
    repo.transition(
        ids[4],
        Transition::Fail {
            claim,
            error: "no".into(),
            steps: None,
        },
    )
    .await
    .unwrap();
    repo.transition(ids[5], Transition::Cancel).await.unwrap();

    let metrics = repo.metrics().await.unwrap();
    assert_eq!(metrics.total_orders, 6);
    let s = metrics.statuses;
    assert_eq!(
        (s.pending, s.processing, s.completed, s.failed, s.cancelled),
        (1, 1, 2, 1, 1)
    );
    assert_eq!(s.sum(), metrics.total_orders);
    assert_eq!(
        metrics.completed_processing_micros,
        u64::try_from(expected_micros).unwrap()
    );
    assert!(metrics.avg_processing_seconds() >= 0.02);
}

/// Generates one `#[tokio::test]` per [`Repository`](crate::backend::Repository) contract case, each on
/// a backend from `$factory` (an async closure returning `Arc<dyn Repository>`-compatible
/// values).
#[macro_export]
macro_rules! repository_contract_tests {
    ($factory:expr) => {
        $crate::__contract_tests!(repository, $factory;
            insert_stores_a_pending_order,
            unknown_ids_are_not_found,
            start_then_complete,
            changes_are_fenced_by_the_claim,
            a_lapsed_lease_is_taken_over_and_the_old_claim_fenced,
            a_lapsed_lease_not_taken_over_still_completes,
            renew_extends_the_lease,
            retry_then_fail,
            release_gives_an_unfinished_attempt_back,
            only_pending_orders_cancel,
            finished_orders_never_change,
            list_filters_and_pages,
            a_key_creates_one_order,
            a_burst_through_one_handle_makes_one_order_per_key,
            expired_keys_are_forgotten,
            stranded_finds_what_a_lost_queue_held,
            metrics_follow_every_change,
            checkpoints_are_stored_with_the_order,
            a_checkpoint_is_fenced_by_the_claim,
            an_order_with_steps_stays_processing,
            a_cancel_request_stops_the_steps,
            a_failure_keeps_its_compensated_steps,
            a_failed_order_is_requeued_with_its_failure_kept;
            racing:
            concurrent_requeues_of_one_failure_make_one,
            concurrent_submissions_with_one_key_create_one_order,
            concurrent_takeovers_of_an_expired_key_create_one_order,
            concurrent_starts_have_one_winner,
            concurrent_inserts_get_distinct_ids,
        );
    };
}
