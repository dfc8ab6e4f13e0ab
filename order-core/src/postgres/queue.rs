//! [`Queue`] on PostgreSQL: the unfinished orders themselves.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{DbBackend, QueryResult, Statement, Value};

use super::PostgresPool;
use super::entity::{order_row, start};
use super::error::storage_error;
use super::micros;
use super::wakeups::Wakeups;
use crate::error::StorageError;
use crate::order::{OrderId, OrderStatus};
use crate::queue::{Claim, ClaimToken, Queue, QueueDepth, QueueError, QueueStorage};

/// The work queue of a [`PostgresBackend`](super::PostgresBackend): the PENDING and
/// PROCESSING rows of `order_engine_orders`, each due at its `available_at` (see [the
/// module](super)).
///
/// - An order is queued by the statement that stores it, and leaves the queue with the status
///   change that finishes it: there is nothing to push, and nothing to ack.
/// - [`claim`](Queue::claim) takes the rows due soonest with `FOR UPDATE SKIP LOCKED` and
///   starts each (`Transition::Start`, under a fresh token and the claim's lease) in one
///   statement: concurrent claimers, in one process or many, never get the same order and
///   never wait on one another. Each [`Claim`] carries its order as started.
/// - A PROCESSING order's `available_at` is its lease's end, so an order whose worker died is
///   claimed again as soon as its lease runs out, by the same statement and the same index.
/// - [`retry`](Queue::retry) sets when an order that went back to PENDING may be claimed
///   again, fenced by the claim that held it; a retry without delay, like every new order,
///   wakes this process's idle workers at once and other processes' through
///   `NOTIFY order_engine_queue`.
/// - [`wait`](Queue::wait) sleeps on a `LISTEN` connection (opened on first use, reopened after
///   a database restart) until a notification arrives. While notifications do not arrive (a
///   pooler in transaction mode without a listen URL: see
///   [`NotificationMode`](super::NotificationMode)), waiters wake four times a second.
///
/// Cloning is cheap: clones share the connection pool and the listener.
#[derive(Debug, Clone)]
pub struct PostgresQueue {
    db: PostgresPool,
    wakeups: Arc<Wakeups>,
}

/// Claims and starts the orders due soonest: `$1` how many at most, `$2` the lease in
/// microseconds. Each row comes back as started, with the time it was due (`since`), for the
/// claims to be handed out in that order.
///
/// Each claim's token is drawn once, in `batch`, and the update looks it up by position in the
/// batch's arrays: a join of the table against the claimed rows (which the planner guesses at
/// one row) became a nested loop that scanned the batch once per order. `FOR UPDATE` re-checks
/// a row that another statement changed meanwhile, so an order finished or started since it
/// was read is left out.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH due AS (
             SELECT id, available_at FROM order_engine_orders
              WHERE status IN ('PENDING', 'PROCESSING') AND available_at <= now()
              ORDER BY available_at, id
              LIMIT $1
              FOR UPDATE SKIP LOCKED),
         batch AS MATERIALIZED (
             SELECT array_agg(id) AS ids, array_agg(available_at) AS since,
                    array_agg(gen_random_uuid()) AS claims
               FROM due)
         UPDATE order_engine_orders o
            SET {}, deliveries = least(o.deliveries, 2147483646) + 1
           FROM batch b
          WHERE o.id = ANY(b.ids)
      RETURNING o.*, b.since[array_position(b.ids, o.id)] AS since",
        start("b.claims[array_position(b.ids, o.id)]", "$2")
    )
});

impl PostgresQueue {
    /// The queue of a backend on `db`, waking workers through `wakeups`.
    pub(super) fn new(db: PostgresPool, wakeups: Arc<Wakeups>) -> Self {
        Self { db, wakeups }
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, QueueError> {
        let result = self
            .db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await
            .map_err(|err| storage_error("queue statement failed", err))?;
        Ok(result.rows_affected())
    }

    async fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, QueueError> {
        Ok(self
            .db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await
            .map_err(|err| storage_error("queue query failed", err))?)
    }
}

#[async_trait]
impl Queue for PostgresQueue {
    /// Adds nothing: an order is queued by the statement that stores it, and one that is
    /// finished is not work.
    async fn push(&self, _id: OrderId) -> Result<bool, QueueError> {
        Ok(false)
    }

