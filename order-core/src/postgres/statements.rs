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

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgArguments, PgRow};
use sea_orm::sqlx::{self, Postgres};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbErr, ExecResult, QueryResult, RuntimeErr, Statement,
    TransactionTrait,
};
use tracing::Instrument;

use super::PostgresPool;

/// What opens each transaction behind a pooler in transaction mode: the statement timeout for
/// this transaction, no prepared statement left on its server connection, and no `LISTEN`
/// either (another client's, or an older server's): a notification that reached this
/// connection between two of our statements would arrive in the middle of the next one, and
/// the driver fails a statement that meets one.
///
/// It first asks for a read-write transaction, which a standby refuses (SQLSTATE 0A000,
/// "cannot set transaction read-write mode during recovery"): when the pooler was pointed at
/// a node before it was promoted, every transaction fails there, reads included, and is
/// retried, rather than reading rows that the standby has received but not yet replayed.
/// Session connections are checked once, when they are opened (see
/// [`connect`](super::connect)); the pooler's server connections cannot be. A primary set
/// `default_transaction_read_only` is refused in session mode only: here the request
/// overrides that default, as any client may.
fn opening(timeout: Duration) -> String {
    format!(
        "SET LOCAL transaction_read_only = off; SET LOCAL statement_timeout = {}; \
         DEALLOCATE ALL; UNLISTEN *",
        timeout.as_millis()
    )
}

/// What a standby answers the opening's request for read-write. No other statement of the
/// opening can fail with it.
const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// The opening's error as its caller should see it: a standby's refusal becomes the error
/// of a node that takes no writes, which is unavailable; any other stays as it was.
fn opening_failed(err: sqlx::Error) -> sqlx::Error {
    if refused_by_standby(&err) {
        super::error::takes_no_writes()
    } else {
        err
    }
}

/// True when the opening failed as a standby fails it.
fn refused_by_standby(err: &sqlx::Error) -> bool {
    let sqlstate = err.as_database_error().and_then(|db| db.code());
    sqlstate.as_deref() == Some(FEATURE_NOT_SUPPORTED)
}

/// The result of a task that opened a transaction: a panic in it is the caller's panic, and a
/// task cancelled (the runtime shutting down) is a connection lost.
fn joined<T>(opened: Result<T, tokio::task::JoinError>) -> Result<T, sqlx::Error> {
    match opened {
        Ok(result) => Ok(result),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(sqlx::Error::Io(std::io::Error::other(format!(
            "opening a transaction: {err}"
        )))),
    }
}

impl PostgresPool {
    /// A transaction; behind a pooler in transaction mode, opened as [the module](self) says,
    /// so that statements in it run as on a session.
    ///
    /// Opened in a task of its own, which the caller awaits: the driver counts a transaction
    /// as open only once the answer to its `BEGIN` has arrived, so a caller that gave up
    /// while the answer was on its way (a timeout, a client that hung up) would leave the
    /// server's transaction open on a connection the pool hands out again, and the
    /// statements run there next would join it, uncommitted and unseen by other sessions. A
    /// task always sees the answer, and a transaction nobody takes is rolled back as it is
    /// dropped. (The task goes on after its caller gave up, through the pool's acquire
    /// timeout if need be: the price of never leaving a `BEGIN` unanswered.)
    pub(crate) async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let db = self.db.clone();
        let pinned = self.pinned;
        let opened = tokio::spawn(
            async move {
                let txn = db.begin().await?;
                if let Some(timeout) = pinned {
                    txn.execute_unprepared(&opening(timeout))
                        .await
                        .map_err(|err| match &err {
                            DbErr::Exec(RuntimeErr::SqlxError(sqlx))
                            | DbErr::Query(RuntimeErr::SqlxError(sqlx))
                            | DbErr::Conn(RuntimeErr::SqlxError(sqlx))
                                if refused_by_standby(sqlx) =>
                            {
                                DbErr::Conn(RuntimeErr::SqlxError(Arc::new(
                                    super::error::takes_no_writes(),
                                )))
                            }
                            _ => err,
                        })?;
                }
                Ok(txn)
            }
            .in_current_span(),
        )
        .await;
        joined(opened).map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))))?
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
        // In a task of its own, as `begin` says why.
        let pool = pool.clone();
        let opened = tokio::spawn(
            async move {
                let mut txn = pool.begin().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(opening(timeout)))
                    .execute(&mut *txn)
                    .await
                    .map_err(opening_failed)?;
                Ok::<_, sqlx::Error>(txn)
            }
            .in_current_span(),
        )
        .await;
        let mut txn = joined(opened)??;
        let rows = query.fetch_all(&mut *txn).await?;
        txn.commit().await?;
        Ok(rows)
    }
}

