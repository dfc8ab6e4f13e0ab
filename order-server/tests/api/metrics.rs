use std::time::Duration;

use axum::http::StatusCode;
use order_core::OrderProcessor;
use order_core::handler::SimulatedStep;
use serde_json::json;

use crate::helpers::{VALID_ORDER, get, idle_app, post_json};

#[tokio::test]
async fn metrics_start_at_zero_with_the_seed_keys() {
    let (app, _) = idle_app();
    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(
        metrics.body,
        json!({
            "totalOrders": 0,
            "processedCount": 0,
            "avgProcessingTime": 0.0,
            "statuses": {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0},
            "queue": {"ready": 0, "delayed": 0, "claimed": 0},
        })
    );
}

#[tokio::test]
async fn metrics_agree_with_the_orders() {
    crate::helpers::init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(30)))
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &crate::helpers::serve_options());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let created = post_json(&app, "/orders", VALID_ORDER).await;
        ids.push(created.body["order"]["id"].as_i64().unwrap());
    }
    let pending = get(&app, "/metrics").await.body;
    assert_eq!(pending["totalOrders"], 5);
    assert_eq!(pending["statuses"]["pending"], 5);
    assert_eq!(pending["queue"]["ready"], 5);

    let running = processor.start();
    for id in &ids {
        let id = order_core::OrderId::new(*id).unwrap();
        tokio::time::timeout(Duration::from_secs(10), processor.wait_until_done(id))
            .await
            .unwrap()
            .unwrap();
    }
    let done = get(&app, "/metrics").await.body;
    assert_eq!(done["totalOrders"], 5);
    assert_eq!(done["processedCount"], 5);
    assert_eq!(done["statuses"]["completed"], 5);
    assert_eq!(done["statuses"]["pending"], 0);
    let sum: i64 = done["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(sum, 5);
    let avg = done["avgProcessingTime"].as_f64().unwrap();
    assert!((0.03..1.0).contains(&avg), "avg processing time {avg}");

    // The average is the mean of what each order shows.
    let mut total = 0.0;
    for id in &ids {
        let order = get(&app, &format!("/orders/{id}")).await.body["order"].clone();
        let time =
            |key: &str| chrono::DateTime::parse_from_rfc3339(order[key].as_str().unwrap()).unwrap();
        let took = time("processingEndTime") - time("processingStartTime");
        total += took.num_microseconds().unwrap() as f64 / 1e6;
    }
    assert!(
        (total / 5.0 - avg).abs() < 1e-3,
        "mean {} vs avg {avg}",
        total / 5.0
    );
    running.shutdown(Duration::from_secs(5)).await;
}
