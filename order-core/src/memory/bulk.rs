//! [`InMemoryBulkActions`]: bulk actions kept in this process's memory, acting on orders
//! through any [`Repository`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::deadline;
use crate::backend::{Repository, Transition, TransitionError};
use crate::bulk::{
    Acceptance, BulkAction, BulkActions, BulkId, BulkKind, BulkRequest, BulkStatus, PAGE, Page,
};
use crate::error::StorageError;
use crate::idempotency::IdempotencyKey;
use crate::order::{OrderId, OrderStatus};
use crate::queue::ClaimToken;
use crate::repository::OrderQuery;
use crate::step::now;

/// Bulk actions in memory, acting on the orders of `repository` one transition at a time.
///
/// The selection is read a page of the listing at a time, and each order's change is its own
/// transition: a process that keeps its orders in memory loses them with the actions when it
/// stops, so nothing needs the atomicity across a crash that the PostgreSQL store gives.
#[derive(Clone)]
pub struct InMemoryBulkActions {
    repository: Arc<dyn Repository>,
    // A tokio mutex: a page awaits the repository while it holds the action, so that two
    // claims never go through one page at once.
    actions: Arc<tokio::sync::Mutex<Actions>>,
}

#[derive(Debug, Default)]
struct Actions {
    by_id: HashMap<BulkId, Entry>,
    /// The action each idempotency key names, with the request's fingerprint.
    keys: HashMap<(String, String), (BulkId, String)>,
}

#[derive(Debug)]
struct Entry {
    action: BulkAction,
    /// The orders selected, ascending, and how many have been gone through.
    selected: Vec<OrderId>,
    done: usize,
    holder: Option<(ClaimToken, Instant)>,
}

impl std::fmt::Debug for InMemoryBulkActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBulkActions")
            .finish_non_exhaustive()
    }
}

impl InMemoryBulkActions {
    /// Bulk actions on the orders of `repository`.
    pub fn new(repository: Arc<dyn Repository>) -> Self {
        Self {
            repository,
            actions: Arc::default(),
        }
    }

    /// Up to `request.limit` ids of orders it selects, oldest first.
    async fn select(&self, request: &BulkRequest) -> Result<Vec<OrderId>, StorageError> {
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let mut selected = Vec::new();
        let mut after = None;
        while selected.len() < limit {
            let mut query = OrderQuery::oldest_first(PAGE.min(limit - selected.len()))
                .status(request.kind.selects());
            if let Some(user) = &request.user_id {
                query = query.user(user.clone());
            }
            if let Some(after) = after {
                query = query.after(after);
            }
            let page = self.repository.list(&query).await?;
            let full = page.len() == query.limit;
            selected.extend(page.iter().map(|order| order.id));
            after = selected.last().copied();
            if !full {
                break;
            }
        }
        Ok(selected)
    }
}

#[async_trait]
impl BulkActions for InMemoryBulkActions {
    async fn accept(
        &self,
        request: &BulkRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<Acceptance, StorageError> {
        let mut actions = self.actions.lock().await;
        let key = key.map(|key| (key.scope().to_owned(), key.key().to_owned()));
        if let Some(key) = &key
            && let Some((id, fingerprint)) = actions.keys.get(key)
            && let Some(entry) = actions.by_id.get(id)
        {
            let action = entry.action.clone();
            return Ok(if *fingerprint == request.fingerprint() {
                Acceptance::Replayed(action)
            } else {
                Acceptance::KeyReused(action)
            });
        }
        let selected = self.select(request).await?;
        let accepted_at = now();
        let action = BulkAction {
            id: BulkId::generate(),
            kind: request.kind,
            selects: request.kind.selects(),
            user_id: request.user_id.clone(),
            limit: request.limit,
            matched: selected.len() as u64,
            acted: 0,
            skipped: 0,
            longest_page_ms: 0.0,
            // Nothing selected: nothing to go through.
            status: if selected.is_empty() {
                BulkStatus::Done
            } else {
                BulkStatus::Running
            },
            accepted_at,
            updated_at: accepted_at,
            finished_at: selected.is_empty().then_some(accepted_at),
        };
        if let Some(key) = key {
            actions.keys.insert(key, (action.id, request.fingerprint()));
        }
        actions.by_id.insert(
            action.id,
            Entry {
                action: action.clone(),
                selected,
                done: 0,
                holder: None,
            },
        );
        Ok(Acceptance::Accepted(action))
    }

    async fn preview(&self, request: &BulkRequest) -> Result<u64, StorageError> {
        Ok(self.select(request).await?.len() as u64)
    }

    async fn get(&self, id: BulkId) -> Result<Option<BulkAction>, StorageError> {
        let actions = self.actions.lock().await;
        Ok(actions.by_id.get(&id).map(|entry| entry.action.clone()))
    }

    async fn claim(
        &self,
        lease: Duration,
    ) -> Result<Option<(BulkAction, ClaimToken)>, StorageError> {
        let mut actions = self.actions.lock().await;
        let now = Instant::now();
        let free = actions
            .by_id
            .values_mut()
            .filter(|entry| entry.action.status == BulkStatus::Running)
            .filter(|entry| entry.holder.is_none_or(|(_, until)| until <= now))
            .min_by_key(|entry| entry.action.accepted_at);
        Ok(free.map(|entry| {
            let claim = ClaimToken::generate();
            entry.holder = Some((claim, deadline(now, lease)));
            (entry.action.clone(), claim)
        }))
    }

    async fn page(
        &self,
        id: BulkId,
        claim: ClaimToken,
        lease: Duration,
    ) -> Result<Option<Page>, StorageError> {
        let mut actions = self.actions.lock().await;
        let Some(entry) = actions.by_id.get_mut(&id) else {
            return Ok(None);
        };
        if entry.holder.is_none_or(|(holder, _)| holder != claim)
            || entry.action.status == BulkStatus::Done
        {
            return Ok(None);
        }
        let began = Instant::now();
        let end = (entry.done + PAGE).min(entry.selected.len());
        let mut changed = Vec::new();
        let mut skipped = 0;
        for &order_id in &entry.selected[entry.done..end] {
            let current = self.repository.get(order_id).await?;
            let transition = match (entry.action.kind, current) {
                (BulkKind::Cancel, Some(order)) if order.status == OrderStatus::Pending => {
                    Transition::Cancel
                }
                (BulkKind::Retry, Some(order)) if order.status == OrderStatus::Failed => {
                    Transition::requeue(&order)
                }
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            match self.repository.transition(order_id, transition).await {
                Ok(order) => changed.push(order),
                // Moved on between the read and the write: no longer selected.
                Err(TransitionError::Conflict { .. } | TransitionError::NotFound(_)) => {
                    skipped += 1;
                }
                Err(TransitionError::CancelRequested(_)) => skipped += 1,
                Err(TransitionError::Storage(err)) => return Err(err),
            }
        }
        entry.done = end;
        let action = &mut entry.action;
        action.acted += changed.len() as u64;
        action.skipped += skipped;
        action.longest_page_ms = action
            .longest_page_ms
            .max(began.elapsed().as_secs_f64() * 1000.0);
        action.updated_at = now().max(action.updated_at);
        if entry.done == entry.selected.len() {
            action.status = BulkStatus::Done;
            action.finished_at = Some(action.updated_at);
            entry.selected = Vec::new();
            entry.holder = None;
        } else {
            entry.holder = Some((claim, deadline(Instant::now(), lease)));
        }
        Ok(Some(Page {
            action: entry.action.clone(),
            changed,
        }))
    }
}
