//! [`Repository`] on PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use futures::FutureExt;
use sea_orm::{DbBackend, EntityTrait, FromQueryResult, QueryResult, Statement, Value};
use uuid::Uuid;

use super::batch::{Batcher, LIMITS, failed, lost_batch};
use super::entity::{Entity as Orders, ORDER_COLUMNS, decode_order, order_row, start};
use super::error::{sqlx_storage_error, storage_error};
use super::wakeups::Wakeups;
use super::{PostgresPool, micros};
use crate::error::StorageError;
use crate::error::TransitionError;
use crate::idempotency::{Insertion, KeyRecord};
use crate::order::failures::encode_failures;
use crate::order::{Order, OrderId, OrderStatus, ValidatedOrder};
use crate::queue::ClaimToken;
use crate::repository::{OrderMetrics, OrderQuery, Repository, StatusCounts, Transition};
use crate::step::encode_steps;

/// Orders in PostgreSQL (`order_engine_orders`), see [the module](super).
///
/// Every transition is one `UPDATE ... WHERE <the state it may leave from> RETURNING *`, so
/// two workers racing for one order cannot both win, whatever process they run in. Leases are
/// compared with the database's `now()`, one clock for every server.
///
/// The calls a busy server makes most, [`insert`](Repository::insert),
/// [`get`](Repository::get) and the `Start` and `Complete` transitions, are group-committed:
/// the calls that arrive while earlier ones are being written share one statement (a
/// multi-row `INSERT`, an `UPDATE ... FROM unnest(...)`), and each caller is answered once
/// that statement has committed. A lone call goes out at once.
///
/// An order's row is also its place in the queue of a [`PostgresBackend`](super::PostgresBackend)
/// (see [`PostgresQueue`](super::PostgresQueue)): the statement that stores an order queues it
/// (so no order is ever stored without being queued, even if the process dies at once), the
/// one that finishes it takes it off, and a renewal holds it longer. Made with
/// [`new`](Self::new), for a queue of another kind, it writes the same rows; that queue
/// decides which order a worker gets.
///
/// Cloning is cheap: clones share the connection pool and the batches.
#[derive(Debug, Clone)]
pub struct PostgresRepository {
    db: PostgresPool,
    batches: Arc<Batches>,
    /// A backend's wake-ups: an order retried after it FAILED is new work, as an insert is.
    wakeups: Option<Arc<Wakeups>>,
}

/// A response to one caller of a batch.
type Reply<T> = Result<T, StorageError>;

/// The group-committed calls, one batcher each.
#[derive(Debug)]
struct Batches {
    inserts: Batcher<ValidatedOrder, Reply<Order>>,
    /// Keyed inserts: the batch holds each key once.
    keyed: Batcher<(ValidatedOrder, KeyRecord), Reply<Insertion>>,
    reads: Batcher<OrderId, Reply<Option<Order>>>,
    /// `None`: the order was not in a state to start from (the caller finds out why).
    starts: Batcher<(OrderId, ClaimToken, i64), Reply<Option<Order>>>,
    /// `None`: the order was no longer held by the claim, or a cancel was requested. Each
    /// completion carries the order's steps as stored text, or `None` to keep them.
    completions: Batcher<(OrderId, ClaimToken, Option<String>), Reply<Option<Order>>>,
    /// Checkpoints: the order, the claim, its steps as stored text, and whether a requested
    /// cancel refuses it. `None`: not written.
    checkpoints: Batcher<CheckpointCall, Reply<Option<Order>>>,
}

/// A checkpoint in a batch: the order, the claim, the steps as stored text, and whether a
/// requested cancel refuses it.
type CheckpointCall = (OrderId, ClaimToken, Option<String>, bool);

impl PostgresRepository {
    /// Orders in the database behind `db`, whose schema [`migrate`](super::migrate) has set up,
    /// for use with a queue of another kind (a [`PostgresBackend`](super::PostgresBackend)
    /// pairs it with PostgreSQL's own).
    pub fn new(pool: &super::PostgresPool) -> Self {
        Self::build(pool.clone(), None)
    }

    /// The repository of a backend, waking its workers through `wakeups`.
    pub(super) fn announcing(db: PostgresPool, wakeups: Arc<Wakeups>) -> Self {
        Self::build(db, Some(wakeups))
    }

    /// A backend's repository (`wakeups`) wakes the backend's idle workers for each order it
    /// stores.
    fn build(db: PostgresPool, wakeups: Option<Arc<Wakeups>>) -> Self {
        let batches = Batches {
            inserts: Batcher::new(LIMITS, {
                let (db, wakeups) = (db.clone(), wakeups.clone());
                move |orders| insert_orders(db.clone(), wakeups.clone(), orders).boxed()
            }),
            keyed: Batcher::new(LIMITS, {
                let (db, wakeups) = (db.clone(), wakeups.clone());
                move |requests| keyed_batch(db.clone(), wakeups.clone(), requests).boxed()
            }),
            reads: Batcher::new(LIMITS, {
                let db = db.clone();
                move |ids| read_batch(db.clone(), ids).boxed()
            }),
            starts: Batcher::new(LIMITS, {
                let db = db.clone();
                move |starts| start_batch(db.clone(), starts).boxed()
            }),
            completions: Batcher::new(LIMITS, {
                let db = db.clone();
                move |completions| complete_batch(db.clone(), completions).boxed()
            }),
            checkpoints: Batcher::new(LIMITS, {
                let db = db.clone();
                move |checkpoints| checkpoint_batch(db.clone(), checkpoints).boxed()
            }),
        };
        Self {
            db,
            batches: Arc::new(batches),
            wakeups,
        }
    }
}

