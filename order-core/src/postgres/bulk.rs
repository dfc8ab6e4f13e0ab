//! [`PostgresBulkActions`]: bulk actions in `order_engine_bulk_actions`, their selected orders
//! in `order_engine_bulk_items`, each page one transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value};

use super::entity::order_row;
use super::error::storage_error;
use super::wakeups::Wakeups;
use super::{PostgresPool, micros};
use crate::backend::Transition;
use crate::bulk::{
    Acceptance, BulkAction, BulkActions, BulkId, BulkKind, BulkRequest, BulkStatus, PAGE, Page,
};
use crate::error::StorageError;
use crate::idempotency::IdempotencyKey;
use crate::order::Order;
use crate::order::failures::encode_failures;
use crate::queue::ClaimToken;
use crate::step::encode_steps;

/// Bulk actions in PostgreSQL, beside the orders they act on: any server that shares the
/// database reports an action's progress and takes over one whose runner died.
///
/// Each page is one transaction: it takes the next ids from `order_engine_bulk_items`
/// (deleting them), locks those orders in id order, changes the ones still selected, and
/// writes the action's counts and lease. A crash rolls the whole page back, so each order is
/// counted once, acted on or skipped.
#[derive(Debug, Clone)]
pub struct PostgresBulkActions {
    pool: PostgresPool,
    /// A retried order is new work for the backend's workers.
    wakeups: Option<Arc<Wakeups>>,
}

