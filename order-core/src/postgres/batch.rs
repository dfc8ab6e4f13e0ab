//! Group commit: concurrent calls gathered into one statement.
//!
//! Every statement costs PostgreSQL a round trip, a parse-bind-execute and, for a write, a
//! commit that waits for the WAL to reach disk; a statement that writes 30 rows costs little
//! more than one that writes a single row. A [`Batcher`] turns the calls that arrive while
//! earlier statements are in flight into one statement: the first call of an idle batcher goes
//! out at once (no timer adds latency when there is no load), and under load each batch is
//! what gathered during the previous one. Every caller is answered only when its own batch's
//! statement has returned, so an `Ok` still means committed.

use std::fmt;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::StorageError;

/// Turns one batch of requests into one response per request, in the same order.
type Flush<Req, Resp> = Arc<dyn Fn(Vec<Req>) -> BoxFuture<'static, Vec<Resp>> + Send + Sync>;

/// A request and where its response goes.
type Call<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// How big batches get and how many may be in flight at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The most requests in one statement.
    pub(crate) max_batch: usize,
    /// The most statements in flight at once (each holds a connection). While all are busy,
    /// new calls gather into the next batch.
    pub(crate) max_in_flight: usize,
}

/// The limits of every batch the PostgreSQL backends write.
///
/// Up to 512 calls share a statement: past a few hundred rows a statement costs as much per row
/// as apart, and holds its row locks longer. One statement of each kind in flight: while it is
/// written, the next batch gathers. More in flight made smaller batches and no faster a server
/// (2 and 4 measured against 1: POST /orders 6,800/s and 6,000/s against 7,400/s).
pub(crate) const LIMITS: Limits = Limits {
    max_batch: 512,
    max_in_flight: 1,
};

/// The answer of each caller of a batch whose statement failed: the batch's error, told to each.
pub(crate) fn failed<T>(callers: usize, err: &StorageError) -> Vec<Result<T, StorageError>> {
    (0..callers)
        .map(|_| {
            Err(StorageError {
                message: err.message.clone(),
                unavailable: err.unavailable,
                source: None,
            })
        })
        .collect()
}

/// A batch whose flush was lost (it panicked): its callers' writes may or may not have landed.
pub(crate) fn lost_batch() -> StorageError {
    StorageError::other("the batch this call was written in was lost")
}

/// Gathers concurrent calls into batches, flushed by one function.
pub(crate) struct Batcher<Req, Resp> {
    limits: Limits,
    flush: Flush<Req, Resp>,
    /// One permit per statement that may be in flight, taken by each batch's flush and by a
    /// call that runs alone ([`call_or_run`](Self::call_or_run)).
    in_flight: Arc<Semaphore>,
    /// Started on the first call, inside the caller's runtime; the task ends when the batcher
    /// is dropped (its receiver then sees the channel closed).
    calls: OnceLock<mpsc::UnboundedSender<Call<Req, Resp>>>,
}

impl<Req, Resp> fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// A batcher whose batches go to `flush`, which must return one response per request, in
    /// order.
    pub(crate) fn new<F>(limits: Limits, flush: F) -> Self
    where
        F: Fn(Vec<Req>) -> BoxFuture<'static, Vec<Resp>> + Send + Sync + 'static,
    {
        let max_in_flight = limits.max_in_flight.max(1);
        Self {
            limits: Limits {
                max_batch: limits.max_batch.max(1),
                max_in_flight,
            },
            flush: Arc::new(flush),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            calls: OnceLock::new(),
        }
    }

    /// Sends `request` with the next batch and waits for its response; `None` if the batch
    /// was lost (its flush panicked, or returned too few responses).
    ///
    /// A caller that stops waiting does not take its request back: it goes out with its batch
    /// all the same, as a statement already sent would.
    pub(crate) async fn call(&self, request: Req) -> Option<Resp> {
        let calls = self.calls.get_or_init(|| self.start());
        let (reply, response) = oneshot::channel();
        calls.send((request, reply)).ok()?;
        response.await.ok()
    }

    /// `alone(request)` on the caller's own task when no statement is in flight (nothing to
    /// share a statement with, and no hop to the batching task and back); otherwise, as
    /// [`call`](Self::call), with the next batch. Either way at most `max_in_flight`
    /// statements run at once, and calls that arrive meanwhile gather into the next batch.
    pub(crate) async fn call_or_run<Fut>(
        &self,
        request: Req,
        alone: impl FnOnce(Req) -> Fut,
    ) -> Option<Resp>
    where
        Fut: Future<Output = Resp>,
    {
        // Permits go to waiters first: a batch waiting for a slot is not overtaken.
        match self.in_flight.clone().try_acquire_owned() {
            Ok(slot) => {
                let response = alone(request).await;
                drop(slot);
                Some(response)
            }
            Err(_) => self.call(request).await,
        }
    }

    fn start(&self) -> mpsc::UnboundedSender<Call<Req, Resp>> {
        // Unbounded: the callers are bounded already (requests in flight, workers), and a
        // bound here would only move their wait from one queue to another.
        let (calls, receiver) = mpsc::unbounded_channel();
        tokio::spawn(gather(
            receiver,
            self.flush.clone(),
            self.in_flight.clone(),
            self.limits.max_batch,
        ));
        calls
    }
}

