//! Orders processed in steps: each order's step records and a requested cancel, as columns of
//! its row.
//!
//! - `steps` holds the order's [`StepRecord`](crate::step::StepRecord)s as JSON text (`text`,
//!   not `jsonb`, so that each step's output comes back byte for byte as the step wrote it).
//!   `NULL` for an order with no steps recorded: every order of a plain handler, whose one
//!   step is the row itself, so that such orders write nothing more than before.
//! - `cancel_requested_at` is set when a client asks to cancel a PROCESSING order whose steps
//!   can be compensated.
//! - The update trigger announces a statement whose rows changed steps or a cancel request
//!   (a checkpoint), not only a status, so that watchers of other processes see each step.
//!
//! - The table's fill factor goes to 85: a checkpoint changes no indexed column, and with room
//!   left on the page PostgreSQL writes it as a heap-only update, with no new index entries.
//!   Pages written from now on keep the room; existing ones are not rewritten. A renewal gains
//!   the same way.
//!
//! Both columns are added without a default, which PostgreSQL does without rewriting the
//! table; `down` drops them, resets the fill factor and restores the trigger's status-only
//! announcements.

use sea_orm_migration::prelude::*;

use super::m20261124_000001_create_orders_and_queue::COUNTER_SLOTS;
use super::m20261203_000001_queue_in_orders::UPDATE_TRIGGER;

/// The fifth migration: see the module docs.
pub(super) struct OrderSteps;

impl MigrationName for OrderSteps {
    fn name(&self) -> &str {
        "m20261204_000001_order_steps"
    }
}

/// What the fourth migration's trigger announces: a changed status.
const STATUS_MOVED: &str = "WHERE a.status <> b.status;";
/// What this one's announces: a changed status, steps or cancel request.
const ANYTHING_MOVED: &str = "WHERE a.status <> b.status
            OR a.steps IS DISTINCT FROM b.steps
            OR a.cancel_requested_at IS DISTINCT FROM b.cancel_requested_at;";

/// The update trigger's function, announcing what `moved` says; the trigger that calls it is
/// left as it is.
fn trigger_function(moved: &str) -> Result<String, DbErr> {
    let function = UPDATE_TRIGGER
        .split("CREATE TRIGGER")
        .next()
        .unwrap_or_default()
        .replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        .replace("{slots}", &COUNTER_SLOTS.to_string());
    if !function.contains(STATUS_MOVED) {
        return Err(DbErr::Migration(
            "the update trigger no longer reads as this migration expects".to_owned(),
        ));
    }
    Ok(function.replace(STATUS_MOVED, moved))
}

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for OrderSteps {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = format!(
            "ALTER TABLE order_engine_orders
                 ADD COLUMN steps text,
                 ADD COLUMN cancel_requested_at timestamptz,
                 SET (fillfactor = 85);
             {}",
            trigger_function(ANYTHING_MOVED)?
        );
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = format!(
            "{}
             ALTER TABLE order_engine_orders DROP COLUMN steps, DROP COLUMN cancel_requested_at,
                 RESET (fillfactor);",
            trigger_function(STATUS_MOVED)?
        );
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }
}
