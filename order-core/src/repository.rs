//! The port to where orders live: the source of truth.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{StorageError, TransitionError};
use crate::idempotency::{Insertion, KeyRecord};
use crate::order::{FailureRecord, Order, OrderId, OrderStatus, TransitionKind, ValidatedOrder};
use crate::queue::ClaimToken;
use crate::step::StepRecord;

/// A change of status, applied by [`Repository::transition`] as one compare-and-set.
///
/// Every change a worker makes is fenced by its [`ClaimToken`]: it applies only while the order
/// is PROCESSING under that very token. A worker whose lease ran out, and whose order another
/// worker has since started, is refused with [`TransitionError::Conflict`], so a late or
/// duplicate worker can never write over a newer state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// PENDING -> PROCESSING under `claim`, or a takeover: PROCESSING whose lease has run out
    /// -> PROCESSING under `claim`. Adds one to `attempts`, sets `processing_start_time` if it
    /// was unset, and holds the order for `lease` from now.
    Start {
        /// The claim the worker got from the queue.
        claim: ClaimToken,
        /// How long the order is the worker's before another may take it over.
        lease: Duration,
    },
    /// PROCESSING under `claim` -> PROCESSING under `claim`, held for `lease` from now.
    /// A worker whose handler runs long renews before its lease runs out.
    Renew {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// The new lease, from now.
        lease: Duration,
    },
    /// PROCESSING under `claim` -> COMPLETED; sets `processing_end_time`. Refused with
    /// [`TransitionError::CancelRequested`] once a cancel was requested: the finished steps
    /// are to be compensated instead.
    Complete {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// The order's steps, the last one's outcome included; `None` keeps what is stored
        /// (a plain handler's order records none).
        steps: Option<Vec<StepRecord>>,
    },
    /// PROCESSING under `claim` -> PENDING with `last_error`, to be tried again. Only for an
    /// order with no steps recorded: a pipeline retries a step while it holds the order, so
    /// that a PENDING order never has finished steps that a cancel would have to undo.
    Retry {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// What went wrong in this attempt.
        error: String,
    },
    /// PROCESSING under `claim` -> FAILED with `last_error`; sets `processing_end_time`.
    /// Refused with [`TransitionError::CancelRequested`] once a cancel was requested: the order
    /// ends CANCELLED instead.
    Fail {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// Why the order cannot be done.
        error: String,
        /// The order's steps after compensation; `None` keeps what is stored.
        steps: Option<Vec<StepRecord>>,
    },
    /// PROCESSING under `claim` -> PENDING, as if this attempt had never been made: `attempts`
    /// goes back down by one, and `processing_start_time` is cleared when it reaches 0. For
    /// work given back unfinished at shutdown, which should not use up one of the order's
    /// attempts (a crash does: a takeover counts, so an order that kills its worker every
    /// time still fails in the end). Only for an order with no steps recorded, as
    /// [`Retry`](Self::Retry); a pipeline's order is handed back with a zero-length
    /// [`Renew`](Self::Renew) instead, staying PROCESSING.
    Release {
        /// The claim the order must still be held by.
        claim: ClaimToken,
    },
    /// PENDING -> CANCELLED. Needs no claim: no worker holds a PENDING order.
    Cancel,
    /// PROCESSING under `claim` -> PROCESSING with `steps` stored: a step's checkpoint.
    Checkpoint {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// Every step of the order as it is now.
        steps: Vec<StepRecord>,
        /// True when the write starts a new step: then it is refused with
        /// [`TransitionError::CancelRequested`] once a cancel was requested, so that no step
        /// starts after a cancel was accepted.
        advancing: bool,
    },
    /// PROCESSING -> PROCESSING with `cancel_requested_at` set, if the order has not changed
    /// since it was read at `seen` (its `updated_at`) and no cancel was requested before: the
    /// caller decided from that read that every step that may finish can be compensated, and
    /// a step that started since may not be. Needs no claim: the client is not a worker.
    RequestCancel {
        /// The order's `updated_at` when the caller read it.
        seen: DateTime<Utc>,
    },
    /// PROCESSING under `claim` -> CANCELLED, once a requested cancel has compensated every
    /// finished step; sets `processing_end_time`.
    FinishCancel {
        /// The claim the order must still be held by.
        claim: ClaimToken,
        /// The order's steps, compensated.
        steps: Vec<StepRecord>,
    },
    /// FAILED -> PENDING, queued again: an operator retried the order. Applies only if the
    /// order has not changed since it was read at `seen` (its `updated_at`), so that two
    /// retries of one failure make one. Appends `failure` to the order's failures, stores
    /// `steps` (the steps whose work stands, which will not run again), clears
    /// `processing_end_time`, and leaves `attempts` and `last_error` as they are. Needs no
    /// claim: no worker holds a FAILED order.
    Requeue {
        /// The order's `updated_at` when the caller read it.
        seen: DateTime<Utc>,
        /// The failure being retried, as [`FailureRecord::of`] reads it.
        failure: FailureRecord,
        /// The steps kept: those before the first one that runs again.
        steps: Vec<StepRecord>,
    },
}