async fn rows(
    db: &PostgresPool,
    context: &str,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, StorageError> {
    db.query_all(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .map_err(|err| storage_error(context, err))
}

/// How [`insert_statement`] writes each order's idempotency key, if it has one.
#[derive(Debug, Clone, Copy)]
enum KeyWrite {
    /// No keys: every order is stored.
    Unkeyed,
    /// Each key's row is inserted, or taken over once expired.
    Claim,
    /// The key's row is taken over from the deleted order it names (`$10`), a compare-and-set.
    TakeOver,
}

/// Stores orders in one statement: ids are drawn in the batch's order, each is queued as it is
/// stored (`available_at` defaults to now), and each row comes back with its place in the
/// batch. `$1` to `$5` are the orders (users, amounts, each order's first item and item count,
/// and all the items); with keys, `$6` to `$9` are each order's idempotency key (scope,
/// key, fingerprint in hex, time to live in microseconds), and an order is stored only when
/// its key's row was written.
///
/// [`KeyWrite::Claim`]: a key's row is written first. `ON CONFLICT` on its primary key decides
/// a race, waiting for a concurrent writer of the same key to commit; an expired key is taken
/// over. The keys are written in key order, so two such statements never deadlock on one
/// another, and a batch holds each key once: an upsert cannot touch one row twice.
///
/// Whether a key may be taken over is decided on the key's row alone: `ON CONFLICT ... WHERE`
/// sees the latest committed version of the row it has locked, but a subquery there (say, "does
/// the key's order still exist?") would read with the statement's snapshot, taken before a
/// racing request committed that key and its order, and so would find no order and take the
/// key over a second time. A key whose order was deleted is taken over with
/// [`KeyWrite::TakeOver`] instead: one order, only while the key still names the deleted
/// order (`$10`). `UPDATE` re-reads a row that a concurrent statement changed before it applies
/// its condition, so of many requests that found the same deleted order, one takes the key
/// over and the others find it in use. No row back for an order: its key is in use.
fn insert_statement(keys: KeyWrite) -> String {
    let key_params = ", $6::text[], $7::text[], $8::text[], $9::bigint[]";
    let key_columns = ", scope, key, fingerprint, ttl";
    let only_keyed = "WHERE id = ANY(ARRAY(SELECT order_id FROM keyed))";
    let (key_params, key_columns, key_cte, only_keyed) = match keys {
        KeyWrite::Unkeyed => ("", "", "", ""),
        KeyWrite::Claim => (
            key_params,
            key_columns,
            "keyed AS (
    INSERT INTO order_engine_idempotency_keys AS k (scope, key, fingerprint, order_id, expires_at)
    SELECT scope, key, decode(fingerprint, 'hex'), id, now() + ttl * interval '1 microsecond'
      FROM input ORDER BY scope, key
    ON CONFLICT (scope, key) DO UPDATE
       SET fingerprint = excluded.fingerprint, order_id = excluded.order_id,
           expires_at = excluded.expires_at
     WHERE k.expires_at <= now()
    RETURNING order_id),",
            only_keyed,
        ),
        KeyWrite::TakeOver => (
            key_params,
            key_columns,
            "keyed AS (
    UPDATE order_engine_idempotency_keys AS k
       SET fingerprint = decode(input.fingerprint, 'hex'), order_id = input.id,
           expires_at = now() + input.ttl * interval '1 microsecond'
      FROM input
     WHERE k.scope = input.scope AND k.key = input.key AND k.order_id = $10
    RETURNING k.order_id),",
            only_keyed,
        ),
    };
    format!(
        "WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('order_engine_orders', 'id')) AS id, r.*
      FROM unnest($1::text[], $2::numeric[], $3::int[], $4::int[]{key_params})
           WITH ORDINALITY AS r(user_id, total_amount, first_item, item_count{key_columns}, position)
     ORDER BY r.position),
{key_cte}
inserted AS (
    INSERT INTO order_engine_orders (id, user_id, item_ids, total_amount, status, attempts)
    OVERRIDING SYSTEM VALUE
    SELECT id, user_id, ($5::text[])[first_item : first_item + item_count - 1], total_amount,
           'PENDING', 0
      FROM input {only_keyed}
    RETURNING *)
SELECT inserted.*, input.position FROM inserted JOIN input USING (id)"
    )
}

