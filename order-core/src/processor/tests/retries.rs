//! Retries, backoff, and handlers that fail, give up or panic.

use super::*;

/// Starts a processor around `handler`, submits one order and returns it once finished,
/// with the processor for a look at its metrics.
async fn process_one(
    handler: impl OrderHandler + 'static,
    retry: RetryPolicy,
) -> (Order, OrderProcessor) {
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(retry)
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = done(&processor, id).await;
    running.shutdown(WAIT).await;
    (order, processor)
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_backoff_then_succeeds() {
    let step = Arc::new(FlakyStep {
        failures: 2,
        calls: AtomicU32::new(0),
    });
    let (order, _) = process_one(ArcStep(step.clone()), quick_retries(5)).await;
    assert_eq!(order.status, OrderStatus::Completed);
    assert_eq!(order.attempts, 3);
    assert_eq!(
        order.last_error.as_deref(),
        Some("warehouse busy (attempt 2)")
    );
    assert_eq!(step.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn attempts_run_out_and_the_order_fails_with_its_last_error() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(3)
        .returning(|order| Err(HandlerError::transient(format!("down #{}", order.attempts))));
    let (order, processor) = process_one(handler, quick_retries(3)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(order.attempts, 3);
    assert_eq!(order.last_error.as_deref(), Some("down #3"));
    assert!(order.processing_end_time.is_some());
    let metrics = processor.metrics().await.unwrap();
    assert_eq!(
        (metrics.statuses.failed, metrics.statuses.completed),
        (1, 0)
    );
}

#[tokio::test]
async fn a_permanent_error_fails_the_order_at_once() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(1)
        .returning(|_| Err(HandlerError::permanent("card declined")));
    let (order, _) = process_one(handler, quick_retries(5)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(order.attempts, 1);
    assert_eq!(order.last_error.as_deref(), Some("card declined"));
}

/// Panics on every order, counting how often.
struct PanickingStep(AtomicU32);

#[async_trait]
impl OrderHandler for PanickingStep {
    async fn process(&self, _order: &Order) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("index out of bounds");
    }
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_not_a_lost_order() {
    let step = Arc::new(PanickingStep(AtomicU32::new(0)));
    let (order, _) = process_one(ArcStep(step.clone()), quick_retries(2)).await;
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(
        order.last_error.as_deref(),
        Some("handler panicked: index out of bounds")
    );
    assert_eq!(step.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_retry_wakes_an_idle_worker_without_waiting_for_the_poll() {
    let step = Arc::new(FlakyStep {
        failures: 1,
        calls: AtomicU32::new(0),
    });
    let processor = OrderProcessor::builder(ArcStep(step))
        .in_memory()
        .retry_policy(quick_retries(3))
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let order = tokio::time::timeout(Duration::from_secs(5), processor.wait_until_done(id))
        .await
        .expect("retried within seconds, not after the 60 s poll")
        .unwrap()
        .unwrap();
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 2));
    running.shutdown(WAIT).await;
}

#[test]
fn backoff_doubles_up_to_its_cap_and_jitter_stays_in_the_upper_half() {
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: false,
        ..RetryPolicy::default()
    };
    let delays: Vec<_> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    let jittered = RetryPolicy {
        jitter: true,
        ..policy
    };
    for _ in 0..100 {
        let delay = jittered.backoff(3);
        assert!(delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400));
    }
    assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(1));
}

/// An operator's retry of a FAILED order gives it a full set of attempts: those before the
/// retry do not count against the limit. Its failures are kept, oldest first.
#[tokio::test]
async fn a_retried_order_gets_a_full_set_of_attempts_and_keeps_its_failures() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(6)
        .returning(|order| match order.attempts {
            1..=5 => Err(HandlerError::transient(format!("down #{}", order.attempts))),
            _ => Ok(()),
        });
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(quick_retries(3))
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let failed = done(&processor, id).await;
    assert_eq!((failed.status, failed.attempts), (OrderStatus::Failed, 3));

    let retried = processor.retry(id).await.unwrap();
    assert_eq!(retried.status, OrderStatus::Pending);
    assert_eq!(retried.attempts, 3, "attempts keep counting");
    assert_eq!(retried.last_error.as_deref(), Some("down #3"));
    assert_eq!(retried.processing_end_time, None);
    let order = done(&processor, id).await;
    running.shutdown(WAIT).await;

    // Attempts 4 and 5 failed as the first two did, and were tried again: the third after the
    // retry succeeded.
    assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 6));
    assert_eq!(order.last_error.as_deref(), Some("down #5"));
    assert_eq!(order.failures.len(), 1);
    let failure = &order.failures[0];
    assert_eq!(
        (
            failure.step.as_deref(),
            failure.error.as_str(),
            failure.attempts
        ),
        (None, "down #3", 3)
    );
    assert_eq!(Some(failure.failed_at), failed.processing_end_time);
}

/// Only a FAILED order is retried; of many retries of one failure at once, one applies and
/// the others find it PENDING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_failed_order_is_retried_and_only_once_per_failure() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .returning(|_| Err(HandlerError::permanent("card declined")));
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(quick_retries(3))
        .build()
        .unwrap();
    let unknown = OrderId::new(999).unwrap();
    assert!(matches!(
        processor.retry(unknown).await,
        Err(RetryError::NotFound(id)) if id == unknown
    ));
    let pending = processor.submit(new_order("u")).await.unwrap().id;
    assert!(matches!(
        processor.retry(pending).await,
        Err(RetryError::NotFailed {
            status: OrderStatus::Pending,
            ..
        })
    ));

    let running = processor.start();
    assert_eq!(done(&processor, pending).await.status, OrderStatus::Failed);
    running.shutdown(WAIT).await;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let processor = processor.clone();
            tokio::spawn(async move { processor.retry(pending).await })
        })
        .collect();
    let mut retried = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => retried += 1,
            Err(RetryError::NotFailed { status, .. }) => assert_eq!(status, OrderStatus::Pending),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(retried, 1);
    let order = processor.get(pending).await.unwrap().unwrap();
    assert_eq!(
        (order.status, order.failures.len()),
        (OrderStatus::Pending, 1)
    );
}
