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

pub mod backend;
pub mod pgbouncer;
#[cfg(feature = "postgres")]
mod postgres;
pub mod queue;
pub mod repository;

pub use pgbouncer::{PGBOUNCER, PgBouncer, PgBouncerSettings};
#[cfg(feature = "postgres")]
pub use postgres::{TEST_DATABASE_URL, TestDatabase};

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

/// Stores a new order of `user`, starts it and fails it with `error`; returns it FAILED.
async fn failed_order<R: crate::backend::Repository + ?Sized>(
    repository: &R,
    user: &str,
    error: &str,
) -> crate::Order {
    use crate::backend::Transition;
    let order = repository.insert(&sample_order(user, 1)).await.unwrap();
    let claim = crate::queue::ClaimToken::generate();
    repository
        .transition(order.id, Transition::Start { claim, lease: LONG })
        .await
        .unwrap();
    let fail = Transition::Fail {
        claim,
        error: error.to_owned(),
        steps: None,
    };
    repository.transition(order.id, fail).await.unwrap()
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

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
