//! Orders processed in steps, as an HTTP client sees them: `steps` on every order, a cancel
//! mid-way answered `202` and ending CANCELLED with its steps compensated, step changes on the
//! event stream, and per-step series in Prometheus.

use std::time::Duration;

use axum::http::StatusCode;
use order_core::{OrderProcessor, Pipeline};
use serde_json::{Value, json};

use crate::helpers::{VALID_ORDER, get, init_logs, post_json, serve_options};
use crate::listing::{Watch, status_events};

/// A server whose orders go through reserve, charge and ship, each taking `delay`.
fn app(delay: Duration) -> (axum::Router, OrderProcessor) {
    init_logs();
    let pipeline = Pipeline::simulated(["reserve", "charge", "ship"], delay);
    let processor = OrderProcessor::pipeline_builder(pipeline)
        .in_memory()
        .build()
        .unwrap();
    (
        order_server::app(processor.clone(), &serve_options()),
        processor,
    )
}

/// `(name, status)` of each step the order shows.
fn steps(order: &Value) -> Vec<(String, String)> {
    order["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            (
                step["name"].as_str().unwrap().to_owned(),
                step["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Reads the order until `done` says so.
async fn until(app: &axum::Router, id: i64, done: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let order = get(app, &format!("/orders/{id}")).await.body["order"].clone();
            if done(&order) {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the order got there in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_shows_its_steps_and_a_cancel_mid_way_undoes_them() {
    let (app, processor) = app(Duration::from_millis(300));
    let running = processor.start();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["order"]["id"].as_i64().unwrap();
    assert_eq!(created.body["order"]["steps"], json!([]));

    let charging = until(&app, id, |order| {
        steps(order)
            .last()
            .is_some_and(|(name, _)| name == "charge")
    })
    .await;
    assert_eq!(charging["status"], "PROCESSING");
    let step = &charging["steps"][0];
    assert_eq!(
        (&step["name"], &step["status"], &step["attempts"]),
        (&json!("reserve"), &json!("SUCCEEDED"), &json!(1))
    );
    assert!(step["startedAt"].is_string() && step["endedAt"].is_string());
    assert_eq!(step["error"], json!(null));
    assert_eq!(step["output"], json!(null), "outputs are not shown");

    let watch = Watch::open(&app, &format!("/orders/{id}/events")).await;
    let cancel = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{:?}", cancel.body);
    assert_eq!(cancel.body["order"]["status"], "PROCESSING");
    assert!(cancel.body["order"]["cancelRequestedAt"].is_string());
    let again = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "asking again answers the same"
    );

    let body = watch.read_to_end().await;
    let events = status_events(&body);
    let last = &events.last().unwrap()["order"];
    assert_eq!(last["status"], "CANCELLED");
    assert_eq!(
        steps(last),
        [
            ("reserve".to_owned(), "COMPENSATED".to_owned()),
            ("charge".to_owned(), "COMPENSATED".to_owned()),
        ],
        "ship never started; charge finished and was undone, then reserve"
    );
    let seen: Vec<Vec<(String, String)>> = events.iter().map(|e| steps(&e["order"])).collect();
    assert!(
        seen.iter()
            .any(|s| s.get(1).is_some_and(|(_, status)| status == "COMPENSATING")),
        "the stream shows each step change: {seen:?}"
    );
    let refused = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("CANCELLED")
    );
    running.shutdown(Duration::from_secs(5)).await;

    let scrape = crate::dashboard::raw(&app, "/metrics/prometheus", &[]).await;
    for series in [
        "order_step_compensations_total{step=\"charge\"}",
        "order_step_compensations_total{step=\"reserve\"}",
    ] {
        assert!(scrape.text().contains(series), "{series} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_is_timed_and_counted_in_prometheus() {
    let (app, processor) = app(Duration::from_millis(5));
    let running = processor.start();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created.body["order"]["id"].as_i64().unwrap();
    let done = until(&app, id, |order| order["status"] == "COMPLETED").await;
    assert_eq!(
        steps(&done),
        ["reserve", "charge", "ship"].map(|name| (name.to_owned(), "SUCCEEDED".to_owned()))
    );
    running.shutdown(Duration::from_secs(5)).await;

    let scrape = crate::dashboard::raw(&app, "/metrics/prometheus", &[]).await;
    let text = scrape.text();
    for step in ["reserve", "charge", "ship"] {
        let series = format!("order_step_duration_seconds_count{{step=\"{step}\"}}");
        assert!(text.contains(&series), "{series} missing in:\n{text}");
    }
}

#[tokio::test]
async fn the_document_describes_steps_and_the_accepted_cancel() {
    let (app, _) = app(Duration::ZERO);
    let doc = get(&app, "/openapi.json").await.body;
    let schemas = &doc["components"]["schemas"];
    let order = &schemas["Order"]["properties"];
    assert_eq!(
        order["steps"]["items"]["$ref"],
        "#/components/schemas/StepRecord"
    );
    assert!(order["cancelRequestedAt"].is_object());
    let step = &schemas["StepRecord"];
    let mut properties: Vec<&str> = step["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    properties.sort_unstable();
    assert_eq!(
        properties,
        [
            "attempts",
            "compensatedAt",
            "compensationAttempts",
            "endedAt",
            "error",
            "name",
            "retry",
            "startedAt",
            "status"
        ]
    );
    assert_eq!(
        schemas["StepStatus"]["enum"],
        json!([
            "RUNNING",
            "RETRYING",
            "SUCCEEDED",
            "FAILED",
            "COMPENSATING",
            "COMPENSATED"
        ])
    );
    let cancel = &doc["paths"]["/orders/{id}/cancel"]["post"]["responses"];
    assert!(cancel["202"].is_object(), "{cancel}");
}
