//! Backends on PostgreSQL, through sea-orm: orders and the queue survive restarts, and several
//! processes on one database share the work with PostgreSQL as their only coordinator.
//!
//! - [`PostgresBackend`] is the pair the engine runs on, built in one call: the repository,
//!   the queue that shares its storage (a claim starts what it claims, see
//!   [`QueueStorage::Repository`](crate::backend::QueueStorage::Repository)) and the change feed.
//! - [`PostgresRepository`] keeps orders in `order_engine_orders`, one row each, its queue
//!   state included: `available_at` says when an unfinished order is next due (a PENDING
//!   order's queueing or retry time, a PROCESSING order's lease end). Every status change is
//!   one fenced `UPDATE ... WHERE` (a compare-and-set), and a statement trigger keeps
//!   per-status counters in `order_engine_status_counts`, so
//!   [`metrics`](crate::backend::Repository::metrics) reads a few dozen rows however many orders there
//!   are. An order costs three row versions from submit to COMPLETED: its insert, the claim
//!   that starts it and its completion.
//! - [`PostgresQueue`], the backend's queue, is the PENDING and PROCESSING rows themselves.
//!   Workers claim and start with `FOR UPDATE SKIP LOCKED`, leases are timestamps on the
//!   database's clock, and idle workers sleep on `LISTEN order_engine_queue` until new work
//!   sends `NOTIFY`.
//! - [`PostgresChangeFeed`] hears of every status change, made by any process: a statement
//!   trigger sends `NOTIFY order_engine_changes` with the changed ids, so that a server can
//!   stream an order's changes to its watchers whichever server made them.
//! - [`migrate`] owns the schema (sea-orm-migration's migrations, run under an advisory lock).
//!   Every table, function and trigger is prefixed `order_engine_`, and applied migrations
//!   are recorded in `order_engine_migrations`, so they live beside an embedding service's own
//!   migrations in the same database.
//! - [`PostgresPool`] is the connection pool they share, opened by [`connect`]: no driver type
//!   appears in this module's API. Behind PgBouncer in transaction mode, set
//!   [`PoolMode::Transaction`] (every statement whole, its timeout kept to it) and give `LISTEN`
//!   a direct connection with [`PoolOptions::listen_url`]; a `NOTIFY` round trip tells whether
//!   notifications arrive, and the backend polls while they do not ([`NotificationMode`]).
//!
//! ```no_run
//! use order_core::postgres::{PoolOptions, PostgresBackend};
//! use order_core::OrderProcessor;
//! use order_core::handler::SimulatedStep;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend =
//!     PostgresBackend::connect("postgres://localhost/orders", &PoolOptions::default()).await?;
//! let processor = OrderProcessor::builder(SimulatedStep::new(std::time::Duration::ZERO))
//!     .backend(&backend)
//!     .build()?;
//! let running = processor.start();
//! # running.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```

mod batch;
mod bulk;
mod changes;
mod entity;
mod error;
mod listen;
mod migration;
mod notifications;
mod queue;
mod repository;
mod statements;
mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use sea_orm_migration::MigratorTrait;

pub use bulk::PostgresBulkActions;
pub use changes::PostgresChangeFeed;
pub(crate) use migration::Migrator;
pub use notifications::NotificationMode;
pub use queue::PostgresQueue;
pub use repository::PostgresRepository;
use sea_orm::DatabaseConnection;

use crate::backend::{Backend, BulkActions};
use crate::changes::ChangeFeed;
use crate::error::StorageError;
use crate::queue::Queue;
use crate::repository::Repository;
use error::{sqlx_storage_error, storage_error};

/// A pool of connections to one PostgreSQL database: what [`connect`] opens, [`migrate`] sets
/// up, and every part of a backend shares. Cloning is cheap: clones share the pool.
///
/// It wraps the driver's own pool (sqlx's, through sea-orm) so that no driver type is part of
/// this crate's API: upgrading the driver is not a breaking change for embedders.
#[derive(Debug, Clone)]
pub struct PostgresPool {
    db: DatabaseConnection,
    /// Behind a pooler in transaction mode, the `statement_timeout` that each statement's own
    /// transaction sets (see [`statements`]); `None` on a direct connection, which sets it once
    /// per connection.
    pinned: Option<Duration>,
    /// Where `LISTEN` connections come from: the pool's own driver pool, or a small one on
    /// [`PoolOptions::listen_url`].
    listen: PgPool,
    /// Which way other processes' news reaches this one, kept up to date by a `NOTIFY` round
    /// trip (see [`notifications`]); shared by every clone.
    notifications: Arc<notifications::Notifications>,
}

impl PostgresPool {
    /// The driver's pool, for tests that read and write the database behind the backend.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Closes every connection; later calls on any clone fail as unavailable.
    pub async fn close(self) -> Result<(), StorageError> {
        self.listen.close().await;
        self.db
            .close()
            .await
            .map_err(|err| storage_error("could not close the pool", err))
    }

    /// Whether this pool may open `LISTEN` connections. Not on a pooler in transaction mode
    /// without a listen URL: `LISTEN` there stays on a server connection that other clients
    /// share, the notifications that then reach it land in the middle of their statements, and
    /// the driver fails those statements ("unexpected message: NotificationResponse").
    pub(crate) fn may_listen(&self) -> bool {
        self.pinned.is_none() || self.notifications.separate()
    }

    /// Whether [`close`](Self::close) has been called on a clone.
    pub(crate) fn is_closed(&self) -> bool {
        self.db.get_postgres_connection_pool().is_closed()
    }

