//! [`ChangeFeed`] on PostgreSQL.

use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

use super::listen::{self, next_notification};
use super::notifications::{self, NotificationMode};
use super::{CHANGES_CHANNEL, PostgresPool};
use crate::changes::{Change, ChangeFeed};
use crate::order::OrderId;

/// How many reports a slow receiver may fall behind before it is told it lagged.
const BACKLOG: usize = 4096;

/// Status changes made by every process on the database: a trigger sends
/// `NOTIFY order_engine_changes` with the ids each statement changed, and this feed
/// `LISTEN`s on one `LISTEN` connection of the pool (see
/// [`PoolOptions::listen_url`](super::PoolOptions::listen_url)), opened when the first receiver
/// subscribes and reopened (with a [`Change::Resync`]) whenever it is lost. While
/// notifications do not arrive ([`NotificationMode::Polling`]), it sends a `Resync` four times
/// a second instead, for watchers to read their orders again.
///
/// Cloning is cheap: clones share the connection and the receivers; the connection is closed
/// when the last clone is dropped.
///
/// ```no_run
/// use std::sync::Arc;
/// use order_core::postgres::{self, PoolOptions, PostgresChangeFeed};
/// use order_core::OrderProcessor;
/// use order_core::handler::SimulatedStep;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let db = postgres::connect("postgres://localhost/orders", &PoolOptions::default()).await?;
/// let processor = OrderProcessor::builder(SimulatedStep::default()).in_memory()
///     // ... the PostgreSQL repository and queue ...
///     .change_feed(Arc::new(PostgresChangeFeed::new(&db)))
///     .build()?;
/// # let _ = processor;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresChangeFeed {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: PostgresPool,
    reports: broadcast::Sender<Change>,
    /// The task that holds the `LISTEN` connection; stopped when the last clone is dropped.
    listener: OnceLock<AbortOnDropHandle<()>>,
}

impl PostgresChangeFeed {
    /// A feed over the database of `pool`; it listens once something subscribes.
    pub fn new(pool: &super::PostgresPool) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool: pool.clone(),
                reports: broadcast::Sender::new(BACKLOG),
                listener: OnceLock::new(),
            }),
        }
    }
}

impl ChangeFeed for PostgresChangeFeed {
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        let receiver = self.shared.reports.subscribe();
        self.shared.listener.get_or_init(|| {
            let pool = self.shared.pool.clone();
            // Only a weak reference: dropping the last feed stops the task.
            AbortOnDropHandle::new(tokio::spawn(relay(pool, Arc::downgrade(&self.shared))))
        });
        receiver
    }
}

/// Listens, and polls while listening does not work.
async fn relay(pool: PostgresPool, shared: Weak<Shared>) {
    tokio::join!(listen(&pool, &shared), poll(&pool, &shared));
}

/// Reports a `Resync` every [`notifications::POLL`] while notifications do not arrive.
async fn poll(pool: &PostgresPool, shared: &Weak<Shared>) {
    loop {
        tokio::time::sleep(notifications::POLL).await;
        if shared.strong_count() == 0 {
            return;
        }
        if pool.notification_mode() == NotificationMode::Polling {
            report(shared, Change::Resync);
        }
    }
}

/// Holds the `LISTEN` connection, reopening it with growing pauses, and reports each
/// notification's ids; every time `LISTEN` is (re)established, reports a `Resync` for what
/// happened while nobody listened.
async fn listen(pool: &PostgresPool, shared: &Weak<Shared>) {
    if !pool.may_listen() {
        return;
    }
    loop {
        let gone = || shared.strong_count() == 0;
        let Some(mut listener) = listen::open(&pool.listen, CHANGES_CHANNEL, gone).await else {
            return;
        };
        report(shared, Change::Resync);
        while let Some(notification) = next_notification(&mut listener).await {
            for raw in notification.payload().split(',') {
                match raw.parse().ok().and_then(OrderId::new) {
                    Some(id) => report(shared, Change::Order(id)),
                    None => warn!(payload = raw, "unexpected order change payload"),
                }
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(listen::RECONNECT_PAUSE).await;
    }
}

fn report(shared: &Weak<Shared>, change: Change) {
    if let Some(shared) = shared.upgrade() {
        // No receiver is not an error: nobody watches right now.
        let _ = shared.reports.send(change);
    }
}