static INSERT_ORDERS: LazyLock<String> = LazyLock::new(|| insert_statement(KeyWrite::Unkeyed));
static INSERT_KEYED_ORDERS: LazyLock<String> = LazyLock::new(|| insert_statement(KeyWrite::Claim));
static TAKE_OVER_KEY: LazyLock<String> = LazyLock::new(|| insert_statement(KeyWrite::TakeOver));

async fn insert_orders(
    db: PostgresPool,
    wakeups: Option<Arc<Wakeups>>,
    orders: Vec<ValidatedOrder>,
) -> Vec<Reply<Order>> {
    let replies = insert_each(&db, orders).await;
    if let Some(wakeups) = wakeups
        && replies.iter().any(Result::is_ok)
    {
        wakeups.announce();
    }
    replies
}

async fn insert_each(db: &PostgresPool, orders: Vec<ValidatedOrder>) -> Vec<Reply<Order>> {
    let all: Vec<&ValidatedOrder> = orders.iter().collect();
    match insert_rows(db, &all, None, None).await {
        Ok(inserted) => inserted
            .into_iter()
            .map(|order| order.ok_or_else(not_returned))
            .collect(),
        // One order the database refuses (none should: they are validated) must not fail the
        // others: store them one by one, each failing alone.
        Err(err) if !err.unavailable && orders.len() > 1 => {
            let mut replies = Vec::with_capacity(orders.len());
            for order in &orders {
                replies.push(
                    // `insert_rows` answers one place per order given, or fails.
                    insert_rows(db, &[order], None, None)
                        .await
                        .and_then(|mut one| one.pop().flatten().ok_or_else(not_returned)),
                );
            }
            replies
        }
        Err(err) => failed(orders.len(), &err),
    }
}

/// The orders, stored in one statement ([`insert_statement`]), in the order given: each in its
/// place, `None` where its key (in `keys`, one per order) was in use. With `taking_over`, the
/// keys are taken over from that deleted order ([`KeyWrite::TakeOver`]) rather than claimed.
async fn insert_rows(
    db: &PostgresPool,
    orders: &[&ValidatedOrder],
    keys: Option<&[&KeyRecord]>,
    taking_over: Option<i64>,
) -> Result<Vec<Option<Order>>, StorageError> {
    let mut user_ids = Vec::with_capacity(orders.len());
    let mut amounts = Vec::with_capacity(orders.len());
    let mut first_items = Vec::with_capacity(orders.len());
    let mut item_counts = Vec::with_capacity(orders.len());
    let mut items: Vec<String> = Vec::new();
    for order in orders {
        user_ids.push(order.user_id().to_owned());
        amounts.push(order.total_amount());
        // Validation caps an order's items far below i32::MAX, and a batch's total with them.
        first_items.push(i32::try_from(items.len() + 1).unwrap_or(i32::MAX));
        item_counts.push(i32::try_from(order.item_ids().len()).unwrap_or(i32::MAX));
        items.extend(order.item_ids().iter().cloned());
    }
    let mut values = vec![
        user_ids.into(),
        amounts.into(),
        first_items.into(),
        item_counts.into(),
        items.into(),
    ];
    let sql = match keys {
        Some(keys) => {
            let scopes: Vec<String> = keys.iter().map(|r| r.key.scope().to_owned()).collect();
            let names: Vec<String> = keys.iter().map(|r| r.key.key().to_owned()).collect();
            let fingerprints: Vec<String> =
                keys.iter().map(|r| hex(r.fingerprint.as_bytes())).collect();
            let ttls: Vec<i64> = keys.iter().map(|r| micros(r.ttl)).collect();
            values.extend([
                scopes.into(),
                names.into(),
                fingerprints.into(),
                ttls.into(),
            ]);
            match taking_over {
                Some(deleted) => {
                    values.push(deleted.into());
                    TAKE_OVER_KEY.as_str()
                }
                None => INSERT_KEYED_ORDERS.as_str(),
            }
        }
        None => INSERT_ORDERS.as_str(),
    };
    let rows = rows(db, "could not insert the orders", sql, values).await?;
    let mut placed: Vec<Option<Order>> = vec![None; orders.len()];
    for row in &rows {
        let position: i64 = row
            .try_get("", "position")
            .map_err(|err| storage_error("could not read an inserted order", err))?;
        let slot = usize::try_from(position - 1)
            .ok()
            .and_then(|i| placed.get_mut(i))
            .ok_or_else(|| StorageError::other("an inserted order came back out of place"))?;
        *slot = Some(order_row(row)?);
    }
    Ok(placed)
}

