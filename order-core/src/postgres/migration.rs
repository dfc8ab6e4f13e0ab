//! The schema, as sea-orm-migration migrations.

mod m20261124_000001_create_orders_and_queue;
mod m20261125_000001_list_and_watch_orders;
mod m20261125_000002_idempotency_keys;
mod m20261203_000001_queue_in_orders;
mod m20261204_000001_order_steps;
mod m20261205_000001_retried_orders;
mod m20261206_000001_bulk_actions;
mod m20261207_000001_autovacuum;
#[cfg(test)]
mod tests;

use sea_orm_migration::prelude::*;

/// The project's migrations, for `sea_orm_migration`'s [`MigratorTrait`].
///
/// [`migrate`](super::migrate) runs them in one transaction under an advisory lock, so several
/// servers starting at once take turns. Applied migrations are recorded in
/// `order_engine_migrations`, apart from an embedding service's `seaql_migrations`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_orders_and_queue::CreateOrdersAndQueue),
            Box::new(m20261125_000001_list_and_watch_orders::ListAndWatchOrders),
            Box::new(m20261125_000002_idempotency_keys::IdempotencyKeys),
            Box::new(m20261203_000001_queue_in_orders::QueueInOrders),
            Box::new(m20261204_000001_order_steps::OrderSteps),
            Box::new(m20261205_000001_retried_orders::RetriedOrders),
            Box::new(m20261206_000001_bulk_actions::BulkActions),
            Box::new(m20261207_000001_autovacuum::Autovacuum),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("order_engine_migrations").into_iden()
    }
}
