use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::time::Instant;

use crate::error::StorageError;
use crate::error::TransitionError;
use crate::idempotency::{Fingerprint, IdempotencyKey, Insertion, KeyRecord};
use crate::lock;
use crate::memory::deadline;
use crate::order::{Order, OrderId, OrderStatus, ValidatedOrder};
use crate::queue::ClaimToken;
use crate::repository::{OrderMetrics, OrderQuery, Repository, Transition};

/// Orders kept in this process's memory: fast, and gone when the process exits.
///
/// Holds the same contract as the durable backends (see [`Repository`]); leases are measured
/// on tokio's clock, so tests can drive them with `tokio::time::pause`.
///
/// ```
/// # #[tokio::main] async fn main() {
/// use order_core::NewOrder;
/// use order_core::backend::Repository;
/// use order_core::memory::InMemoryRepository;
/// use rust_decimal::Decimal;
///
/// let repository = InMemoryRepository::new();
/// let order = NewOrder::new("u", ["i"], Decimal::ONE);
/// let stored = repository.insert(&order.validate().unwrap()).await.unwrap();
/// assert_eq!(repository.get(stored.id).await.unwrap(), Some(stored));
/// # }
/// ```
#[derive(Debug)]
pub struct InMemoryRepository {
    // A std mutex, not tokio's: no critical section awaits, and each is a few map operations,
    // far cheaper than an async lock's bookkeeping.
    state: Mutex<State>,
    /// The most orders PENDING or PROCESSING at once; past it, inserts are refused.
    max_unfinished: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Every order, at index `id - 1`: ids are handed out densely from 1.
    records: Vec<Record>,
    /// Ids in each status, at the status's place in [`OrderStatus::ALL`]: listings by status
    /// and the recovery sweep walk only the orders they want.
    by_status: [BTreeSet<OrderId>; OrderStatus::ALL.len()],
    /// Each user's ids, ascending: ids are handed out in increasing order, so appending keeps
    /// them sorted.
    by_user: HashMap<String, Vec<OrderId>>,
    /// Updated with every write, so reading metrics costs nothing.
    metrics: OrderMetrics,
    /// Idempotency keys: what each was used for, and until when it is remembered.
    keys: HashMap<IdempotencyKey, KeyUse>,
}

#[derive(Debug)]
struct KeyUse {
    fingerprint: Fingerprint,
    order: OrderId,
    expires: Instant,
}

#[derive(Debug)]
struct Record {
    order: Order,
    /// The claim that holds a PROCESSING order, and until when.
    holder: Option<(ClaimToken, Instant)>,
}

impl Default for InMemoryRepository {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRepository {
    /// An empty repository, its backlog unbounded.
    pub fn new() -> Self {
        Self::with_max_unfinished(u64::MAX)
    }

    /// An empty repository that holds at most `max` orders PENDING or PROCESSING at once: past
    /// that, [`insert`](Repository::insert) is refused as unavailable (a `503` with
    /// `Retry-After` over HTTP) until workers catch up, so that a burst beyond what the
    /// workers sustain pushes back on clients instead of growing memory without end.
    pub fn with_max_unfinished(max: u64) -> Self {
        Self {
            state: Mutex::default(),
            max_unfinished: max,
        }
    }

