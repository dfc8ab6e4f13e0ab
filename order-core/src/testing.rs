//! The contract every [`Repository`](crate::backend::Repository) and [`Queue`](crate::backend::Queue) must keep,
//! and the rules a [`Backend`](crate::backend::Backend) whose queue shares its repository's storage
//! adds, as tests to run against an implementation.
//!
//! Each case is an async function taking a fresh, empty backend. The macros
//! [`repository_contract_tests!`](crate::repository_contract_tests) and
//! [`queue_contract_tests!`](crate::queue_contract_tests) and
//! [`backend_contract_tests!`](crate::backend_contract_tests) turn every case into a `#[tokio::test]`
//! in the calling crate, given an async factory:
//!
//! ```
//! // In a test file of the crate that implements the backend (here, the in-memory one):
//! mod repository_contract {
//!     order_core::repository_contract_tests!(async || {
//!         std::sync::Arc::new(order_core::memory::InMemoryRepository::new())
//!     });
//! }
//! ```
//!
//! The factory may also return `(backend, guard)`, the guard kept until the case ends: a
//! scratch database that is dropped with it, say ([`TestDatabase`], feature `postgres`). The
//! racing cases want several handles on one storage, as several servers on one database have:
//! a factory returns [`Shared`] to make them, or else they race clones of one handle.
//! Each racing case runs many rounds, its calls released together by a barrier after a warm-up
//! has opened the connections they need ([`race`]), so that they meet in the storage.
//!
//! Lease cases use real time (a backend may keep time on another machine) with leases of a
//! second and margins of a third of that or more, so a busy machine's stalls or a database's
//! round trips do not decide a case; each takes two or three seconds.

// Test-support code: a broken expectation must fail the test, and panicking is how it does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::order::{NewOrder, ValidatedOrder};

/// A lease long enough to hold through a case's own steps.
const LONG: Duration = Duration::from_secs(60);
/// A lease short enough to watch run out, long enough that a busy machine's scheduling
/// hiccups (the margins are a third to a half of it) do not decide a case.
const SHORT: Duration = Duration::from_secs(1);

/// What a contract factory returns: the backend to test, alone or with a guard that must live
/// until the case ends (a scratch database that is dropped with it, say), or [`Shared`]
/// handles on one storage.
pub trait Fixture {
    /// The backend the case runs against.
    type Backend;
    /// Kept alive for the length of the case, then dropped.
    type Guard;
    /// Separates the two.
    fn split(self) -> (Self::Backend, Self::Guard);
    /// `count` handles on the one storage, for the racing cases: each as separate as two
    /// servers on one database are (its own batches, so that its calls reach the storage as
    /// statements of their own). A backend whose handles share everything hands out clones.
    fn split_many(self, count: usize) -> (Vec<Self::Backend>, Self::Guard);
}

impl<T: ?Sized> Fixture for Arc<T> {
    type Backend = Arc<T>;
    type Guard = ();
    fn split(self) -> (Arc<T>, ()) {
        (self, ())
    }
    fn split_many(self, count: usize) -> (Vec<Arc<T>>, ()) {
        (vec![self; count], ())
    }
}

impl<T: ?Sized, G> Fixture for (Arc<T>, G) {
    type Backend = Arc<T>;
    type Guard = G;
    fn split(self) -> (Arc<T>, G) {
        self
    }
    fn split_many(self, count: usize) -> (Vec<Arc<T>>, G) {
        (vec![self.0; count], self.1)
    }
}

/// Handles on one storage that a factory can make more of, as each server on one database
/// makes its own: the racing cases race calls made through different handles, so that a
/// backend that groups one handle's calls into one statement cannot hide a race between
/// statements.
pub struct Shared<T: ?Sized, G> {
    another: Box<dyn Fn() -> Arc<T> + Send + Sync>,
    guard: G,
}

