//! Orders retried after they FAILED: each order's earlier failures, as a column of its row.
//!
//! `failures` holds the order's [`FailureRecord`](crate::FailureRecord)s as JSON text, oldest
//! first; `NULL` for an order never retried, so that no other order writes a byte more. A
//! retry appends to it in the statement that puts the order back to PENDING.
//!
//! The column is added without a default, which PostgreSQL does without rewriting the table;
//! `down` drops it, and with it what was kept of earlier failures (a retried order stays as it
//! is otherwise).

use sea_orm_migration::prelude::*;

/// The sixth migration: see the module docs.
pub(super) struct RetriedOrders;

impl MigrationName for RetriedOrders {
    fn name(&self) -> &str {
        "m20261205_000001_retried_orders"
    }
}

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for RetriedOrders {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE order_engine_orders ADD COLUMN failures text")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE order_engine_orders DROP COLUMN failures")
            .await?;
        Ok(())
    }
}
