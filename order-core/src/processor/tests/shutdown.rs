//! Shutdown: what finishes, what is given back, and what cannot hold it up.

use super::*;

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_slow_sweep() {
    let mut repository = FaultyRepository::new(|_| Fault::Pass);
    repository.stranded_delay = Duration::from_secs(3600);
    let repository = Arc::new(repository);
    let (_, running) = start_on(
        repository.clone(),
        SimulatedStep::new(Duration::ZERO),
        Duration::from_secs(10),
    );
    tokio::time::timeout(WAIT, async {
        while repository.stranded_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first sweep is waiting on storage");
    tokio::time::timeout(
        Duration::from_secs(5),
        running.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("shutdown returned while the sweep was still waiting on storage");
}

#[tokio::test]
async fn shutdown_lets_orders_in_progress_finish() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(200)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 5).await;
    until_processing(&processor, 5).await;
    assert_eq!(running.shutdown(WAIT).await.abandoned, 0);
    for id in ids {
        let order = processor.get(id).await.unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Completed);
    }
}

#[tokio::test]
async fn shutdown_past_its_timeout_gives_unfinished_orders_back() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_secs(3600)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let id = processor.submit(new_order("u")).await.unwrap().id;
    until_processing(&processor, 1).await;
    let report = running.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.abandoned, 1);
    let order = processor.get(id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.attempts, 0, "the unfinished attempt was not counted");
    assert_eq!(order.processing_start_time, None);
    assert_eq!(order.last_error, None);
    let depth = processor.queue_depth().await.unwrap();
    assert_eq!((depth.ready, depth.claimed), (1, 0));
}