    /// Whether other processes' `NOTIFY` reaches this pool's `LISTEN` connections, as the last
    /// round trip found: [`NotificationMode::Polling`] until the first one succeeds. The first
    /// call starts the round trips (at once, then every half minute); a backend starts them
    /// when its workers first wait or its change feed is first subscribed to.
    pub fn notification_mode(&self) -> NotificationMode {
        self.notifications.current(self)
    }

    /// Waits until the notification mode is no longer `previous`, starting the round trips if
    /// no one has; for a caller that reports the mode as it changes.
    pub async fn notification_mode_change(&self, previous: NotificationMode) -> NotificationMode {
        self.notifications.changed(self, previous).await
    }
}

/// PostgreSQL's repository, queue and change feed, on one connection pool: what
/// [`OrderProcessorBuilder::backend`](crate::OrderProcessorBuilder::backend) takes.
///
/// The queue keeps its state beside the orders and shares statements with the repository (see
/// [`PostgresRepository`] and [`PostgresQueue`]), so the two come only as this pair. For
/// orders in PostgreSQL with a queue of another kind, use [`PostgresRepository::new`] alone.
///
/// Cloning is cheap: clones share the pool, the batches and the listeners.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    pool: PostgresPool,
    repository: Arc<PostgresRepository>,
    queue: Arc<PostgresQueue>,
    changes: Arc<PostgresChangeFeed>,
    bulk: Arc<PostgresBulkActions>,
}

impl PostgresBackend {
    /// Connects to the database at `url` ([`connect`]) and brings its schema up to date
    /// ([`migrate`]).
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, StorageError> {
        let pool = connect(url, options).await?;
        migrate(&pool).await?;
        Ok(Self::new(&pool))
    }

    /// The backend on a pool whose database [`migrate`] has set up.
    pub fn new(pool: &PostgresPool) -> Self {
        let wakeups = wakeups::Wakeups::new(pool.clone());
        Self {
            repository: Arc::new(PostgresRepository::announcing(
                pool.clone(),
                wakeups.clone(),
            )),
            bulk: Arc::new(PostgresBulkActions::new(
                pool.clone(),
                Some(wakeups.clone()),
            )),
            queue: Arc::new(PostgresQueue::new(pool.clone(), wakeups)),
            changes: Arc::new(PostgresChangeFeed::new(pool)),
            pool: pool.clone(),
        }
    }

    /// The connection pool, for readiness checks ([`check_ready`]).
    pub fn pool(&self) -> &PostgresPool {
        &self.pool
    }
}

impl Backend for PostgresBackend {
    fn repository(&self) -> Arc<dyn Repository> {
        self.repository.clone()
    }

    fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    fn change_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        Some(self.changes.clone())
    }

    fn bulk_actions(&self) -> Option<Arc<dyn BulkActions>> {
        Some(self.bulk.clone())
    }
}

/// The channel a trigger on `order_engine_orders` sends each statement's changed order ids
/// on (comma-separated), and that [`PostgresChangeFeed`] `LISTEN`s to.
pub const CHANGES_CHANNEL: &str = "order_engine_changes";

/// The channel that [`PostgresQueue`] pushes `NOTIFY` on and idle workers `LISTEN` to.
pub const NOTIFY_CHANNEL: &str = "order_engine_queue";

/// How the connection pool behaves. The defaults suit a small machine (2 cores) running one
/// server next to its database.
///
/// ```
/// use std::time::Duration;
/// use order_core::postgres::PoolOptions;
///
/// let options = PoolOptions::default().max_connections(32).acquire_timeout(Duration::from_secs(1));
/// assert_eq!(options.max_connections, 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Connections the pool may open. One of them is held by the queue's `LISTEN` while
    /// workers wait (unless [`listen_url`](Self::listen_url) is set), so at least 2.
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long a request waits for a free connection (opening a new one included) before it
    /// fails as unavailable: the bound on how long an HTTP request hangs while the database is
    /// down.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection: a statement running longer is
    /// cancelled and reported as unavailable.
    pub statement_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this long.
    pub idle_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// How the URL's server shares its connections to PostgreSQL: [`PoolMode::Transaction`]
    /// for PgBouncer in `pool_mode = transaction`.
    pub pool_mode: PoolMode,
    /// A URL of the same database for the `LISTEN` connections (the queue's wake-ups, the
    /// change feed), for when the main URL cannot hold a session (PgBouncer in transaction
    /// mode): PostgreSQL itself, or a pooler in session mode. `None`: the main URL. Either way,
    /// a `NOTIFY` round trip decides whether notifications arrive, and the backend polls when
    /// they do not ([`NotificationMode`]).
    pub listen_url: Option<String>,
}

