//! [`OrderProcessor::watch`](super::OrderProcessor::watch): one order's changes as a stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::Engine;
use crate::changes::Change;
use crate::error::StorageError;
use crate::order::{Order, OrderId};

/// With a change feed, how often a watcher re-reads its order anyway: a safety net for a
/// feed that missed something without knowing it.
const FEED_SAFETY_POLL: Duration = Duration::from_secs(30);
/// How many snapshots may wait for a slow consumer; the watcher waits while it is full.
const WATCH_BUFFER: usize = 8;

/// The stream of [`OrderProcessor::watch`](super::OrderProcessor::watch): the order as it is,
/// then a snapshot after each change of its status, ending after a terminal one.
///
/// Dropping it stops the watcher behind it.
#[derive(Debug)]
pub struct OrderWatch {
    snapshots: mpsc::Receiver<Order>,
    _watcher: AbortOnDropHandle<()>,
}

impl Stream for OrderWatch {
    type Item = Order;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Order>> {
        self.snapshots.poll_recv(cx)
    }
}

/// What woke the watcher.
enum Wake {
    /// This process's own snapshot of the order.
    Snapshot(Order),
    /// The order may have changed: read it.
    Reread,
    /// Nothing about this order.
    Nothing,
    /// The consumer is gone, or watches were closed.
    Stop,
}

pub(super) async fn watch(
    engine: &Arc<Engine>,
    id: OrderId,
) -> Result<Option<OrderWatch>, StorageError> {
    // Subscribe before reading, so that a change between the two is not missed.
    let local = engine.events.subscribe();
    let feed = engine.change_feed.as_ref().map(|feed| feed.subscribe());
    let Some(current) = engine.repository.get(id).await? else {
        return Ok(None);
    };
    let (sender, snapshots) = mpsc::channel(WATCH_BUFFER);
    let watcher = tokio::spawn(run(engine.clone(), current, local, feed, sender));
    Ok(Some(OrderWatch {
        snapshots,
        _watcher: AbortOnDropHandle::new(watcher),
    }))
}

async fn run(
    engine: Arc<Engine>,
    current: Order,
    mut local: broadcast::Receiver<Order>,
    mut feed: Option<broadcast::Receiver<Change>>,
    sender: mpsc::Sender<Order>,
) {
    let id = current.id;
    let poll = if feed.is_some() {
        FEED_SAFETY_POLL
    } else {
        engine.settings.poll_interval
    };
    let mut last = current.clone();
    // A finished order's one snapshot stays queued for the consumer after the sender is
    // dropped: the stream then ends.
    if sender.send(current).await.is_err() || last.status.is_terminal() {
        return;
    }
    loop {
        let wake = tokio::select! {
            () = engine.watches_closed.cancelled() => Wake::Stop,
            () = sender.closed() => Wake::Stop,
            received = local.recv() => match received {
                Ok(order) if order.id == id => Wake::Snapshot(order),
                Ok(_) => Wake::Nothing,
                Err(broadcast::error::RecvError::Lagged(_)) => Wake::Reread,
                // The engine outlives this task (it holds an `Arc` of it): not reached.
                Err(broadcast::error::RecvError::Closed) => Wake::Stop,
            },
            received = next_change(&mut feed) => match received {
                Ok(Change::Order(changed)) if changed == id => Wake::Reread,
                Ok(Change::Order(_)) => Wake::Nothing,
                Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => Wake::Reread,
                Err(broadcast::error::RecvError::Closed) => {
                    feed = None;
                    Wake::Reread
                }
            },
            () = tokio::time::sleep(poll) => Wake::Reread,
        };
        let order = match wake {
            Wake::Snapshot(order) => order,
            Wake::Reread => match engine.repository.get(id).await {
                Ok(Some(order)) => order,
                Ok(None) => return,
                // A storage hiccup: the next wake-up reads again.
                Err(err) => {
                    debug!(order_id = %id, error = %err, "could not read a watched order");
                    continue;
                }
            },
            Wake::Nothing => continue,
            Wake::Stop => return,
        };
        if is_news(&last, &order) {
            last = order.clone();
            if sender.send(order).await.is_err() || last.status.is_terminal() {
                return;
            }
        }
    }
}

/// Whether `order` is a newer status than `last`: a snapshot that arrives after a fresher
/// read, or a renewal, is not.
fn is_news(last: &Order, order: &Order) -> bool {
    order.updated_at >= last.updated_at
        && (order.status != last.status || order.attempts != last.attempts)
}

async fn next_change(
    feed: &mut Option<broadcast::Receiver<Change>>,
) -> Result<Change, broadcast::error::RecvError> {
    match feed {
        Some(feed) => feed.recv().await,
        None => std::future::pending().await,
    }
}