/// Lower-case hex, as PostgreSQL's `decode(..., 'hex')` reads it.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// Stores keyed orders, one statement for the batch: each key once (a later request with a key
/// already in the batch is settled after it, as one that found the key in use), and the
/// requests whose key was in use settled each on its own ([`settle_key`]).
async fn keyed_batch(
    db: PostgresPool,
    wakeups: Option<Arc<Wakeups>>,
    requests: Vec<(ValidatedOrder, KeyRecord)>,
) -> Vec<Reply<Insertion>> {
    let mut seen = std::collections::HashSet::new();
    let leaders: Vec<usize> = (0..requests.len())
        .filter(|&i| seen.insert(&requests[i].1.key))
        .collect();
    let orders: Vec<&ValidatedOrder> = leaders.iter().map(|&i| &requests[i].0).collect();
    let keys: Vec<&KeyRecord> = leaders.iter().map(|&i| &requests[i].1).collect();
    let mut replies: Vec<Option<Reply<Insertion>>> = (0..requests.len()).map(|_| None).collect();
    match insert_rows(&db, &orders, Some(&keys), None).await {
        Ok(placed) => {
            for (&i, order) in leaders.iter().zip(placed) {
                replies[i] = order.map(|order| Ok(Insertion::Created(order)));
            }
        }
        Err(err) if err.unavailable => return failed(requests.len(), &err),
        // One request the database refuses: the others are settled each on its own below.
        Err(_) => {}
    }
    let unsettled: Vec<usize> = (0..requests.len())
        .filter(|&i| replies[i].is_none())
        .collect();
    let settled = futures::future::join_all(unsettled.iter().map(|&i| {
        let (order, record) = &requests[i];
        settle_key(&db, order, record)
    }))
    .await;
    for (i, reply) in unsettled.into_iter().zip(settled) {
        replies[i] = Some(reply);
    }
    let created =
        |reply: &Option<Reply<Insertion>>| matches!(reply, Some(Ok(Insertion::Created(_))));
    if let Some(wakeups) = &wakeups
        && replies.iter().any(created)
    {
        wakeups.announce();
    }
    replies
        .into_iter()
        .map(|reply| reply.unwrap_or_else(|| Err(lost_batch())))
        .collect()
}

/// One keyed request on its own: stored under its key, or answered with the order the key
/// names. The key changes hands between two statements only when it expired, was pruned or
/// lost its order meanwhile: then the request tries again, a bounded number of times.
async fn settle_key(
    db: &PostgresPool,
    order: &ValidatedOrder,
    record: &KeyRecord,
) -> Reply<Insertion> {
    let key = &record.key;
    let mut deleted_order: Option<i64> = None;
    for _ in 0..5 {
        let created = insert_rows(db, &[order], Some(&[record]), deleted_order.take())
            .await?
            .pop()
            .flatten();
        if let Some(order) = created {
            return Ok(Insertion::Created(order));
        }
        let existing = rows(
            db,
            "could not read an idempotency key",
            READ_KEY,
            vec![key.scope().into(), key.key().into()],
        )
        .await?;
        let Some(row) = existing.first() else {
            // Pruned since: the key is free again.
            continue;
        };
        let unreadable = |err| storage_error("could not read an idempotency key", err);
        let fingerprint: Vec<u8> = row.try_get("", "key_fingerprint").map_err(unreadable)?;
        let order_id: Option<i64> = row.try_get("", "id").map_err(unreadable)?;
        if order_id.is_none() {
            // Its order was deleted: take the key over from that order, if no one else has yet.
            deleted_order = Some(row.try_get("", "key_order_id").map_err(unreadable)?);
            continue;
        }
        return Ok(Insertion::Existing {
            order: order_row(row)?,
            same_request: fingerprint.as_slice() == record.fingerprint.as_bytes(),
        });
    }
    Err(StorageError::unavailable(
        "an idempotency key kept changing hands; try again",
    ))
}

fn not_returned() -> StorageError {
    StorageError::other("an inserted order did not come back")
}

/// Orders by id, decoded by sqlx straight into [`Order`]s: one statement for a read alone and
/// for a batch of them.
static READ_ORDERS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ORDER_COLUMNS} FROM order_engine_orders WHERE id = ANY($1::bigint[])")
});

async fn read_orders(db: &PostgresPool, ids: &[OrderId]) -> Result<Vec<Order>, StorageError> {
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let rows = db
        .fetch_all(sea_orm::sqlx::query(READ_ORDERS.as_str()).bind(raw))
        .await
        .map_err(|err| sqlx_storage_error("could not read the order", err))?;
    rows.iter().map(decode_order).collect()
}

async fn read_batch(db: PostgresPool, ids: Vec<OrderId>) -> Vec<Reply<Option<Order>>> {
    let found = read_orders(&db, &ids).await.map(|orders| {
        orders
            .into_iter()
            .map(|order| (order.id, order))
            .collect::<HashMap<_, _>>()
    });
    match found {
        // An id asked for twice in one batch gets the order twice.
        Ok(found) => ids.iter().map(|id| Ok(found.get(id).cloned())).collect(),
        Err(err) => failed(ids.len(), &err),
    }
}

