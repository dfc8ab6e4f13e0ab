//! Cases for a backend's [`BulkActions`]: what is selected, how pages go, and who holds an
//! action.

use crate::backend::{Backend, BulkActions, Repository, Transition};
use crate::bulk::{Acceptance, BulkAction, BulkKind, BulkRequest, BulkStatus, PAGE};
use crate::idempotency::IdempotencyKey;
use crate::order::{OrderId, OrderStatus};
use crate::queue::ClaimToken;
use crate::testing::{LONG, SHORT, failed_order, race, sample_order, sleep};
use std::sync::Arc;

fn bulk<B: Backend + ?Sized>(backend: &B) -> Arc<dyn BulkActions> {
    backend
        .bulk_actions()
        .expect("the backend keeps bulk actions")
}

async fn accepted(store: &dyn BulkActions, request: BulkRequest) -> BulkAction {
    match store.accept(&request, None).await.unwrap() {
        Acceptance::Accepted(action) => action,
        other => panic!("expected a new action, got {other:?}"),
    }
}

/// Starts the order under a fresh claim; returns the claim.
async fn start(repository: &dyn Repository, id: OrderId) -> ClaimToken {
    let claim = ClaimToken::generate();
    repository
        .transition(id, Transition::Start { claim, lease: LONG })
        .await
        .unwrap();
    claim
}

async fn status(repository: &dyn Repository, id: OrderId) -> OrderStatus {
    repository.get(id).await.unwrap().unwrap().status
}

/// A bulk cancel selects the user's PENDING orders at acceptance, oldest first and up to its
/// limit, and nothing accepted later; its page cancels those still PENDING, skips one that
/// started since, and finishes the action with its counts.
pub async fn a_bulk_cancel_acts_on_what_matched_when_accepted<B: Backend + ?Sized>(
    backend: Arc<B>,
) {
    let repository = backend.repository();
    let store = bulk(&*backend);
    let mut ann = Vec::new();
    for _ in 0..5 {
        ann.push(repository.insert(&sample_order("ann", 1)).await.unwrap().id);
    }
    let bob = repository.insert(&sample_order("bob", 1)).await.unwrap().id;
    start(&*repository, ann[0]).await;

    let action = accepted(&*store, BulkRequest::new(BulkKind::Cancel, 3).user("ann")).await;
    assert_eq!(
        (action.matched, action.acted, action.status),
        (3, 0, BulkStatus::Running)
    );
    assert_eq!(action.selects, OrderStatus::Pending);
    assert_eq!(store.get(action.id).await.unwrap(), Some(action.clone()));
    let later = repository.insert(&sample_order("ann", 1)).await.unwrap().id;
    start(&*repository, ann[2]).await;

    let (claimed, claim) = store
        .claim(LONG)
        .await
        .unwrap()
        .expect("an action to claim");
    assert_eq!(claimed.id, action.id);
    assert!(store.claim(LONG).await.unwrap().is_none(), "held");
    let page = store.page(action.id, claim, LONG).await.unwrap().unwrap();
    let cancelled: Vec<OrderId> = page.changed.iter().map(|order| order.id).collect();
    assert_eq!(cancelled, [ann[1], ann[3]]);
    assert!(
        page.changed
            .iter()
            .all(|o| o.status == OrderStatus::Cancelled)
    );
    let done = page.action;
    assert_eq!(
        (done.matched, done.acted, done.skipped, done.status),
        (3, 2, 1, BulkStatus::Done)
    );
    assert!(done.finished_at.is_some());
    assert_eq!(store.get(action.id).await.unwrap(), Some(done));
    for (id, expected) in [
        (ann[0], OrderStatus::Processing),
        (ann[1], OrderStatus::Cancelled),
        (ann[2], OrderStatus::Processing),
        (ann[3], OrderStatus::Cancelled),
        (ann[4], OrderStatus::Pending),
        (later, OrderStatus::Pending),
        (bob, OrderStatus::Pending),
    ] {
        assert_eq!(status(&*repository, id).await, expected, "order {id}");
    }
    assert!(store.claim(LONG).await.unwrap().is_none(), "nothing left");
    let metrics = repository.metrics().await.unwrap();
    assert_eq!(metrics.statuses.cancelled, 2);
}

/// A bulk retry requeues the FAILED orders it selected, each with its failure kept and due at
/// once; one retried in between is skipped.
pub async fn a_bulk_retry_requeues_the_failed_orders<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let store = bulk(&*backend);
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(failed_order(&*repository, "ann", "declined").await);
    }
    let action = accepted(&*store, BulkRequest::new(BulkKind::Retry, 10)).await;
    assert_eq!(action.matched, 3);
    repository
        .transition(orders[1].id, Transition::requeue(&orders[1]))
        .await
        .unwrap();
    let (_, claim) = store.claim(LONG).await.unwrap().unwrap();
    let page = store.page(action.id, claim, LONG).await.unwrap().unwrap();
    assert_eq!((page.action.acted, page.action.skipped), (2, 1));
    assert_eq!(page.changed.len(), 2);
    for order in &page.changed {
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(order.failures.len(), 1);
        assert_eq!(order.failures[0].error, "declined");
        assert_eq!(
            repository.get(order.id).await.unwrap().as_ref(),
            Some(order)
        );
    }
    // Due at once: the queue hands all three out.
    let claims = backend.queue().claim(10, LONG).await.unwrap();
    assert_eq!(claims.len(), 3);
}