impl<T: ?Sized, G> Shared<T, G> {
    /// Handles made by `another`, kept with `guard` until the case ends.
    pub fn new(another: impl Fn() -> Arc<T> + Send + Sync + 'static, guard: G) -> Self {
        Self {
            another: Box::new(another),
            guard,
        }
    }
}

impl<T: ?Sized, G: std::fmt::Debug> std::fmt::Debug for Shared<T, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized, G> Fixture for Shared<T, G> {
    type Backend = Arc<T>;
    type Guard = G;
    fn split(self) -> (Arc<T>, G) {
        ((self.another)(), self.guard)
    }
    fn split_many(self, count: usize) -> (Vec<Arc<T>>, G) {
        ((0..count).map(|_| (self.another)()).collect(), self.guard)
    }
}

/// How many handles the racing cases race, and how many calls race in each round.
pub const RACERS: usize = 16;

/// Runs `round` `rounds` times, each time with `racers.len()` tasks that each get a handle
/// and their place, released together by a barrier once every task has been spawned, and
/// gives back each round's answers in the racers' order.
///
/// Before the first round every racer makes one call of `warm` at once, so that a pool of
/// connections is open and no racer is still connecting when another has finished: the
/// calls then meet in the storage, as real clients' do.
pub async fn race<H, T, W, WF, F, Fut>(
    racers: &[Arc<H>],
    rounds: usize,
    warm: W,
    round: F,
) -> Vec<Vec<T>>
where
    H: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
    W: Fn(Arc<H>, usize) -> WF,
    WF: Future<Output = ()> + Send + 'static,
    F: Fn(Arc<H>, usize, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let warmers: Vec<_> = racers
        .iter()
        .enumerate()
        .map(|(place, racer)| tokio::spawn(warm(racer.clone(), place)))
        .collect();
    for warmer in warmers {
        warmer.await.unwrap();
    }
    let mut answers = Vec::with_capacity(rounds);
    for number in 0..rounds {
        let gate = Arc::new(tokio::sync::Barrier::new(racers.len()));
        let tasks: Vec<_> = racers
            .iter()
            .enumerate()
            .map(|(place, racer)| {
                let (gate, call) = (gate.clone(), round(racer.clone(), number, place));
                tokio::spawn(async move {
                    gate.wait().await;
                    call.await
                })
            })
            .collect();
        let mut answered = Vec::with_capacity(tasks.len());
        for task in tasks {
            answered.push(task.await.unwrap());
        }
        answers.push(answered);
    }
    answers
}

