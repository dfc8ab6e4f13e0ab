//! Retrying a FAILED order over HTTP: `POST /orders/{id}/retry` puts it back to PENDING with
//! its failure kept, once per failure; an order in steps runs again what its failure undid.

use std::time::Duration;

use axum::http::StatusCode;
use order_core::step::{Step, StepContext, StepOutput};
use order_core::{HandlerError, Order, OrderHandler, OrderProcessor, Pipeline};
use serde_json::{Value, json};

use crate::helpers::{VALID_ORDER, get, init_logs, post_json, serve_options};

/// Reads the order until its status is `status`.
async fn until_status(app: &axum::Router, id: i64, status: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let order = get(app, &format!("/orders/{id}")).await.body["order"].clone();
            if order["status"] == status {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("order {id} never became {status}"))
}

/// Declines each order's first attempt for good, then accepts.
struct DeclinesFirst;

#[async_trait::async_trait]
impl OrderHandler for DeclinesFirst {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        match order.attempts {
            1 => Err(HandlerError::permanent("card declined")),
            _ => Ok(()),
        }
    }
}

/// A server whose handler declines each order's first attempt for good.
fn declines_first_attempts() -> (axum::Router, OrderProcessor) {
    init_logs();
    let processor = OrderProcessor::builder(DeclinesFirst)
        .in_memory()
        .build()
        .unwrap();
    (
        order_server::app(processor.clone(), &serve_options()),
        processor,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_is_retried_and_keeps_its_failure() {
    let (app, processor) = declines_first_attempts();
    let running = processor.start();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created.body["order"]["id"].as_i64().unwrap();
    assert_eq!(created.body["order"]["failures"], json!([]));
    let failed = until_status(&app, id, "FAILED").await;
    assert_eq!(failed["lastError"], "card declined");

    let retried = post_json(&app, &format!("/orders/{id}/retry"), "").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let order = &retried.body["order"];
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["attempts"], 1, "attempts keep counting");
    assert_eq!(order["processingEndTime"], json!(null));
    assert_eq!(
        order["failures"],
        json!([{
            "failedAt": failed["processingEndTime"],
            "step": null,
            "error": "card declined",
            "attempts": 1,
        }])
    );

    let done = until_status(&app, id, "COMPLETED").await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(
        done["failures"], order["failures"],
        "kept once it completed"
    );

    // Only a FAILED order: a second retry is a conflict naming the status, as is any other.
    let again = post_json(&app, &format!("/orders/{id}/retry"), "").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.error(),
        format!("order {id} is COMPLETED; only a FAILED order can be retried")
    );
    let unknown = post_json(&app, "/orders/987654/retry", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error(), "order 987654 not found");
    let bad = post_json(&app, "/orders/abc/retry", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("positive integer"), "{}", bad.error());
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_failure_make_one() {
    let (app, processor) = declines_first_attempts();
    let running = processor.start();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created.body["order"]["id"].as_i64().unwrap();
    until_status(&app, id, "FAILED").await;
    // Stop the workers, so that the retried order stays PENDING for the conflicts to name.
    running.shutdown(Duration::from_secs(5)).await;

    let uri = format!("/orders/{id}/retry");
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let (app, uri) = (app.clone(), uri.clone());
            tokio::spawn(async move { post_json(&app, &uri, "").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for answer in answers {
        let reply = answer.await.unwrap();
        if reply.status == StatusCode::CONFLICT {
            assert!(reply.error().contains("is PENDING"), "{}", reply.error());
        }
        statuses.push(reply.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT)
    );
    let order = get(&app, &format!("/orders/{id}")).await.body["order"].clone();
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["failures"].as_array().unwrap().len(), 1);
}

/// reserve and charge (compensable), then ship, which refuses the first run of each order.
fn checkout() -> Pipeline {
    let ok = |_cx: StepContext| async { Ok(StepOutput::none()) };
    let undo = |_cx: StepContext, _out: StepOutput| async { Ok(()) };
    Pipeline::new()
        .then(Step::new("reserve", ok).compensate(undo))
        .then(Step::new("charge", ok).compensate(undo))
        .then(Step::new("ship", |cx: StepContext| async move {
            if cx.retry() == 0 {
                Err(HandlerError::permanent("no courier"))
            } else {
                Ok(StepOutput::none())
            }
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_order_in_steps_runs_again_what_its_failure_undid() {
    init_logs();
    let processor = OrderProcessor::pipeline_builder(checkout())
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &serve_options());
    let running = processor.start();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created.body["order"]["id"].as_i64().unwrap();
    let failed = until_status(&app, id, "FAILED").await;
    let statuses: Vec<&Value> = failed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| &step["status"])
        .collect();
    assert_eq!(
        statuses,
        [
            &json!("COMPENSATED"),
            &json!("COMPENSATED"),
            &json!("FAILED")
        ]
    );

    let retried = post_json(&app, &format!("/orders/{id}/retry"), "").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(
        retried.body["order"]["steps"],
        json!([]),
        "nothing of it stands"
    );
    assert_eq!(retried.body["order"]["failures"][0]["step"], "ship");
    assert_eq!(
        retried.body["order"]["failures"][0]["error"],
        "ship: no courier"
    );

    let done = until_status(&app, id, "COMPLETED").await;
    let steps = done["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for step in steps {
        assert_eq!(
            (&step["status"], &step["retry"]),
            (&json!("SUCCEEDED"), &json!(1))
        );
    }
    running.shutdown(Duration::from_secs(5)).await;
}