impl Transition {
    /// Which kind of transition this is, without its claim or error.
    pub fn kind(&self) -> TransitionKind {
        match self {
            Transition::Start { .. } => TransitionKind::Start,
            Transition::Renew { .. } => TransitionKind::Renew,
            Transition::Complete { .. } => TransitionKind::Complete,
            Transition::Retry { .. } => TransitionKind::Retry,
            Transition::Fail { .. } => TransitionKind::Fail,
            Transition::Release { .. } => TransitionKind::Release,
            Transition::Cancel => TransitionKind::Cancel,
            Transition::Checkpoint { .. } => TransitionKind::Checkpoint,
            Transition::RequestCancel { .. } => TransitionKind::RequestCancel,
            Transition::FinishCancel { .. } => TransitionKind::FinishCancel,
            Transition::Requeue { .. } => TransitionKind::Requeue,
        }
    }

    /// The claim that fences this transition: every worker's transition has one; a start
    /// brings a new one, and a client's cancel, cancel request and retry have none.
    pub fn claim(&self) -> Option<ClaimToken> {
        match self {
            Transition::Start { .. }
            | Transition::Cancel
            | Transition::RequestCancel { .. }
            | Transition::Requeue { .. } => None,
            Transition::Renew { claim, .. }
            | Transition::Complete { claim, .. }
            | Transition::Retry { claim, .. }
            | Transition::Fail { claim, .. }
            | Transition::Release { claim }
            | Transition::Checkpoint { claim, .. }
            | Transition::FinishCancel { claim, .. } => Some(*claim),
        }
    }

    /// Whether a requested cancel refuses this transition ([`TransitionError::CancelRequested`]):
    /// a completion, a failure (an order whose cancel was accepted ends CANCELLED), and a
    /// checkpoint that starts a step.
    pub fn refused_once_cancelling(&self) -> bool {
        matches!(
            self,
            Transition::Complete { .. }
                | Transition::Fail { .. }
                | Transition::Checkpoint {
                    advancing: true,
                    ..
                }
        )
    }

    /// The status this transition leads to.
    pub fn target(&self) -> OrderStatus {
        self.kind().target()
    }

    /// The [`Requeue`](Self::Requeue) that retries `order`, FAILED as read: its failure as
    /// [`FailureRecord::of`] reads it, and the steps whose work stands (the leading SUCCEEDED
    /// ones: a failure compensates every finished step that can be, so those left SUCCEEDED
    /// could not be undone) kept, so that it resumes after them.
    pub fn requeue(order: &Order) -> Self {
        Transition::Requeue {
            seen: order.updated_at,
            failure: FailureRecord::of(order),
            steps: order
                .steps
                .iter()
                .take_while(|step| step.status == crate::step::StepStatus::Succeeded)
                .cloned()
                .collect(),
        }
    }
}

/// Which orders [`Repository::list`] returns, in what order, and from where.
///
/// Listings page by id: ids grow with creation, so "newest first" is "descending ids", and
/// the cursor of the next page is the last id of this one.
///
/// ```
/// use order_core::{OrderQuery, OrderStatus};
///
/// let first_page = OrderQuery::newest_first(20).status(OrderStatus::Pending).user("user-123");
/// assert_eq!(first_page.limit, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderQuery {
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only orders of this user.
    pub user_id: Option<String>,
    /// Only orders past this id in the listing's direction: older ones when newest first,
    /// newer ones when oldest first. The last id of the previous page.
    pub after: Option<OrderId>,
    /// At most this many orders.
    pub limit: usize,
    /// Ascending ids (oldest first) instead of descending.
    pub oldest_first: bool,
}

impl OrderQuery {
    /// Up to `limit` orders of any status and user, newest first.
    pub fn newest_first(limit: usize) -> Self {
        Self {
            status: None,
            user_id: None,
            after: None,
            limit,
            oldest_first: false,
        }
    }