/// A valid order for user `user` with `items` items.
pub fn sample_order(user: &str, items: usize) -> ValidatedOrder {
    NewOrder {
        user_id: user.to_owned(),
        item_ids: (1..=items).map(|i| format!("item-{i}")).collect(),
        total_amount: Decimal::new(5999, 2),
    }
    .validate()
    .expect("the sample order is valid")
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Cases for [`Repository`](crate::backend::Repository) implementations.
pub mod repository {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::HashSet;
    use std::sync::Arc;

    use super::{LONG, SHORT, race, sample_order, sleep};
    use crate::error::TransitionError;
    use crate::idempotency::{Fingerprint, IdempotencyKey, Insertion, KeyRecord};
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
            .transition(order.id, Transition::Complete { claim })
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
            Transition::Complete { claim: stranger },
            Transition::Retry {
                claim: stranger,
                error: "x".into(),
            },
            Transition::Fail {
                claim: stranger,
                error: "x".into(),
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
            conflict(&*repo, order.id, Transition::Complete { claim: old }).await,
            (OrderStatus::Processing, true)
        );
        let done = repo
            .transition(order.id, Transition::Complete { claim: new })
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
            .transition(order.id, Transition::Complete { claim })
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
            conflict(&*repo, order.id, Transition::Complete { claim: first }).await,
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

    fn keyed(
        key: &str,
        order: &crate::order::ValidatedOrder,
        ttl: std::time::Duration,
    ) -> KeyRecord {
        KeyRecord {
            key: IdempotencyKey::scoped("scope-a", key).unwrap(),
            fingerprint: Fingerprint::of(order),
            ttl,
        }
    }

    /// A key creates one order; using it again returns that order and says whether the
    /// request was the same; scopes keep keys apart.
    pub async fn a_key_creates_one_order(repo: Arc<dyn Repository>) {
        let order = sample_order("ann", 2);
        let record = keyed("k-1", &order, LONG * 100);
        let Insertion::Created(created) = repo.insert_keyed(&order, &record).await.unwrap() else {
            panic!("a new key creates");
        };
        assert_eq!(created.status, OrderStatus::Pending);
        assert_eq!(repo.get(created.id).await.unwrap(), Some(created.clone()));
        let (claim, start_it) = start(LONG);
        repo.transition(created.id, start_it).await.unwrap();

        match repo.insert_keyed(&order, &record).await.unwrap() {
            Insertion::Existing {
                order: existing,
                same_request,
            } => {
                assert!(same_request);
                assert_eq!(existing.id, created.id);
                assert_eq!(
                    existing.status,
                    OrderStatus::Processing,
                    "the order as it is now"
                );
            }
            other => panic!("expected the existing order, got {other:?}"),
        }
        let other_order = sample_order("bob", 1);
        let reused = KeyRecord {
            fingerprint: Fingerprint::of(&other_order),
            ..record.clone()
        };
        assert!(matches!(
            repo.insert_keyed(&other_order, &reused).await.unwrap(),
            Insertion::Existing { same_request: false, order } if order.id == created.id
        ));
        let elsewhere = KeyRecord {
            key: IdempotencyKey::scoped("scope-b", "k-1").unwrap(),
            ..record.clone()
        };
        assert!(matches!(
            repo.insert_keyed(&order, &elsewhere).await.unwrap(),
            Insertion::Created(order) if order.id != created.id
        ));
        assert_eq!(repo.metrics().await.unwrap().total_orders, 2);
        repo.transition(created.id, Transition::Complete { claim })
            .await
            .unwrap();
    }

    /// Many submissions through one handle at once, some sharing keys and some asking for
    /// another order under a key in use, among plain inserts: each key makes one order, and
    /// every request hears of it (a backend that writes a burst in one
    /// statement must hold each key once in it). Counted in the storage.
    pub async fn a_burst_through_one_handle_makes_one_order_per_key(repo: Arc<dyn Repository>) {
        const KEYS: usize = 6;
        const COPIES: usize = 5;
        let calls: Vec<_> = (0..KEYS * COPIES)
            .map(|i| {
                let repo = repo.clone();
                let key = i % KEYS;
                // Odd copies of key 0 ask for another order: a key reused.
                let user = if key == 0 && i % 2 == 1 { "bob" } else { "ann" };
                let order = sample_order(user, 1 + key);
                let record = keyed(&format!("burst-{key}"), &sample_order("ann", 1 + key), LONG);
                let record = KeyRecord {
                    fingerprint: Fingerprint::of(&order),
                    ..record
                };
                tokio::spawn(async move {
                    let plain = repo.insert(&sample_order("plain", 1)).await.unwrap();
                    (
                        key,
                        repo.insert_keyed(&order, &record).await.unwrap(),
                        plain,
                    )
                })
            })
            .collect();
        let mut created: std::collections::HashMap<usize, OrderId> = Default::default();
        let mut answers = Vec::new();
        for call in calls {
            let (key, insertion, _) = call.await.unwrap();
            if let Insertion::Created(order) = &insertion {
                assert!(
                    created.insert(key, order.id).is_none(),
                    "key {key} made two orders"
                );
            }
            answers.push((key, insertion));
        }
        assert_eq!(created.len(), KEYS, "every key made its order");
        for (key, insertion) in answers {
            match insertion {
                Insertion::Created(order) | Insertion::Existing { order, .. } => {
                    assert_eq!(order.id, created[&key], "key {key}");
                }
            }
        }
        let metrics = repo.metrics().await.unwrap();
        assert_eq!(metrics.total_orders, (KEYS + KEYS * COPIES) as u64);
    }

    /// Of many submissions with one key that reach the storage at once, through handles as
    /// separate as two servers, exactly one creates and every other names its order; round
    /// after round, each time with a new key.
    pub async fn concurrent_submissions_with_one_key_create_one_order<R>(repos: Vec<Arc<R>>)
    where
        R: Repository + ?Sized + 'static,
    {
        const ROUNDS: usize = 30;
        let order = sample_order("ann", 1);
        let rounds = race(
            &repos,
            ROUNDS,
            |repo, place| {
                let (order, record) =
                    (order.clone(), keyed(&format!("warm-{place}"), &order, LONG));
                async move {
                    repo.insert_keyed(&order, &record).await.unwrap();
                }
            },
            |repo, round, _| {
                let (order, record) =
                    (order.clone(), keyed(&format!("race-{round}"), &order, LONG));
                async move { repo.insert_keyed(&order, &record).await.unwrap() }
            },
        )
        .await;
        for (round, answers) in rounds.iter().enumerate() {
            let created: Vec<OrderId> = answers
                .iter()
                .filter_map(|answer| match answer {
                    Insertion::Created(order) => Some(order.id),
                    Insertion::Existing { .. } => None,
                })
                .collect();
            assert_eq!(
                created.len(),
                1,
                "round {round}: exactly one creates: {answers:?}"
            );
            for answer in answers {
                if let Insertion::Existing {
                    order,
                    same_request,
                } = answer
                {
                    assert!(same_request, "round {round}");
                    assert_eq!(
                        order.id, created[0],
                        "round {round}: the order that was created"
                    );
                }
            }
        }
        let stored = repos[0].metrics().await.unwrap().total_orders;
        assert_eq!(stored, (repos.len() + ROUNDS) as u64, "one order per key");
    }

    /// Of many submissions racing for one expired key, exactly one takes it over and creates
    /// a new order; every other names that new order, none the old one.
    pub async fn concurrent_takeovers_of_an_expired_key_create_one_order<R>(repos: Vec<Arc<R>>)
    where
        R: Repository + ?Sized + 'static,
    {
        const ROUNDS: usize = 12;
        let order = sample_order("ann", 1);
        let mut expired = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let record = keyed(&format!("expiring-{round}"), &order, SHORT / 2);
            let Insertion::Created(first) = repos[0].insert_keyed(&order, &record).await.unwrap()
            else {
                panic!("a new key creates");
            };
            expired.push(first.id);
        }
        sleep(SHORT).await;
        let rounds = race(
            &repos,
            ROUNDS,
            |repo, _| async move {
                repo.get(OrderId::new(1).unwrap()).await.unwrap();
            },
            |repo, round, _| {
                let order = order.clone();
                let record = keyed(&format!("expiring-{round}"), &order, LONG);
                async move { repo.insert_keyed(&order, &record).await.unwrap() }
            },
        )
        .await;
        for (round, answers) in rounds.iter().enumerate() {
            let created: Vec<OrderId> = answers
                .iter()
                .filter_map(|answer| match answer {
                    Insertion::Created(order) => Some(order.id),
                    Insertion::Existing { .. } => None,
                })
                .collect();
            assert_eq!(
                created.len(),
                1,
                "round {round}: exactly one takes over: {answers:?}"
            );
            assert_ne!(created[0], expired[round], "round {round}: a new order");
            for answer in answers {
                if let Insertion::Existing { order, .. } = answer {
                    assert_eq!(order.id, created[0], "round {round}: the new order");
                }
            }
        }
        let stored = repos[0].metrics().await.unwrap().total_orders;
        assert_eq!(stored, 2 * ROUNDS as u64, "one order per key and expiry");
    }

    /// A key is forgotten once its time runs out: pruned, or taken over by a new submission.
    pub async fn expired_keys_are_forgotten(repo: Arc<dyn Repository>) {
        let order = sample_order("ann", 1);
        let short = keyed("short", &order, SHORT);
        let long = keyed("long", &order, LONG * 100);
        let Insertion::Created(first) = repo.insert_keyed(&order, &short).await.unwrap() else {
            panic!("a new key creates");
        };
        repo.insert_keyed(&order, &long).await.unwrap();
        sleep(SHORT * 3).await;
        let Insertion::Created(second) = repo.insert_keyed(&order, &short).await.unwrap() else {
            panic!("an expired key creates again");
        };
        assert_ne!(first.id, second.id);
        sleep(SHORT * 3).await;
        assert_eq!(repo.prune_keys().await.unwrap(), 1, "only the expired key");
        assert!(matches!(
            repo.insert_keyed(&order, &long).await.unwrap(),
            Insertion::Existing {
                same_request: true,
                ..
            }
        ));
    }

    /// Nothing moves an order out of COMPLETED, FAILED or CANCELLED.
    pub async fn finished_orders_never_change(repo: Arc<dyn Repository>) {
        let order = insert(&*repo).await;
        let claim = started(&*repo, order.id).await;
        let done = repo
            .transition(order.id, Transition::Complete { claim })
            .await
            .unwrap();
        let (_, restart) = start(LONG);
        for t in [
            restart,
            Transition::Cancel,
            Transition::Complete { claim },
            Transition::Retry {
                claim,
                error: "late".into(),
            },
            Transition::Fail {
                claim,
                error: "late".into(),
            },
            Transition::Renew { claim, lease: LONG },
            Transition::Release { claim },
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
        repo.transition(completed, Transition::Complete { claim })
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
                .transition(id, Transition::Complete { claim })
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
}

/// Cases for [`Queue`](crate::backend::Queue) implementations.
pub mod queue {
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
}

/// Cases for [`Backend`](crate::backend::Backend) implementations whose queue shares the repository's
/// storage ([`QueueStorage::Repository`](crate::backend::QueueStorage::Repository)): the rules the
/// engine relies on when it leaves out the calls the pair's own statements make unnecessary.
/// The backend's repository and queue each pass their own suite too.
pub mod backend {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
                .transition(order.id, Transition::Complete { claim: other })
                .await,
            Err(TransitionError::Conflict { .. })
        ));
        repository
            .transition(order.id, Transition::Complete { claim: claim.token })
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
            .transition(order.id, Transition::Complete { claim: claim.token })
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
                .transition(order.id, Transition::Complete { claim: first.token })
                .await,
            Err(TransitionError::Conflict { .. })
        ));
        repository
            .transition(
                order.id,
                Transition::Complete {
                    claim: second.token,
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
                .transition(claim.order_id, Transition::Complete { claim: claim.token })
                .await
                .unwrap();
        }
        assert_eq!(depth(&*backends[0]).await, QueueDepth::default());
    }
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
            metrics_follow_every_change;
            racing:
            concurrent_submissions_with_one_key_create_one_order,
            concurrent_takeovers_of_an_expired_key_create_one_order,
            concurrent_starts_have_one_winner,
            concurrent_inserts_get_distinct_ids,
        );
    };
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
            a_lapsed_claim_is_taken_over;
            racing:
            concurrent_claimers_start_each_order_once,
        );
    };
}

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{TEST_DATABASE_URL, TestDatabase};

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_tests {
    ($port:ident, $factory:expr; $($case:ident),+; racing: $($racing:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                let (backend, _guard) = $crate::testing::Fixture::split(factory().await);
                $crate::testing::$port::$case(backend).await;
            }
        )+
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $racing() {
                let factory = $factory;
                let (backends, _guard) =
                    $crate::testing::Fixture::split_many(factory().await, $crate::testing::RACERS);
                $crate::testing::$port::$racing(backends).await;
            }
        )+
    };
}
