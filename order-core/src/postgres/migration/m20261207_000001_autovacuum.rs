//! Autovacuum of the orders table by its own thresholds rather than PostgreSQL's defaults.
//!
//! Every order leaves two dead row versions behind (its claim and its completion each write a
//! new one, and neither can be a HOT update: both change `status` and `available_at`, which
//! the unfinished orders' partial index holds). PostgreSQL's default vacuums a table once its
//! dead rows pass 50 plus 20% of its live ones, so the orders table carries up to a fifth of
//! its size in dead rows, and their index entries, before each vacuum. Here the threshold is
//! 500 plus 2% of the live rows: a vacuum at every autovacuum wake-up under load, each with
//! little to do. With autovacuum waking every second, 1,669 orders/s into an empty table: the
//! most dead rows seen after the first minute fell from 20.1% of the live ones to 4.3% (over
//! ten minutes and a million orders; BENCHMARKS.md, "Sustained load").
//!
//! How often autovacuum wakes (`autovacuum_naptime`, one minute by default) is the server's
//! setting, not a table's: in between, dead rows pile up at twice the rate of orders whatever
//! the thresholds. The README says what a sustained load needs of it.
//!
//! Not changed: `fillfactor` (85 since the steps' migration, room on each page for the steps'
//! checkpoints, which are HOT updates; the claim and the completion cannot be) and the insert
//! threshold (the updates start a vacuum sooner than the inserts would).
//!
//! `down` resets both parameters to the server's defaults.

use sea_orm_migration::prelude::*;

/// The eighth migration: see the module docs.
pub(super) struct Autovacuum;

impl MigrationName for Autovacuum {
    fn name(&self) -> &str {
        "m20261207_000001_autovacuum"
    }
}

// The trait declares `&SchemaManager` with its lifetime elided; the impl must match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Autovacuum {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE order_engine_orders SET (autovacuum_vacuum_scale_factor = 0.02, \
                 autovacuum_vacuum_threshold = 500)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE order_engine_orders RESET (autovacuum_vacuum_scale_factor, \
                 autovacuum_vacuum_threshold)",
            )
            .await?;
        Ok(())
    }
}