/// The statement of a listing: only the filters that are set (the user and the cursor as bound
/// parameters, the status as one of its five names), so that the planner sees which index
/// serves it (the partial indexes of unfinished and finished orders, `(user_id, id)`, or the
/// primary key) rather than one generic plan for every combination.
pub(super) fn list_statement(query: &OrderQuery) -> (String, Vec<Value>) {
    let mut conditions = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(status) = query.status {
        // A literal, not a parameter: the planner matches a partial index only when it can
        // prove the query implies the index's predicate, which a parameter never lets it. The
        // text is one of the five status names, never a client's.
        conditions.push(format!("status = '{}'", status.as_str()));
    }
    if let Some(user) = &query.user_id {
        values.push(user.as_str().into());
        conditions.push(format!("user_id = ${}", values.len()));
    }
    if let Some(after) = query.after {
        values.push(after.get().into());
        let direction = if query.oldest_first { ">" } else { "<" };
        conditions.push(format!("id {direction} ${}", values.len()));
    }
    values.push(i64::try_from(query.limit).unwrap_or(i64::MAX).into());
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let order = if query.oldest_first { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT * FROM order_engine_orders {filter} ORDER BY id {order} LIMIT ${}",
        values.len()
    );
    (sql, values)
}

/// What a key in use names: its fingerprint (`key_fingerprint`), the id of its order
/// (`key_order_id`) and that order's columns, all null when the order was deleted. One
/// snapshot reads both, and a key is written in the transaction that writes its order, so a
/// key seen without its order names one that was deleted, never one not yet committed.
const READ_KEY: &str = "
SELECT k.fingerprint AS key_fingerprint, k.order_id AS key_order_id, o.*
  FROM order_engine_idempotency_keys k LEFT JOIN order_engine_orders o ON o.id = k.order_id
 WHERE k.scope = $1 AND k.key = $2";

/// What every transition that finishes an order sets: it is no longer due. Its last claim stays
/// on the row, as it does on an order that goes back to PENDING: there it fences the queue's
/// `retry` that says when the order is due again (until then, it stays due at its lease's end).
const FINISH: &str = "available_at = NULL, updated_at = now()";

/// `Transition::Start` for many orders: `$1` their ids, `$2` the claims and `$3` the leases in
/// the same places. Rows are locked in id order (the input is sorted), so two such statements
/// never deadlock on one another.
///
/// The batch statements find each row's values by its id's place in `$1` rather than by a
/// join with `unnest(...)`: whatever the statistics, the ids are an index condition and no
/// join is planned. (Statistics that lag a fast-growing table once made the planner hash-join
/// a batch of 10 against every unfinished order, and a nested loop over the unnested batch
/// read it once per row: 16,000 rows compared to write 127.)
static START_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE order_engine_orders o
            SET {}
          WHERE o.id = ANY($1::bigint[])
            AND (o.status = 'PENDING' OR (o.status = 'PROCESSING' AND o.available_at <= now()))
      RETURNING o.*, o.claim_token AS fenced_by",
        start(
            "($2::uuid[])[array_position($1::bigint[], o.id)]",
            "($3::bigint[])[array_position($1::bigint[], o.id)]",
        )
    )
});

/// `Transition::Complete` for many orders, each fenced by its claim (`$2`, in `$1`'s places)
/// and refused once a cancel was requested; `$3` is each order's steps, or `NULL` to keep
/// them. Completed, an order leaves the queue: the index of due orders holds only unfinished
/// ones.
static COMPLETE_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE order_engine_orders o
            SET status = 'COMPLETED', processing_end_time = now(),
                steps = coalesce(nullif(($3::text[])[array_position($1::bigint[], o.id)], ''), o.steps),
                {FINISH}
          WHERE o.id = ANY($1::bigint[]) AND o.status = 'PROCESSING'
            AND o.claim_token = ($2::uuid[])[array_position($1::bigint[], o.id)]
            AND o.cancel_requested_at IS NULL
      RETURNING o.*, ($2::uuid[])[array_position($1::bigint[], o.id)] AS fenced_by"
    )
});

/// `Transition::Checkpoint` for many orders, each fenced by its claim (`$2`): `$3` is each
/// order's steps, and where `$4` is true a requested cancel refuses the write. `updated_at`
/// moves forward by at least a microsecond, so that a cancel request that compares it sees
/// every checkpoint.
const CHECKPOINT_BATCH: &str = "UPDATE order_engine_orders o
    SET steps = nullif(($3::text[])[array_position($1::bigint[], o.id)], ''),
        updated_at = greatest(now(), o.updated_at + interval '1 microsecond')
  WHERE o.id = ANY($1::bigint[]) AND o.status = 'PROCESSING'
    AND o.claim_token = ($2::uuid[])[array_position($1::bigint[], o.id)]
    AND (o.cancel_requested_at IS NULL
         OR NOT ($4::bool[])[array_position($1::bigint[], o.id)])
RETURNING o.*, ($2::uuid[])[array_position($1::bigint[], o.id)] AS fenced_by";

