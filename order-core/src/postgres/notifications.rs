//! Whether `NOTIFY` reaches this process's `LISTEN` connections, found out by sending one.
//!
//! `LISTEN` needs a session of its own. Through PgBouncer in transaction mode it runs on
//! whichever server connection the pooler lent for that one statement, and the notifications
//! that later arrive there are never passed on. Rather than guess from the configuration, a
//! round trip decides: listen on a channel of its own on a `LISTEN` connection, send a `NOTIFY`
//! with a payload nobody else sends through the main pool (the way other processes send
//! theirs), and wait for it. It runs when first asked for the mode, then every
//! [`ROUND_TRIP_EVERY`], so that a listen server that comes back (or goes away) is noticed.
//!
//! While notifications do not arrive, idle workers claim every [`POLL`] rather than sleep
//! until one, and the change feed tells every watcher to read its order again every [`POLL`].
//! The mode is logged when it changes and shown as the gauge
//! [`NOTIFICATIONS_MODE`](crate::telemetry::NOTIFICATIONS_MODE).

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use metrics::gauge;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DbBackend, Statement};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use super::PostgresPool;
use crate::telemetry::NOTIFICATIONS_MODE;

/// How often idle workers claim, and watchers re-read their orders, while notifications do not
/// arrive: the longest that work or a change made by another process goes unnoticed.
pub(super) const POLL: Duration = Duration::from_millis(250);
/// How often the round trip runs after the first.
const ROUND_TRIP_EVERY: Duration = Duration::from_secs(30);
/// How long a round trip waits for its notification: far longer than a notification takes
/// on a working connection (about a millisecond on loopback), short enough that a start
/// behind a pooler polls within seconds.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);
/// The round trip's own channel: its notifications wake no worker and touch no watcher.
const ROUND_TRIP_CHANNEL: &str = "order_engine_round_trip";

/// Which way other processes' news (new work, status changes) reaches this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotificationMode {
    /// `NOTIFY` arrives on the `LISTEN` connections: idle workers wake, and watchers hear of
    /// changes, within milliseconds.
    Listening,
    /// It does not (a pooler in transaction mode and no listen URL, or the listen server is
    /// down), or no round trip has succeeded yet: idle workers claim, and watchers re-read
    /// their orders, four times a second.
    Polling,
}

impl NotificationMode {
    /// `listening` or `polling`: the gauge's label and the log's field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Polling => "polling",
        }
    }
}

impl std::fmt::Display for NotificationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool's notification mode and the task that keeps it up to date; shared by the pool's
/// clones.
#[derive(Debug)]
pub(super) struct Notifications {
    mode: watch::Sender<NotificationMode>,
    /// Runs the round trips; started by the first question, stopped when the last clone of
    /// the pool is dropped.
    prober: OnceLock<AbortOnDropHandle<()>>,
    /// Whether `LISTEN` connections go to a URL of their own, for the log.
    separate: bool,
}

impl Notifications {
    pub(super) fn new(separate: bool) -> Self {
        Self {
            mode: watch::Sender::new(NotificationMode::Polling),
            prober: OnceLock::new(),
            separate,
        }
    }

    /// The mode as the last round trip found, starting the round trips on `pool` (whose
    /// [`Notifications`] this is) if no one has.
    pub(super) fn current(&self, pool: &PostgresPool) -> NotificationMode {
        self.start(pool);
        *self.mode.borrow()
    }

    /// Waits until the mode is no longer `previous`.
    pub(super) async fn changed(
        &self,
        pool: &PostgresPool,
        previous: NotificationMode,
    ) -> NotificationMode {
        self.start(pool);
        let mut mode = self.mode.subscribe();
        match mode.wait_for(|mode| *mode != previous).await {
            Ok(mode) => *mode,
            // The sender lives as long as `self`: not reached while `self` is borrowed.
            Err(_) => previous,
        }
    }

    /// Whether `LISTEN` connections go to a URL of their own.
    pub(super) fn separate(&self) -> bool {
        self.separate
    }

    fn start(&self, pool: &PostgresPool) {
        self.prober.get_or_init(|| {
            let notifications = std::sync::Arc::downgrade(&pool.notifications);
            // A pool of its own whose notifications are never started: the task must not
            // hold the `Arc` that holds its handle, or it would never be stopped.
            let pool = PostgresPool {
                db: pool.db.clone(),
                pinned: pool.pinned,
                listen: pool.listen.clone(),
                notifications: std::sync::Arc::new(Self::new(self.separate)),
            };
            AbortOnDropHandle::new(tokio::spawn(probe(pool, notifications)))
        });
    }
}

/// Runs a round trip now and every [`ROUND_TRIP_EVERY`], until the pool is closed or dropped.
async fn probe(pool: PostgresPool, notifications: Weak<Notifications>) {
    let mut first = true;
    loop {
        let outcome = if pool.may_listen() {
            round_trip(&pool).await
        } else {
            Err("no LISTEN through a pooler in transaction mode, and no listen URL".to_owned())
        };
        if pool.is_closed() {
            return;
        }
        let Some(n) = notifications.upgrade() else {
            return;
        };
        let mode = match outcome {
            Ok(()) => NotificationMode::Listening,
            Err(_) => NotificationMode::Polling,
        };
        for shown in [NotificationMode::Listening, NotificationMode::Polling] {
            gauge!(NOTIFICATIONS_MODE, "mode" => shown.as_str()).set(if shown == mode {
                1.0
            } else {
                0.0
            });
        }
        let previous = n.mode.send_replace(mode);
        if first || previous != mode {
            let listen = if n.separate {
                "listen URL"
            } else {
                "database URL"
            };
            match outcome {
                Ok(()) => info!(
                    mode = mode.as_str(),
                    listen, "notifications arrive: idle workers and watchers wake at once"
                ),
                Err(reason) => warn!(
                    mode = mode.as_str(),
                    listen,
                    reason,
                    poll_ms = POLL.as_millis(),
                    "notifications do not arrive: polling"
                ),
            }
        }
        first = false;
        drop(n);
        if !pool.may_listen() {
            // Nothing can change: the mode is settled by the configuration.
            return;
        }
        tokio::time::sleep(ROUND_TRIP_EVERY).await;
    }
}

/// Listens on [`ROUND_TRIP_CHANNEL`] on a `LISTEN` connection, sends a `NOTIFY` with a fresh
/// payload through the main pool, and waits for it; says why when it does not arrive.
async fn round_trip(pool: &PostgresPool) -> Result<(), String> {
    let mut listener = PgListener::connect_with(&pool.listen)
        .await
        .map_err(|err| format!("could not open a LISTEN connection: {err}"))?;
    listener
        .listen(ROUND_TRIP_CHANNEL)
        .await
        .map_err(|err| format!("could not LISTEN: {err}"))?;
    let payload = uuid::Uuid::new_v4().simple().to_string();
    pool.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [ROUND_TRIP_CHANNEL.into(), payload.clone().into()],
    ))
    .await
    .map_err(|err| format!("could not send NOTIFY: {err}"))?;
    let deadline = tokio::time::Instant::now() + ROUND_TRIP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, listener.try_recv()).await {
            Ok(Ok(Some(notification))) if notification.payload() == payload => return Ok(()),
            // Another process's round trip.
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("the LISTEN connection was lost".to_owned()),
            Ok(Err(err)) => return Err(format!("the LISTEN connection failed: {err}")),
            Err(_) => {
                return Err(format!(
                    "the NOTIFY did not arrive within {ROUND_TRIP_TIMEOUT:?}"
                ));
            }
        }
    }
}
