//! [`OrderProcessor::watch`](super::OrderProcessor::watch): one order's changes as a stream.
//!
//! Watchers register by order id, so a change wakes only the watchers of its order: a
//! thousand open streams cost nothing while their orders sit still, however busy the engine.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::Engine;
use crate::changes::{Change, ChangeFeed};
use crate::error::StorageError;
use crate::lock;
use crate::order::{Order, OrderId};

/// With a change feed, how often a watcher re-reads its order anyway: a safety net for a
/// feed that missed something without knowing it.
const FEED_SAFETY_POLL: Duration = Duration::from_secs(30);
/// How many snapshots may wait for a slow consumer; the watcher waits while it is full.
const WATCH_BUFFER: usize = 8;
/// How many of this process's snapshots a watcher keeps between two looks: enough for every
/// status an order passes through in a burst of retries.
const SNAPSHOT_BACKLOG: usize = 16;

/// The stream of [`OrderProcessor::watch`](super::OrderProcessor::watch): the order as it is,
/// then a snapshot after each change of its status or steps, ending after a terminal one.
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

/// Every open watch, by order id, and the task that hands the change feed's reports to them.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    /// How many are registered, so that an engine nobody watches skips the lock.
    count: AtomicUsize,
    // A std mutex: held for a map lookup and a few notifications, never across an await.
    by_order: Mutex<HashMap<OrderId, Vec<Arc<Slot>>>>,
    /// Relays the change feed to `by_order`; started by the first watch.
    relay: OnceLock<AbortOnDropHandle<()>>,
    /// Ends every watch: a server stops them before it drains its connections.
    pub(super) closed: tokio_util::sync::CancellationToken,
}

/// What one watcher has been told since it last looked.
#[derive(Debug, Default)]
struct Slot {
    /// This process's snapshots of the order since the watcher last looked, oldest first; at
    /// most [`SNAPSHOT_BACKLOG`], the oldest dropped past that.
    snapshots: Mutex<VecDeque<Order>>,
    /// The order may have changed elsewhere: read it.
    reread: AtomicBool,
    /// Signalled after either is set; keeps a permit, so a change while the watcher is busy
    /// is not missed.
    wake: Notify,
}

impl Watchers {
    /// Hands this process's snapshot of an order to its watchers, if it has any.
    pub(super) fn publish(&self, order: &Order) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        for slot in self.slots_of(order.id) {
            let mut snapshots = lock(&slot.snapshots);
            if snapshots.len() == SNAPSHOT_BACKLOG {
                snapshots.pop_front();
            }
            snapshots.push_back(order.clone());
            drop(snapshots);
            slot.wake.notify_one();
        }
    }

    /// Tells the order's watchers (or, with `None`, every watcher) to read it again.
    fn reread(&self, id: Option<OrderId>) {
        let slots = match id {
            Some(id) => self.slots_of(id),
            None => lock(&self.by_order).values().flatten().cloned().collect(),
        };
        for slot in slots {
            slot.reread.store(true, Ordering::Release);
            slot.wake.notify_one();
        }
    }

    /// How many watchers are registered, and for how many orders.
    #[cfg(test)]
    pub(super) fn registered(&self) -> (usize, usize) {
        (
            self.count.load(Ordering::Relaxed),
            lock(&self.by_order).len(),
        )
    }

    fn slots_of(&self, id: OrderId) -> Vec<Arc<Slot>> {
        lock(&self.by_order).get(&id).cloned().unwrap_or_default()
    }

    fn register(self: &Arc<Self>, id: OrderId) -> Registration {
        let slot = Arc::new(Slot::default());
        lock(&self.by_order)
            .entry(id)
            .or_default()
            .push(slot.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        Registration {
            watchers: self.clone(),
            id,
            slot,
        }
    }

    /// Starts relaying `feed`'s reports, once per engine.
    fn relay_from(self: &Arc<Self>, feed: &Arc<dyn ChangeFeed>) {
        self.relay.get_or_init(|| {
            let reports = feed.subscribe();
            // Only a weak reference: the engine's end stops the task.
            let watchers = Arc::downgrade(self);
            AbortOnDropHandle::new(tokio::spawn(relay(reports, watchers)))
        });
    }
}

async fn relay(mut reports: broadcast::Receiver<Change>, watchers: std::sync::Weak<Watchers>) {
    loop {
        let report = reports.recv().await;
        let Some(watchers) = watchers.upgrade() else {
            return;
        };
        match report {
            Ok(Change::Order(id)) => watchers.reread(Some(id)),
            Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                watchers.reread(None);
            }
            Err(broadcast::error::RecvError::Closed) => {
                watchers.reread(None);
                return;
            }
        }
    }
}

/// A watcher's place in [`Watchers`], given up when the watcher ends.
struct Registration {
    watchers: Arc<Watchers>,
    id: OrderId,
    slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_order = lock(&self.watchers.by_order);
        if let Some(slots) = by_order.get_mut(&self.id) {
            slots.retain(|slot| !Arc::ptr_eq(slot, &self.slot));
            if slots.is_empty() {
                by_order.remove(&self.id);
            }
        }
        self.watchers.count.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn watch(
    engine: &Arc<Engine>,
    id: OrderId,
) -> Result<Option<OrderWatch>, StorageError> {
    if let Some(feed) = &engine.change_feed {
        engine.watchers.relay_from(feed);
    }
    // Register before reading, so that a change between the two is not missed.
    let registration = engine.watchers.register(id);
    let Some(current) = engine.read(id).await? else {
        return Ok(None);
    };
    let (sender, snapshots) = mpsc::channel(WATCH_BUFFER);
    let watcher = tokio::spawn(run(engine.clone(), current, registration, sender));
    Ok(Some(OrderWatch {
        snapshots,
        _watcher: AbortOnDropHandle::new(watcher),
    }))
}

async fn run(
    engine: Arc<Engine>,
    current: Order,
    registration: Registration,
    sender: mpsc::Sender<Order>,
) {
    let id = current.id;
    let slot = &registration.slot;
    let poll = if engine.change_feed.is_some() {
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
        let polled = tokio::select! {
            () = engine.watchers.closed.cancelled() => return,
            () = sender.closed() => return,
            () = slot.wake.notified() => false,
            () = tokio::time::sleep(poll) => true,
        };
        let mut candidates: Vec<Order> = lock(&slot.snapshots).drain(..).collect();
        let reread = slot.reread.swap(false, Ordering::AcqRel) || polled;
        if reread {
            match engine.read(id).await {
                Ok(Some(order)) => candidates.push(order),
                Ok(None) => return,
                // A storage hiccup: the next wake-up reads again.
                Err(err) => debug!(order_id = %id, error = %err, "could not read a watched order"),
            }
        }
        for order in candidates {
            if is_news(&last, &order) {
                last = order.clone();
                if sender.send(order).await.is_err() || last.status.is_terminal() {
                    return;
                }
            }
        }
    }
}

/// Whether `order` is news after `last`: a newer status, attempt, step or cancel request. A
/// snapshot that arrives after a fresher read, or a renewal, is not.
fn is_news(last: &Order, order: &Order) -> bool {
    order.updated_at >= last.updated_at
        && (order.status != last.status
            || order.attempts != last.attempts
            || order.cancel_requested_at != last.cancel_requested_at
            || order.steps != last.steps)
}
