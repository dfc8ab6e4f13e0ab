//! The second design: the queue's state becomes columns of the order's row, and one statement
//! trigger counts and announces every update.
//!
//! In the first design an order was a row of `order_engine_orders` and, while unfinished, a
//! row of `order_engine_queue`: five row versions from submit to COMPLETED (the order's
//! insert, start and completion; the queue row's insert and claim, then its delete), each
//! non-HOT, and two PL/pgSQL triggers per statement joining its old and new rows. Now:
//!
//! - `available_at` says when an unfinished order may next be claimed: a PENDING order's
//!   queueing or retry time, a PROCESSING order's lease end (it replaces `lease_expires_at`).
//!   `deliveries` counts its claims. The partial index `order_engine_orders_due` on
//!   `(available_at, id)` of PENDING and PROCESSING orders serves every claim, fresh work and
//!   lapsed leases alike; finished orders leave it with their status change, so nothing has to
//!   delete a queue row. Three row versions per order.
//! - The claim keeps `claim_token` when an order goes back to PENDING (a retry, a hand-back),
//!   so that the queue's `retry` that follows is still fenced by it.
//! - An unfinished order always has a due time (`order_engine_orders_unfinished_are_due`): a
//!   write that would leave one PENDING or PROCESSING without it, and so never claimed (an
//!   operator's `UPDATE ... SET status = 'PENDING'` of a failed order, say), is refused
//!   instead; it must set `available_at` too.
//! - One statement trigger on update moves the per-status counters by the difference between
//!   the statement's new and old rows, counted per status (no join), and sends the changed ids
//!   on `order_engine_changes` when a status moved.
//!
//! Migrating keeps every order: unfinished ones take their queue row's time, claim and
//! deliveries (a PENDING order that had none is due at once, as the recovery sweep would have
//! queued it); a PROCESSING order keeps its lease. `down` rebuilds the first design from the
//! second.
//!
//! A server of the first design meets this schema fail-safe: its migrator and its readiness
//! check refuse a database with a migration they do not know, and its statements that touch the
//! queue or the lease fail, since `order_engine_queue` and `lease_expires_at` are gone; its
//! inserts get `available_at` from the column's default, so they are still claimed.

use sea_orm_migration::prelude::*;

use super::m20261124_000001_create_orders_and_queue::{COUNT_UPDATES, COUNTER_SLOTS, QUEUE_COUNTS};
use super::m20261125_000001_list_and_watch_orders::NOTIFY_TRIGGER;

/// The fourth migration: see the module docs.
pub(super) struct QueueInOrders;

impl MigrationName for QueueInOrders {
    fn name(&self) -> &str {
        "m20261203_000001_queue_in_orders"
    }
}

const UP: &str = "
ALTER TABLE order_engine_orders
    ADD COLUMN available_at timestamptz DEFAULT now(),
    ADD COLUMN deliveries integer NOT NULL DEFAULT 0;

UPDATE order_engine_orders o
   SET available_at = CASE WHEN o.status = 'PROCESSING'
                           THEN coalesce(o.lease_expires_at, now())
                           ELSE coalesce(q.available_at, now()) END,
       deliveries = coalesce(q.deliveries, 0),
       claim_token = coalesce(o.claim_token, q.claim_token)
  FROM order_engine_orders u LEFT JOIN order_engine_queue q ON q.order_id = u.id
 WHERE o.id = u.id AND u.status IN ('PENDING', 'PROCESSING');

ALTER TABLE order_engine_orders DROP COLUMN lease_expires_at,
    ADD CONSTRAINT order_engine_orders_unfinished_are_due
        CHECK (status NOT IN ('PENDING', 'PROCESSING') OR available_at IS NOT NULL);
DROP TABLE IF EXISTS order_engine_queue, order_engine_queue_counts;
DROP FUNCTION IF EXISTS order_engine_count_queued();

CREATE INDEX order_engine_orders_due ON order_engine_orders (available_at, id)
    WHERE status IN ('PENDING', 'PROCESSING');

DROP TRIGGER order_engine_orders_count_updates ON order_engine_orders;
DROP FUNCTION order_engine_count_updates();
DROP TRIGGER order_engine_notify_changes ON order_engine_orders;
DROP FUNCTION order_engine_notify_changes();
";