/// Through a real PgBouncer in transaction mode with two server connections, shared by many
/// more clients.
#[cfg(test)]
mod through_pgbouncer {
    use std::time::Duration;

    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};

    use crate::postgres::{PoolMode, PoolOptions, connect};
    use crate::testing::{PgBouncer, PgBouncerSettings, TestDatabase};

    const CLIENTS: u32 = 12;
    const ROUNDS: u32 = 40;

    fn bouncer(db: &TestDatabase) -> Option<PgBouncer> {
        PgBouncer::start_or_skip(db.url(), &PgBouncerSettings::default().default_pool_size(2))
    }

    /// `SELECT $1 + 1` from many clients at once: how many answers were right, and the errors.
    async fn sums(
        run: impl Fn(i64) -> futures::future::BoxFuture<'static, Result<i64, String>>,
    ) -> (usize, Vec<String>) {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..i64::from(CLIENTS) {
            let rounds: Vec<_> = (0..i64::from(ROUNDS))
                .map(|round| run(client * 1000 + round))
                .collect();
            tasks.spawn(async move {
                let mut outcomes = Vec::new();
                for (round, sum) in (0_i64..).zip(rounds) {
                    outcomes.push(sum.await.map(|sum| sum == client * 1000 + round + 1));
                }
                outcomes
            });
        }
        let (mut right, mut errors) = (0, Vec::new());
        while let Some(outcomes) = tasks.join_next().await {
            for outcome in outcomes.unwrap() {
                match outcome {
                    Ok(true) => right += 1,
                    Ok(false) => errors.push("a wrong answer".to_owned()),
                    Err(err) => errors.push(err),
                }
            }
        }
        (right, errors)
    }

    fn sum_statement(n: i64) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT $1::bigint + 1 AS n",
            [n.into()],
        )
    }

    /// The driver alone, its statement cache on, as a session pool would send them: the
    /// statements prepared on one server connection are executed on another. (The startup
    /// `statement_timeout` is left out: PgBouncer would refuse the connection.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_as_the_driver_sends_them_fail_behind_the_pooler() {
        let db = TestDatabase::create().await;
        let Some(bouncer) = bouncer(&db) else { return };
        let mut options = ConnectOptions::new(bouncer.url(db.url()));
        options.max_connections(CLIENTS).sqlx_logging(false);
        let raw = Database::connect(options).await.unwrap();
        let (right, errors) = sums(|n| {
            let raw = raw.clone();
            Box::pin(async move {
                let row = raw
                    .query_one_raw(sum_statement(n))
                    .await
                    .map_err(|e| e.to_string())?;
                row.unwrap()
                    .try_get::<i64>("", "n")
                    .map_err(|e| e.to_string())
            })
        })
        .await;
        assert!(
            errors.iter().any(|err| err.contains("prepared statement")),
            "{right} right, errors: {errors:?}"
        );
    }

    /// Fails without the transaction around each statement (the `Bind` reaches another server
    /// connection than its `Parse`) and without `DEALLOCATE ALL` (a statement name already
    /// taken on the server connection).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_transaction_mode_every_statement_reaches_one_server_connection_whole() {
        let db = TestDatabase::create().await;
        let Some(bouncer) = bouncer(&db) else { return };
        let options = PoolOptions::default()
            .pool_mode(PoolMode::Transaction)
            .max_connections(CLIENTS);
        let pool = connect(&bouncer.url(db.url()), &options).await.unwrap();
        let (right, errors) = sums(|n| {
            let pool = pool.clone();
            Box::pin(async move {
                let row = pool
                    .query_one(sum_statement(n))
                    .await
                    .map_err(|e| e.to_string())?;
                row.unwrap()
                    .try_get::<i64>("", "n")
                    .map_err(|e| e.to_string())
            })
        })
        .await;
        assert_eq!(
            (right, errors),
            (
                usize::try_from(CLIENTS * ROUNDS).unwrap(),
                Vec::<String>::new()
            )
        );
        // The driver's own decoding of rows, as the repository reads orders.
        let rows = pool
            .fetch_all(sea_orm::sqlx::query("SELECT $1::bigint AS n").bind(7_i64))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_transaction_mode_a_slow_statement_is_cut_off_and_the_timeout_stays_with_it() {
        let db = TestDatabase::create().await;
        let Some(bouncer) = bouncer(&db) else { return };
        let options = PoolOptions::default()
            .pool_mode(PoolMode::Transaction)
            .statement_timeout(Duration::from_millis(300));
        let pool = connect(&bouncer.url(db.url()), &options).await.unwrap();
        let began = std::time::Instant::now();
        let err = pool
            .execute(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_sleep(5)",
            ))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("statement timeout"), "{err}");
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "{:?}",
            began.elapsed()
        );
        let shown = |row: Option<sea_orm::QueryResult>| -> String {
            row.unwrap().try_get("", "statement_timeout").unwrap()
        };
        let show = || Statement::from_string(DbBackend::Postgres, "SHOW statement_timeout");
        assert_eq!(shown(pool.query_one(show()).await.unwrap()), "300ms");
        // Another client of the same server connections (there are two) sees the server's
        // default, not ours: the timeout was set for our transaction only.
        let mut options = ConnectOptions::new(bouncer.url(db.url()));
        options.max_connections(1).sqlx_logging(false);
        let other = Database::connect(options).await.unwrap();
        let mut seen = 0;
        for _ in 0..6 {
            // The other client's own named statement may miss on another server connection.
            if let Ok(row) = other.query_one_raw(show()).await {
                assert_eq!(shown(row), "0");
                seen += 1;
            }
        }
        assert!(seen > 0, "the other client never got an answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_asks_for_read_write_sets_the_timeout_in_milliseconds_and_drops_prepared_statements()
     {
        assert_eq!(
            opening(Duration::from_millis(2500)),
            "SET LOCAL transaction_read_only = off; SET LOCAL statement_timeout = 2500; \
             DEALLOCATE ALL; UNLISTEN *"
        );
    }
}
