//! [`Queue`] on PostgreSQL.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, Value};
use tokio::sync::{Notify, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::NOTIFY_CHANNEL;
use super::batch::{Batcher, LIMITS, failed, lost_batch};
use super::error::storage_error;
use super::listen::{self, next_notification};
use super::micros;
use super::repository::order_row;
use crate::error::StorageError;
use crate::order::OrderId;
use crate::queue::{Claim, ClaimToken, Queue, QueueDepth, QueueError, QueueStorage};

/// The work queue in PostgreSQL (`order_engine_queue`), see [the module](super).
///
/// - [`claim`](Queue::claim) takes the oldest claimable rows with `FOR UPDATE SKIP LOCKED`
///   and stamps each with a fresh token and a lease, in one statement: concurrent claimers,
///   in one process or many, never get the same id, and never wait on one another.
/// - A held row's `available_at` is its lease's end, so a claim whose worker died becomes
///   claimable again as soon as its lease runs out, by the same query and the same index.
/// - [`push`](Queue::push) and an immediate [`retry`](Queue::retry) wake this process's
///   waiters at once and have a background task send `NOTIFY order_engine_queue` for the
///   others, one at a time however many pushes arrive meanwhile: a `NOTIFY` takes a
///   database-wide lock through its commit, so one per push would serialise every push's
///   commit.
/// - Pushes and acks are group-committed: those that arrive while earlier ones are being
///   written share one statement, and each caller is answered once it has committed.
/// - [`wait`](Queue::wait) sleeps on a `LISTEN` connection (opened on first use,
///   reopened after a database restart) until a notification arrives. Behind a pooler that
///   drops notifications, waiters still wake at their timeout.
///
/// It exists only as part of a [`PostgresBackend`](super::PostgresBackend)
/// ([`QueueStorage::Repository`]): the backend's repository queues each order in the statement
/// that stores it, takes a claim off the queue in the statement that completes or fails the
/// order, and holds it in the one that renews the lease; and a claim starts the orders it
/// claims (`Transition::Start`, with the claim's token and lease), each [`Claim`] carrying its
/// order as started.
///
/// Cloning is cheap: clones share the connection pool and the listener.
#[derive(Debug, Clone)]
pub struct PostgresQueue {
    db: DatabaseConnection,
    wakeups: Arc<Wakeups>,
    batches: Arc<Batches>,
}

/// Claims and starts: the claimed rows, each with the order as started (its columns NULL where
/// the order could not be started: finished, cancelled, or held by another worker's live lease;
/// the worker's own `Start` then finds out why).
///
/// Each claim's token is drawn once, in `batch`, and both updates look it up by position in
/// the batch's arrays: a join of either table against the claimed rows (which the planner
/// guesses at one row) became a nested loop that scanned the batch once per order.
const CLAIM_AND_START: &str = "
WITH ready AS (
    SELECT order_id, available_at FROM order_engine_queue
     WHERE available_at <= now()
     ORDER BY available_at, order_id
     LIMIT $1
     FOR UPDATE SKIP LOCKED),
batch AS MATERIALIZED (
    SELECT array_agg(order_id) AS ids, array_agg(available_at) AS since,
           array_agg(gen_random_uuid()) AS claims
      FROM ready),
claimed AS (
    UPDATE order_engine_queue q
       SET claim_token = b.claims[array_position(b.ids, q.order_id)],
           available_at = now() + $2 * interval '1 microsecond',
           deliveries = q.deliveries + 1
      FROM batch b
     WHERE q.order_id = ANY(b.ids)
 RETURNING q.order_id, q.claim_token AS claim, q.deliveries,
           b.since[array_position(b.ids, q.order_id)] AS since),
started AS (
    UPDATE order_engine_orders o
       SET status = 'PROCESSING', claim_token = b.claims[array_position(b.ids, o.id)],
           lease_expires_at = now() + $2 * interval '1 microsecond',
           attempts = least(o.attempts, 2147483646) + 1,
           processing_start_time = coalesce(o.processing_start_time, now()),
           updated_at = now()
      FROM batch b
     WHERE o.id = ANY(b.ids)
       AND (o.status = 'PENDING' OR (o.status = 'PROCESSING' AND o.lease_expires_at <= now()))
 RETURNING o.*)
SELECT c.order_id, c.claim, c.deliveries, c.since, s.*,
       s.claim_token AS started_by
  FROM claimed c LEFT JOIN started s ON s.id = c.order_id";

/// The group-committed calls, one batcher each; every reply says whether the call changed a
/// row (an id added, a claim acked).
#[derive(Debug)]
struct Batches {
    pushes: Batcher<OrderId, Result<bool, StorageError>>,
    acks: Batcher<(OrderId, ClaimToken), Result<bool, StorageError>>,
}

async fn push_batch(db: DatabaseConnection, ids: Vec<OrderId>) -> Vec<Result<bool, StorageError>> {
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let added = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO order_engine_queue (order_id)
             SELECT DISTINCT unnest($1::bigint[]) ORDER BY 1
             ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            vec![raw.into()],
        ))
        .await
        .map_err(|err| storage_error("could not queue the orders", err))
        .and_then(|rows| rows.iter().map(order_id).collect::<Result<HashSet<_>, _>>());
    match added {
        // An id pushed twice in one batch is added once: the first caller hears so.
        Ok(mut added) => ids.iter().map(|id| Ok(added.remove(id))).collect(),
        Err(err) => failed(ids.len(), &err),
    }
}

