//! A backend whose queue shares its repository's storage.

use super::*;

/// A queue that shares its repository's storage only comes with it, and its repository with
/// it: the builder refuses either one replaced alone, and takes both replaced.
#[test]
fn a_queue_that_shares_its_repository_comes_only_with_it() {
    use crate::backend::Backend;
    use crate::memory::InMemoryBackend;

    let step = || SimulatedStep::new(Duration::ZERO);
    let backend = InMemoryBackend::new();
    let alone = OrderProcessor::builder(step())
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(backend.queue())
        .build();
    assert!(matches!(alone, Err(BuildError::QueueWithoutItsRepository)));
    let other_repository = OrderProcessor::builder(step())
        .backend(&backend)
        .repository(Arc::new(InMemoryRepository::new()))
        .build();
    assert!(matches!(
        other_repository,
        Err(BuildError::QueueWithoutItsRepository)
    ));
    let with_its_repository = OrderProcessor::builder(step())
        .repository(backend.repository())
        .queue(backend.queue())
        .build();
    assert!(
        matches!(
            with_its_repository,
            Err(BuildError::QueueWithoutItsRepository)
        ),
        "only .backend() pairs them"
    );
    OrderProcessor::builder(step())
        .backend(&backend)
        .build()
        .unwrap();
    let other_queue = OrderProcessor::builder(step())
        .backend(&backend)
        .queue(Arc::new(InMemoryQueue::new()))
        .build();
    assert!(
        matches!(other_queue, Err(BuildError::RepositoryWithoutItsQueue)),
        "its repository would queue every order for a queue nobody claims from"
    );
    OrderProcessor::builder(step())
        .backend(&backend)
        .repository(Arc::new(InMemoryRepository::new()))
        .queue(Arc::new(InMemoryQueue::new()))
        .build()
        .unwrap();
}

/// The engine's fast path, on the in-memory backend: no push, no separate start, no ack, no
/// extend and no sweep, and every order is still processed once, retried, failed or
/// cancelled as on separate ports; the queue ends empty.
#[tokio::test]
async fn on_a_shared_backend_orders_are_processed_retried_and_cancelled() {
    use crate::memory::InMemoryBackend;

    let processor = OrderProcessor::builder(FlakyStep {
        failures: 1,
        calls: AtomicU32::new(0),
    })
    .backend(&InMemoryBackend::new())
    .retry_policy(quick_retries(3))
    .build()
    .unwrap();
    let cancelled = processor.submit(new_order("cancel-me")).await.unwrap();
    processor.cancel(cancelled.id).await.unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 50).await;
    for id in ids {
        let order = done(&processor, id).await;
        assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 2));
    }
    let failing = OrderProcessor::builder(FlakyStep {
        failures: 5,
        calls: AtomicU32::new(0),
    })
    .backend(&InMemoryBackend::new())
    .retry_policy(quick_retries(2))
    .build()
    .unwrap();
    let failing_run = failing.start();
    let failed = failing.submit(new_order("declined")).await.unwrap();
    let failed = done(&failing, failed.id).await;
    assert_eq!((failed.status, failed.attempts), (OrderStatus::Failed, 2));
    assert_eq!(
        processor.get(cancelled.id).await.unwrap().unwrap().status,
        OrderStatus::Cancelled
    );
    for (engine, run) in [(&processor, running), (&failing, failing_run)] {
        assert_eq!(run.shutdown(WAIT).await.abandoned, 0);
        assert_eq!(engine.queue_depth().await.unwrap(), QueueDepth::default());
    }
}

/// On the shared backend a renewal alone holds the queue's claim (the engine no longer
/// extends it apart): a handler that runs past three leases is not handed to another worker.
#[tokio::test]
async fn on_a_shared_backend_a_long_handler_keeps_its_lease() {
    use crate::memory::InMemoryBackend;

    const LEASE: Duration = Duration::from_millis(600);
    let backend = InMemoryBackend::new();
    let step = Arc::new(RecordedStep::new(Duration::from_millis(2000)));
    let build = || {
        OrderProcessor::builder(ArcStep(step.clone()))
            .backend(&backend)
            .lease(LEASE)
            .poll_interval(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (run_a, run_b) = (a.start(), b.start());
    let ids = submit_many(&a, 4).await;
    for &id in &ids {
        let order = done(&b, id).await;
        assert_eq!((order.status, order.attempts), (OrderStatus::Completed, 1));
        assert_eq!(step.runs_of(id), 1, "order {id} was run once");
    }
    run_a.shutdown(WAIT).await;
    run_b.shutdown(WAIT).await;
    assert_eq!(a.queue_depth().await.unwrap(), QueueDepth::default());
}