impl PostgresBulkActions {
    /// The bulk actions of a backend on `pool`, waking its workers through `wakeups`.
    pub(super) fn new(pool: PostgresPool, wakeups: Option<Arc<Wakeups>>) -> Self {
        Self { pool, wakeups }
    }
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// An idempotency key as stored: its scope and the key, apart by a newline, which neither
/// holds.
fn stored_key(key: &IdempotencyKey) -> String {
    format!("{}\n{}", key.scope(), key.key())
}

/// The action in a row of `order_engine_bulk_actions`.
fn action_row(row: &QueryResult) -> Result<BulkAction, StorageError> {
    let read = |err| storage_error("could not read a bulk action", err);
    let id: uuid::Uuid = row.try_get("", "id").map_err(read)?;
    let kind: String = row.try_get("", "kind").map_err(read)?;
    let kind: BulkKind = kind
        .parse()
        .map_err(|_| StorageError::other(format!("bulk action {id} holds an invalid kind")))?;
    let count = |column: &str| -> Result<u64, StorageError> {
        let value: i64 = row.try_get("", column).map_err(read)?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    let limit: i32 = row.try_get("", "max_orders").map_err(read)?;
    let finished_at: Option<chrono::DateTime<chrono::Utc>> =
        row.try_get("", "finished_at").map_err(read)?;
    Ok(BulkAction {
        id: BulkId::from_uuid(id),
        kind,
        selects: kind.selects(),
        user_id: row.try_get("", "user_id").map_err(read)?,
        limit: u32::try_from(limit).unwrap_or(0),
        matched: count("matched")?,
        acted: count("acted")?,
        skipped: count("skipped")?,
        longest_page_ms: {
            let micros: i64 = row.try_get("", "longest_page_micros").map_err(read)?;
            // Microseconds to milliseconds: exact well past any page's length.
            #[allow(clippy::cast_precision_loss)]
            let ms = micros as f64 / 1000.0;
            ms
        },
        status: if finished_at.is_some() {
            BulkStatus::Done
        } else {
            BulkStatus::Running
        },
        accepted_at: row.try_get("", "accepted_at").map_err(read)?,
        updated_at: row.try_get("", "updated_at").map_err(read)?,
        finished_at,
    })
}

/// Reads one action row from `rows`, which must hold it.
fn one_action(row: Option<&QueryResult>) -> Result<BulkAction, StorageError> {
    row.map(action_row)
        .transpose()?
        .ok_or_else(|| StorageError::other("a bulk action's row went missing"))
}

#[async_trait]
impl BulkActions for PostgresBulkActions {
    async fn accept(
        &self,
        request: &BulkRequest,
        key: Option<&IdempotencyKey>,
    ) -> Result<Acceptance, StorageError> {
        let failed = |err| storage_error("could not accept the bulk action", err);
        let txn = self.pool.begin().await.map_err(failed)?;
        let id = BulkId::generate();
        let fingerprint = request.fingerprint();
        let key = key.map(stored_key);
        // A key taken by a transaction still in flight makes this insert wait for it, then
        // do nothing: of concurrent requests with one key, one selects orders.
        let inserted = txn
            .query_one_raw(statement(
                "INSERT INTO order_engine_bulk_actions
                     (id, kind, user_id, max_orders, idempotency_key, fingerprint)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                vec![
                    id.as_uuid().into(),
                    request.kind.as_str().into(),
                    request.user_id.clone().into(),
                    i32::try_from(request.limit).unwrap_or(i32::MAX).into(),
                    key.clone().into(),
                    fingerprint.clone().into(),
                ],
            ))
            .await
            .map_err(failed)?;
        if inserted.is_none() {
            let existing = txn
                .query_one_raw(statement(
                    "SELECT * FROM order_engine_bulk_actions WHERE idempotency_key = $1",
                    vec![key.into()],
                ))
                .await
                .map_err(failed)?;
            let same: Option<String> = existing
                .as_ref()
                .map(|row| row.try_get("", "fingerprint"))
                .transpose()
                .map_err(failed)?;
            let action = one_action(existing.as_ref())?;
            txn.rollback().await.map_err(failed)?;
            return Ok(if same.as_deref() == Some(fingerprint.as_str()) {
                Acceptance::Replayed(action)
            } else {
                Acceptance::KeyReused(action)
            });
        }
        // One statement, one snapshot: the orders selected are those in the status at this
        // moment. The status is a literal, one of five names, so that the planner matches the
        // partial index of unfinished or finished orders.
        let mut values: Vec<Value> = vec![id.as_uuid().into(), i64::from(request.limit).into()];
        let user = match &request.user_id {
            Some(user) => {
                values.push(user.clone().into());
                " AND user_id = $3"
            }
            None => "",
        };
        let selected = txn
            .execute_raw(statement(
                &format!(
                    "INSERT INTO order_engine_bulk_items (action_id, order_id)
                     SELECT $1, id FROM order_engine_orders
                      WHERE status = '{}'{user} ORDER BY id LIMIT $2",
                    request.kind.selects().as_str()
                ),
                values,
            ))
            .await
            .map_err(failed)?
            .rows_affected();
        let action = txn
            .query_one_raw(statement(
                "UPDATE order_engine_bulk_actions SET matched = $2, finished_at = \
                   CASE WHEN $2 = 0 THEN now() END WHERE id = $1 RETURNING *",
                vec![
                    id.as_uuid().into(),
                    i64::try_from(selected).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await
            .map_err(failed)?;
        let action = one_action(action.as_ref())?;
        txn.commit().await.map_err(failed)?;
        Ok(Acceptance::Accepted(action))
    }

    async fn preview(&self, request: &BulkRequest) -> Result<u64, StorageError> {
        let mut values: Vec<Value> = vec![i64::from(request.limit).into()];
        let user = match &request.user_id {
            Some(user) => {
                values.push(user.clone().into());
                " AND user_id = $2"
            }
            None => "",
        };
        let row = self
            .pool
            .query_one(statement(
                &format!(
                    "SELECT count(*) AS matched FROM (
                         SELECT 1 FROM order_engine_orders
                          WHERE status = '{}'{user} ORDER BY id LIMIT $1) s",
                    request.kind.selects().as_str()
                ),
                values,
            ))
            .await
            .map_err(|err| storage_error("could not count the orders selected", err))?;
        let matched: i64 = row
            .map(|row| row.try_get("", "matched"))
            .transpose()
            .map_err(|err| storage_error("could not count the orders selected", err))?
            .unwrap_or(0);
        Ok(u64::try_from(matched).unwrap_or(0))
    }

    async fn get(&self, id: BulkId) -> Result<Option<BulkAction>, StorageError> {
        let row = self
            .pool
            .query_one(statement(
                "SELECT * FROM order_engine_bulk_actions WHERE id = $1",
                vec![id.as_uuid().into()],
            ))
            .await
            .map_err(|err| storage_error("could not read the bulk action", err))?;
        row.as_ref().map(action_row).transpose()
    }

    async fn claim(
        &self,
        lease: Duration,
    ) -> Result<Option<(BulkAction, ClaimToken)>, StorageError> {
        let claim = ClaimToken::generate();
        let row = self
            .pool
            .query_one(statement(
                "UPDATE order_engine_bulk_actions
                    SET claim_token = $1, lease_until = now() + $2 * interval '1 microsecond'
                  WHERE id = (SELECT id FROM order_engine_bulk_actions
                               WHERE finished_at IS NULL
                                 AND (lease_until IS NULL OR lease_until <= now())
                               ORDER BY accepted_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                  RETURNING *",
                vec![claim.as_uuid().into(), micros(lease).into()],
            ))
            .await
            .map_err(|err| storage_error("could not claim a bulk action", err))?;
        Ok(row
            .as_ref()
            .map(action_row)
            .transpose()?
            .map(|action| (action, claim)))
    }

    async fn page(
        &self,
        id: BulkId,
        claim: ClaimToken,
        lease: Duration,
    ) -> Result<Option<Page>, StorageError> {
        let failed = |err| storage_error("could not go through a page of the bulk action", err);
        let txn = self.pool.begin().await.map_err(failed)?;
        let held = txn
            .query_one_raw(statement(
                "SELECT kind FROM order_engine_bulk_actions
                  WHERE id = $1 AND claim_token = $2 AND finished_at IS NULL FOR UPDATE",
                vec![id.as_uuid().into(), claim.as_uuid().into()],
            ))
            .await
            .map_err(failed)?;
        let Some(held) = held else {
            txn.rollback().await.map_err(failed)?;
            return Ok(None);
        };
        let kind: String = held.try_get("", "kind").map_err(failed)?;
        let kind: BulkKind = kind
            .parse()
            .map_err(|_| StorageError::other(format!("bulk action {id} holds an invalid kind")))?;
        let ids: Vec<i64> = txn
            .query_all_raw(statement(
                "DELETE FROM order_engine_bulk_items
                  WHERE action_id = $1 AND order_id IN (
                        SELECT order_id FROM order_engine_bulk_items
                         WHERE action_id = $1 ORDER BY order_id LIMIT $2)
              RETURNING order_id",
                vec![
                    id.as_uuid().into(),
                    i64::try_from(PAGE).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await
            .map_err(failed)?
            .iter()
            .map(|row| row.try_get::<i64>("", "order_id"))
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        let changed = match kind {
            BulkKind::Cancel => cancel_page(&txn, &ids).await?,
            BulkKind::Retry => retry_page(&txn, &ids).await?,
        };
        let done = ids.len() < PAGE;
        let acted = changed.len();
        let row = txn
            .query_one_raw(statement(
                "UPDATE order_engine_bulk_actions
                    SET acted = acted + $2, skipped = skipped + $3,
                        last_order_id = greatest(last_order_id, $4),
                        lease_until = now() + $5 * interval '1 microsecond',
                        updated_at = now(), finished_at = CASE WHEN $6 THEN now() END,
                        -- From the page's first lock (its transaction's start) to here.
                        longest_page_micros = greatest(longest_page_micros,
                            (extract(epoch FROM clock_timestamp() - now()) * 1000000)::bigint)
                  WHERE id = $1 RETURNING *",
                vec![
                    id.as_uuid().into(),
                    i64::try_from(acted).unwrap_or(i64::MAX).into(),
                    i64::try_from(ids.len() - acted).unwrap_or(i64::MAX).into(),
                    ids.iter().copied().max().unwrap_or(0).into(),
                    micros(lease).into(),
                    done.into(),
                ],
            ))
            .await
            .map_err(failed)?;
        let action = one_action(row.as_ref())?;
        txn.commit().await.map_err(failed)?;
        if kind == BulkKind::Retry
            && !changed.is_empty()
            && let Some(wakeups) = &self.wakeups
        {
            wakeups.announce();
        }
        Ok(Some(Page { action, changed }))
    }
}

/// Cancels those of `ids` still PENDING, as [`Transition::Cancel`] does, locking them in id
/// order (as every statement that locks several orders does, so that none deadlocks).
async fn cancel_page(txn: &DatabaseTransaction, ids: &[i64]) -> Result<Vec<Order>, StorageError> {
    let rows = txn
        .query_all_raw(statement(
            "WITH locked AS (
                 SELECT id FROM order_engine_orders
                  WHERE id = ANY($1) AND status = 'PENDING' ORDER BY id FOR UPDATE)
             UPDATE order_engine_orders o
                SET status = 'CANCELLED', available_at = NULL, updated_at = now()
               FROM locked WHERE o.id = locked.id
             RETURNING o.*",
            vec![ids.to_vec().into()],
        ))
        .await
        .map_err(|err| storage_error("could not cancel a page of orders", err))?;
    rows.iter().map(order_row).collect()
}

/// Requeues those of `ids` still FAILED, as [`Transition::requeue`] would one by one: each
/// one's failure appended and the steps whose work stands kept, due at once.
async fn retry_page(txn: &DatabaseTransaction, ids: &[i64]) -> Result<Vec<Order>, StorageError> {
    let failed = |err| storage_error("could not retry a page of orders", err);
    let rows = txn
        .query_all_raw(statement(
            "SELECT * FROM order_engine_orders
              WHERE id = ANY($1) AND status = 'FAILED' ORDER BY id FOR UPDATE",
            vec![ids.to_vec().into()],
        ))
        .await
        .map_err(failed)?;
    let orders: Vec<Order> = rows.iter().map(order_row).collect::<Result<_, _>>()?;
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let mut order_ids = Vec::with_capacity(orders.len());
    let mut steps = Vec::with_capacity(orders.len());
    let mut failures = Vec::with_capacity(orders.len());
    for order in &orders {
        let Transition::Requeue {
            failure,
            steps: kept,
            ..
        } = Transition::requeue(order)
        else {
            continue;
        };
        order_ids.push(order.id.get());
        // The driver binds no NULL element: no steps is '' (read back through nullif).
        steps.push(encode_steps(&kept).unwrap_or_default());
        failures.push(encode_failures(std::slice::from_ref(&failure)).unwrap_or_default());
    }
    let rows = txn
        .query_all_raw(statement(
            "UPDATE order_engine_orders o
                SET status = 'PENDING', claim_token = NULL, available_at = now(),
                    processing_end_time = NULL, steps = nullif(u.steps, ''),
                    failures = (coalesce(o.failures::jsonb, '[]'::jsonb) || u.failure::jsonb)::text,
                    updated_at = greatest(now(), o.updated_at + interval '1 microsecond')
               FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, steps, failure)
              WHERE o.id = u.id AND o.status = 'FAILED'
             RETURNING o.*",
            vec![order_ids.into(), steps.into(), failures.into()],
        ))
        .await
        .map_err(failed)?;
    rows.iter().map(order_row).collect()
}