async fn ack_batch(
    db: DatabaseConnection,
    claims: Vec<(OrderId, ClaimToken)>,
) -> Vec<Result<bool, StorageError>> {
    let mut sorted = claims.clone();
    sorted.sort();
    let ids: Vec<i64> = sorted.iter().map(|(id, _)| id.get()).collect();
    let tokens: Vec<uuid::Uuid> = sorted.iter().map(|(_, token)| token.as_uuid()).collect();
    let acked = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM order_engine_queue q
              USING unnest($1::bigint[], $2::uuid[]) AS b(order_id, claim_token)
              WHERE q.order_id = ANY($1::bigint[]) AND q.order_id = b.order_id
                AND q.claim_token = b.claim_token
          RETURNING q.order_id, q.claim_token",
            vec![ids.into(), tokens.into()],
        ))
        .await
        .map_err(|err| storage_error("could not ack the claims", err))
        .and_then(|rows| {
            rows.iter()
                .map(|row| {
                    let token: uuid::Uuid = row
                        .try_get("", "claim_token")
                        .map_err(|err| storage_error("could not read an acked claim", err))?;
                    let id = order_id(row)?;
                    Ok((id, ClaimToken::from_uuid(token)))
                })
                .collect::<Result<HashSet<_>, StorageError>>()
        });
    match acked {
        Ok(acked) => claims
            .iter()
            .map(|claim| Ok(acked.contains(claim)))
            .collect(),
        Err(err) => failed(claims.len(), &err),
    }
}

#[derive(Debug)]
struct Wakeups {
    /// Signalled for each notification (and for this process's own pushes, without waiting
    /// for the round trip). `notify_one` keeps a permit when nobody waits, so a push that
    /// lands between a worker's empty claim and its wait is not missed.
    notify: Notify,
    /// The task that holds the `LISTEN` connection; stopped when the last clone is dropped.
    listener: OnceLock<AbortOnDropHandle<()>>,
    /// Whether `LISTEN` is in place.
    listening: watch::Sender<bool>,
    /// The payload of this queue's own notifications, unique to it, so that its listener
    /// ignores their echo.
    sender: String,
    /// Signalled for each push; the announcer task turns any number of signals into one
    /// `NOTIFY` at a time.
    announce: Notify,
    /// The task that sends `NOTIFY`; stopped when the last clone is dropped.
    announcer: OnceLock<AbortOnDropHandle<()>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            listener: OnceLock::new(),
            listening: watch::Sender::new(false),
            sender: uuid::Uuid::new_v4().simple().to_string(),
            announce: Notify::new(),
            announcer: OnceLock::new(),
        }
    }
}

