//! The port to a storage that provides both a [`Repository`] and a [`Queue`], built in one
//! call: where the queue keeps its state in the repository's own storage, the two only work as
//! a pair, and a backend is how they arrive together.

use std::sync::Arc;

use crate::changes::ChangeFeed;
use crate::queue::Queue;
use crate::repository::Repository;

/// A repository and its queue (and, where the storage can tell, a feed of other processes'
/// changes), handed to [`OrderProcessorBuilder::backend`](crate::OrderProcessorBuilder::backend)
/// in one call.
///
/// # Contract
///
/// - Every call returns handles on the same storage.
/// - When [`queue`](Backend::queue)'s [`storage`](Queue::storage) is
///   [`QueueStorage::Repository`](crate::QueueStorage::Repository), the pair keeps the rules
///   stated there; the backend contract suite (`backend_contract_tests!`, feature `testing`)
///   checks them.
///
/// ```
/// use order_core::{Backend, InMemoryBackend, OrderProcessor, SimulatedStep};
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
}