/// Pages hold at most [`PAGE`] orders; a holder whose lease ran out is fenced off once another
/// claims the action, which resumes after the last page written. An action that selected
/// nothing is done at once.
pub async fn pages_are_bounded_and_a_lapsed_holder_is_fenced<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let store = bulk(&*backend);
    let empty = accepted(&*store, BulkRequest::new(BulkKind::Retry, 10)).await;
    assert_eq!((empty.matched, empty.status), (0, BulkStatus::Done));

    let count = PAGE + 20;
    let inserts: Vec<_> = (0..count)
        .map(|i| {
            let repository = repository.clone();
            tokio::spawn(async move {
                repository
                    .insert(&sample_order(&format!("u{}", i % 7), 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for insert in inserts {
        insert.await.unwrap();
    }
    let action = accepted(&*store, BulkRequest::new(BulkKind::Cancel, 5_000)).await;
    assert_eq!(action.matched, count as u64);
    let (_, first) = store.claim(SHORT).await.unwrap().unwrap();
    let page = store.page(action.id, first, SHORT).await.unwrap().unwrap();
    assert_eq!(
        (page.action.acted, page.action.status),
        (PAGE as u64, BulkStatus::Running)
    );
    assert!(
        store.claim(SHORT).await.unwrap().is_none(),
        "held while its lease runs"
    );
    sleep(SHORT + SHORT / 2).await;
    let (resumed, second) = store.claim(LONG).await.unwrap().expect("taken over");
    assert_eq!(resumed.acted, PAGE as u64);
    assert!(
        store.page(action.id, first, LONG).await.unwrap().is_none(),
        "the lapsed holder writes nothing"
    );
    let last = store.page(action.id, second, LONG).await.unwrap().unwrap();
    assert_eq!(
        (last.action.acted, last.action.skipped, last.action.status),
        (count as u64, 0, BulkStatus::Done)
    );
    assert_eq!(
        repository.metrics().await.unwrap().statuses.cancelled,
        count as u64
    );
    assert!(store.page(action.id, second, LONG).await.unwrap().is_none());
}

/// A request sent again under its idempotency key answers the action accepted the first time,
/// selecting nothing new; another request under the key is told so.
pub async fn one_key_names_one_bulk_action<B: Backend + ?Sized>(backend: Arc<B>) {
    let repository = backend.repository();
    let store = bulk(&*backend);
    repository.insert(&sample_order("ann", 1)).await.unwrap();
    let key = IdempotencyKey::new("cancel-all-2291").unwrap();
    let request = BulkRequest::new(BulkKind::Cancel, 100);
    let Acceptance::Accepted(first) = store.accept(&request, Some(&key)).await.unwrap() else {
        panic!("the first request is accepted");
    };
    repository.insert(&sample_order("ann", 1)).await.unwrap();
    match store.accept(&request, Some(&key)).await.unwrap() {
        Acceptance::Replayed(again) => assert_eq!((again.id, again.matched), (first.id, 1)),
        other => panic!("expected a replay, got {other:?}"),
    }
    let other = BulkRequest::new(BulkKind::Cancel, 100).user("ann");
    match store.accept(&other, Some(&key)).await.unwrap() {
        Acceptance::KeyReused(named) => assert_eq!(named.id, first.id),
        other => panic!("expected the key refused, got {other:?}"),
    }
}

/// Of many requests sent at once under one key, through separate handles, one is accepted and
/// the others answer its action; round after round.
pub async fn concurrent_bulk_requests_with_one_key_accept_one<B>(backends: Vec<Arc<B>>)
where
    B: Backend + ?Sized + 'static,
{
    const ROUNDS: usize = 5;
    let stores: Vec<Arc<dyn BulkActions>> = backends.iter().map(|b| bulk(&**b)).collect();
    let stores: Vec<Arc<StoreHandle>> = stores
        .into_iter()
        .map(|store| Arc::new(StoreHandle(store)))
        .collect();
    let rounds = race(
        &stores,
        ROUNDS,
        |store, _| async move {
            store.0.get(crate::bulk::BulkId::generate()).await.unwrap();
        },
        |store, round, _| async move {
            let key = IdempotencyKey::new(format!("bulk-{round}")).unwrap();
            let request = BulkRequest::new(BulkKind::Retry, 10);
            match store.0.accept(&request, Some(&key)).await.unwrap() {
                Acceptance::Accepted(action) => (true, action.id),
                Acceptance::Replayed(action) => (false, action.id),
                other => panic!("{other:?}"),
            }
        },
    )
    .await;
    for (round, answers) in rounds.iter().enumerate() {
        let accepted = answers.iter().filter(|(new, _)| *new).count();
        assert_eq!(accepted, 1, "round {round}");
        assert!(
            answers.iter().all(|(_, id)| *id == answers[0].1),
            "round {round}"
        );
    }
}

/// A store, as a sized handle for [`race`].
struct StoreHandle(Arc<dyn BulkActions>);