impl PostgresQueue {
    /// The queue in the database behind `db`, whose schema [`migrate`](super::migrate) has set
    /// up: only as part of a [`PostgresBackend`](super::PostgresBackend), whose repository
    /// keeps the other side of each shared statement.
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        let batches = Batches {
            pushes: Batcher::new(LIMITS, {
                let db = db.clone();
                move |ids| push_batch(db.clone(), ids).boxed()
            }),
            acks: Batcher::new(LIMITS, {
                let db = db.clone();
                move |claims| ack_batch(db.clone(), claims).boxed()
            }),
        };
        Self {
            db,
            wakeups: Arc::new(Wakeups::default()),
            batches: Arc::new(batches),
        }
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, QueueError> {
        let result = self
            .db
            .execute_raw(Statement::from_sql_and_values(
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
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await
            .map_err(|err| storage_error("queue query failed", err))?)
    }

    /// Wakes this process's waiters now and other processes' shortly.
    fn announce(&self) {
        self.wakeups.notify.notify_one();
        self.wakeups
            .announcer
            .get_or_init(|| self.start_announcer());
        self.wakeups.announce.notify_one();
    }

    fn start_announcer(&self) -> AbortOnDropHandle<()> {
        let db = self.db.clone();
        let sender = self.wakeups.sender.clone();
        let wakeups = Arc::downgrade(&self.wakeups);
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let Some(w) = wakeups.upgrade() else { return };
                // Holding the Arc while waiting would keep the queue alive forever; a weak
                // reference and a short wait let the task end soon after the queue does.
                let signalled =
                    tokio::time::timeout(Duration::from_secs(1), w.announce.notified()).await;
                drop(w);
                if signalled.is_err() {
                    continue;
                }
                let sent = db
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT pg_notify($1, $2)",
                        [NOTIFY_CHANNEL.into(), sender.clone().into()],
                    ))
                    .await;
                if let Err(err) = sent {
                    if db.get_postgres_connection_pool().is_closed() {
                        // Closed by its owner: nothing will be sent on it again.
                        return;
                    }
                    // Likely a connection cut by a restart: try again shortly rather than
                    // leave other processes to find the work at their next poll.
                    debug!(error = %err, "could not send NOTIFY; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(w) = wakeups.upgrade() {
                        w.announce.notify_one();
                    }
                }
            }
        }))
    }

    fn start_listener(&self) -> AbortOnDropHandle<()> {
        let pool = self.db.get_postgres_connection_pool().clone();
        // The task holds only a weak reference: dropping the last queue stops it.
        let wakeups = Arc::downgrade(&self.wakeups);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut reconnected = false;
            loop {
                let gone = || wakeups.strong_count() == 0;
                let Some(mut listener) = listen::open(&pool, NOTIFY_CHANNEL, gone).await else {
                    return;
                };
                let Some(w) = wakeups.upgrade() else { return };
                w.listening.send_replace(true);
                // After a reconnect, work may have arrived while nobody listened. (The first
                // time, `wait` returns as soon as LISTEN is in place, for its caller to claim
                // again.)
                if reconnected {
                    w.notify.notify_one();
                }
                drop(w);
                reconnected = true;
                relay(&mut listener, &wakeups).await;
                let Some(w) = wakeups.upgrade() else { return };
                w.listening.send_replace(false);
                drop(w);
                tokio::time::sleep(listen::RECONNECT_PAUSE).await;
            }
        }))
    }
}

/// Wakes a waiter for each notification until the connection fails or stops answering, and
/// once more then: work may arrive while nobody listens.
async fn relay(listener: &mut PgListener, wakeups: &Weak<Wakeups>) {
    while let Some(notification) = next_notification(listener).await {
        let Some(w) = wakeups.upgrade() else { return };
        // This queue's own pushes woke its waiters already, without the round trip.
        if notification.payload() != w.sender {
            w.notify.notify_one();
        }
    }
    if let Some(w) = wakeups.upgrade() {
        w.notify.notify_one();
    }
}

fn order_id(row: &QueryResult) -> Result<OrderId, StorageError> {
    let raw: i64 = row
        .try_get("", "order_id")
        .map_err(|err| storage_error("could not read a queued id", err))?;
    OrderId::new(raw).ok_or_else(|| StorageError::other(format!("invalid queued order id {raw}")))
}