    async fn push_many(&self, _ids: &[OrderId]) -> Result<usize, QueueError> {
        Ok(0)
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                &CLAIM,
                vec![
                    i64::try_from(max).unwrap_or(i64::MAX).into(),
                    micros(lease).into(),
                ],
            )
            .await?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let read = |err| storage_error("could not read a claim", err);
            let since: chrono::DateTime<chrono::Utc> = row.try_get("", "since").map_err(read)?;
            let token: uuid::Uuid = row.try_get("", "claim_token").map_err(read)?;
            let deliveries: i32 = row.try_get("", "deliveries").map_err(read)?;
            let order = order_row(row)?;
            let mut claim = Claim::new(
                order.id,
                ClaimToken::from_uuid(token),
                u32::try_from(deliveries).unwrap_or(0),
            );
            claim.started = Some(order);
            claims.push((since, claim));
        }
        // RETURNING keeps no order; hand them out soonest due first, as they were chosen.
        claims.sort_by_key(|(since, claim)| (*since, claim.order_id));
        Ok(claims.into_iter().map(|(_, claim)| claim).collect())
    }

    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        let changed = self
            .execute(
                "UPDATE order_engine_orders
                    SET available_at = now() + $3 * interval '1 microsecond'
                  WHERE id = $1 AND claim_token = $2 AND status = 'PROCESSING'",
                vec![
                    claim.order_id.get().into(),
                    claim.token.as_uuid().into(),
                    micros(lease).into(),
                ],
            )
            .await?;
        held(changed, claim)
    }

    /// Writes nothing: the transition that finished the order took it off the queue. `Ok`
    /// when the claim was the last to hold the order and it is finished; a claim on an
    /// unfinished order leaves the queue only by finishing it.
    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        let rows = self
            .query(
                "SELECT status FROM order_engine_orders WHERE id = $1 AND claim_token = $2",
                vec![claim.order_id.get().into(), claim.token.as_uuid().into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(QueueError::LeaseLost(claim.order_id));
        };
        let status: String = row
            .try_get("", "status")
            .map_err(|err| storage_error("could not read the order", err))?;
        match status.parse::<OrderStatus>() {
            Ok(status) if status.is_terminal() => Ok(()),
            _ => Err(QueueError::Storage(StorageError::other(format!(
                "order {} is {status}: its claim leaves the queue when a transition finishes it",
                claim.order_id
            )))),
        }
    }

    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        let changed = self
            .execute(
                "UPDATE order_engine_orders
                    SET available_at = now() + $3 * interval '1 microsecond'
                  WHERE id = $1 AND claim_token = $2 AND status = 'PENDING'",
                vec![
                    claim.order_id.get().into(),
                    claim.token.as_uuid().into(),
                    micros(delay).into(),
                ],
            )
            .await?;
        held(changed, claim)?;
        if delay.is_zero() {
            self.wakeups.announce();
        }
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        self.wakeups.wait(timeout).await;
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        // The total comes from the trigger-kept counters; held and delayed orders are the
        // unfinished rows whose `available_at` is still ahead, found through the index of due
        // orders, so the cost grows with the work in flight and waiting out a delay, not with
        // the backlog. A lapsed claim counts as ready: the next claim takes it.
        let rows = self
            .query(
                "SELECT (SELECT coalesce(sum(orders), 0) FROM order_engine_status_counts
                          WHERE status IN ('PENDING', 'PROCESSING'))::bigint AS total,
                        count(*) FILTER (WHERE status = 'PENDING') AS delayed,
                        count(*) FILTER (WHERE status = 'PROCESSING') AS claimed
                   FROM order_engine_orders
                  WHERE status IN ('PENDING', 'PROCESSING') AND available_at > now()",
                Vec::new(),
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(QueueDepth::default());
        };
        let read = |column: &str| -> Result<u64, QueueError> {
            let count: i64 = row
                .try_get("", column)
                .map_err(|err| storage_error("could not read the queue depth", err))?;
            Ok(u64::try_from(count).unwrap_or(0))
        };
        let (total, delayed, claimed) = (read("total")?, read("delayed")?, read("claimed")?);
        Ok(QueueDepth {
            ready: total.saturating_sub(delayed + claimed),
            delayed,
            claimed,
        })
    }

    fn storage(&self) -> QueueStorage {
        QueueStorage::Repository
    }
}

/// `Ok` when the fenced statement touched the claimed row, `LeaseLost` when the claim no longer
/// held it.
fn held(changed: u64, claim: &Claim) -> Result<(), QueueError> {
    if changed == 0 {
        Err(QueueError::LeaseLost(claim.order_id))
    } else {
        Ok(())
    }
}
