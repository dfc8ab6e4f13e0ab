//! How every statement reaches PostgreSQL whole, directly or through a pooler in transaction
//! mode.
//!
//! The driver (sqlx 0.9) sends a statement with parameters in two exchanges, each ended by a
//! `Sync`: `Parse`/`Describe` to prepare it (skipped when its per-connection cache has it), then
//! `Bind`/`Execute` to run it. PostgreSQL answers each `Sync` with `ReadyForQuery`, and PgBouncer
//! in transaction mode hands the server connection back to its pool at every `ReadyForQuery`
//! outside a transaction. So outside a transaction the `Bind` may reach another server
//! connection than its `Parse`: "prepared statement does not exist", or worse, the unnamed
//! statement another client just prepared there. A cached (named) statement fails the same
//! way on the next transaction's server connection, and its name clashes with the same name
//! from another client ("already exists").
//!
//! Behind such a pooler ([`PoolMode::Transaction`](super::PoolMode::Transaction)), each statement
//! therefore runs in a transaction of its own, which keeps one server connection from `BEGIN`
//! to `COMMIT`. Its first exchange, `SET LOCAL statement_timeout = ...; DEALLOCATE ALL; ...`, sets
//! the timeout for this transaction only (a session `SET` would stay on a server connection
//! other clients share) and drops the statements that earlier transactions, ours or another
//! client's, left prepared there: with the driver's cache off each statement is prepared
//! under a new name that is never closed, and the next name may be one already taken on that
//! server connection. On a session (a direct connection), statements go as the driver sends
//! them, cached.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgArguments, PgRow};
use sea_orm::sqlx::{self, Postgres};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbErr, ExecResult, QueryResult, Statement,
    TransactionTrait,
};

use super::PostgresPool;

/// What opens each transaction behind a pooler in transaction mode: the statement timeout for
/// this transaction, no prepared statement left on its server connection, and no `LISTEN`
/// either (another client's, or an older server's): a notification that reached this
/// connection between two of our statements would arrive in the middle of the next one, and
/// the driver fails a statement that meets one.
fn opening(timeout: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}; DEALLOCATE ALL; UNLISTEN *",
        timeout.as_millis()
    )
}

impl PostgresPool {
    /// A transaction; behind a pooler in transaction mode, opened as [the module](self) says,
    /// so that statements in it run as on a session.
    pub(crate) async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        if let Some(timeout) = self.pinned {
            txn.execute_unprepared(&opening(timeout)).await?;
        }
        Ok(txn)
    }

    /// Runs `statement`, which returns no rows.
    pub(crate) async fn execute(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        if self.pinned.is_none() {
            return self.db.execute_raw(statement).await;
        }
        let txn = self.begin().await?;
        let done = txn.execute_raw(statement).await?;
        txn.commit().await?;
        Ok(done)
    }

    /// Runs `statement` and reads every row it returns.
    pub(crate) async fn query_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        if self.pinned.is_none() {
            return self.db.query_all_raw(statement).await;
        }
        let txn = self.begin().await?;
        let rows = txn.query_all_raw(statement).await?;
        txn.commit().await?;
        Ok(rows)
    }

    /// Runs `statement` and reads its first row, if any.
    pub(crate) async fn query_one(
        &self,
        statement: Statement,
    ) -> Result<Option<QueryResult>, DbErr> {
        if self.pinned.is_none() {
            return self.db.query_one_raw(statement).await;
        }
        let txn = self.begin().await?;
        let row = txn.query_one_raw(statement).await?;
        txn.commit().await?;
        Ok(row)
    }

    /// Runs a query built with the driver itself (rows decoded straight into domain types)
    /// and reads every row.
    pub(crate) async fn fetch_all<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let pool = self.db.get_postgres_connection_pool();
        let Some(timeout) = self.pinned else {
            return query.fetch_all(pool).await;
        };
        let mut txn = pool.begin().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(opening(timeout)))
            .execute(&mut *txn)
            .await?;
        let rows = query.fetch_all(&mut *txn).await?;
        txn.commit().await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_sets_the_timeout_in_milliseconds_and_drops_prepared_statements() {
        assert_eq!(
            opening(Duration::from_millis(2500)),
            "SET LOCAL statement_timeout = 2500; DEALLOCATE ALL; UNLISTEN *"
        );
    }
}