    /// Up to `limit` orders of any status and user, oldest first.
    pub fn oldest_first(limit: usize) -> Self {
        Self {
            oldest_first: true,
            ..Self::newest_first(limit)
        }
    }

    /// Only orders in `status`.
    #[must_use]
    pub fn status(mut self, status: OrderStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only orders of `user_id`.
    #[must_use]
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Only orders past `id` in the listing's direction.
    #[must_use]
    pub fn after(mut self, id: OrderId) -> Self {
        self.after = Some(id);
        self
    }

    /// Whether `order` is one this query selects, position aside.
    pub fn matches(&self, order: &Order) -> bool {
        self.status.is_none_or(|status| order.status == status)
            && self
                .user_id
                .as_deref()
                .is_none_or(|user| order.user_id == user)
    }
}

/// Counts that describe all orders, kept up to date on every write so that reading them costs
/// the same with ten orders or ten million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct OrderMetrics {
    /// Orders ever accepted.
    pub total_orders: u64,
    /// Orders in each status; they add up to `total_orders`.
    pub statuses: StatusCounts,
    /// Sum over COMPLETED orders of `processing_end_time - processing_start_time`, in
    /// microseconds.
    pub completed_processing_micros: u64,
}

impl OrderMetrics {
    /// Mean of `processing_end_time - processing_start_time` over COMPLETED orders, in seconds;
    /// 0 when none has completed.
    pub fn avg_processing_seconds(&self) -> f64 {
        if self.statuses.completed == 0 {
            return 0.0;
        }
        // u64 -> f64 loses precision only above 2^53 microseconds (285 years of processing).
        #[allow(clippy::cast_precision_loss)]
        let mean_micros = self.completed_processing_micros as f64 / self.statuses.completed as f64;
        mean_micros / 1_000_000.0
    }
}

/// How many orders are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct StatusCounts {
    /// PENDING orders.
    pub pending: u64,
    /// PROCESSING orders.
    pub processing: u64,
    /// COMPLETED orders.
    pub completed: u64,
    /// FAILED orders.
    pub failed: u64,
    /// CANCELLED orders.
    pub cancelled: u64,
}

impl StatusCounts {
    /// The count for one status.
    pub fn get(&self, status: OrderStatus) -> u64 {
        match status {
            OrderStatus::Pending => self.pending,
            OrderStatus::Processing => self.processing,
            OrderStatus::Completed => self.completed,
            OrderStatus::Failed => self.failed,
            OrderStatus::Cancelled => self.cancelled,
        }
    }

