//! Waking idle workers when work arrives: at once in this process, and in the others through
//! `NOTIFY order_engine_queue`, which each process's [`Wakeups`] `LISTEN`s to.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DbBackend, Statement};
use tokio::sync::{Notify, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::listen::{self, next_notification};
use super::notifications::{self, NotificationMode};
use super::{NOTIFY_CHANNEL, PostgresPool};

/// One process's side of the wake-ups, shared by the backend's repository (an insert is new
/// work) and its queue (a retry, and the workers' waits).
///
/// A `NOTIFY` takes a database-wide lock through its commit, so one per insert would serialise
/// every insert's commit: a background task turns any number of announcements into one
/// `NOTIFY` at a time.
#[derive(Debug)]
pub(super) struct Wakeups {
    db: PostgresPool,
    /// Signalled for each notification (and for this process's own announcements, without
    /// waiting for the round trip). `notify_one` keeps a permit when nobody waits, so work that
    /// arrives between a worker's empty claim and its wait is not missed.
    notify: Notify,
    /// The task that holds the `LISTEN` connection; stopped when the last handle is dropped.
    listener: OnceLock<AbortOnDropHandle<()>>,
    /// Whether `LISTEN` is in place.
    listening: watch::Sender<bool>,
    /// The payload of this process's own notifications, unique to it, so that its listener
    /// ignores their echo.
    sender: String,
    /// Signalled for each announcement; the announcer task sends one `NOTIFY` at a time.
    announce: Notify,
    /// The task that sends `NOTIFY`; stopped when the last handle is dropped.
    announcer: OnceLock<AbortOnDropHandle<()>>,
}

impl Wakeups {
    pub(super) fn new(db: PostgresPool) -> Arc<Self> {
        Arc::new(Self {
            db,
            notify: Notify::new(),
            listener: OnceLock::new(),
            listening: watch::Sender::new(false),
            sender: uuid::Uuid::new_v4().simple().to_string(),
            announce: Notify::new(),
            announcer: OnceLock::new(),
        })
    }

    /// Work arrived: wakes this process's waiters now and other processes' shortly.
    pub(super) fn announce(self: &Arc<Self>) {
        self.notify.notify_one();
        self.announcer.get_or_init(|| self.start_announcer());
        self.announce.notify_one();
    }

    /// Waits until work may have arrived, or `timeout` has passed; while other processes'
    /// notifications do not arrive, no longer than [`notifications::POLL`], for the caller to
    /// claim what they stored.
    pub(super) async fn wait(self: &Arc<Self>, timeout: Duration) {
        let timeout = match self.db.notification_mode() {
            NotificationMode::Listening => timeout,
            NotificationMode::Polling => timeout.min(notifications::POLL),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Started here rather than at first use, so a process that only takes orders in holds
        // no extra connection. Without one, `listening` stays false: the wait ends at the
        // poll.
        if self.db.may_listen() {
            self.listener.get_or_init(|| self.start_listener());
        }
        let mut listening = self.listening.subscribe();
        if !*listening.borrow_and_update() {
            // Until LISTEN is in place, other processes' notifications are lost: hold the
            // caller until it is, unless a local announcement or the timeout comes first.
            // LISTEN in place: return, so that the caller claims once more and finds what
            // arrived before it (a spurious wake-up, once).
            tokio::select! {
                _ = listening.wait_for(|listening| *listening) => return,
                () = self.notify.notified() => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.notify.notified()).await;
    }

    fn start_announcer(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let db = self.db.clone();
        let sender = self.sender.clone();
        let wakeups = Arc::downgrade(self);
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let Some(w) = wakeups.upgrade() else { return };
                // Holding the Arc while waiting would keep it alive forever; a weak reference
                // and a short wait let the task end soon after the last handle does.
                let signalled =
                    tokio::time::timeout(Duration::from_secs(1), w.announce.notified()).await;
                drop(w);
                if signalled.is_err() {
                    continue;
                }
                let sent = db
                    .execute(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT pg_notify($1, $2)",
                        [NOTIFY_CHANNEL.into(), sender.clone().into()],
                    ))
                    .await;
                if let Err(err) = sent {
                    if db.is_closed() {
                        // Closed by its owner: nothing will be sent on it again.
                        return;
                    }
                    // Likely a connection cut by a restart: try again shortly rather than
                    // leave other processes to find the work at their next poll.
                    debug!(error = %err, "could not send NOTIFY; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(w) = wakeups.upgrade() {
                        w.announce.notify_one();
                    }
                }
            }
        }))
    }

    fn start_listener(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let pool = self.db.listen.clone();
        // The task holds only a weak reference: dropping the last handle stops it.
        let wakeups = Arc::downgrade(self);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut reconnected = false;
            loop {
                let gone = || wakeups.strong_count() == 0;
                let Some(mut listener) = listen::open(&pool, NOTIFY_CHANNEL, gone).await else {
                    return;
                };
                let Some(w) = wakeups.upgrade() else { return };
                w.listening.send_replace(true);
                // After a reconnect, work may have arrived while nobody listened. (The first
                // time, `wait` returns as soon as LISTEN is in place, for its caller to claim
                // again.)
                if reconnected {
                    w.notify.notify_one();
                }
                drop(w);
                reconnected = true;
                relay(&mut listener, &wakeups).await;
                let Some(w) = wakeups.upgrade() else { return };
                w.listening.send_replace(false);
                drop(w);
                tokio::time::sleep(listen::RECONNECT_PAUSE).await;
            }
        }))
    }
}

/// Wakes a waiter for each notification until the connection fails or stops answering, and
/// once more then: work may arrive while nobody listens.
async fn relay(listener: &mut PgListener, wakeups: &Weak<Wakeups>) {
    while let Some(notification) = next_notification(listener).await {
        let Some(w) = wakeups.upgrade() else { return };
        // This process's own announcements woke its waiters already, without the round trip.
        if notification.payload() != w.sender {
            w.notify.notify_one();
        }
    }
    if let Some(w) = wakeups.upgrade() {
        w.notify.notify_one();
    }
}
