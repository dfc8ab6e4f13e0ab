//! [`Repository`] on PostgreSQL.

use async_trait::async_trait;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, Statement, Value,
};

use super::entity::{ActiveModel, Entity as Orders};
use super::error::storage_error;
use super::micros;
use crate::error::StorageError;
use crate::order::{Order, OrderId, OrderStatus, ValidatedOrder};
use crate::repository::{OrderMetrics, Repository, StatusCounts, Transition, TransitionError};

/// Orders in PostgreSQL (`order_engine_orders`), see [the module](super).
///
/// Every transition is one `UPDATE ... WHERE <the state it may leave from> RETURNING *`, so
/// two workers racing for one order cannot both win, whatever process they run in. Leases are
/// compared with the database's `now()`, one clock for every server.
///
/// Cloning is cheap: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct PostgresRepository {
    db: DatabaseConnection,
}

impl PostgresRepository {
    /// Orders in the database behind `db`, whose schema [`migrate`](super::migrate) has set up.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection pool, for readiness checks and an embedding service's own queries.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Columns every transition sets: the claim is cleared when the order leaves PROCESSING.
const LEAVE_PROCESSING: &str = "claim_token = NULL, lease_expires_at = NULL, updated_at = now()";

/// The `UPDATE` for `transition` and its parameters (`$1` is always the order id).
fn transition_statement(id: OrderId, transition: Transition) -> (String, Vec<Value>) {
    let held = "status = 'PROCESSING' AND claim_token = $2";
    let id = Value::from(id.get());
    let (set, condition, values) = match transition {
        Transition::Start { claim, lease } => (
            "status = 'PROCESSING', claim_token = $2, \
             lease_expires_at = now() + $3 * interval '1 microsecond', \
             attempts = least(attempts, 2147483646) + 1, \
             processing_start_time = coalesce(processing_start_time, now()), \
             updated_at = now()"
                .to_owned(),
            "(status = 'PENDING' OR (status = 'PROCESSING' AND lease_expires_at <= now()))",
            vec![id, claim.as_uuid().into(), micros(lease).into()],
        ),
        Transition::Renew { claim, lease } => (
            "lease_expires_at = now() + $3 * interval '1 microsecond'".to_owned(),
            held,
            vec![id, claim.as_uuid().into(), micros(lease).into()],
        ),
        Transition::Complete { claim } => (
            format!("status = 'COMPLETED', processing_end_time = now(), {LEAVE_PROCESSING}"),
            held,
            vec![id, claim.as_uuid().into()],
        ),
        Transition::Retry { claim, error } => (
            format!("status = 'PENDING', last_error = $3, {LEAVE_PROCESSING}"),
            held,
            vec![id, claim.as_uuid().into(), error.into()],
        ),
        Transition::Fail { claim, error } => (
            format!(
                "status = 'FAILED', processing_end_time = now(), last_error = $3, \
                 {LEAVE_PROCESSING}"
            ),
            held,
            vec![id, claim.as_uuid().into(), error.into()],
        ),
        Transition::Release { claim } => (
            format!(
                "status = 'PENDING', attempts = greatest(attempts - 1, 0), \
                 processing_start_time = CASE WHEN attempts <= 1 THEN NULL \
                 ELSE processing_start_time END, {LEAVE_PROCESSING}"
            ),
            held,
            vec![id, claim.as_uuid().into()],
        ),
        Transition::Cancel => (
            "status = 'CANCELLED', updated_at = now()".to_owned(),
            "status = 'PENDING'",
            vec![id],
        ),
    };
    (
        format!("UPDATE order_engine_orders SET {set} WHERE id = $1 AND {condition} RETURNING *"),
        values,
    )
}

#[async_trait]
impl Repository for PostgresRepository {
    async fn insert(&self, order: &ValidatedOrder) -> Result<Order, StorageError> {
        let row = ActiveModel {
            user_id: Set(order.user_id().to_owned()),
            item_ids: Set(order.item_ids().to_vec()),
            total_amount: Set(order.total_amount()),
            status: Set(OrderStatus::Pending.as_str().to_owned()),
            attempts: Set(0),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .map_err(|err| storage_error("could not insert the order", err))?;
        Order::try_from(row)
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        Orders::find_by_id(id.get())
            .one(&self.db)
            .await
            .map_err(|err| storage_error("could not read the order", err))?
            .map(Order::try_from)
            .transpose()
    }

    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError> {
        let target = transition.target();
        let claim = match &transition {
            Transition::Start { .. } | Transition::Cancel => None,
            Transition::Renew { claim, .. }
            | Transition::Complete { claim }
            | Transition::Retry { claim, .. }
            | Transition::Release { claim }
            | Transition::Fail { claim, .. } => Some(*claim),
        };
        let (sql, values) = transition_statement(id, transition);
        let written = Orders::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .one(&self.db)
            .await
            .map_err(|err| storage_error("could not update the order", err))?;
        if let Some(row) = written {
            return Ok(Order::try_from(row)?);
        }

        // Nothing was written: read why, for the caller to decide what to do.
        let read = |err| storage_error("could not read the order", err);
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status, claim_token, \
                        (status = 'PROCESSING' AND lease_expires_at > now()) AS lease_live \
                   FROM order_engine_orders WHERE id = $1",
                [id.get().into()],
            ))
            .await
            .map_err(read)?
            .ok_or(TransitionError::NotFound(id))?;
        let status: String = row.try_get("", "status").map_err(read)?;
        let current = status
            .parse::<OrderStatus>()
            .map_err(|_| StorageError::other(format!("order row {id} holds an invalid status")))?;
        let holder: Option<uuid::Uuid> = row.try_get("", "claim_token").map_err(read)?;
        let lease_live: Option<bool> = row.try_get("", "lease_live").map_err(read)?;
        let held_by_other = lease_live.unwrap_or(false)
            && claim.is_none_or(|claim| holder != Some(claim.as_uuid()));
        Err(TransitionError::Conflict {
            id,
            current,
            target,
            held_by_other,
        })
    }

