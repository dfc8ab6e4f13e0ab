//! Orders, the queue, and the per-status counters that keep metrics from scanning orders.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// The first migration: see the module docs.
pub(super) struct CreateOrdersAndQueue;

impl MigrationName for CreateOrdersAndQueue {
    fn name(&self) -> &str {
        "m20261124_000001_create_orders_and_queue"
    }
}

#[derive(DeriveIden)]
enum OrderEngineOrders {
    Table,
    Id,
    UserId,
    ItemIds,
    TotalAmount,
    Status,
    Attempts,
    LastError,
    ClaimToken,
    LeaseExpiresAt,
    CreatedAt,
    UpdatedAt,
    ProcessingStartTime,
    ProcessingEndTime,
}

#[derive(DeriveIden)]
enum OrderEngineQueue {
    Table,
    OrderId,
    AvailableAt,
    ClaimToken,
    Deliveries,
}

#[derive(DeriveIden)]
enum OrderEngineStatusCounts {
    Table,
    Status,
    Slot,
    Orders,
    ProcessingMicros,
}

/// How many counter rows each status has. Each transaction adds to the row of its backend's
/// slot, so concurrent writers rarely wait on one another's counter row.
pub(super) const COUNTER_SLOTS: i16 = 16;

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateOrdersAndQueue {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use OrderEngineOrders as O;
        manager
            .create_table(
                Table::create()
                    .table(O::Table)
                    .col(
                        ColumnDef::new(O::Id)
                            .big_integer()
                            .not_null()
                            .primary_key()
                            .extra("GENERATED ALWAYS AS IDENTITY"),
                    )
                    .col(ColumnDef::new(O::UserId).text().not_null())
                    .col(
                        ColumnDef::new(O::ItemIds)
                            .array(ColumnType::Text)
                            .not_null(),
                    )
                    .col(ColumnDef::new(O::TotalAmount).decimal_len(14, 2).not_null())
                    .col(ColumnDef::new(O::Status).text().not_null().check(
                        Expr::col(O::Status).is_in([
                            "PENDING",
                            "PROCESSING",
                            "COMPLETED",
                            "FAILED",
                            "CANCELLED",
                        ]),
                    ))
                    .col(ColumnDef::new(O::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(O::LastError).text())
                    .col(ColumnDef::new(O::ClaimToken).uuid())
                    .col(ColumnDef::new(O::LeaseExpiresAt).timestamp_with_time_zone())
                    .col(
                        ColumnDef::new(O::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(O::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(ColumnDef::new(O::ProcessingStartTime).timestamp_with_time_zone())
                    .col(ColumnDef::new(O::ProcessingEndTime).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;

        use OrderEngineQueue as Q;
        manager
            .create_table(
                Table::create()
                    .table(Q::Table)
                    // No foreign key to orders: the queue is a port of its own, usable with
                    // any repository.
                    .col(
                        ColumnDef::new(Q::OrderId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    // When the id may next be claimed: its push or retry time while it
                    // waits, its lease's end while a worker holds it. One column, so that one
                    // index serves both fresh work and lapsed leases.
                    .col(
                        ColumnDef::new(Q::AvailableAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(ColumnDef::new(Q::ClaimToken).uuid())
                    .col(
                        ColumnDef::new(Q::Deliveries)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("order_engine_queue_claimable")
                    .table(Q::Table)
                    .col(Q::AvailableAt)
                    .col(Q::OrderId)
                    .to_owned(),
            )
            .await?;

        use OrderEngineStatusCounts as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .col(ColumnDef::new(C::Status).text().not_null())
                    .col(ColumnDef::new(C::Slot).small_integer().not_null())
                    .col(
                        ColumnDef::new(C::Orders)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(C::ProcessingMicros)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .primary_key(Index::create().col(C::Status).col(C::Slot))
                    .to_owned(),
            )
            .await?;

        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "{STRANDED_INDEX}\n{seed}\n{triggers}\n{updates}\n{queue_counts}",
            seed = seed_counters(),
            triggers = COUNT_TRIGGERS.replace("{slots}", &COUNTER_SLOTS.to_string()),
            updates = COUNT_UPDATES.replace("{slots}", &COUNTER_SLOTS.to_string()),
            queue_counts = QUEUE_COUNTS.replace("{slots}", &COUNTER_SLOTS.to_string()),
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS order_engine_orders, order_engine_queue, \
                 order_engine_status_counts, order_engine_queue_counts;
                 DROP FUNCTION IF EXISTS order_engine_count_inserts(), \
                 order_engine_count_updates(), order_engine_count_deletes(), \
                 order_engine_count_truncate(), order_engine_count_queued();",
            )
            .await?;
        Ok(())
    }
}

/// Serves the recovery sweep ([`stranded`](crate::Repository::stranded)): only unfinished
/// orders are in it, so it stays as small as the backlog while finished orders pile up.
const STRANDED_INDEX: &str = "CREATE INDEX order_engine_orders_unfinished \
     ON order_engine_orders (id) WHERE status IN ('PENDING', 'PROCESSING');";

fn seed_counters() -> String {
    format!(
        "INSERT INTO order_engine_status_counts (status, slot) \
         SELECT s, g FROM unnest(ARRAY['PENDING','PROCESSING','COMPLETED','FAILED','CANCELLED']) \
         AS s CROSS JOIN generate_series(0, {}) AS g;",
        COUNTER_SLOTS - 1
    )
}

/// Statement-level triggers that move the counters by the statuses each statement changed, in
/// the statement's own transaction: the counters are exactly as committed as the orders, and a
/// multi-row statement costs one counter update, not one per row.
const COUNT_TRIGGERS: &str = r"
CREATE FUNCTION order_engine_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_engine_status_counts c
       SET orders = c.orders + d.n
      FROM (SELECT status, count(*) AS n FROM inserted GROUP BY status) d
     WHERE c.status = d.status AND c.slot = pg_backend_pid() % {slots};
    RETURN NULL;
END $$;

CREATE FUNCTION order_engine_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_engine_status_counts c
       SET orders = c.orders - d.n, processing_micros = c.processing_micros - d.micros
      FROM (
        SELECT status, count(*) AS n,
               sum(CASE WHEN status = 'COMPLETED' THEN coalesce((extract(epoch FROM
                   processing_end_time - processing_start_time) * 1000000)::bigint, 0)
               ELSE 0 END) AS micros
          FROM deleted GROUP BY status
      ) d
     WHERE c.status = d.status AND c.slot = pg_backend_pid() % {slots};
    RETURN NULL;
END $$;

CREATE TRIGGER order_engine_orders_count_inserts AFTER INSERT ON order_engine_orders
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_inserts();
CREATE TRIGGER order_engine_orders_count_deletes AFTER DELETE ON order_engine_orders
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_deletes();

CREATE FUNCTION order_engine_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_engine_status_counts SET orders = 0, processing_micros = 0;
    RETURN NULL;
END $$;

CREATE TRIGGER order_engine_orders_count_truncate AFTER TRUNCATE ON order_engine_orders
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_truncate();
";

/// The first design's counting of updates, apart from [`COUNT_TRIGGERS`] so that a later
/// migration may replace it (and its `down` put it back): every moved status found by a join
/// of the statement's old and new rows.
pub(super) const COUNT_UPDATES: &str = r"
CREATE FUNCTION order_engine_count_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_engine_status_counts c
       SET orders = c.orders + d.n, processing_micros = c.processing_micros + d.micros
      FROM (
        SELECT status, sum(n) AS n, sum(micros) AS micros FROM (
            SELECT b.status, -1 AS n,
                   CASE WHEN b.status = 'COMPLETED' THEN -coalesce((extract(epoch FROM
                       b.processing_end_time - b.processing_start_time) * 1000000)::bigint, 0)
                   ELSE 0 END AS micros
              FROM old_rows b JOIN new_rows a USING (id) WHERE a.status <> b.status
            UNION ALL
            SELECT a.status, 1,
                   CASE WHEN a.status = 'COMPLETED' THEN coalesce((extract(epoch FROM
                       a.processing_end_time - a.processing_start_time) * 1000000)::bigint, 0)
                   ELSE 0 END
              FROM old_rows b JOIN new_rows a USING (id) WHERE a.status <> b.status
        ) moves GROUP BY status
      ) d
     WHERE c.status = d.status AND c.slot = pg_backend_pid() % {slots};
    RETURN NULL;
END $$;

CREATE TRIGGER order_engine_orders_count_updates AFTER UPDATE ON order_engine_orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_updates();
";

/// How many ids the queue holds, kept per slot by triggers on insert and delete (claims,
/// extensions and retries are updates, and change no count), so that
/// [`depth`](crate::Queue::depth) need not count a backlog row by row: it counts only rows
/// whose `available_at` is ahead (held or delayed ones) through the index.
pub(super) const QUEUE_COUNTS: &str = r"
CREATE TABLE order_engine_queue_counts (
    slot smallint PRIMARY KEY,
    queued bigint NOT NULL DEFAULT 0
);
INSERT INTO order_engine_queue_counts (slot) SELECT generate_series(0, {slots} - 1);

CREATE FUNCTION order_engine_count_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE order_engine_queue_counts SET queued = 0;
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE order_engine_queue_counts SET queued = queued + (SELECT count(*) FROM added)
         WHERE slot = pg_backend_pid() % {slots};
    ELSE
        UPDATE order_engine_queue_counts SET queued = queued - (SELECT count(*) FROM removed)
         WHERE slot = pg_backend_pid() % {slots};
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER order_engine_queue_count_inserts AFTER INSERT ON order_engine_queue
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_queued();
CREATE TRIGGER order_engine_queue_count_deletes AFTER DELETE ON order_engine_queue
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_queued();
CREATE TRIGGER order_engine_queue_count_truncate AFTER TRUNCATE ON order_engine_queue
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_count_queued();
";
