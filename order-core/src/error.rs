//! Errors shared by the ports and the engine.

use std::error::Error as StdError;

use crate::order::{OrderId, OrderStatus, ValidationError};

/// A backend failed: the database is down, a query failed, a connection broke.
///
/// `unavailable` separates failures that a retry may cure (the backend is unreachable or
/// overloaded; an HTTP server answers 503) from the rest (500).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct StorageError {
    /// What failed, for logs; never shown to API clients.
    pub message: String,
    /// True when the backend could not be reached or is overloaded.
    pub unavailable: bool,
    /// The backend's own error.
    #[source]
    pub source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl StorageError {
    /// A failure that retrying is unlikely to cure.
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: false,
            source: None,
        }
    }

    /// The backend cannot be reached right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: true,
            source: None,
        }
    }

    /// Attaches the backend's own error.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// Why [`OrderProcessor::submit`](crate::OrderProcessor::submit) refused an order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The order broke a rule; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The submission's idempotency key was used before for a different order; nothing was
    /// stored.
    #[error("Idempotency-Key {key} was already used for a different order")]
    KeyReused {
        /// The key.
        key: crate::IdempotencyKey,
        /// The order it was used for.
        order: OrderId,
    },
    /// The repository failed; the order may not have been stored.
    #[error("could not store the order")]
    Storage(#[from] StorageError),
}

/// Why [`OrderProcessor::cancel`](crate::OrderProcessor::cancel) did not cancel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No order has this id.
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// Only a PENDING order can be cancelled.
    #[error("order {id} is {status} and can no longer be cancelled")]
    NotCancellable {
        /// The order.
        id: OrderId,
        /// Its status now.
        status: crate::OrderStatus,
    },
    /// The repository failed.
    #[error("could not cancel the order")]
    Storage(#[from] StorageError),
}

impl From<TransitionError> for CancelError {
    fn from(err: TransitionError) -> Self {
        match err {
            TransitionError::NotFound(id) => CancelError::NotFound(id),
            TransitionError::Conflict { id, current, .. } => CancelError::NotCancellable {
                id,
                status: current,
            },
            TransitionError::CancelRequested(id) => CancelError::NotCancellable {
                id,
                status: crate::OrderStatus::Processing,
            },
            TransitionError::Storage(err) => CancelError::Storage(err),
        }
    }
}

/// Why [`OrderProcessor::retry`](crate::OrderProcessor::retry) did not retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// No order has this id.
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// Only a FAILED order can be retried.
    #[error("order {id} is {status}; only a FAILED order can be retried")]
    NotFailed {
        /// The order.
        id: OrderId,
        /// Its status now.
        status: crate::OrderStatus,
    },
    /// The repository failed; the order may or may not have been retried.
    #[error("could not retry the order")]
    Storage(#[from] StorageError),
}

impl From<TransitionError> for RetryError {
    fn from(err: TransitionError) -> Self {
        match err {
            TransitionError::NotFound(id) => RetryError::NotFound(id),
            TransitionError::Conflict { id, current, .. } => RetryError::NotFailed {
                id,
                status: current,
            },
            TransitionError::CancelRequested(id) => RetryError::NotFailed {
                id,
                status: crate::OrderStatus::Processing,
            },
            TransitionError::Storage(err) => RetryError::Storage(err),
        }
    }
}

/// Why a [`Transition`](crate::backend::Transition) was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// No order has this id.
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// The order is not in a state this transition may leave from: wrong status, held by
    /// another claim, or (for a takeover) its lease has not run out. Nothing was written.
    #[error("order {id} is {current} and cannot go to {target}{held}", held = if *.held_by_other { " (another worker holds it)" } else { "" })]
    Conflict {
        /// The order.
        id: OrderId,
        /// Its status now.
        current: OrderStatus,
        /// The status the transition would have led to.
        target: OrderStatus,
        /// True when it is PROCESSING under a live lease of another claim.
        held_by_other: bool,
    },
    /// The order is PROCESSING under the transition's claim, but a cancel was requested, which
    /// refuses a completion and the start of a step
    /// ([`Transition::refused_once_cancelling`](crate::backend::Transition::refused_once_cancelling)).
    /// Nothing was written: the worker is to compensate the finished steps.
    #[error("order {0} is being cancelled")]
    CancelRequested(OrderId),
    /// The storage failed; the transition may or may not have been applied.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
