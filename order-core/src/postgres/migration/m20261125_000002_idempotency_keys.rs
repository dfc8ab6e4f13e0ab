//! Idempotency keys, each naming the order it created until it expires.

use sea_orm_migration::prelude::*;

/// The third migration: see the module docs.
pub(super) struct IdempotencyKeys;

impl MigrationName for IdempotencyKeys {
    fn name(&self) -> &str {
        "m20261125_000002_idempotency_keys"
    }
}

/// The primary key decides races between requests with one key; the expiry index serves the
/// pruning. No foreign key to the order: an operator may delete orders, and a key whose order
/// is gone counts as unused.
const CREATE: &str = "
CREATE TABLE order_engine_idempotency_keys (
    scope text NOT NULL,
    key text NOT NULL,
    fingerprint bytea NOT NULL,
    order_id bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX order_engine_idempotency_keys_expiry ON order_engine_idempotency_keys (expires_at);
";

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for IdempotencyKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(CREATE).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS order_engine_idempotency_keys;")
            .await?;
        Ok(())
    }
}
