//! For backend authors: the ports a storage implements so that the engine can run on it, and
//! the values that cross them. An embedding service needs none of this to run the engine on
//! the backends this crate ships ([`memory`](crate::memory), `postgres`); it is here for
//! a backend of your own, and for tests that stand in for storage (feature `mock`:
//! [`MockRepository`], [`MockQueue`]).
//!
//! # The ports
//!
//! - [`Repository`]: where orders live, the source of truth. Each status change is one
//!   [`Transition`], applied as an atomic compare-and-set ([`TransitionError`] says why not),
//!   of a [`TransitionKind`] whose rules ([`TransitionKind::leaves_from`],
//!   [`TransitionKind::target`]) are the engine's. Idempotent submissions arrive as
//!   [`insert_keyed`](Repository::insert_keyed) with a [`KeyRecord`] (the key, the request's
//!   [`Fingerprint`] and how long to remember it), answered with an [`Insertion`].
//! - [`Queue`]: which orders wait for a worker, and who holds which: a [`Claim`] with its
//!   fencing [`ClaimToken`] and a lease. [`QueueStorage`] says whether the queue keeps ids of
//!   its own or is its repository's unfinished orders.
//! - [`ChangeFeed`]: which orders other processes changed ([`Change`]).
//! - [`Backend`]: a repository and the queue that shares its storage, handed over in one call.
//!
//! # The contract
//!
//! Each trait's documentation states its contract; the suite in `order_core::testing`
//! (feature `testing`: `repository_contract_tests!`, `queue_contract_tests!`,
//! `backend_contract_tests!`) checks it, and every adapter in this crate runs it. In short:
//!
//! - Orders only ever move along [`TransitionKind`]s, and every worker's change is fenced by
//!   its [`ClaimToken`]: a worker that lost its lease can never overwrite the worker after it.
//! - A stored order is never lost: what a queue may lose, the repository's
//!   [`stranded`](Repository::stranded) finds again for the engine's recovery sweep.
//! - One live idempotency key names at most one order, however many callers race.
//! - Leases are measured on the storage's clock, so that processes sharing it agree.
//! - [`Repository::metrics`] and [`Repository::list`] cost the same with ten orders or ten
//!   million.

use std::sync::Arc;

pub use crate::bulk::BulkActions;
pub use crate::changes::{Change, ChangeFeed};
pub use crate::error::TransitionError;
pub use crate::idempotency::{Fingerprint, Insertion, KeyRecord};
pub use crate::order::{TransitionKind, ValidatedOrder};
#[cfg(any(test, feature = "mock"))]
pub use crate::queue::MockQueue;
pub use crate::queue::{Claim, ClaimToken, Queue, QueueStorage};
#[cfg(any(test, feature = "mock"))]
pub use crate::repository::MockRepository;
pub use crate::repository::{Repository, Transition};

/// A repository and its queue (and, where the storage can tell, a feed of other processes'
/// changes), handed to [`OrderProcessorBuilder::backend`](crate::OrderProcessorBuilder::backend)
/// in one call.
///
/// # Contract
///
/// - Every call returns handles on the same storage.
/// - When [`queue`](Backend::queue)'s [`storage`](Queue::storage) is
///   [`QueueStorage::Repository`], the pair keeps the rules
///   stated there; the backend contract suite (`backend_contract_tests!`, feature `testing`)
///   checks them.
///
/// ```
/// use order_core::OrderProcessor;
/// use order_core::handler::SimulatedStep;
/// use order_core::memory::InMemoryBackend;
///
/// let backend = InMemoryBackend::new();
/// let processor = OrderProcessor::builder(SimulatedStep::new(std::time::Duration::ZERO))
///     .backend(&backend)
///     .build()?;
/// # Ok::<(), order_core::BuildError>(())
/// ```
pub trait Backend: Send + Sync {
    /// Where orders are stored.
    fn repository(&self) -> Arc<dyn Repository>;

    /// The work queue that goes with [`repository`](Backend::repository).
    fn queue(&self) -> Arc<dyn Queue>;

    /// How watchers hear of changes made by other processes on this storage; `None` (the
    /// default) when only this process writes to it.
    fn change_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        None
    }

    /// Where bulk actions on this storage's orders live; `None` (the default) keeps them in
    /// this process's memory ([`InMemoryBulkActions`](crate::memory::InMemoryBulkActions)),
    /// right for a storage only this process uses.
    fn bulk_actions(&self) -> Option<Arc<dyn BulkActions>> {
        None
    }
}
