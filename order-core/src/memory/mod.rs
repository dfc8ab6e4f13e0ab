//! Backends that keep everything in this process's memory: for tests, for embedding where
//! losing the backlog on exit is acceptable, and as the reference the durable backends are
//! checked against.

mod queue;
mod repository;

pub use queue::InMemoryQueue;
pub use repository::InMemoryRepository;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, going on past poisoning: the critical sections in this module never panic
/// between two writes, so a poisoned lock still guards consistent state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