    /// Refuses an insert while the backlog is full.
    fn check_room(&self, state: &State) -> Result<(), StorageError> {
        let unfinished = state.metrics.statuses.pending + state.metrics.statuses.processing;
        if unfinished >= self.max_unfinished {
            return Err(StorageError::unavailable(format!(
                "the backlog is full ({unfinished} orders waiting or in progress); retry later"
            )));
        }
        Ok(())
    }
}

/// Wall-clock time at the precision PostgreSQL keeps, so every backend shows the same times.
fn wall_clock() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Where an order sits in `State::records`.
fn slot(id: OrderId) -> Option<usize> {
    usize::try_from(id.get() - 1).ok()
}

/// Where `status` sits in [`OrderStatus::ALL`], and so in `State::by_status`.
fn status_index(status: OrderStatus) -> usize {
    OrderStatus::ALL
        .iter()
        .position(|&s| s == status)
        .unwrap_or_default()
}

/// The ids of a listing's range, in its order: below `after` descending, or above it
/// ascending.
fn id_bounds(query: &OrderQuery) -> (Bound<OrderId>, Bound<OrderId>) {
    match (query.after, query.oldest_first) {
        (None, _) => (Bound::Unbounded, Bound::Unbounded),
        (Some(after), false) => (Bound::Unbounded, Bound::Excluded(after)),
        (Some(after), true) => (Bound::Excluded(after), Bound::Unbounded),
    }
}

/// The part of the ascending `ids` within `bounds`.
fn sorted_range(ids: &[OrderId], bounds: (Bound<OrderId>, Bound<OrderId>)) -> &[OrderId] {
    let start = match bounds.0 {
        Bound::Excluded(after) => ids.partition_point(|&id| id <= after),
        _ => 0,
    };
    let end = match bounds.1 {
        Bound::Excluded(before) => ids.partition_point(|&id| id < before),
        _ => ids.len(),
    };
    ids.get(start..end.max(start)).unwrap_or_default()
}

impl State {
    /// Stores a new PENDING order with the next id.
    fn store(&mut self, order: &ValidatedOrder) -> Result<Order, StorageError> {
        let now = wall_clock();
        let raw_id = i64::try_from(self.records.len() + 1)
            .map_err(|_| StorageError::other("order ids exhausted"))?;
        let id = OrderId::new(raw_id).ok_or_else(|| StorageError::other("order ids exhausted"))?;
        let stored = Order {
            id,
            user_id: order.user_id().to_owned(),
            item_ids: order.item_ids().to_vec(),
            total_amount: order.total_amount(),
            status: OrderStatus::Pending,
            created_at: now,
            updated_at: now,
            processing_start_time: None,
            processing_end_time: None,
            attempts: 0,
            last_error: None,
            steps: Vec::new(),
            cancel_requested_at: None,
            failures: Vec::new(),
        };
        self.records.push(Record {
            order: stored.clone(),
            holder: None,
        });
        self.statuses(OrderStatus::Pending).insert(id);
        match self.by_user.get_mut(order.user_id()) {
            Some(ids) => ids.push(id),
            None => {
                self.by_user.insert(order.user_id().to_owned(), vec![id]);
            }
        }
        self.metrics.total_orders += 1;
        self.metrics.statuses.pending += 1;
        Ok(stored)
    }

    fn statuses(&mut self, status: OrderStatus) -> &mut BTreeSet<OrderId> {
        &mut self.by_status[status_index(status)]
    }

    fn record(&self, id: OrderId) -> Option<&Record> {
        self.records.get(slot(id)?)
    }

    fn record_mut(&mut self, id: OrderId) -> Option<&mut Record> {
        self.records.get_mut(slot(id)?)
    }

