//! What the queue's and the change feed's `LISTEN` connections share: noticing that a quiet
//! connection has died.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgListener, PgNotification, PgPool};
use tracing::{debug, warn};

use crate::RetryPolicy;

/// The pause before reopening a `LISTEN` connection that dropped; failed attempts to open one
/// then wait as [`RetryPolicy`]'s reconnect policy says.
pub(super) const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A connection of `pool` that `LISTEN`s on `channel`, tried again with growing pauses until
/// it is in place; `None` once `gone()` says that nobody needs it any more.
pub(super) async fn open(
    pool: &PgPool,
    channel: &str,
    gone: impl Fn() -> bool,
) -> Option<PgListener> {
    let mut failures = 0;
    loop {
        match PgListener::connect_with(pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => {
                    debug!(channel, "listening");
                    return Some(listener);
                }
                Err(err) => warn!(channel, error = %err, "could not LISTEN"),
            },
            Err(err) => debug!(error = %err, "could not open a LISTEN connection"),
        }
        if gone() {
            return None;
        }
        failures += 1;
        tokio::time::sleep(RetryPolicy::RECONNECT.backoff(failures)).await;
    }
}

/// How long a `LISTEN` connection may stay silent before it is pinged: a connection to a
/// vanished host (a partition, a frozen VM) fails no read, so silence must be checked.
const LISTEN_PING_AFTER: Duration = Duration::from_secs(30);
/// How long that ping may take before the connection is given up and reopened.
const LISTEN_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The next notification; `None` once the connection has failed, dropped or stopped
/// answering pings, and should be reopened (notifications sent meanwhile are lost).
pub(super) async fn next_notification(listener: &mut PgListener) -> Option<PgNotification> {
    loop {
        let received = match tokio::time::timeout(LISTEN_PING_AFTER, listener.try_recv()).await {
            Ok(received) => received,
            Err(_) => {
                // A simple query, unprepared: on a pooler in transaction mode a prepared
                // statement would not outlive its first use.
                let ping = sea_orm::sqlx::raw_sql("SELECT 1").execute(&mut *listener);
                match tokio::time::timeout(LISTEN_PING_TIMEOUT, ping).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(err)) => warn!(error = %err, "LISTEN connection failed its ping"),
                    Err(_) => warn!("LISTEN connection did not answer its ping"),
                }
                return None;
            }
        };
        return match received {
            Ok(Some(notification)) => Some(notification),
            Ok(None) => {
                debug!("LISTEN connection lost; reconnecting");
                None
            }
            Err(err) => {
                warn!(error = %err, "LISTEN connection failed");
                None
            }
        };
    }
}
