//! Backends that keep everything in this process's memory: for tests, for embedding where
//! losing the backlog on exit is acceptable, and as the reference the durable backends are
//! checked against.

mod backend;
mod bulk;
mod queue;
mod repository;

pub use backend::InMemoryBackend;
pub use bulk::InMemoryBulkActions;
pub use queue::InMemoryQueue;
pub use repository::InMemoryRepository;

use std::time::Duration;

use tokio::time::Instant;

/// `now + after`, saturating at a century away instead of overflowing: computed before any
/// state is touched, so that no duration, however large, can panic a critical section.
fn deadline(now: Instant, after: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(after.min(CENTURY))
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[cfg(test)]
mod repository_contract {
    crate::repository_contract_tests!(async || std::sync::Arc::new(
        super::InMemoryRepository::new()
    ));
}

#[cfg(test)]
mod queue_contract {
    crate::queue_contract_tests!(async || std::sync::Arc::new(super::InMemoryQueue::new()));
}

#[cfg(test)]
mod backend_contract {
    crate::backend_contract_tests!(async || std::sync::Arc::new(super::InMemoryBackend::new()));
}

/// The backend's repository and queue, each held to its own port's contract.
#[cfg(test)]
mod backend_repository_contract {
    use crate::backend::Backend;

    crate::repository_contract_tests!(async || super::InMemoryBackend::new().repository());
}

#[cfg(test)]
mod backend_queue_contract {
    use crate::backend::Backend;

    crate::queue_contract_tests!(async || super::InMemoryBackend::new().queue());
}