/// How the server at a pool's URL shares its connections to PostgreSQL among its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolMode {
    /// Each connection of the pool is one PostgreSQL session from open to close: PostgreSQL
    /// itself, or a pooler in session mode. Statements are prepared once per connection and
    /// cached, and `statement_timeout` is set when a connection opens.
    #[default]
    Session,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`): a connection's
    /// transactions may each run on a different PostgreSQL session, and a statement outside a
    /// transaction is a transaction of its own. Every statement then runs in a transaction of
    /// its own that sets `statement_timeout` (`SET LOCAL`) and clears the session's prepared
    /// statements first, unprepared by the driver's cache: four round trips more than a cached
    /// statement on a session connection. `LISTEN` needs [`PoolOptions::listen_url`].
    Transaction,
}

impl PoolMode {
    /// `session` or `transaction`, as PgBouncer names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            application_name: "order-engine".to_owned(),
            pool_mode: PoolMode::Session,
            listen_url: None,
        }
    }
}

impl PoolOptions {
    /// The same options with at most `connections` connections (at least 2 are opened).
    #[must_use]
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }

    /// The same options keeping `connections` connections open while idle.
    #[must_use]
    pub fn min_connections(mut self, connections: u32) -> Self {
        self.min_connections = connections;
        self
    }

    /// The same options with requests waiting up to `timeout` for a connection.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The same options with PostgreSQL's `statement_timeout` set to `timeout`.
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The same options closing idle connections after `timeout`.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The same options with `name` shown in `pg_stat_activity`.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The same options for a server at the URL that shares connections in `mode`.
    #[must_use]
    pub fn pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool_mode = mode;
        self
    }

    /// The same options with `LISTEN` connections opened on `url` (see
    /// [`listen_url`](Self::listen_url)).
    #[must_use]
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(url.into());
        self
    }
}

/// Opens a pool of connections to the database at `url`
/// (`postgres://user:password@host:port/database`).
///
/// Fails when the first connection cannot be made; later outages are survived: each call then
/// fails with an unavailable [`StorageError`] until the database answers again.
pub async fn connect(url: &str, options: &PoolOptions) -> Result<PostgresPool, StorageError> {
    let mut connect = ConnectOptions::new(url);
    connect
        .max_connections(options.max_connections.max(2))
        .min_connections(options.min_connections.min(options.max_connections))
        .acquire_timeout(options.acquire_timeout)
        .idle_timeout(options.idle_timeout)
        // A connection that sat idle may have been cut by a database restart; check it before
        // use rather than fail the request that drew it.
        .test_before_acquire_if_idle_for(Duration::from_secs(10))
        .set_application_name(options.application_name.clone())
        .sqlx_logging(false);
    let pinned = match options.pool_mode {
        // Sent as the startup packet's `options`, so it holds for the whole session and costs
        // no round trip.
        PoolMode::Session => {
            connect.statement_timeout(options.statement_timeout);
            connect.map_sqlx_postgres_pool_opts(|pool| pool.after_connect(refuse_read_only));
            None
        }
        // PgBouncer refuses a startup `options` parameter (1.18 accepts only the parameters it
        // tracks, and `ignore_startup_parameters` would drop the timeout silently), and a
        // session `SET` would hold on whichever server connection it happened to run on, for
        // every client that later shares it. Each statement's own transaction sets it with
        // `SET LOCAL` instead (see `statements`). A cached statement is prepared on one server
        // connection and executed on another: no cache.
        PoolMode::Transaction => {
            connect.map_sqlx_postgres_opts(|options| options.statement_cache_capacity(0));
            Some(options.statement_timeout)
        }
    };
    let db = Database::connect(connect).await.map_err(|err| {
        let mut err = storage_error("could not connect to PostgreSQL", err);
        if options.pool_mode == PoolMode::Session && err.message.contains("startup parameter") {
            // What PgBouncer answers the `options` that carries `statement_timeout`.
            err.message.push_str(
                " (behind PgBouncer in transaction mode, set the pool mode to transaction)",
            );
        }
        err
    })?;
    let listen = match &options.listen_url {
        Some(listen_url) => {
            let listen_options: PgConnectOptions = listen_url
                .parse()
                .map_err(|err| sqlx_storage_error("invalid LISTEN URL", err))?;
            let listen_options = listen_options
                .application_name(&options.application_name)
                .options([(
                    "statement_timeout",
                    options.statement_timeout.as_millis().to_string(),
                )]);
            // The queue's wake-ups, the change feed and the round trip each hold one at most;
            // opened when first needed, so a listen server that is down delays nothing else.
            PgPoolOptions::new()
                .max_connections(4)
                .min_connections(0)
                .acquire_timeout(options.acquire_timeout)
                .connect_lazy_with(listen_options)
        }
        None => db.get_postgres_connection_pool().clone(),
    };
    Ok(PostgresPool {
        db,
        pinned,
        listen,
        notifications: Arc::new(notifications::Notifications::new(
            options.listen_url.is_some(),
        )),
    })
}

/// Refuses a new session on a node that does not take writes: a standby, or one set
/// `default_transaction_read_only`. A failover can leave a name or address pointing at the
/// old primary, back as a standby, or at a standby not yet promoted; a connection kept there
/// would fail every write (and read rows not yet replayed) for as long as it lived. Refused,
/// it is closed, the call that wanted it fails as unavailable and is retried, and the next
/// connection is opened afresh, by then on the new primary. A session that passed cannot
/// find itself on a standby later: a primary becomes one only through a restart, which ends
/// its sessions. What an operator sets read-only with `ALTER SYSTEM` and a reload reaches the
/// sessions already open too; their writes then fail with 25006, which is retried, until they
/// are recycled.
fn refuse_read_only(
    connection: &mut sqlx::PgConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&mut *connection)
            .await?;
        if read_only == "on" {
            // The server ends the session itself. The pool then drops the connection without a
            // goodbye, and over TLS that drop waits to read the server's reply to its
            // close_notify: a server still holding the session would never send one, and the
            // pool would hang. The error this answers is the one expected.
            let _ = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                .execute(&mut *connection)
                .await;
            return Err(error::takes_no_writes());
        }
        Ok(())
    })
}

/// A key for `pg_advisory_xact_lock` that serialises migrators: "order_en" in ASCII.
const MIGRATION_LOCK: i64 = 0x6f72_6465_725f_656e;

