//! Listing orders and watching them.

use super::*;

/// The statuses a watch stream yields until it ends, failing after `WAIT`.
async fn watched(watch: OrderWatch) -> Vec<OrderStatus> {
    use futures::StreamExt;
    tokio::time::timeout(WAIT, watch.map(|order| order.status).collect())
        .await
        .expect("the stream ended")
}

#[tokio::test]
async fn a_watch_follows_the_order_to_its_end() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(50)))
        .in_memory()
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let watch = processor.watch(order.id).await.unwrap().unwrap();
    let seen = tokio::spawn(watched(watch));
    let running = processor.start();
    assert_eq!(
        seen.await.unwrap(),
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Completed
        ]
    );
    // After the end: the final state alone.
    let late = processor.watch(order.id).await.unwrap().unwrap();
    assert_eq!(watched(late).await, [OrderStatus::Completed]);
    assert!(
        processor
            .watch(OrderId::new(999).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_watch_sees_a_retry_and_a_cancel() {
    let mut handler = MockOrderHandler::new();
    handler
        .expect_process()
        .times(1)
        .returning(|_| Err(HandlerError::transient("try again")));
    let processor = OrderProcessor::builder(handler)
        .in_memory()
        .retry_policy(RetryPolicy {
            initial_backoff: Duration::from_secs(60),
            ..quick_retries(3)
        })
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let watch = processor.watch(order.id).await.unwrap().unwrap();
    let seen = tokio::spawn(watched(watch));
    let running = processor.start();
    // Retried, and waiting out its backoff: cancel it.
    tokio::time::timeout(WAIT, async {
        while processor.get(order.id).await.unwrap().unwrap().attempts == 0
            || processor.get(order.id).await.unwrap().unwrap().status != OrderStatus::Pending
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    processor.cancel(order.id).await.unwrap();
    assert_eq!(
        seen.await.unwrap(),
        [
            OrderStatus::Pending,
            OrderStatus::Processing,
            OrderStatus::Pending,
            OrderStatus::Cancelled
        ]
    );
    running.shutdown(WAIT).await;
}

#[tokio::test]
async fn closing_watches_ends_the_streams_of_unfinished_orders() {
    use futures::StreamExt;

    let processor = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .build()
        .unwrap();
    let order = processor.submit(new_order("ann")).await.unwrap();
    let mut watch = processor.watch(order.id).await.unwrap().unwrap();
    let first = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(first.map(|order| order.status), Some(OrderStatus::Pending));
    processor.close_watches();
    let rest = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the stream ends once close_watches is called");
    assert_eq!(rest, None, "nothing after the first state");
    let after = processor.watch(order.id).await.unwrap().unwrap();
    assert_eq!(watched(after).await, [OrderStatus::Pending]);
}

#[tokio::test]
async fn list_pages_newest_first_with_a_cursor() {
    let processor = OrderProcessor::builder(SimulatedStep::default())
        .in_memory()
        .build()
        .unwrap();
    let ids = submit_many(&processor, 5).await;
    let first = processor.list(&OrderQuery::newest_first(2)).await.unwrap();
    let listed = |page: &OrderPage| page.orders.iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(listed(&first), [ids[4], ids[3]]);
    assert_eq!(first.next, Some(ids[3]));
    let second = processor
        .list(&OrderQuery::newest_first(2).after(ids[3]))
        .await
        .unwrap();
    assert_eq!(
        (listed(&second), second.next),
        (vec![ids[2], ids[1]], Some(ids[1]))
    );
    let last = processor
        .list(&OrderQuery::newest_first(2).after(ids[1]))
        .await
        .unwrap();
    assert_eq!((listed(&last), last.next), (vec![ids[0]], None));
    let exact = processor.list(&OrderQuery::newest_first(5)).await.unwrap();
    assert_eq!(
        (exact.orders.len(), exact.next),
        (5, None),
        "no empty page after"
    );
}

#[tokio::test]
async fn a_dropped_or_finished_watch_leaves_nothing_registered() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(10)))
        .in_memory()
        .build()
        .unwrap();
    let waiting = processor.submit(new_order("ann")).await.unwrap();
    let finishing = processor.submit(new_order("bob")).await.unwrap();
    let dropped = processor.watch(waiting.id).await.unwrap().unwrap();
    let followed = processor.watch(finishing.id).await.unwrap().unwrap();
    let registered = || processor.engine.watchers.registered();
    assert_eq!(registered(), (2, 2));
    drop(dropped);
    let running = processor.start();
    assert_eq!(
        watched(followed).await.last(),
        Some(&OrderStatus::Completed)
    );
    tokio::time::timeout(WAIT, async {
        while registered() != (0, 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both watchers deregistered");
    running.shutdown(WAIT).await;
}