async fn start_batch(
    db: PostgresPool,
    starts: Vec<(OrderId, ClaimToken, i64)>,
) -> Vec<Reply<Option<Order>>> {
    let mut sorted: Vec<&(OrderId, ClaimToken, i64)> = starts.iter().collect();
    sorted.sort_by_key(|(id, _, _)| *id);
    let values = vec![
        sorted
            .iter()
            .map(|(id, _, _)| id.get())
            .collect::<Vec<_>>()
            .into(),
        sorted
            .iter()
            .map(|(_, claim, _)| claim.as_uuid())
            .collect::<Vec<_>>()
            .into(),
        sorted
            .iter()
            .map(|(_, _, lease)| *lease)
            .collect::<Vec<_>>()
            .into(),
    ];
    let keys = starts.iter().map(|(id, claim, _)| (*id, *claim));
    fenced_batch(
        &db,
        "could not start the orders",
        &START_BATCH,
        values,
        keys,
    )
    .await
}

/// The most bytes of step records one statement carries. The driver's TCP socket has no
/// `TCP_NODELAY`: a statement larger than the kernel's first send buffer (16 KiB by default)
/// leaves in two writes, and Nagle's algorithm holds the second until the server's delayed
/// acknowledgement, 40 ms later. Measured on a three-step burn-down over TCP: 1,350 orders/s
/// with batches of up to 512 orders' steps in one statement, against 6,000/s over a Unix
/// socket, which has no such delay.
const MAX_STEPS_BYTES: usize = 12 * 1024;

/// `calls` in consecutive runs whose steps (`steps` of each) add up to at most
/// [`MAX_STEPS_BYTES`] (a run holds at least one call).
fn by_steps_bytes<T>(calls: Vec<T>, steps: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for call in calls {
        let size = steps(&call);
        match runs.last_mut() {
            Some(run) if bytes + size <= MAX_STEPS_BYTES => {
                bytes += size;
                run.push(call);
            }
            _ => {
                bytes = size;
                runs.push(vec![call]);
            }
        }
    }
    runs
}

