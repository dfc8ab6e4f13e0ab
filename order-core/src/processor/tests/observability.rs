//! Events and metrics.

use super::*;

#[tokio::test]
async fn events_follow_an_order_through_its_life() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let mut events = processor.subscribe();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    let mut seen = Vec::new();
    while seen.last() != Some(&OrderStatus::Completed) {
        let order = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(order.id, id);
        seen.push(order.status);
    }
    assert_eq!(
        seen,
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Completed
        ]
    );
    running.shutdown(WAIT).await;
}

/// Succeeds, fails twice then succeeds, or fails for good, by the order's user id.
struct StepByUser;

#[async_trait]
impl OrderHandler for StepByUser {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        match order.user_id.as_str() {
            "flaky" if order.attempts <= 2 => Err(HandlerError::transient("warehouse busy")),
            "declined" => Err(HandlerError::permanent("card declined")),
            _ => Ok(()),
        }
    }
}

/// The engine's counters and histograms, read from a recorder of this test's own (the global
/// one would count the other tests' orders too). A current-thread runtime keeps every task on
/// the thread the local recorder is set on.
#[test]
fn the_engine_counts_what_it_does() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // One order stored but never queued, as a crash between the two leaves it: the
            // sweep re-queues it.
            let repository = Arc::new(InMemoryRepository::new());
            let stranded = repository.insert(&sample_order("ok", 1)).await.unwrap().id;
            let processor = OrderProcessor::builder(StepByUser)
                .repository(repository)
                .queue(Arc::new(InMemoryQueue::new()))
                .retry_policy(quick_retries(5))
                .build()
                .unwrap();
            let mut ids = vec![stranded];
            for user in ["ok", "flaky", "declined", "cancelled"] {
                ids.push(processor.submit(new_order(user)).await.unwrap().id);
            }
            processor.cancel(ids[4]).await.unwrap();
            let running = processor.start();
            for &id in &ids {
                done(&processor, id).await;
            }
            running.shutdown(WAIT).await;
        });
    });

    let mut counters = std::collections::HashMap::new();
    let mut histograms = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                assert!(samples.iter().all(|s| s.into_inner() >= 0.0), "{name}");
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(
        counter(telemetry::ORDERS_CREATED),
        4,
        "submitted, not inserted"
    );
    assert_eq!(
        counter(telemetry::ORDERS_COMPLETED),
        3,
        "stranded, ok, flaky"
    );
    assert_eq!(counter(telemetry::RETRIES), 2, "flaky's first two attempts");
    assert_eq!(counter(telemetry::ORDERS_FAILED), 1, "declined");
    assert_eq!(counter(telemetry::ORDERS_CANCELLED), 1);
    assert_eq!(counter(telemetry::SWEEP_REQUEUED), 1, "the stranded order");
    assert_eq!(counter(telemetry::LEASES_LOST), 0);
    // Attempts: stranded 1, ok 1, flaky 3, declined 1; first attempts: 4.
    assert_eq!(histograms.get(telemetry::PROCESSING_DURATION), Some(&6));
    assert_eq!(histograms.get(telemetry::QUEUE_WAIT), Some(&4));
}