/// Brings the schema up to date, creating it in an empty database.
///
/// Safe to run from several processes at once: they take turns under an advisory lock, in one
/// transaction each (PostgreSQL's DDL is transactional), and all but the first find nothing
/// left to do.
pub async fn migrate(pool: &PostgresPool) -> Result<(), StorageError> {
    under_migration_lock(pool, None)
        .await
        .map_err(|err| storage_error("could not migrate the database", err))
}

/// Undoes the `steps` most recently applied migrations, newest first, under the same lock as
/// [`migrate`]: the way back to an earlier version of this crate (stop every server of the
/// newer version first). Each migration's undo is tested with its upgrade.
pub async fn revert(pool: &PostgresPool, steps: u32) -> Result<(), StorageError> {
    under_migration_lock(pool, Some(steps))
        .await
        .map_err(|err| storage_error("could not revert the database's migrations", err))
}

/// Runs the migrations up (`revert: None`) or down by that many steps, in one transaction
/// under [`MIGRATION_LOCK`].
async fn under_migration_lock(
    pool: &PostgresPool,
    revert: Option<u32>,
) -> Result<(), sea_orm::DbErr> {
    let txn = pool.begin().await?;
    // Waiting for another server's migration is not a slow statement: no timeout here.
    txn.execute_unprepared("SET LOCAL statement_timeout = 0")
        .await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    match revert {
        None => Migrator::up(&txn, None).await?,
        Some(steps) => Migrator::down(&txn, Some(steps)).await?,
    }
    txn.commit().await
}

/// Checks that the database answers and that every migration has been applied: what a
/// readiness probe asks before sending traffic.
pub async fn check_ready(pool: &PostgresPool) -> Result<(), StorageError> {
    check_schema(pool).await
}

/// [`check_ready`], for the repository.
pub(crate) async fn check_schema(pool: &PostgresPool) -> Result<(), StorageError> {
    let read = |err| storage_error("could not read the applied migrations", err);
    // The read-only variant: a readiness probe must not create the migrations table. In a
    // transaction of its own, as every statement behind a transaction pooler.
    let txn = pool.begin().await.map_err(read)?;
    let pending = Migrator::get_pending_migrations_read_only(&txn)
        .await
        .map_err(read)?;
    txn.commit().await.map_err(read)?;
    if pending.is_empty() {
        Ok(())
    } else {
        Err(StorageError::unavailable(format!(
            "{} migration(s) not applied yet",
            pending.len()
        )))
    }
}

/// `duration` in whole microseconds, for `now() + $n * interval '1 microsecond'`; capped at a
/// century so that no duration a caller passes can overflow a timestamp.
fn micros(duration: Duration) -> i64 {
    const CENTURY_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;
    i64::try_from(duration.as_micros()).map_or(CENTURY_MICROS, |m| m.min(CENTURY_MICROS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_capped_microseconds() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::ZERO), 0);
        assert_eq!(micros(Duration::MAX), 100 * 365 * 24 * 3600 * 1_000_000);
    }
}

/// What only a real database shows: several pools (as several servers would have) racing over
/// one database.
#[cfg(test)]
mod shared_database {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::backend::Repository;
    use crate::handler::SimulatedStep;
    use crate::testing::{TestDatabase, sample_order};
    use crate::{OrderId, OrderProcessor, OrderStatus};

    use super::*;

    async fn second_pool(db: &TestDatabase) -> PostgresPool {
        connect(db.url(), &PoolOptions::default()).await.unwrap()
    }

