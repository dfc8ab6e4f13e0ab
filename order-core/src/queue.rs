//! The port to the work queue: which orders are waiting for a worker, and who holds which.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::error::StorageError;
use crate::order::{Order, OrderId};

/// The fencing token of one claim: unique across claims, processes and restarts.
///
/// A worker presents it on every change it makes, to the queue (ack, retry, extend) and to the
/// repository ([`Transition`](crate::backend::Transition)); both refuse a token that no longer holds the
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    /// A fresh token, unique without coordination (a random UUID).
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps a token read back from storage.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The token as a UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An order handed to one worker for the length of a lease.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claim {
    /// The order to work on.
    pub order_id: OrderId,
    /// This claim's fencing token.
    pub token: ClaimToken,
    /// How many times the queue has handed this order out, this claim included (1 the first
    /// time; more after retries or lapsed leases).
    pub deliveries: u32,
    /// The order as this claim started it, for a queue that shares its repository's storage
    /// ([`QueueStorage::Repository`]): the claim applied [`Transition::Start`] with this
    /// claim's token and lease in the same step, and the worker must not start it again.
    /// `None` from a queue of its own, and for an order the claim could not start (finished,
    /// cancelled, or held under another worker's live lease): the worker's own `Start` then
    /// says why.
    ///
    /// [`Transition::Start`]: crate::backend::Transition::Start
    pub started: Option<Order>,
}

impl Claim {
    /// A claim on `order_id` under `token`, its `deliveries`-th, that started nothing.
    pub fn new(order_id: OrderId, token: ClaimToken, deliveries: u32) -> Self {
        Self {
            order_id,
            token,
            deliveries,
            started: None,
        }
    }
}

/// Where a [`Queue`] keeps its state, which decides what the engine asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStorage {
    /// Ids of its own, beside the repository: the engine pushes each order it stores, starts
    /// each order it claims, acks each it finishes, and its recovery sweep re-queues what the
    /// queue may have lost (after a crash, or from a queue that does not survive restarts).
    Own,
    /// The repository's own storage: the queue is the repository's unfinished orders, so
    /// nothing can be stored without being queued, or lost between the two. The pair comes
    /// from one [`Backend`](crate::backend::Backend) and keeps these rules, which the backend contract
    /// suite checks:
    ///
    /// - the repository's `insert` and `insert_keyed` queue the order they store, so that
    ///   [`push`](Queue::push) has nothing to add for a stored order (it returns `false`);
    /// - [`claim`](Queue::claim) starts each order it claims ([`Claim::started`]);
    /// - a transition to a finished status (Complete, Fail, Cancel) takes the order off the
    ///   queue, and a `Renew` holds it for the new lease;
    /// - Retry and Release leave it held by the claim until [`retry`](Queue::retry) says
    ///   when it may be claimed again.
    ///
    /// The engine then makes none of the calls these make unnecessary (push after insert,
    /// start after claim, ack after finishing, extend after renewing, the sweep), and
    /// [`OrderProcessorBuilder::build`](crate::OrderProcessorBuilder::build) refuses such a
    /// queue unless it came with its repository from
    /// [`backend`](crate::OrderProcessorBuilder::backend).
    Repository,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The claim no longer holds the order: its lease ran out and the order was handed out
    /// again, or it was already acked or retried. Nothing was changed.
    #[error("the claim on order {0} is no longer held")]
    LeaseLost(OrderId),
    /// The queue's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How many orders the queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct QueueDepth {
    /// Claimable now.
    pub ready: u64,
    /// Waiting for a retry delay to pass.
    pub delayed: u64,
    /// Held by a worker under a lease.
    pub claimed: u64,
}

/// The work queue: at-least-once delivery of order ids, with leases.
///
/// # Contract
///
/// Every implementation passes the suite in `order_core::testing` (feature `testing`). In short:
///
/// - [`push`](Queue::push) is idempotent: an id the queue already holds (ready, delayed or
///   claimed) is left as it is, so pushing again never makes a duplicate.
/// - [`claim`](Queue::claim) hands each ready id to one caller at a time, oldest first, with a
///   fresh [`ClaimToken`] and a lease. A claim that is not acked, retried or extended before
///   its lease runs out becomes claimable again (at-least-once: a handler may run twice, never
///   concurrently under two live leases).
/// - [`ack`](Queue::ack), [`retry`](Queue::retry) and [`extend`](Queue::extend) act only while
///   the claim still holds the id; otherwise they change nothing and return
///   [`QueueError::LeaseLost`].
/// - [`wait`](Queue::wait) returns early when work may have arrived; it may also return for no
///   reason, so callers claim in a loop.
/// - A queue that keeps its state in its repository's storage says so
///   ([`storage`](Queue::storage)), and keeps the rules of [`QueueStorage::Repository`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Queue: Send + Sync {
    /// Makes `id` claimable, unless the queue holds it already; true when it was added.
    async fn push(&self, id: OrderId) -> Result<bool, QueueError>;

    /// [`push`](Queue::push) for each of `ids`; returns how many were added. The recovery
    /// sweep hands over its pages of stranded orders this way, so a backend that can (a
    /// database: one statement) should do it in one round trip; by default, one push each.
    async fn push_many(&self, ids: &[OrderId]) -> Result<usize, QueueError> {
        let mut added = 0;
        for &id in ids {
            if self.push(id).await? {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Claims up to `max` ready ids, each held for `lease`. Returns at once, possibly empty.
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError>;

    /// Holds the claimed id for `lease` from now.
    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError>;

    /// Removes the claimed id: the work is done, or there is none to do.
    async fn ack(&self, claim: &Claim) -> Result<(), QueueError>;

    /// Releases the claimed id, claimable again once `delay` has passed.
    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError>;

    /// Waits until work may be claimable, or `timeout` has passed.
    async fn wait(&self, timeout: Duration);

    /// How many ids the queue holds, by state.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;

    /// Where this queue keeps its state; [`QueueStorage::Own`] unless it says otherwise.
    fn storage(&self) -> QueueStorage {
        QueueStorage::Own
    }
}
