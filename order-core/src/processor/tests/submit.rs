//! Submitting, cancelling and keyed submissions, and what the builder refuses.

use super::*;

#[tokio::test]
async fn submitted_orders_are_processed_once_each() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let ids = submit_many(&processor, 200).await;
    for id in ids {
        let order = done(&processor, id).await;
        assert_eq!(order.status, OrderStatus::Completed);
        assert_eq!(order.attempts, 1);
        assert_eq!(order.last_error, None);
        assert!(order.processing_end_time >= order.processing_start_time);
    }
    let metrics = processor.metrics().await.unwrap();
    assert_eq!(metrics.total_orders, 200);
    assert_eq!(metrics.statuses.completed, 200);
    assert_eq!(metrics.statuses.sum(), 200);
    assert_eq!(running.shutdown(WAIT).await.abandoned, 0);
}

#[tokio::test]
async fn invalid_orders_are_refused_and_nothing_is_stored() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let err = processor
        .submit(NewOrder {
            item_ids: vec![],
            ..new_order("u")
        })
        .await
        .unwrap_err();
    match err {
        SubmitError::Invalid(err) => assert_eq!(err.field, "itemIds"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(processor.metrics().await.unwrap().total_orders, 0);
}

#[tokio::test]
async fn a_cancelled_order_is_never_started() {
    let step = Arc::new(RecordedStep::new(Duration::ZERO));
    let processor = OrderProcessor::builder(ArcStep(step.clone()))
        .in_memory()
        .build()
        .unwrap();
    let cancelled = processor.submit(new_order("u")).await.unwrap().id;
    let kept = processor.submit(new_order("v")).await.unwrap().id;
    assert_eq!(
        processor.cancel(cancelled).await.unwrap().order().status,
        OrderStatus::Cancelled
    );
    let running = processor.start();
    assert_eq!(done(&processor, kept).await.status, OrderStatus::Completed);
    // The cancelled order's queue entry, ahead of the kept one's, was claimed too: a worker
    // has been past it once the queue is empty, and has finished with it once shut down.
    tokio::time::timeout(WAIT, async {
        while processor.queue_depth().await.unwrap() != QueueDepth::default() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both queue entries were claimed and dropped, not left to come back");
    running.shutdown(WAIT).await;
    let order = processor.get(cancelled).await.unwrap().unwrap();
    assert_eq!(
        (order.status, order.attempts, order.processing_start_time),
        (OrderStatus::Cancelled, 0, None)
    );
    assert_eq!(step.runs_of(cancelled), 0, "the handler never saw it");
    assert_eq!(step.runs_of(kept), 1);
    assert!(matches!(
        processor.cancel(kept).await,
        Err(CancelError::NotCancellable {
            status: OrderStatus::Completed,
            ..
        })
    ));
    assert!(matches!(
        processor.cancel(OrderId::new(999).unwrap()).await,
        Err(CancelError::NotFound(_))
    ));
}

#[test]
fn the_builder_refuses_settings_that_cannot_work() {
    let step = || SimulatedStep::new(Duration::ZERO);
    let refused = |result: Result<OrderProcessor, BuildError>| match result {
        Err(BuildError::InvalidSetting { setting, .. }) => setting,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("built with a bad setting"),
    };
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .concurrency(0)
                .build()
        ),
        "concurrency"
    );
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .lease(Duration::ZERO)
                .build()
        ),
        "lease"
    );
    assert_eq!(
        refused(
            OrderProcessor::builder(step())
                .in_memory()
                .retry_policy(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                })
                .build()
        ),
        "retry_policy"
    );
}

#[tokio::test]
async fn a_keyed_submission_is_processed_once_and_replays_after() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(5)))
        .in_memory()
        .build()
        .unwrap();
    let running = processor.start();
    let key = crate::IdempotencyKey::new("pay-1").unwrap();
    let keyed = |order: NewOrder| Submission::new(order).idempotency_key(key.clone());
    let first = processor
        .submit_or_replay(keyed(new_order("ann")))
        .await
        .unwrap();
    assert!(!first.replayed);
    let done = done(&processor, first.order.id).await;
    assert_eq!((done.status, done.attempts), (OrderStatus::Completed, 1));

    let again = processor
        .submit_or_replay(keyed(new_order("ann")))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.order, done, "the order as it is now");
    assert_eq!(
        again.order.as_accepted(),
        first.order,
        "and as it was accepted"
    );

    let err = processor
        .submit_or_replay(keyed(new_order("bob")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::KeyReused { order, .. } if *order == first.order.id),
        "{err}"
    );
    // An invalid order is refused before its key is looked at.
    let invalid = NewOrder {
        user_id: String::new(),
        ..new_order("ann")
    };
    assert!(matches!(
        processor.submit(keyed(invalid)).await,
        Err(SubmitError::Invalid(_))
    ));
    assert_eq!(processor.metrics().await.unwrap().total_orders, 1);
    running.shutdown(WAIT).await;
}

#[test]
fn an_idempotency_ttl_under_a_second_is_refused() {
    let err = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .idempotency_ttl(Duration::from_millis(10))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("idempotency_ttl"), "{err}");
}
