//! Bulk actions over HTTP: `POST /orders/bulk/cancel` and `/orders/bulk/retry` select the
//! orders that match when accepted and answer `202`; `GET /orders/bulk/{id}` follows them.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use order_core::handler::SimulatedStep;
use order_core::{Order, OrderProcessor};
use serde_json::{Value, json};

use crate::helpers::{Reply, get, init_logs, post_json, send, serve_options};

fn order(user: &str) -> String {
    json!({"userId": user, "itemIds": ["book"], "totalAmount": 12.5}).to_string()
}

/// Reads the action until it is DONE.
async fn until_done(app: &axum::Router, location: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let reply = get(app, location).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            if reply.body["action"]["status"] == "DONE" {
                return reply.body["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bulk action finished")
}

async fn post_keyed(app: &axum::Router, uri: &str, key: &str, body: &str) -> Reply {
    send(
        app,
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_owned()))
            .unwrap(),
    )
    .await
}

fn app_around(processor: &OrderProcessor) -> axum::Router {
    init_logs();
    order_server::app(processor.clone(), &serve_options())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_cancels_the_pending_orders_that_matched() {
    // Each order takes a while, one at a time: the others stay PENDING for the bulk cancel.
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_secs(30)))
        .in_memory()
        .concurrency(1)
        .build()
        .unwrap();
    let app = app_around(&processor);
    let mut ann = Vec::new();
    for i in 0..30 {
        let user = if i % 2 == 0 { "ann" } else { "bob" };
        let created = post_json(&app, "/orders", order(user)).await;
        if user == "ann" {
            ann.push(created.body["order"]["id"].as_i64().unwrap());
        }
    }

    // A dry run counts what it would select, and stores nothing.
    let preview = post_json(
        &app,
        "/orders/bulk/cancel",
        r#"{"userId": "ann", "limit": 10, "dryRun": true}"#,
    )
    .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert_eq!(preview.body, json!({"matched": 10}));
    let accepted = post_json(
        &app,
        "/orders/bulk/cancel",
        r#"{"userId": "ann", "limit": 10}"#,
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let action = &accepted.body["action"];
    assert_eq!(
        (
            &action["kind"],
            &action["selects"],
            &action["matched"],
            &action["status"]
        ),
        (
            &json!("CANCEL"),
            &json!("PENDING"),
            &json!(10),
            &json!("RUNNING")
        )
    );
    assert_eq!(action["userId"], "ann");
    let id = action["id"].as_str().unwrap();
    let location = accepted.headers[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(location, format!("/orders/bulk/{id}"));
    // An order created after acceptance is not selected.
    let later = post_json(&app, "/orders", order("ann")).await.body["order"]["id"]
        .as_i64()
        .unwrap();

    let running = processor.start();
    let done = until_done(&app, &location).await;
    let (acted, skipped) = (
        done["acted"].as_u64().unwrap(),
        done["skipped"].as_u64().unwrap(),
    );
    // The one worker may have started the oldest order before the runner reached it.
    assert_eq!(acted + skipped, 10, "{done}");
    assert!(skipped <= 1, "{done}");
    assert!(done["finishedAt"].is_string());
    assert!(done["longestPageMs"].as_f64().unwrap() >= 0.0, "{done}");
    let mut cancelled = 0;
    for id in &ann {
        let status = get(&app, &format!("/orders/{id}")).await.body["order"]["status"].clone();
        if status == "CANCELLED" {
            cancelled += 1;
        }
    }
    assert_eq!(
        cancelled, acted,
        "the ten oldest of ann's, less one started"
    );
    let late = get(&app, &format!("/orders/{later}")).await.body["order"]["status"].clone();
    assert_eq!(late, "PENDING");
    let listed = get(&app, "/orders?userId=bob&status=CANCELLED").await;
    assert_eq!(listed.body["orders"], json!([]), "bob's orders untouched");
    running.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_retry_retries_the_failed_orders_once_per_key() {
    let failing = SimulatedStep::new(Duration::ZERO).failing(1.0, false);
    let processor = OrderProcessor::builder(failing)
        .in_memory()
        .build()
        .unwrap();
    let app = app_around(&processor);
    let running = processor.start();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            post_json(&app, "/orders", order("ann")).await.body["order"]["id"]
                .as_i64()
                .unwrap(),
        );
    }
    for id in &ids {
        let id = order_core::OrderId::new(*id).unwrap();
        let failed: Order = processor.wait_until_done(id).await.unwrap().unwrap();
        assert_eq!(failed.status, order_core::OrderStatus::Failed);
    }

    let body = r#"{"limit": 3}"#;
    let first = post_keyed(&app, "/orders/bulk/retry", "retry-all-1", body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["action"]["matched"], 3);
    let again = post_keyed(&app, "/orders/bulk/retry", "retry-all-1", body).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["action"]["id"], first.body["action"]["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = post_keyed(&app, "/orders/bulk/retry", "retry-all-1", r#"{"limit": 4}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(other.error().contains("retry-all-1"), "{}", other.error());

    let location = first.headers[header::LOCATION].to_str().unwrap().to_owned();
    let done = until_done(&app, &location).await;
    assert_eq!((&done["acted"], &done["skipped"]), (&json!(3), &json!(0)));
    // The three oldest ran again (and failed again): one failure kept each; the rest none.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, id) in ids.iter().enumerate() {
        let order = get(&app, &format!("/orders/{id}")).await.body["order"].clone();
        let expected = usize::from(i < 3);
        assert_eq!(
            order["failures"].as_array().unwrap().len(),
            expected,
            "order {id}"
        );
    }
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bulk_requests_are_checked_and_unknown_actions_not_found() {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let app = app_around(&processor);
    for (body, field) in [
        (r#"{"limit": 0}"#, "limit"),
        (r#"{"limit": 1000001}"#, "limit"),
        (r#"{"userId": "", "limit": 5}"#, "userId"),
    ] {
        let reply = post_json(&app, "/orders/bulk/cancel", body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(reply.body["field"], field, "{body}: {}", reply.body);
    }
    let missing = post_json(&app, "/orders/bulk/retry", r#"{"userId": "ann"}"#).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing.error().contains("limit"), "{}", missing.error());
    let whole = post_json(
        &app,
        "/orders/bulk/retry",
        r#"{"limit": 5.0, "dryRun": true}"#,
    )
    .await;
    assert_eq!(whole.status, StatusCode::OK, "5.0 is a JSON Schema integer");
    for unknown in [
        r#"{"limit": 5, "all": true}"#,
        r#"{"limit": 5, "status": "FAILED"}"#,
        r#"{"limit": 5.5}"#,
        r#"{"limit": "5"}"#,
    ] {
        let reply = post_json(&app, "/orders/bulk/retry", unknown).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{unknown}");
    }
    let nothing = post_json(&app, "/orders/bulk/retry", r#"{"limit": 5}"#).await;
    assert_eq!(nothing.status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            &nothing.body["action"]["matched"],
            &nothing.body["action"]["status"]
        ),
        (&json!(0), &json!("DONE")),
        "nothing selected: done at once"
    );

    let bad = get(&app, "/orders/bulk/7").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("UUID"), "{}", bad.error());
    let missing = get(&app, "/orders/bulk/0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.error(),
        "bulk action 0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10 not found"
    );
}