    fn apply(&mut self, id: OrderId, transition: Transition) -> Result<Order, TransitionError> {
        let now = wall_clock();
        let monotonic_now = Instant::now();
        let record = self.record_mut(id).ok_or(TransitionError::NotFound(id))?;
        let from = record.order.status;
        let target = transition.target();
        let held_by = |claim: ClaimToken| {
            from == OrderStatus::Processing && matches!(record.holder, Some((t, _)) if t == claim)
        };
        let lease_live = matches!(record.holder, Some((_, until)) if until > monotonic_now);
        let no_steps = record.order.steps.is_empty();
        let allowed = match &transition {
            Transition::Start { .. } => {
                from == OrderStatus::Pending || (from == OrderStatus::Processing && !lease_live)
            }
            Transition::Retry { claim, .. } | Transition::Release { claim } => {
                held_by(*claim) && no_steps
            }
            Transition::Renew { claim, .. }
            | Transition::Complete { claim, .. }
            | Transition::Fail { claim, .. }
            | Transition::Checkpoint { claim, .. }
            | Transition::FinishCancel { claim, .. } => held_by(*claim),
            Transition::Cancel => from == OrderStatus::Pending,
            Transition::RequestCancel { seen } => {
                from == OrderStatus::Processing
                    && record.order.cancel_requested_at.is_none()
                    && record.order.updated_at == *seen
            }
            Transition::Requeue { seen, .. } => {
                from == OrderStatus::Failed && record.order.updated_at == *seen
            }
        };
        if allowed
            && transition.refused_once_cancelling()
            && record.order.cancel_requested_at.is_some()
        {
            return Err(TransitionError::CancelRequested(id));
        }
        if !allowed {
            let held_by_other = from == OrderStatus::Processing
                && lease_live
                && transition.claim().is_none_or(|claim| !held_by(claim));
            return Err(TransitionError::Conflict {
                id,
                current: from,
                target,
                held_by_other,
            });
        }

        let renewal = matches!(transition, Transition::Renew { .. });
        let order = &mut record.order;
        match transition {
            Transition::Start { claim, lease } => {
                order.attempts = order.attempts.saturating_add(1);
                order.processing_start_time.get_or_insert(now);
                record.holder = Some((claim, deadline(monotonic_now, lease)));
            }
            Transition::Renew { claim, lease } => {
                record.holder = Some((claim, deadline(monotonic_now, lease)));
            }
            Transition::Complete { steps, .. } => {
                order.processing_end_time = Some(now);
                if let Some(steps) = steps {
                    order.steps = steps;
                }
                record.holder = None;
            }
            Transition::Retry { error, .. } => {
                order.last_error = Some(error);
                record.holder = None;
            }
            Transition::Release { .. } => {
                order.attempts = order.attempts.saturating_sub(1);
                if order.attempts == 0 {
                    order.processing_start_time = None;
                }
                record.holder = None;
            }
            Transition::Fail { error, steps, .. } => {
                order.processing_end_time = Some(now);
                order.last_error = Some(error);
                if let Some(steps) = steps {
                    order.steps = steps;
                }
                record.holder = None;
            }
            Transition::Cancel => {}
            Transition::Checkpoint { steps, .. } => order.steps = steps,
            Transition::RequestCancel { .. } => order.cancel_requested_at = Some(now),
            Transition::FinishCancel { steps, .. } => {
                order.processing_end_time = Some(now);
                order.steps = steps;
                record.holder = None;
            }
            Transition::Requeue { failure, steps, .. } => {
                order.processing_end_time = None;
                order.failures.push(failure);
                order.steps = steps;
            }
        }
        // A renewal is bookkeeping, not news: it leaves `updated_at` alone. Every other write
        // moves it forward, if only by a microsecond: a cancel request compares it to tell
        // whether the order changed since it was read.
        if !renewal {
            order.updated_at = now.max(order.updated_at + chrono::TimeDelta::microseconds(1));
        }
        order.status = target;
        let order = order.clone();

        if from != target {
            *self.metrics.statuses.get_mut(from) -= 1;
            *self.metrics.statuses.get_mut(target) += 1;
            self.statuses(from).remove(&id);
            self.statuses(target).insert(id);
            if target == OrderStatus::Completed {
                self.metrics.completed_processing_micros += processing_micros(&order);
            }
        }
        Ok(order)
    }
}

/// `processing_end_time - processing_start_time` in microseconds, 0 if either is missing.
fn processing_micros(order: &Order) -> u64 {
    match (order.processing_start_time, order.processing_end_time) {
        (Some(start), Some(end)) => (end - start)
            .num_microseconds()
            .and_then(|micros| u64::try_from(micros).ok())
            .unwrap_or(0),
        _ => 0,
    }
}

#[async_trait]
impl Repository for InMemoryRepository {
    async fn insert(&self, order: &ValidatedOrder) -> Result<Order, StorageError> {
        let mut state = lock(&self.state);
        self.check_room(&state)?;
        state.store(order)
    }