/// A batch whose steps would make one statement too large for one write
/// ([`MAX_STEPS_BYTES`]), written as several statements at once, each on its own connection,
/// answered in the batch's order. The runs hold different orders, so they cannot deadlock.
async fn in_runs<T, F, Fut>(
    calls: Vec<T>,
    steps: impl Fn(&T) -> usize,
    write: F,
) -> Vec<Reply<Option<Order>>>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<Reply<Option<Order>>>>,
{
    let runs = by_steps_bytes(calls, steps);
    futures::future::join_all(runs.into_iter().map(write))
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn complete_batch(
    db: PostgresPool,
    completions: Vec<(OrderId, ClaimToken, Option<String>)>,
) -> Vec<Reply<Option<Order>>> {
    let size =
        |call: &(OrderId, ClaimToken, Option<String>)| call.2.as_ref().map_or(0, String::len);
    in_runs(completions, size, |run| complete_run(db.clone(), run)).await
}

async fn complete_run(
    db: PostgresPool,
    completions: Vec<(OrderId, ClaimToken, Option<String>)>,
) -> Vec<Reply<Option<Order>>> {
    let mut sorted: Vec<&(OrderId, ClaimToken, Option<String>)> = completions.iter().collect();
    sorted.sort_by_key(|(id, claim, _)| (*id, *claim));
    let values = vec![
        sorted
            .iter()
            .map(|(id, _, _)| id.get())
            .collect::<Vec<_>>()
            .into(),
        sorted
            .iter()
            .map(|(_, claim, _)| claim.as_uuid())
            .collect::<Vec<_>>()
            .into(),
        text_array(sorted.iter().map(|(_, _, steps)| steps.clone())),
    ];
    let keys = completions.iter().map(|(id, claim, _)| (*id, *claim));
    fenced_batch(
        &db,
        "could not complete the orders",
        &COMPLETE_BATCH,
        values,
        keys,
    )
    .await
}

/// A `text[]` parameter of texts that may be missing, each missing one as `''` (the driver
/// binds no `NULL` element): the statements read the elements through `nullif(.., '')`.
fn text_array(texts: impl Iterator<Item = Option<String>>) -> Value {
    texts
        .map(Option::unwrap_or_default)
        .collect::<Vec<_>>()
        .into()
}

async fn checkpoint_batch(
    db: PostgresPool,
    checkpoints: Vec<CheckpointCall>,
) -> Vec<Reply<Option<Order>>> {
    let size = |call: &CheckpointCall| call.2.as_ref().map_or(0, String::len);
    in_runs(checkpoints, size, |run| checkpoint_run(db.clone(), run)).await
}

async fn checkpoint_run(
    db: PostgresPool,
    checkpoints: Vec<CheckpointCall>,
) -> Vec<Reply<Option<Order>>> {
    let mut sorted: Vec<&CheckpointCall> = checkpoints.iter().collect();
    sorted.sort_by_key(|(id, claim, _, _)| (*id, *claim));
    let values = vec![
        sorted
            .iter()
            .map(|(id, ..)| id.get())
            .collect::<Vec<_>>()
            .into(),
        sorted
            .iter()
            .map(|(_, claim, ..)| claim.as_uuid())
            .collect::<Vec<_>>()
            .into(),
        text_array(sorted.iter().map(|(_, _, steps, _)| steps.clone())),
        sorted
            .iter()
            .map(|(.., advancing)| *advancing)
            .collect::<Vec<_>>()
            .into(),
    ];
    let keys = checkpoints.iter().map(|(id, claim, ..)| (*id, *claim));
    fenced_batch(
        &db,
        "could not record the steps",
        CHECKPOINT_BATCH,
        values,
        keys,
    )
    .await
}

/// Runs a fenced batch `UPDATE` and answers each (order, claim) with the row it wrote, or
/// `None` when the fence kept it from writing.
async fn fenced_batch(
    db: &PostgresPool,
    context: &str,
    sql: &str,
    values: Vec<Value>,
    keys: impl ExactSizeIterator<Item = (OrderId, ClaimToken)>,
) -> Vec<Reply<Option<Order>>> {
    let written = rows(db, context, sql, values).await.and_then(|rows| {
        rows.iter()
            .map(|row| {
                let fenced_by: Uuid = row
                    .try_get("", "fenced_by")
                    .map_err(|err| storage_error(context, err))?;
                let order = order_row(row)?;
                Ok(((order.id, ClaimToken::from_uuid(fenced_by)), order))
            })
            .collect::<Result<HashMap<_, _>, StorageError>>()
    });
    match written {
        Ok(mut written) => keys.map(|key| Ok(written.remove(&key))).collect(),
        Err(err) => failed(keys.len(), &err),
    }
}

/// The `UPDATE` for `transition` and its parameters (`$1` is always the order id, `$2` the
/// claim where there is one); `None` for the transitions that are group-committed, Start and
/// Complete, whose statements are [`START_BATCH`] and [`COMPLETE_BATCH`].
fn transition_statement(id: OrderId, transition: Transition) -> Option<(String, Vec<Value>)> {
    let held = "status = 'PROCESSING' AND claim_token = $2";
    // An order with steps recorded never goes back to PENDING (see `Transition::Retry`).
    let held_without_steps = "status = 'PROCESSING' AND claim_token = $2 AND steps IS NULL";
    let id = Value::from(id.get());
    let (set, condition, values) = match transition {
        Transition::Start { .. } | Transition::Complete { .. } | Transition::Checkpoint { .. } => {
            return None;
        }
        // The lease's end is when a PROCESSING order is due again: renewing moves it.
        Transition::Renew { claim, lease } => (
            "available_at = now() + $3 * interval '1 microsecond'".to_owned(),
            held,
            vec![id, claim.as_uuid().into(), micros(lease).into()],
        ),
        // Back to PENDING, and due when the queue's retry says (its lease's end until then).
        Transition::Retry { claim, error } => (
            "status = 'PENDING', last_error = $3, updated_at = now()".to_owned(),
            held_without_steps,
            vec![id, claim.as_uuid().into(), error.into()],
        ),
        Transition::Fail {
            claim,
            error,
            steps,
        } => (
            format!(
                "status = 'FAILED', processing_end_time = now(), last_error = $3, \
                 steps = coalesce($4, steps), {FINISH}"
            ),
            "status = 'PROCESSING' AND claim_token = $2 AND cancel_requested_at IS NULL",
            vec![
                id,
                claim.as_uuid().into(),
                error.into(),
                steps.and_then(|steps| encode_steps(&steps)).into(),
            ],
        ),
        Transition::Release { claim } => (
            "status = 'PENDING', attempts = greatest(attempts - 1, 0), \
             processing_start_time = CASE WHEN attempts <= 1 THEN NULL \
             ELSE processing_start_time END, updated_at = now()"
                .to_owned(),
            held_without_steps,
            vec![id, claim.as_uuid().into()],
        ),
        Transition::Cancel => (
            format!("status = 'CANCELLED', {FINISH}"),
            "status = 'PENDING'",
            vec![id],
        ),
        Transition::RequestCancel { seen } => (
            "cancel_requested_at = now(), \
             updated_at = greatest(now(), updated_at + interval '1 microsecond')"
                .to_owned(),
            "status = 'PROCESSING' AND cancel_requested_at IS NULL AND updated_at = $2",
            vec![id, seen.into()],
        ),
        Transition::FinishCancel { claim, steps } => (
            format!("status = 'CANCELLED', processing_end_time = now(), steps = $3, {FINISH}"),
            held,
            vec![id, claim.as_uuid().into(), encode_steps(&steps).into()],
        ),
        // Due at once, as a new order is; the failure appended to the earlier ones.
        Transition::Requeue {
            seen,
            failure,
            steps,
        } => (
            "status = 'PENDING', claim_token = NULL, available_at = now(), \
             processing_end_time = NULL, steps = $3, \
             failures = (coalesce(failures::jsonb, '[]'::jsonb) || $4::jsonb)::text, \
             updated_at = greatest(now(), updated_at + interval '1 microsecond')"
                .to_owned(),
            "status = 'FAILED' AND updated_at = $2",
            vec![
                id,
                seen.into(),
                encode_steps(&steps).into(),
                encode_failures(std::slice::from_ref(&failure)).into(),
            ],
        ),
    };
    Some((
        format!("UPDATE order_engine_orders SET {set} WHERE id = $1 AND {condition} RETURNING *"),
        values,
    ))
}

#[async_trait]
impl Repository for PostgresRepository {
    async fn insert(&self, order: &ValidatedOrder) -> Result<Order, StorageError> {
        self.batches
            .inserts
            .call(order.clone())
            .await
            .unwrap_or_else(|| Err(lost_batch()))
    }

    async fn insert_keyed(
        &self,
        order: &ValidatedOrder,
        record: &KeyRecord,
    ) -> Result<Insertion, StorageError> {
        self.batches
            .keyed
            .call((order.clone(), record.clone()))
            .await
            .unwrap_or_else(|| Err(lost_batch()))
    }

    async fn prune_keys(&self) -> Result<u64, StorageError> {
        self.db
            .execute(Statement::from_string(
                DbBackend::Postgres,
                // Keys a request holds are skipped, not waited for: a batch of keyed inserts
                // locks its keys in key order, and a prune that waited in expiry order could
                // deadlock with it. A skipped key goes at the next prune.
                "DELETE FROM order_engine_idempotency_keys
                  WHERE (scope, key) IN (
                        SELECT scope, key FROM order_engine_idempotency_keys
                         WHERE expires_at <= now() FOR UPDATE SKIP LOCKED)",
            ))
            .await
            .map(|done| done.rows_affected())
            .map_err(|err| storage_error("could not prune idempotency keys", err))
    }

    async fn get(&self, id: OrderId) -> Result<Option<Order>, StorageError> {
        self.batches
            .reads
            .call_or_run(id, |id| async move {
                read_orders(&self.db, &[id])
                    .await
                    .map(|mut found| found.pop())
            })
            .await
            .unwrap_or_else(|| Err(lost_batch()))
    }

    async fn transition(
        &self,
        id: OrderId,
        transition: Transition,
    ) -> Result<Order, TransitionError> {
        let target = transition.target();
        let claim = transition.claim();
        let cancellable = transition.refused_once_cancelling();
        let requeue = matches!(transition, Transition::Requeue { .. });
        let batched = match &transition {
            Transition::Start { claim, lease } => {
                Some(self.batches.starts.call((id, *claim, micros(*lease))).await)
            }
            Transition::Complete { claim, steps } => {
                let steps = steps.as_deref().and_then(encode_steps);
                Some(self.batches.completions.call((id, *claim, steps)).await)
            }
            Transition::Checkpoint {
                claim,
                steps,
                advancing,
            } => {
                let steps = encode_steps(steps);
                let call = (id, *claim, steps, *advancing);
                Some(self.batches.checkpoints.call(call).await)
            }
            _ => None,
        };
        match batched {
            Some(Some(Ok(Some(order)))) => return Ok(order),
            Some(Some(Ok(None))) => {}
            Some(Some(Err(err))) => return Err(err.into()),
            Some(None) => return Err(lost_batch().into()),
            None => {
                let (sql, values) = transition_statement(id, transition)
                    .ok_or_else(|| StorageError::other("a batched transition went unbatched"))?;
                let update = |err| storage_error("could not update the order", err);
                let written = self
                    .db
                    .query_one(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        sql,
                        values,
                    ))
                    .await
                    .map_err(update)?;
                if let Some(row) = written {
                    let row = <Orders as EntityTrait>::Model::from_query_result(&row, "")
                        .map_err(update)?;
                    if requeue && let Some(wakeups) = &self.wakeups {
                        wakeups.announce();
                    }
                    return Ok(Order::try_from(row)?);
                }
            }
        }

        // Nothing was written: read why, for the caller to decide what to do.
        let read = |err| storage_error("could not read the order", err);
        let row = self
            .db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status, claim_token, cancel_requested_at IS NOT NULL AS cancelling, \
                        (status = 'PROCESSING' AND available_at > now()) AS lease_live \
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
        let cancelling: bool = row.try_get("", "cancelling").map_err(read)?;
        let holds = |claim: ClaimToken| holder == Some(claim.as_uuid());
        if cancellable
            && cancelling
            && current == OrderStatus::Processing
            && claim.is_some_and(holds)
        {
            return Err(TransitionError::CancelRequested(id));
        }
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
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM order_engine_orders \
                  WHERE status IN ('PENDING', 'PROCESSING') \
                    AND (status = 'PENDING' OR available_at <= now()) \
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

    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StorageError> {
        let (sql, values) = list_statement(query);
        let rows = rows(&self.db, "could not list orders", &sql, values).await?;
        rows.iter().map(order_row).collect()
    }

    /// The database answers and every migration is applied ([`check_ready`](super::check_ready)).
    async fn check_ready(&self) -> Result<(), StorageError> {
        super::check_schema(&self.db).await
    }

    async fn metrics(&self) -> Result<OrderMetrics, StorageError> {
        let rows = self
            .db
            .query_all(Statement::from_string(
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