    async fn stranded(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, StorageError> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM order_engine_orders \
                  WHERE status IN ('PENDING', 'PROCESSING') \
                    AND (status = 'PENDING' OR lease_expires_at <= now()) \
                    AND id > $1 \
                  ORDER BY id LIMIT $2",
                [
                    after.map_or(0, OrderId::get).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await
            .map_err(|err| storage_error("could not look for stranded orders", err))?;
        rows.iter()
            .map(|row| {
                let raw: i64 = row
                    .try_get("", "id")
                    .map_err(|err| storage_error("could not read an order id", err))?;
                OrderId::new(raw)
                    .ok_or_else(|| StorageError::other(format!("invalid order id {raw}")))
            })
            .collect()
    }

    async fn metrics(&self) -> Result<OrderMetrics, StorageError> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT status, sum(orders)::bigint AS orders, \
                        sum(processing_micros)::bigint AS micros \
                   FROM order_engine_status_counts GROUP BY status",
            ))
            .await
            .map_err(|err| storage_error("could not read the order counts", err))?;
        let mut metrics = OrderMetrics {
            statuses: StatusCounts::default(),
            ..OrderMetrics::default()
        };
        let read = |err| storage_error("could not read the order counts", err);
        for row in rows {
            let status: String = row.try_get("", "status").map_err(read)?;
            let orders: i64 = row.try_get("", "orders").map_err(read)?;
            let micros: i64 = row.try_get("", "micros").map_err(read)?;
            let status = status
                .parse::<OrderStatus>()
                .map_err(|_| StorageError::other(format!("unknown counted status {status}")))?;
            // Counts only go below zero if someone edits the table by hand; show 0 then.
            *metrics.statuses.get_mut(status) = u64::try_from(orders).unwrap_or(0);
            if status == OrderStatus::Completed {
                metrics.completed_processing_micros = u64::try_from(micros).unwrap_or(0);
            }
        }
        metrics.total_orders = metrics.statuses.sum();
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ClaimToken;

    #[test]
    fn worker_transitions_are_fenced_by_the_claim() {
        let id = OrderId::new(7).unwrap();
        let claim = ClaimToken::generate();
        for transition in [
            Transition::Complete { claim },
            Transition::Release { claim },
            Transition::Fail {
                claim,
                error: "no".to_owned(),
            },
        ] {
            let (sql, values) = transition_statement(id, transition);
            assert!(sql.contains("claim_token = $2"), "{sql}");
            assert_eq!(values[1], Value::from(claim.as_uuid()));
        }
        let (sql, values) = transition_statement(id, Transition::Cancel);
        assert!(
            sql.contains("status = 'PENDING'") && !sql.contains("$2"),
            "{sql}"
        );
        assert_eq!(values.len(), 1);
    }
}