    async fn insert_keyed(
        &self,
        order: &ValidatedOrder,
        record: &KeyRecord,
    ) -> Result<Insertion, StorageError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(used) = state.keys.get(&record.key)
            && used.expires > now
            && let Some(existing) = state.record(used.order)
        {
            return Ok(Insertion::Existing {
                order: existing.order.clone(),
                same_request: used.fingerprint == record.fingerprint,
            });
        }
        self.check_room(&state)?;
        let stored = state.store(order)?;
        state.keys.insert(
            record.key.clone(),
            KeyUse {
                fingerprint: record.fingerprint,
                order: stored.id,
                expires: deadline(now, record.ttl),
            },
        );
        Ok(Insertion::Created(stored))
    }

    async fn prune_keys(&self) -> Result<u64, StorageError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let before = state.keys.len();
        state.keys.retain(|_, used| used.expires > now);
        Ok((before - state.keys.len()) as u64)
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        Ok(lock(&self.state)
            .record(id)
            .map(|record| record.order.clone()))
    }

    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError> {
        lock(&self.state).apply(id, transition)
    }

    async fn stranded(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StorageError> {
        let now = Instant::now();
        let state = lock(&self.state);
        let from = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        let pending = state.by_status[status_index(OrderStatus::Pending)]
            .range(from)
            .take(limit);
        let lapsed = state.by_status[status_index(OrderStatus::Processing)]
            .range(from)
            .filter(|&&id| {
                state
                    .record(id)
                    .is_some_and(|record| record.holder.is_none_or(|(_, until)| until <= now))
            })
            .take(limit);
        let mut found: Vec<OrderId> = pending.chain(lapsed).copied().collect();
        found.sort_unstable();
        found.truncate(limit);
        Ok(found)
    }

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StorageError> {
        let state = lock(&self.state);
        let bounds = id_bounds(query);
        // The narrowest index that serves the query; a user's orders are filtered by status.
        let ids: Box<dyn DoubleEndedIterator<Item = &OrderId>> =
            match (&query.user_id, query.status) {
                (Some(user), _) => Box::new(
                    sorted_range(
                        state.by_user.get(user).map_or(&[][..], Vec::as_slice),
                        bounds,
                    )
                    .iter(),
                ),
                (None, Some(status)) => {
                    Box::new(state.by_status[status_index(status)].range(bounds))
                }
                (None, None) => {
                    // Order `n` is at index `n - 1`, so the range is a slice of the records.
                    let len = state.records.len();
                    let index = |id: OrderId| usize::try_from(id.get()).unwrap_or(len).min(len);
                    let start = match bounds.0 {
                        Bound::Excluded(after) => index(after),
                        _ => 0,
                    };
                    let end = match bounds.1 {
                        Bound::Excluded(before) => index(before).saturating_sub(1),
                        _ => len,
                    };
                    let records = state.records.get(start..end.max(start)).unwrap_or_default();
                    Box::new(records.iter().map(|record| &record.order.id))
                }
            };
        let ids: Box<dyn Iterator<Item = &OrderId>> = if query.oldest_first {
            ids
        } else {
            Box::new(ids.rev())
        };
        Ok(ids
            .filter_map(|&id| state.record(id))
            .map(|record| &record.order)
            .filter(|order| query.matches(order))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn metrics(&self) -> Result<OrderMetrics, StorageError> {
        Ok(lock(&self.state).metrics)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::sample_order;

    #[tokio::test]
    async fn a_full_backlog_refuses_inserts_until_orders_finish() {
        let repository = InMemoryRepository::with_max_unfinished(2);
        let first = repository.insert(&sample_order("a", 1)).await.unwrap();
        repository.insert(&sample_order("b", 1)).await.unwrap();
        let err = repository.insert(&sample_order("c", 1)).await.unwrap_err();
        assert!(
            err.unavailable && err.message.contains("backlog is full"),
            "{err}"
        );
        repository
            .transition(first.id, Transition::Cancel)
            .await
            .unwrap();
        repository.insert(&sample_order("c", 1)).await.unwrap();
        assert_eq!(repository.metrics().await.unwrap().total_orders, 3);
    }
}