#[async_trait]
impl Queue for PostgresQueue {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        let added = self
            .batches
            .pushes
            .call(id)
            .await
            .ok_or_else(lost_batch)??;
        if added {
            self.announce();
        }
        Ok(added)
    }

    async fn push_many(&self, ids: &[OrderId]) -> Result<usize, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        // Orders already finished are left out: a worker would only claim them to drop them.
        let added = self
            .execute(
                "INSERT INTO order_engine_queue (order_id)
                 SELECT DISTINCT p.id FROM unnest($1::bigint[]) AS p(id)
                  WHERE NOT EXISTS (
                        SELECT 1 FROM order_engine_orders o
                         WHERE o.id = p.id AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
                 ON CONFLICT (order_id) DO NOTHING",
                vec![raw.into()],
            )
            .await?;
        if added > 0 {
            self.announce();
        }
        Ok(usize::try_from(added).unwrap_or(usize::MAX))
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                CLAIM_AND_START,
                vec![
                    i64::try_from(max).unwrap_or(i64::MAX).into(),
                    micros(lease).into(),
                ],
            )
            .await?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let read = |err| storage_error("could not read a claim", err);
            let token: uuid::Uuid = row.try_get("", "claim").map_err(read)?;
            let deliveries: i32 = row.try_get("", "deliveries").map_err(read)?;
            let since: chrono::DateTime<chrono::Utc> = row.try_get("", "since").map_err(read)?;
            let mut claim = Claim::new(
                order_id(row)?,
                ClaimToken::from_uuid(token),
                u32::try_from(deliveries).unwrap_or(0),
            );
            let started_by: Option<uuid::Uuid> = row.try_get("", "started_by").map_err(read)?;
            if started_by == Some(token) {
                claim.started = Some(order_row(row)?);
            }
            claims.push((since, claim));
        }
        // RETURNING keeps no order; hand them out oldest first, as they were chosen.
        claims.sort_by_key(|(since, claim)| (*since, claim.order_id));
        Ok(claims.into_iter().map(|(_, claim)| claim).collect())
    }

    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        let changed = self
            .execute(
                "UPDATE order_engine_queue SET available_at = now() + $3 * interval '1 microsecond'
                  WHERE order_id = $1 AND claim_token = $2",
                vec![
                    claim.order_id.get().into(),
                    claim.token.as_uuid().into(),
                    micros(lease).into(),
                ],
            )
            .await?;
        held(changed, claim)
    }

    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        let acked = self
            .batches
            .acks
            .call((claim.order_id, claim.token))
            .await
            .ok_or_else(lost_batch)??;
        held(u64::from(acked), claim)
    }

    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        let changed = self
            .execute(
                "UPDATE order_engine_queue
                    SET claim_token = NULL,
                        available_at = now() + $3 * interval '1 microsecond'
                  WHERE order_id = $1 AND claim_token = $2",
                vec![
                    claim.order_id.get().into(),
                    claim.token.as_uuid().into(),
                    micros(delay).into(),
                ],
            )
            .await?;
        held(changed, claim)?;
        if delay.is_zero() {
            self.announce();
        }
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        // Started here rather than in `new`, so a process that only pushes holds no extra
        // connection.
        self.wakeups.listener.get_or_init(|| self.start_listener());
        let mut listening = self.wakeups.listening.subscribe();
        if !*listening.borrow_and_update() {
            // Until LISTEN is in place, other processes' notifications are lost: hold the
            // caller until it is, unless a local push or the timeout comes first.
            // LISTEN in place: return, so that the caller claims once more and finds what
            // was pushed before it (a spurious wake-up, once).
            tokio::select! {
                _ = listening.wait_for(|listening| *listening) => return,
                () = self.wakeups.notify.notified() => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.wakeups.notify.notified()).await;
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        // The total comes from the trigger-kept counters; held and delayed ids are the rows
        // whose `available_at` is still ahead, found through the index, so the cost grows
        // with the work in flight and waiting out a delay, not with the backlog. A lapsed
        // claim counts as ready: the next claim takes it.
        let rows = self
            .query(
                "SELECT (SELECT coalesce(sum(queued), 0) FROM order_engine_queue_counts)::bigint
                            AS total,
                        count(*) FILTER (WHERE claim_token IS NULL) AS delayed,
                        count(*) FILTER (WHERE claim_token IS NOT NULL) AS claimed
                   FROM order_engine_queue
                  WHERE available_at > now()",
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
