//! Indexes for listing orders by status and by user, and a `NOTIFY` of every status change so
//! that servers sharing the database can tell their watchers.

use sea_orm_migration::prelude::*;

/// The second migration: see the module docs.
pub(super) struct ListAndWatchOrders;

impl MigrationName for ListAndWatchOrders {
    fn name(&self) -> &str {
        "m20261125_000001_list_and_watch_orders"
    }
}

/// Newest-first listings walk one of these backwards from the cursor: by user, or by status
/// (PENDING and PROCESSING through the existing `order_engine_orders_unfinished`, finished
/// statuses through `order_engine_orders_finished`); a listing of all orders walks the primary
/// key. Every status change writes a new row version that every index it matches must record,
/// so the finished statuses get a partial index of their own instead of one index over all
/// statuses: each version of an order lands in one of the two, never in both.
const INDEXES: &str = "
CREATE INDEX order_engine_orders_finished ON order_engine_orders (status, id)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED');
CREATE INDEX order_engine_orders_by_user ON order_engine_orders (user_id, id);
";

/// One `NOTIFY order_engine_changes` per statement that changed statuses, its payload the
/// comma-separated ids, in chunks that stay under `NOTIFY`'s 8000-byte payload limit (300 ids
/// of up to 19 digits and a comma). A renewal, which changes no status, sends nothing.
pub(super) const NOTIFY_TRIGGER: &str = "
CREATE FUNCTION order_engine_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_engine_changes', string_agg(id::text, ','))
       FROM (SELECT a.id, (row_number() OVER ()) / 300 AS chunk
               FROM new_rows a JOIN old_rows b USING (id)
              WHERE a.status <> b.status) changed
      GROUP BY chunk;
    RETURN NULL;
END $$;
CREATE TRIGGER order_engine_notify_changes
    AFTER UPDATE ON order_engine_orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_engine_notify_changes();
";

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for ListAndWatchOrders {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!("{INDEXES}\n{NOTIFY_TRIGGER}"))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER IF EXISTS order_engine_notify_changes ON order_engine_orders;
                 DROP FUNCTION IF EXISTS order_engine_notify_changes();
                 DROP INDEX IF EXISTS order_engine_orders_finished, order_engine_orders_by_user;",
            )
            .await?;
        Ok(())
    }
}
