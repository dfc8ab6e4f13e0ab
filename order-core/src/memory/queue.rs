use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::lock;
use crate::memory::deadline;
use crate::order::OrderId;
use crate::queue::{Claim, ClaimToken, Queue, QueueDepth, QueueError};

/// A work queue in this process's memory: the same leases and fencing as a durable queue,
/// gone when the process exits (the recovery sweep refills it from a durable repository).
///
/// Deadlines are measured on tokio's clock, so tests can drive them with `tokio::time::pause`.
///
/// ```
/// # #[tokio::main] async fn main() {
/// use std::time::Duration;
/// use order_core::OrderId;
/// use order_core::backend::Queue;
/// use order_core::memory::InMemoryQueue;
///
/// let queue = InMemoryQueue::new();
/// let id = OrderId::new(1).unwrap();
/// queue.push(id).await.unwrap();
/// queue.push(id).await.unwrap(); // idempotent
/// let claims = queue.claim(10, Duration::from_secs(30)).await.unwrap();
/// assert_eq!(claims.len(), 1);
/// queue.ack(&claims[0]).await.unwrap();
/// assert!(queue.claim(10, Duration::from_secs(30)).await.unwrap().is_empty());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct InMemoryQueue {
    // A std mutex, not tokio's: no critical section awaits.
    state: Mutex<State>,
    /// Wakes a waiting worker when an id becomes claimable.
    arrivals: Notify,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<OrderId, Entry>,
    /// Ids in the `Ready` state, oldest first; every ready entry is here exactly once.
    ready: VecDeque<OrderId>,
    /// The retry or lease deadline of every delayed or claimed entry, soonest first; kept exact
    /// (removed on ack), so a long lease never leaves garbage behind a fast worker.
    deadlines: BTreeSet<(Instant, OrderId)>,
    delayed: u64,
    claimed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: EntryState,
    deliveries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Ready,
    Delayed,
    Claimed { token: ClaimToken, until: Instant },
}

impl InMemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `id` off the queue, whatever its state: for a backend whose order left the
    /// queue's reach (cancelled). A ready entry's place in line is skipped when its turn comes.
    pub(crate) fn forget(&self, id: OrderId) {
        let mut state = lock(&self.state);
        match state.entries.remove(&id).map(|entry| entry.state) {
            Some(EntryState::Delayed) => state.delayed -= 1,
            Some(EntryState::Claimed { until, .. }) => {
                state.deadlines.remove(&(until, id));
                state.claimed -= 1;
            }
            Some(EntryState::Ready) | None => {}
        }
    }
}

impl State {
    /// Moves every entry whose retry delay or lease has run out back to ready. Only `claim`
    /// calls this: a lapsed claim stays its holder's, able to ack, until it is handed out again.
    fn release_due(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            match entry.state {
                EntryState::Delayed => self.delayed -= 1,
                EntryState::Claimed { .. } => self.claimed -= 1,
                EntryState::Ready => continue,
            }
            entry.state = EntryState::Ready;
            self.ready.push_back(id);
        }
    }

    /// Takes `claim`'s lease off the deadlines, if the claim still holds its entry.
    ///
    /// A lease that ran out but whose entry nobody has claimed again still holds: the work
    /// was not handed to anyone else, so finishing it late is fine.
    fn release_claim(&mut self, claim: &Claim) -> Result<(), QueueError> {
        match self.entries.get(&claim.order_id).map(|entry| entry.state) {
            Some(EntryState::Claimed { token, until }) if token == claim.token => {
                self.deadlines.remove(&(until, claim.order_id));
                self.claimed -= 1;
                Ok(())
            }
            _ => Err(QueueError::LeaseLost(claim.order_id)),
        }
    }

    fn set_state(&mut self, id: OrderId, state: EntryState) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = state;
        }
    }
}

