//! The port to other processes' changes: which orders changed status, wherever the change was
//! made.

use tokio::sync::broadcast;

use crate::order::OrderId;

/// One report of a [`ChangeFeed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The order's status changed (or may have: a feed may report a change twice).
    Order(OrderId),
    /// Changes may have gone unreported (the feed was not listening for a while, as after a
    /// lost connection, or it has just started): whoever watches an order should read it again.
    Resync,
}

/// Tells this process which orders changed status, in any process that shares the repository:
/// how [`OrderProcessor::watch`](crate::OrderProcessor::watch) hears of a cancel or a
/// completion made by another server. Without one, watchers hear of this process's own changes
/// at once and poll for the rest.
///
/// # Contract
///
/// - Every status change committed after [`subscribe`](ChangeFeed::subscribe) returns is
///   reported to that receiver as [`Change::Order`], or is covered by a later
///   [`Change::Resync`]; in particular, a feed that starts listening after `subscribe`
///   returns sends `Resync` once it listens.
/// - Reports may be repeated or spurious; a receiver that falls behind gets
///   [`broadcast::error::RecvError::Lagged`], which means the same as `Resync`.
pub trait ChangeFeed: Send + Sync + std::fmt::Debug {
    /// A receiver of every change reported from now on.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}
