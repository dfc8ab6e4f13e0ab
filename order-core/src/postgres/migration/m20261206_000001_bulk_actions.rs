//! Bulk actions: each action, and the ids of the orders it selected when it was accepted.
//!
//! - `order_engine_bulk_actions`: one row per action, with its request (`kind`, `user_id`,
//!   `max_orders`), its idempotency key (unique, when given) and the request's fingerprint,
//!   its counts (`matched`, `acted`, `skipped`), its place (`last_order_id`, the last order a
//!   page went through), the longest a page held its orders locked (`longest_page_micros`),
//!   and who holds it (`claim_token` until `lease_until`). A partial index
//!   finds the unfinished ones.
//! - `order_engine_bulk_items`: the selected order ids, keyed by action and order, so that a
//!   page reads the next ids after its place from the primary key. A finished action's ids are
//!   deleted by its last page: the table holds only the work still to do.
//!
//! `down` drops both tables.

use sea_orm_migration::prelude::*;

/// The seventh migration: see the module docs.
pub(super) struct BulkActions;

impl MigrationName for BulkActions {
    fn name(&self) -> &str {
        "m20261206_000001_bulk_actions"
    }
}

const UP: &str = "
CREATE TABLE order_engine_bulk_actions (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('CANCEL', 'RETRY')),
    user_id text,
    max_orders integer NOT NULL CHECK (max_orders > 0),
    idempotency_key text UNIQUE,
    fingerprint text NOT NULL,
    matched bigint NOT NULL DEFAULT 0,
    acted bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    last_order_id bigint NOT NULL DEFAULT 0,
    longest_page_micros bigint NOT NULL DEFAULT 0,
    claim_token uuid,
    lease_until timestamptz,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX order_engine_bulk_actions_unfinished ON order_engine_bulk_actions (accepted_at)
    WHERE finished_at IS NULL;
CREATE TABLE order_engine_bulk_items (
    action_id uuid NOT NULL REFERENCES order_engine_bulk_actions (id) ON DELETE CASCADE,
    order_id bigint NOT NULL,
    PRIMARY KEY (action_id, order_id)
);
";

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for BulkActions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE order_engine_bulk_items, order_engine_bulk_actions")
            .await?;
        Ok(())
    }
}