#[async_trait]
impl Queue for InMemoryQueue {
    async fn push(&self, id: OrderId) -> Result<bool, QueueError> {
        {
            let mut state = lock(&self.state);
            if state.entries.contains_key(&id) {
                return Ok(false);
            }
            state.entries.insert(
                id,
                Entry {
                    state: EntryState::Ready,
                    deliveries: 0,
                },
            );
            state.ready.push_back(id);
        }
        self.arrivals.notify_one();
        Ok(true)
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, QueueError> {
        let now = Instant::now();
        let until = deadline(now, lease);
        let mut state = lock(&self.state);
        state.release_due(now);
        let mut claims = Vec::with_capacity(max.min(state.ready.len()));
        while claims.len() < max {
            let Some(id) = state.ready.pop_front() else {
                break;
            };
            // Forgotten since it was queued (and maybe queued again, with a place of its own).
            let Some(entry) = state.entries.get_mut(&id) else {
                continue;
            };
            if entry.state != EntryState::Ready {
                continue;
            }
            let token = ClaimToken::generate();
            entry.state = EntryState::Claimed { token, until };
            entry.deliveries = entry.deliveries.saturating_add(1);
            claims.push(Claim::new(id, token, entry.deliveries));
            state.deadlines.insert((until, id));
        }
        state.claimed += claims.len() as u64;
        Ok(claims)
    }

    async fn extend(&self, claim: &Claim, lease: Duration) -> Result<(), QueueError> {
        let until = deadline(Instant::now(), lease);
        let mut state = lock(&self.state);
        state.release_claim(claim)?;
        state.set_state(
            claim.order_id,
            EntryState::Claimed {
                token: claim.token,
                until,
            },
        );
        state.deadlines.insert((until, claim.order_id));
        state.claimed += 1;
        Ok(())
    }

    async fn ack(&self, claim: &Claim) -> Result<(), QueueError> {
        let mut state = lock(&self.state);
        state.release_claim(claim)?;
        state.entries.remove(&claim.order_id);
        Ok(())
    }

    async fn retry(&self, claim: &Claim, delay: Duration) -> Result<(), QueueError> {
        let until = deadline(Instant::now(), delay);
        {
            let mut state = lock(&self.state);
            state.release_claim(claim)?;
            if delay.is_zero() {
                state.set_state(claim.order_id, EntryState::Ready);
                state.ready.push_back(claim.order_id);
            } else {
                state.set_state(claim.order_id, EntryState::Delayed);
                state.deadlines.insert((until, claim.order_id));
                state.delayed += 1;
            }
        }
        // Also for a delayed retry: a waiting worker may be asleep until a later deadline, and
        // must look again to see this sooner one.
        self.arrivals.notify_one();
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        let now = Instant::now();
        let mut wake_at = deadline(now, timeout);
        {
            let state = lock(&self.state);
            if !state.ready.is_empty() {
                return;
            }
            if let Some(&(next, _)) = state.deadlines.first() {
                wake_at = wake_at.min(next);
            }
        }
        if wake_at <= now {
            return;
        }
        // `notify_one` keeps a permit when nobody is waiting yet, so a push that lands between
        // a caller's empty claim and this wait still wakes it.
        let _ = tokio::time::timeout_at(wake_at, self.arrivals.notified()).await;
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        // Entries whose delay or lease has run out count as ready, as the next claim will
        // treat them; they stay as they are until then, so that a lapsed holder may still
        // settle its claim.
        let now = Instant::now();
        let state = lock(&self.state);
        // Not `ready.len()`: a forgotten entry keeps its place in line until its turn.
        let held = state.entries.len() as u64;
        let mut depth = QueueDepth {
            ready: held - state.delayed - state.claimed,
            delayed: state.delayed,
            claimed: state.claimed,
        };
        for (due, id) in &state.deadlines {
            if *due > now {
                break;
            }
            match state.entries.get(id).map(|entry| entry.state) {
                Some(EntryState::Delayed) => depth.delayed = depth.delayed.saturating_sub(1),
                Some(EntryState::Claimed { .. }) => depth.claimed = depth.claimed.saturating_sub(1),
                Some(EntryState::Ready) | None => continue,
            }
            depth.ready += 1;
        }
        Ok(depth)
    }
}