/// Counts and announces an update statement's status changes. The counters move by the new
/// rows per status minus the old rows per status (an order whose status stayed counts once on
/// each side, and cancels out); completed orders' processing time likewise. When a status
/// moved, the statement's ids go out on `order_engine_changes` in chunks of 300 (under
/// `NOTIFY`'s 8000-byte limit): a watcher may hear of an order that did not change (a lease
/// taken over in the same claim), which the change feed allows. A statement that changed no
/// count (a renewal) but did swap statuses between orders is found by the join it then runs.
pub(super) const UPDATE_TRIGGER: &str = r"
CREATE FUNCTION order_engine_orders_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    WITH sides AS (
        SELECT status, count(*) AS n,
               coalesce(sum((extract(epoch FROM processing_end_time - processing_start_time)
                   * 1000000)::bigint) FILTER (WHERE status = 'COMPLETED'), 0) AS micros
          FROM new_rows GROUP BY status
        UNION ALL
        SELECT status, -count(*),
               -coalesce(sum((extract(epoch FROM processing_end_time - processing_start_time)
                   * 1000000)::bigint) FILTER (WHERE status = 'COMPLETED'), 0)
          FROM old_rows GROUP BY status),
    moves AS (
        SELECT status, sum(n) AS n, sum(micros) AS micros FROM sides GROUP BY status),
    counted AS (
        UPDATE order_engine_status_counts c
           SET orders = c.orders + d.n, processing_micros = c.processing_micros + d.micros
          FROM moves d
         WHERE (d.n <> 0 OR d.micros <> 0)
           AND c.status = d.status AND c.slot = pg_backend_pid() % {slots}
        RETURNING 1)
    SELECT count(*) INTO moved FROM counted;
    IF moved = 0 THEN
        SELECT count(*) INTO moved
          FROM old_rows b JOIN new_rows a USING (id) WHERE a.status <> b.status;
    END IF;
    IF moved > 0 THEN
        PERFORM pg_notify('order_engine_changes', string_agg(id::text, ','))
           FROM (SELECT id, (row_number() OVER ()) / 300 AS chunk FROM new_rows) changed
          GROUP BY chunk;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER order_engine_orders_updated AFTER UPDATE ON order_engine_orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_orders_updated();
";

/// The first design back: a queue row for every unfinished order (PENDING ones unclaimed), the
/// lease in `lease_expires_at`, the claim cleared on PENDING orders, and the first design's
/// triggers. Only unfinished rows are rewritten: the first design reads no finished order's
/// claim, and rewriting every finished order would double the table under an exclusive lock.
const DOWN_TABLES: &str = "
DROP TRIGGER order_engine_orders_updated ON order_engine_orders;
DROP FUNCTION order_engine_orders_updated();

ALTER TABLE order_engine_orders ADD COLUMN lease_expires_at timestamptz,
    DROP CONSTRAINT order_engine_orders_unfinished_are_due;
UPDATE order_engine_orders
   SET lease_expires_at = CASE WHEN status = 'PROCESSING' THEN available_at END,
       claim_token = CASE WHEN status = 'PROCESSING' THEN claim_token END
 WHERE status IN ('PENDING', 'PROCESSING');

CREATE TABLE order_engine_queue (
    order_id bigint NOT NULL PRIMARY KEY,
    available_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    claim_token uuid,
    deliveries integer NOT NULL DEFAULT 0
);
CREATE INDEX order_engine_queue_claimable ON order_engine_queue (available_at, order_id);
";

const DOWN_ROWS: &str = "
INSERT INTO order_engine_queue (order_id, available_at, claim_token, deliveries)
SELECT id, coalesce(available_at, now()),
       CASE WHEN status = 'PROCESSING' THEN claim_token END, deliveries
  FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING');

DROP INDEX order_engine_orders_due;
ALTER TABLE order_engine_orders DROP COLUMN available_at, DROP COLUMN deliveries;
";

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for QueueInOrders {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let slots = COUNTER_SLOTS.to_string();
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "{UP}\n{}",
                UPDATE_TRIGGER.replace("{slots}", &slots)
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let slots = COUNTER_SLOTS.to_string();
        // The queue's counters come before its rows, so that their trigger counts them.
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "{DOWN_TABLES}\n{}\n{DOWN_ROWS}\n{}\n{NOTIFY_TRIGGER}",
                QUEUE_COUNTS.replace("{slots}", &slots),
                COUNT_UPDATES.replace("{slots}", &slots),
            ))
            .await?;
        Ok(())
    }
}