/// Takes calls off the channel, a batch at a time, each batch flushed on a task of its own.
async fn gather<Req, Resp>(
    mut calls: mpsc::UnboundedReceiver<Call<Req, Resp>>,
    flush: Flush<Req, Resp>,
    in_flight: Arc<Semaphore>,
    max_batch: usize,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    while let Some(first) = calls.recv().await {
        // Wait for a free slot before gathering, so that calls arriving while every slot is
        // busy join this batch rather than queue behind it.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let flush = flush.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                batch.into_iter().unzip();
            let responses = flush(requests).await;
            drop(slot);
            for (reply, response) in replies.into_iter().zip(responses) {
                // A caller that stopped waiting needs no answer.
                let _ = reply.send(response);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    /// Every batch a test batcher flushed.
    type Flushed = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recording_batcher(limits: Limits, delay: Duration) -> (Batcher<u32, u32>, Flushed) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let batcher = Batcher::new(limits, move |requests: Vec<u32>| {
            seen.lock().unwrap().push(requests.clone());
            async move {
                tokio::time::sleep(delay).await;
                requests.into_iter().map(|r| r * 10).collect()
            }
            .boxed()
        });
        (batcher, batches)
    }

    #[tokio::test]
    async fn a_lone_call_goes_out_at_once_and_gets_its_own_answer() {
        let limits = Limits {
            max_batch: 100,
            max_in_flight: 1,
        };
        let (batcher, batches) = recording_batcher(limits, Duration::ZERO);
        assert_eq!(batcher.call(7).await, Some(70));
        assert_eq!(*batches.lock().unwrap(), vec![vec![7]]);
    }

    #[tokio::test]
    async fn calls_arriving_during_a_flush_share_the_next_statement() {
        let limits = Limits {
            max_batch: 100,
            max_in_flight: 1,
        };
        let (batcher, batches) = recording_batcher(limits, Duration::from_millis(50));
        let batcher = Arc::new(batcher);
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.call(0).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (1..=20)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(i).await })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Some(0));
        for (i, call) in (1..=20).zip(rest) {
            assert_eq!(
                call.await.unwrap(),
                Some(i * 10),
                "each caller gets its own answer"
            );
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 20);
    }

    /// With no statement in flight a call runs alone, on its caller's task, and no batch is
    /// flushed; while one is in flight, it joins the next batch.
    #[tokio::test]
    async fn a_call_runs_alone_only_when_nothing_is_in_flight() {
        let limits = Limits {
            max_batch: 100,
            max_in_flight: 1,
        };
        let (batcher, batches) = recording_batcher(limits, Duration::from_millis(100));
        let batcher = Arc::new(batcher);
        let alone = |request: u32| async move { request + 1 };
        assert_eq!(batcher.call_or_run(1, alone).await, Some(2));
        assert!(batches.lock().unwrap().is_empty(), "ran alone");

        let in_flight = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.call(5).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(batcher.call_or_run(7, alone).await, Some(70), "batched");
        assert_eq!(in_flight.await.unwrap(), Some(50));
        assert_eq!(*batches.lock().unwrap(), vec![vec![5], vec![7]]);
    }

    #[tokio::test]
    async fn batches_are_capped() {
        let limits = Limits {
            max_batch: 4,
            max_in_flight: 1,
        };
        let (batcher, batches) = recording_batcher(limits, Duration::from_millis(5));
        let batcher = Arc::new(batcher);
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(i).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_some());
        }
        let batches = batches.lock().unwrap();
        assert!(batches.iter().all(|b| b.len() <= 4), "{batches:?}");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
    }

    #[tokio::test]
    async fn a_flush_that_answers_short_fails_the_calls_it_left_out() {
        let limits = Limits {
            max_batch: 10,
            max_in_flight: 1,
        };
        let batcher: Batcher<u32, u32> =
            Batcher::new(limits, |_requests: Vec<u32>| async { Vec::new() }.boxed());
        assert_eq!(batcher.call(1).await, None);
    }
}