    /// The column `value` of the one row `sql` returns.
    async fn value<T: sea_orm::TryGetable>(db: &DatabaseConnection, sql: &str) -> T {
        use sea_orm::ConnectionTrait;

        db.query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql,
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "value")
        .unwrap()
    }

    /// A transaction abandoned while its `BEGIN` is in flight (the caller's future dropped: a
    /// timeout, a client that hung up) leaves no transaction open on the pooled connection:
    /// the statements run on that connection afterwards commit on their own, and another
    /// session sees each of them. Both pool modes; every connection of the pool gets
    /// abandoned `BEGIN`s first.
    #[tokio::test]
    async fn an_abandoned_begin_leaves_no_transaction_open() {
        use sea_orm::ConnectionTrait;

        const ROWS: i64 = 20;
        let db = TestDatabase::create().await;
        let admin = db.connection();
        for pool_mode in [PoolMode::Session, PoolMode::Transaction] {
            admin
                .execute_unprepared(
                    "DROP TABLE IF EXISTS abandoned; CREATE TABLE abandoned (x int)",
                )
                .await
                .unwrap();
            let options = PoolOptions {
                max_connections: 2,
                pool_mode,
                ..PoolOptions::default()
            };
            let pool = connect(db.url(), &options).await.unwrap();
            let mut abandoned = 0;
            for _ in 0..200 {
                if abandoned == ROWS {
                    break;
                }
                // Polled once: an idle connection is taken and the BEGIN goes out, then the
                // caller gives up on it while the answer is on its way.
                let mut begin = Box::pin(pool.begin());
                if futures::poll!(&mut begin).is_pending() {
                    abandoned += 1;
                }
                drop(begin);
                // The pool takes its connection back in a task of its own.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(abandoned, ROWS, "{pool_mode:?}: BEGINs abandoned in flight");
            for x in 0..ROWS {
                pool.execute(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!("INSERT INTO abandoned VALUES ({x})"),
                ))
                .await
                .unwrap();
            }
            let seen: i64 = value(admin, "SELECT count(*) AS value FROM abandoned").await;
            assert_eq!(
                seen, ROWS,
                "{pool_mode:?}: rows committed and seen by another session"
            );
        }
    }

    /// A node that takes no writes gets no session: once a pool's connections were cut (the
    /// node restarted as a standby, say), each new one is closed as soon as it is opened and
    /// another tried, calls fail as unavailable at the acquire timeout, a new pool cannot
    /// open, and a call waiting meanwhile goes through, on the same pool, once the node takes
    /// writes. `default_transaction_read_only` stands in for a standby, which answers
    /// `SHOW transaction_read_only` the same way.
    #[tokio::test]
    async fn sessions_on_a_node_that_takes_no_writes_are_refused_until_it_does() {
        use sea_orm::ConnectionTrait;

        let db = TestDatabase::create().await;
        let admin = db.connection();
        let name: String = value(admin, "SELECT current_database() AS value").await;
        let options = PoolOptions {
            application_name: "refused-when-read-only".to_owned(),
            acquire_timeout: Duration::from_secs(2),
            ..PoolOptions::default()
        };
        let pool = connect(db.url(), &options).await.unwrap();
        pool.db().execute_unprepared("SELECT 1").await.unwrap();

        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = on"
            ))
            .await
            .unwrap();
        admin
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'refused-when-read-only'",
            )
            .await
            .unwrap();
        // The pool opens a session, finds the node read-only, closes it and tries again until
        // its acquire timeout: the call fails as unavailable, and so does a new pool.
        for _ in 0..2 {
            let err = pool
                .db()
                .execute_unprepared("SELECT 1")
                .await
                .map_err(|err| storage_error("a call", err))
                .expect_err("no session on a node that takes no writes");
            assert!(err.unavailable, "retryable: {err}");
        }
        let err = connect(db.url(), &options)
            .await
            .expect_err("a new pool opens no session there either");
        assert!(err.unavailable, "retryable: {err}");

        // A call made while the node is read-only goes through once it takes writes, within
        // the acquire timeout: the pool kept trying with new sessions.
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.db()
                    .execute_unprepared("CREATE TEMPORARY TABLE written (x int)")
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!call.is_finished(), "the call waits for a writable session");
        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {name} RESET default_transaction_read_only"
            ))
            .await
            .unwrap();
        call.await
            .unwrap()
            .expect("the same pool writes once the node takes writes");
    }

    /// A key whose order an operator deleted is taken over by exactly one of the requests that
    /// race for it, in both modes, on separate pools: the others name the new order. Counted
    /// in the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racers_for_a_key_whose_order_was_deleted_make_one_order() {
        use crate::idempotency::{Fingerprint, IdempotencyKey, Insertion, KeyRecord};
        use sea_orm::ConnectionTrait;

        const ROUNDS: usize = 10;
        for linked in [false, true] {
            let db = TestDatabase::create().await;
            let mut repositories = Vec::new();
            for _ in 0..crate::testing::RACERS / 2 {
                let pool = second_pool(&db).await;
                for _ in 0..2 {
                    let repository = PostgresRepository::new(&pool);
                    repositories.push(Arc::new(if linked {
                        PostgresRepository::announcing(
                            pool.clone(),
                            wakeups::Wakeups::new(pool.clone()),
                        )
                    } else {
                        repository
                    }));
                }
            }
            let order = sample_order("ann", 1);
            let record = |round: usize| KeyRecord {
                key: IdempotencyKey::new(format!("deleted-{round}")).unwrap(),
                fingerprint: Fingerprint::of(&order),
                ttl: Duration::from_secs(3600),
            };
            for round in 0..ROUNDS {
                repositories[0]
                    .insert_keyed(&order, &record(round))
                    .await
                    .unwrap();
            }
            db.connection()
                .execute_unprepared("DELETE FROM order_engine_orders")
                .await
                .unwrap();
            let rounds = crate::testing::race(
                &repositories,
                ROUNDS,
                |repository, _| async move {
                    repository.get(OrderId::new(1).unwrap()).await.unwrap();
                },
                |repository, round, _| {
                    let (order, record) = (order.clone(), record(round));
                    async move { repository.insert_keyed(&order, &record).await.unwrap() }
                },
            )
            .await;
            for (round, answers) in rounds.iter().enumerate() {
                let created: Vec<_> = answers
                    .iter()
                    .filter_map(|answer| match answer {
                        Insertion::Created(order) => Some(order.id),
                        Insertion::Existing { .. } => None,
                    })
                    .collect();
                assert_eq!(
                    created.len(),
                    1,
                    "linked {linked}, round {round}: {answers:?}"
                );
                assert!(answers.iter().all(|answer| match answer {
                    Insertion::Created(order) | Insertion::Existing { order, .. } =>
                        order.id == created[0],
                }));
            }
            let counted = db
                .connection()
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT (SELECT count(*) FROM order_engine_orders) AS orders,
                            (SELECT count(*) FROM order_engine_idempotency_keys k
                               JOIN order_engine_orders o ON o.id = k.order_id) AS keyed",
                ))
                .await
                .unwrap()
                .unwrap();
            let orders: i64 = counted.try_get("", "orders").unwrap();
            let keyed: i64 = counted.try_get("", "keyed").unwrap();
            assert_eq!(
                (orders, keyed),
                (ROUNDS as i64, ROUNDS as i64),
                "linked {linked}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_only_with_every_migration_applied_and_migrating_twice_is_harmless() {
        let db = TestDatabase::create().await;
        check_ready(db.pool()).await.unwrap();
        // Two servers starting at once: both migrate, one waits for the other.
        let other = second_pool(&db).await;
        let (a, b) = tokio::join!(migrate(db.pool()), migrate(&other));
        a.unwrap();
        b.unwrap();
        check_ready(db.pool()).await.unwrap();

        Migrator::down(db.connection(), None).await.unwrap();
        let err = check_ready(db.pool()).await.unwrap_err();
        assert!(err.message.contains("not applied"), "{err}");
        // What a processor on this database says to a readiness probe.
        let repository = PostgresRepository::new(db.pool());
        let err = repository.check_ready().await.unwrap_err();
        assert!(
            err.unavailable && err.message.contains("not applied"),
            "{err}"
        );
        migrate(db.pool()).await.unwrap();
        check_ready(db.pool()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_counters_follow_an_operator_deleting_or_truncating_orders() {
        use sea_orm::ConnectionTrait;

        let db = TestDatabase::create().await;
        let repository = PostgresRepository::new(db.pool());
        for user in ["a", "b", "c"] {
            repository.insert(&sample_order(user, 1)).await.unwrap();
        }
        let first = OrderId::new(1).unwrap();
        repository
            .transition(first, crate::backend::Transition::Cancel)
            .await
            .unwrap();
        db.connection()
            .execute_unprepared("DELETE FROM order_engine_orders WHERE user_id = 'b'")
            .await
            .unwrap();
        let metrics = repository.metrics().await.unwrap();
        assert_eq!(metrics.total_orders, 2);
        assert_eq!(
            (metrics.statuses.pending, metrics.statuses.cancelled),
            (1, 1)
        );

        db.connection()
            .execute_unprepared("TRUNCATE order_engine_orders")
            .await
            .unwrap();
        assert_eq!(
            repository.metrics().await.unwrap(),
            crate::OrderMetrics::default()
        );
    }

    /// Backends on separate pools, claiming at once: each claim starts its order, and no order
    /// is started twice; counted in the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn claimers_on_separate_pools_start_each_order_once() {
        use sea_orm::ConnectionTrait;

        const ORDERS: usize = 400;
        let db = TestDatabase::create().await;
        let mut queues = Vec::new();
        for _ in 0..crate::testing::RACERS / 2 {
            let pool = second_pool(&db).await;
            for _ in 0..2 {
                let backend = PostgresBackend::new(&pool);
                queues.push(Arc::new((backend.queue(), backend.repository())));
            }
        }
        for _ in 0..ORDERS {
            queues[0].1.insert(&sample_order("ann", 1)).await.unwrap();
        }
        let rounds = crate::testing::race(
            &queues,
            1,
            |pair, _| async move {
                pair.0.depth().await.unwrap();
            },
            |pair, _, _| async move {
                let mut mine = Vec::new();
                loop {
                    let claims = pair.0.claim(7, Duration::from_secs(60)).await.unwrap();
                    if claims.is_empty() {
                        return mine;
                    }
                    for claim in claims {
                        let started = claim.started.expect("the claim started its order");
                        assert_eq!(started.id, claim.order_id);
                        mine.push((claim.order_id, claim.token));
                    }
                }
            },
        )
        .await;
        let claims: Vec<_> = rounds.into_iter().flatten().flatten().collect();
        assert_eq!(claims.len(), ORDERS);
        let rows = db
            .connection()
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT id, status, attempts, claim_token FROM order_engine_orders",
            ))
            .await
            .unwrap();
        let mut held = HashSet::new();
        for row in rows {
            let id: i64 = row.try_get("", "id").unwrap();
            let status: String = row.try_get("", "status").unwrap();
            let attempts: i32 = row.try_get("", "attempts").unwrap();
            let token: uuid::Uuid = row.try_get("", "claim_token").unwrap();
            assert_eq!((status.as_str(), attempts), ("PROCESSING", 1), "order {id}");
            held.insert((OrderId::new(id).unwrap(), token));
        }
        let claimed: HashSet<_> = claims
            .iter()
            .map(|(id, token)| (*id, token.as_uuid()))
            .collect();
        assert_eq!(
            held, claimed,
            "each order is held by the claim that took it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_stored_on_one_pool_wakes_a_waiter_on_another_through_notify() {
        let db = TestDatabase::create().await;
        let waiting = PostgresBackend::new(db.pool()).queue();
        let storing = PostgresBackend::new(&second_pool(&db).await).repository();
        // The first wait opens the LISTEN connection; let it settle.
        waiting.wait(Duration::from_millis(300)).await;
        for round in 1..=3 {
            let waiter = {
                let waiting = Arc::clone(&waiting);
                tokio::spawn(async move {
                    let began = std::time::Instant::now();
                    waiting.wait(Duration::from_secs(30)).await;
                    began.elapsed()
                })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            storing
                .insert(&sample_order(&format!("user-{round}"), 1))
                .await
                .unwrap();
            let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the waiter woke")
                .unwrap();
            // Far below the 30 s timeout: woken by the notification, not by a poll.
            assert!(
                waited < Duration::from_secs(2),
                "round {round}: woke after {waited:?}"
            );
            assert_eq!(
                waiting
                    .claim(10, Duration::from_secs(60))
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    /// The queue is the unfinished rows: an order is in it from the statement that stores it
    /// until the one that finishes it, pushing adds nothing, and an ack writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_the_unfinished_orders() {
        let db = TestDatabase::create().await;
        let backend = PostgresBackend::new(db.pool());
        let (repository, queue) = (backend.repository(), backend.queue());
        let lease = Duration::from_secs(60);

        let order = repository.insert(&sample_order("a", 1)).await.unwrap();
        assert_eq!(queue.depth().await.unwrap().ready, 1);
        let unknown = OrderId::new(order.id.get() + 1000).unwrap();
        assert!(!queue.push(order.id).await.unwrap(), "already queued");
        assert_eq!(queue.push_many(&[order.id, unknown]).await.unwrap(), 0);
        assert_eq!(queue.depth().await.unwrap().ready, 1);

        let claim = queue.claim(10, lease).await.unwrap().remove(0);
        let started = claim.started.clone().expect("the claim started the order");
        assert_eq!(repository.get(order.id).await.unwrap(), Some(started));
        // Still unfinished: an ack cannot take it off the queue.
        assert!(matches!(
            queue.ack(&claim).await,
            Err(crate::QueueError::Storage(_))
        ));
        repository
            .transition(
                order.id,
                crate::backend::Transition::Complete {
                    claim: claim.token,
                    steps: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(queue.depth().await.unwrap(), crate::QueueDepth::default());
        // Finished by this claim: acking it is done already; another claim's ack is refused.
        queue.ack(&claim).await.unwrap();
        let other = crate::backend::Claim::new(order.id, crate::backend::ClaimToken::generate(), 1);
        assert!(matches!(
            queue.ack(&other).await,
            Err(crate::QueueError::LeaseLost(id)) if id == order.id
        ));
        assert!(queue.claim(10, lease).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_handed_back_unused_costs_its_order_no_attempt() {
        let db = TestDatabase::create().await;
        let backend = PostgresBackend::new(db.pool());
        let (repository, queue) = (backend.repository(), backend.queue());
        let lease = Duration::from_secs(60);
        let order = repository.insert(&sample_order("a", 1)).await.unwrap();

        // Shutdown began while claiming: the engine releases, then retries, the claim.
        let claim = queue.claim(10, lease).await.unwrap().remove(0);
        let released = repository
            .transition(
                order.id,
                crate::backend::Transition::Release { claim: claim.token },
            )
            .await
            .unwrap();
        assert_eq!(
            (released.status, released.attempts),
            (OrderStatus::Pending, 0)
        );
        queue.retry(&claim, Duration::ZERO).await.unwrap();

        // The next claim starts it afresh, as its first attempt.
        let again = queue.claim(10, lease).await.unwrap().remove(0);
        let started = again.started.expect("the claim started the order");
        assert_eq!(
            (started.status, started.attempts),
            (OrderStatus::Processing, 1)
        );
        // The first claim is fenced off: it can neither start nor finish the order.
        for transition in [
            crate::backend::Transition::Start {
                claim: claim.token,
                lease,
            },
            crate::backend::Transition::Complete {
                claim: claim.token,
                steps: None,
            },
        ] {
            assert!(matches!(
                repository.transition(order.id, transition).await,
                Err(crate::backend::TransitionError::Conflict { .. })
            ));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processors_on_separate_pools_share_the_work_and_start_each_order_once() {
        let db = TestDatabase::create().await;
        let mut processors = Vec::new();
        for pool in [db.pool().clone(), second_pool(&db).await] {
            processors.push(
                OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(5)))
                    .backend(&PostgresBackend::new(&pool))
                    .concurrency(4)
                    .build()
                    .unwrap(),
            );
        }
        let running: Vec<_> = processors.iter().map(OrderProcessor::start).collect();
        let repository = PostgresRepository::new(db.pool());
        let mut ids = Vec::new();
        for i in 0..200 {
            let order = sample_order(&format!("user-{i}"), 1);
            let submitted = processors[i % 2].submit(order.into_inner()).await.unwrap();
            ids.push(submitted.id);
        }
        for id in &ids {
            let done =
                tokio::time::timeout(Duration::from_secs(30), processors[0].wait_until_done(*id))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
            assert_eq!((done.status, done.attempts), (OrderStatus::Completed, 1));
        }
        let metrics = repository.metrics().await.unwrap();
        assert_eq!(metrics.statuses.completed, 200);
        assert_eq!(metrics.total_orders, 200);
        for handle in running {
            assert_eq!(handle.shutdown(Duration::from_secs(5)).await.abandoned, 0);
        }
    }

    /// The mixed pair: orders in PostgreSQL, a queue of another kind (here in memory). The
    /// engine pushes, starts, acks and sweeps as with any separate queue; orders the queue
    /// lost (a process that died with its queue) are found by the sweep and processed once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orders_in_postgres_with_a_queue_of_another_kind_are_processed_and_recovered() {
        let db = TestDatabase::create().await;
        let build = || {
            OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
                .repository(Arc::new(PostgresRepository::new(db.pool())))
                .queue(Arc::new(crate::memory::InMemoryQueue::new()))
                .sweep_interval(Duration::from_millis(200))
                .build()
                .unwrap()
        };
        // Stored and queued in a queue that is then lost, unprocessed.
        let lost = build();
        let mut ids = Vec::new();
        for i in 0..20 {
            let order = sample_order(&format!("user-{i}"), 1);
            ids.push(lost.submit(order.into_inner()).await.unwrap().id);
        }
        drop(lost);
        let processor = build();
        let running = processor.start();
        for i in 20..40 {
            let order = sample_order(&format!("user-{i}"), 1);
            ids.push(processor.submit(order.into_inner()).await.unwrap().id);
        }
        for id in ids {
            let done = tokio::time::timeout(Duration::from_secs(30), processor.wait_until_done(id))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!((done.status, done.attempts), (OrderStatus::Completed, 1));
        }
        assert_eq!(processor.metrics().await.unwrap().statuses.completed, 40);
        assert_eq!(running.shutdown(Duration::from_secs(5)).await.abandoned, 0);
    }

    fn processor_on(pool: &PostgresPool, step: Duration) -> OrderProcessor {
        OrderProcessor::builder(SimulatedStep::new(step))
            .backend(&PostgresBackend::new(pool))
            // Far longer than the test waits: what the watcher sees must come by NOTIFY.
            .poll_interval(Duration::from_secs(600))
            .build()
            .unwrap()
    }

    /// The statuses a watch stream yields until it ends, failing after 10 s.
    async fn statuses(watch: crate::OrderWatch) -> Vec<OrderStatus> {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(10), watch.map(|o| o.status).collect())
            .await
            .expect("the stream ended with a terminal status")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_on_one_pool_sees_changes_made_on_another() {
        let db = TestDatabase::create().await;
        let here = processor_on(db.pool(), Duration::from_millis(200));
        // Never started: every change its watchers see is made by `here`.
        let there = processor_on(&second_pool(&db).await, Duration::ZERO);

        let cancelled = here
            .submit(sample_order("ann", 1).into_inner())
            .await
            .unwrap();
        let watch = there.watch(cancelled.id).await.unwrap().unwrap();
        let seen = tokio::spawn(statuses(watch));
        // Give the feed a moment to LISTEN (it resyncs when it does, so this is not needed
        // for correctness, only to make the cancel arrive by NOTIFY rather than by resync).
        tokio::time::sleep(Duration::from_millis(200)).await;
        here.cancel(cancelled.id).await.unwrap();
        assert_eq!(
            seen.await.unwrap(),
            [OrderStatus::Pending, OrderStatus::Cancelled]
        );

        let processed = here
            .submit(sample_order("bob", 1).into_inner())
            .await
            .unwrap();
        let watch = there.watch(processed.id).await.unwrap().unwrap();
        let seen = tokio::spawn(statuses(watch));
        let running = here.start();
        assert_eq!(
            seen.await.unwrap(),
            [
                OrderStatus::Pending,
                OrderStatus::Processing,
                OrderStatus::Completed
            ]
        );

        // A watcher that comes after the end gets the final state, and the stream ends.
        let late = there.watch(processed.id).await.unwrap().unwrap();
        assert_eq!(statuses(late).await, [OrderStatus::Completed]);
        assert!(
            there
                .watch(OrderId::new(999).unwrap())
                .await
                .unwrap()
                .is_none()
        );
        running.shutdown(Duration::from_secs(5)).await;
    }

    /// Every listing shape is served by an index, never a scan of the table, once the table is
    /// big enough for the planner to tell (statistics gathered, as autovacuum would).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_are_served_by_an_index() {
        use sea_orm::ConnectionTrait;

        let db = TestDatabase::create().await;
        db.connection()
            .execute_unprepared(
                "INSERT INTO order_engine_orders (user_id, item_ids, total_amount, status) \
                 SELECT 'user-' || (g % 500), ARRAY['item'], 1, \
                        (ARRAY['PENDING','COMPLETED','COMPLETED','FAILED','CANCELLED'])[g % 5 + 1] \
                   FROM generate_series(1, 50000) g; \
                 ANALYZE order_engine_orders;",
            )
            .await
            .unwrap();
        let after = OrderId::new(40_000).unwrap();
        for query in [
            crate::OrderQuery::newest_first(20),
            crate::OrderQuery::newest_first(20).after(after),
            crate::OrderQuery::newest_first(20).status(OrderStatus::Failed),
            crate::OrderQuery::newest_first(20).status(OrderStatus::Completed),
            crate::OrderQuery::newest_first(20).status(OrderStatus::Processing),
            crate::OrderQuery::newest_first(20)
                .status(OrderStatus::Pending)
                .after(after),
            crate::OrderQuery::newest_first(20).user("user-7"),
            crate::OrderQuery::newest_first(20)
                .user("user-7")
                .status(OrderStatus::Completed),
            crate::OrderQuery::oldest_first(1).status(OrderStatus::Pending),
        ] {
            let (sql, values) = repository::list_statement(&query);
            let plan = db
                .connection()
                .query_all_raw(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    format!("EXPLAIN {sql}"),
                    values,
                ))
                .await
                .unwrap()
                .iter()
                .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                plan.contains("Index") && !plan.contains("Seq Scan") && !plan.contains("Sort"),
                "{query:?}:\n{plan}"
            );
        }
        // And the listing reads what the plan says.
        let repository = PostgresRepository::new(db.pool());
        let page = repository
            .list(&crate::OrderQuery::newest_first(3).user("user-7"))
            .await
            .unwrap();
        let ids: Vec<i64> = page.iter().map(|o| o.id.get()).collect();
        assert_eq!(ids, [49_507, 49_007, 48_507]);
    }
}

#[cfg(test)]
mod repository_contract {
    crate::repository_contract_tests!(async || {
        let db = crate::testing::TestDatabase::create().await;
        let pool = db.pool().clone();
        crate::testing::Shared::new(
            move || std::sync::Arc::new(super::PostgresRepository::new(&pool)),
            db,
        )
    });
}

/// The backend's repository, whose statements also write the queue's side.
#[cfg(test)]
mod backend_repository_contract {
    crate::repository_contract_tests!(async || {
        let db = crate::testing::TestDatabase::create().await;
        let pool = db.pool().clone();
        crate::testing::Shared::new(
            move || {
                std::sync::Arc::new(super::PostgresRepository::announcing(
                    pool.clone(),
                    super::wakeups::Wakeups::new(pool.clone()),
                ))
            },
            db,
        )
    });
}

#[cfg(test)]
mod backend_contract {
    crate::backend_contract_tests!(async || {
        let db = crate::testing::TestDatabase::create().await;
        let pool = db.pool().clone();
        crate::testing::Shared::new(
            move || std::sync::Arc::new(super::PostgresBackend::new(&pool)),
            db,
        )
    });
}