    /// The count for one status, to change.
    pub fn get_mut(&mut self, status: OrderStatus) -> &mut u64 {
        match status {
            OrderStatus::Pending => &mut self.pending,
            OrderStatus::Processing => &mut self.processing,
            OrderStatus::Completed => &mut self.completed,
            OrderStatus::Failed => &mut self.failed,
            OrderStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// All statuses together.
    pub fn sum(&self) -> u64 {
        OrderStatus::ALL.into_iter().map(|s| self.get(s)).sum()
    }
}

/// Where orders are stored: the source of truth that the [`Queue`](crate::backend::Queue) is rebuilt
/// from after a crash.
///
/// # Contract
///
/// Every implementation passes the suite in `order_core::testing` (feature `testing`). In short:
///
/// - [`insert`](Repository::insert) assigns a new, increasing id and stores the order PENDING
///   with `attempts` 0. When it returns `Ok`, the order is durable as far as the backend is.
/// - [`insert_keyed`](Repository::insert_keyed) creates at most one order per live
///   idempotency key, however many callers race with it.
/// - [`transition`](Repository::transition) is an atomic compare-and-set: it checks the
///   current status (and, for a worker's transitions, the claim and its lease) and writes the
///   new state in one step, or writes nothing and says why.
/// - A [`Requeue`](Transition::Requeue) that applies leaves the order due at once: a queue
///   that shares the repository's storage hands it out next, and the engine pushes it onto a
///   queue of its own. Of two requeues of one failure, one applies.
/// - [`stranded`](Repository::stranded) finds what a lost queue would have held: PENDING
///   orders, and PROCESSING orders whose lease has run out.
/// - [`list`](Repository::list) pages through orders by id, filtered by status and user, from
///   an index: its cost grows with the page, not with the orders stored.
/// - [`metrics`](Repository::metrics) is consistent (statuses add up to the total) and does
///   not read every order.
/// - Leases are measured on the repository's own clock, so that several processes sharing one
///   backend agree on when a lease ends.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Repository: Send + Sync {
    /// Stores a new PENDING order and returns it with its id and timestamps.
    async fn insert(&self, order: &ValidatedOrder) -> Result<Order, StorageError>;

    /// Stores a new PENDING order under `record.key`, unless the key already names an order
    /// and its time has not run out: then stores nothing and returns that order, and whether
    /// it was asked for with the same fingerprint. The key and the order are written in one
    /// atomic step, so that of any number of concurrent calls with one key exactly one
    /// creates an order, and the others return it, whichever process or connection each
    /// comes from. A key whose time has run out, or whose order was deleted, counts as unused:
    /// of the calls racing to take it over, likewise exactly one creates.
    async fn insert_keyed(
        &self,
        order: &ValidatedOrder,
        record: &KeyRecord,
    ) -> Result<Insertion, StorageError>;

    /// Forgets the keys whose time has run out; returns how many.
    async fn prune_keys(&self) -> Result<u64, StorageError>;

    /// The order with this id, or `None`.
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError>;

    /// Applies `transition` if the order is in a state it may leave from; returns the order as
    /// written.
    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError>;

    /// Up to `limit` ids, ascending and greater than `after`, of orders that a worker should
    /// pick up but that a queue may have lost: PENDING ones, and PROCESSING ones whose lease
    /// has run out.
    async fn stranded(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StorageError>;

    /// Up to `query.limit` orders that `query` selects, in its order (descending ids, or
    /// ascending when `oldest_first`), starting past `query.after`. Served by an index, never
    /// by reading every order.
    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StorageError>;

    /// Counts over all orders, without reading them all.
    async fn metrics(&self) -> Result<OrderMetrics, StorageError>;

    /// `Ok` when the repository can serve: reachable, and its schema in place. What a readiness
    /// probe asks before sending traffic. By default, a [`metrics`](Repository::metrics) read.
    async fn check_ready(&self) -> Result<(), StorageError> {
        self.metrics().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transition_leads_where_its_kind_does_and_kinds_cover_every_transition() {
        let claim = ClaimToken::generate();
        let lease = Duration::from_secs(1);
        let transitions = [
            Transition::Start { claim, lease },
            Transition::Renew { claim, lease },
            Transition::Complete { claim, steps: None },
            Transition::Retry {
                claim,
                error: "busy".to_owned(),
            },
            Transition::Fail {
                claim,
                error: "declined".to_owned(),
                steps: None,
            },
            Transition::Release { claim },
            Transition::Cancel,
            Transition::Checkpoint {
                claim,
                steps: Vec::new(),
                advancing: true,
            },
            Transition::RequestCancel {
                seen: chrono::Utc::now(),
            },
            Transition::FinishCancel {
                claim,
                steps: Vec::new(),
            },
            Transition::Requeue {
                seen: chrono::Utc::now(),
                failure: crate::order::FailureRecord {
                    failed_at: chrono::Utc::now(),
                    step: None,
                    error: "declined".to_owned(),
                    attempts: 1,
                },
                steps: Vec::new(),
            },
        ];
        let kinds: Vec<_> = transitions.iter().map(Transition::kind).collect();
        assert_eq!(kinds, TransitionKind::ALL);
        for transition in &transitions {
            assert_eq!(transition.target(), transition.kind().target());
        }
        assert_eq!(Transition::Cancel.target(), OrderStatus::Cancelled);
    }

    #[test]
    fn only_a_start_takes_over_and_only_a_cancel_needs_no_worker() {
        let from_pending: Vec<_> = TransitionKind::ALL
            .into_iter()
            .filter(|kind| kind.leaves_from().contains(&OrderStatus::Pending))
            .collect();
        assert_eq!(
            from_pending,
            [TransitionKind::Start, TransitionKind::Cancel]
        );
        let processing_to_processing: Vec<_> = TransitionKind::ALL
            .into_iter()
            .filter(|kind| {
                kind.leaves_from().contains(&OrderStatus::Processing)
                    && kind.target() == OrderStatus::Processing
            })
            .collect();
        assert_eq!(
            processing_to_processing,
            [
                TransitionKind::Start,
                TransitionKind::Renew,
                TransitionKind::Checkpoint,
                TransitionKind::RequestCancel
            ]
        );
    }
}
