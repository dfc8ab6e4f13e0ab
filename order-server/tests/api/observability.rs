//! What an operator sees: `/metrics/prometheus` in the Prometheus text format, request ids,
//! and log lines that follow an order from its request to its completion.
//!
//! The metrics recorder is process-wide, and every test in this binary counts into it at the
//! same time: tests in this process check families, labels and lower bounds of what they
//! added. Exact counts are checked on the binary, a process of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use order_core::handler::SimulatedStep;
use order_core::{OrderId, OrderProcessor, telemetry};
use order_server::prometheus::{
    HTTP_REQUEST_DURATION, HTTP_REQUESTS, OLDEST_PENDING_AGE, ORDERS_BY_STATUS, QUEUE_DEPTH,
};
use prom_text_format_parser::{Metric, Sample, Scrape, Type, ValueType};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::child_process::{Server, spawn_server};
use crate::helpers::{VALID_ORDER, get, idle_app, post_json, send};

const ENGINE_COUNTERS: [&str; 7] = [
    telemetry::ORDERS_CREATED,
    telemetry::ORDERS_COMPLETED,
    telemetry::ORDERS_FAILED,
    telemetry::ORDERS_CANCELLED,
    telemetry::RETRIES,
    telemetry::LEASES_LOST,
    telemetry::SWEEP_REQUEUED,
];

/// A scrape, parsed by a strict parser: a line it cannot read fails the test.
struct Metrics(Vec<Metric>);

impl Metrics {
    fn parse(text: &str) -> Self {
        match Scrape::parse(text) {
            Ok(scrape) => Self(scrape.metrics),
            Err(err) => panic!("not the Prometheus text format ({err:?}):\n{text}"),
        }
    }

    fn family(&self, name: &str) -> &Metric {
        self.0
            .iter()
            .find(|family| family.name == name)
            .unwrap_or_else(|| panic!("no {name} family"))
    }

    /// The series of a family; none before the family is first counted.
    fn samples(&self, name: &str) -> impl Iterator<Item = &Sample> {
        self.0
            .iter()
            .filter(move |family| family.name == name)
            .flat_map(|family| &family.samples)
    }

    /// The value of the counter or gauge series with exactly these labels; 0 if there is none
    /// yet (a series appears when first counted).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .find(|sample| {
                sample.value.value_type == ValueType::Sample && has_labels(sample, labels)
            })
            .map_or(0.0, |sample| sample.value.value.as_f64())
    }

    /// How many observations the histogram holds in the series with these labels (and maybe
    /// more).
    fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|sample| sample.value.value_type == ValueType::Count)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|&(key, value)| label(sample, key) == Some(value))
            })
            .map(|sample| sample.value.value.as_f64())
            .sum()
    }

    /// The histogram's cumulative count at the bucket bound `le`, over its series.
    fn bucket(&self, name: &str, le: &str) -> f64 {
        self.family(name)
            .samples
            .iter()
            .filter(|sample| sample.value.value_type == ValueType::Sample)
            .filter(|sample| label(sample, "le") == Some(le))
            .map(|sample| sample.value.value.as_f64())
            .sum()
    }

    /// The values of one label over a family's series.
    fn label_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.family(name)
            .samples
            .iter()
            .filter_map(|sample| label(sample, key).map(str::to_owned))
            .collect()
    }
}

fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
    sample
        .labels
        .iter()
        .find(|label| label.key == key)
        .map(|label| label.value.as_str())
}

fn has_labels(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    sample.labels.len() == labels.len()
        && labels
            .iter()
            .all(|&(key, value)| label(sample, key) == Some(value))
}

async fn scrape(app: &Router) -> Metrics {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics/prometheus")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Metrics::parse(std::str::from_utf8(&bytes).unwrap())
}

#[tokio::test]
async fn the_prometheus_route_shows_every_documented_family_with_its_type() {
    let (app, _) = idle_app();
    assert_eq!(
        post_json(&app, "/orders", VALID_ORDER).await.status,
        StatusCode::CREATED
    );
    let metrics = scrape(&app).await;

    for name in ENGINE_COUNTERS.into_iter().chain([HTTP_REQUESTS]) {
        let family = metrics.family(name);
        assert_eq!(family.kind, Type::Counter, "{name}");
        assert!(family.help_desc.is_some(), "{name} has no HELP line");
    }
    for name in [
        telemetry::PROCESSING_DURATION,
        telemetry::QUEUE_WAIT,
        HTTP_REQUEST_DURATION,
    ] {
        let family = metrics.family(name);
        assert_eq!(family.kind, Type::Histogram, "{name}");
        let bounds = metrics.label_values(name, "le");
        assert!(
            bounds.len() > 5 && bounds.contains("+Inf"),
            "{name} has buckets {bounds:?}"
        );
    }
    assert_eq!(metrics.family(QUEUE_DEPTH).kind, Type::Gauge);
    assert_eq!(
        metrics.label_values(QUEUE_DEPTH, "state"),
        BTreeSet::from(["claimed", "delayed", "ready"].map(str::to_owned))
    );
    assert_eq!(metrics.family(ORDERS_BY_STATUS).kind, Type::Gauge);
    assert_eq!(
        metrics.label_values(ORDERS_BY_STATUS, "status"),
        BTreeSet::from(
            ["cancelled", "completed", "failed", "pending", "processing"].map(str::to_owned)
        )
    );
}

#[tokio::test]
async fn the_oldest_pending_order_shows_its_age() {
    let (app, processor) = crate::helpers::idle_app();
    let first = processor
        .submit(serde_json::from_str::<order_core::NewOrder>(VALID_ORDER).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    processor
        .submit(serde_json::from_str::<order_core::NewOrder>(VALID_ORDER).unwrap())
        .await
        .unwrap();
    let metrics = scrape(&app).await;
    assert_eq!(metrics.family(OLDEST_PENDING_AGE).kind, Type::Gauge);
    let age = metrics.value(OLDEST_PENDING_AGE, &[]);
    assert!((1.0..30.0).contains(&age), "{age}");
    // Once it is no longer PENDING, the next oldest one counts.
    processor.cancel(first.id).await.unwrap();
    let age = scrape(&app).await.value(OLDEST_PENDING_AGE, &[]);
    assert!(age < 1.0, "{age}");
}

#[tokio::test]
async fn counters_and_histograms_move_with_the_orders_they_count() {
    crate::helpers::init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(20)))
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &crate::helpers::serve_options());
    let before = scrape(&app).await;
    let running = processor.start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = post_json(&app, "/orders", VALID_ORDER).await;
        ids.push(OrderId::new(created.body["order"]["id"].as_i64().unwrap()).unwrap());
    }
    for id in ids {
        tokio::time::timeout(Duration::from_secs(10), processor.wait_until_done(id))
            .await
            .unwrap()
            .unwrap();
    }
    // A completion is counted just after it is stored, where `wait_until_done` may already
    // have seen it.
    let after = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let after = scrape(&app).await;
            let completed = |metrics: &Metrics| metrics.value(telemetry::ORDERS_COMPLETED, &[]);
            if completed(&after) - completed(&before) >= 3.0 {
                return after;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("three completions are counted");
    running.shutdown(Duration::from_secs(5)).await;

    // At least: other tests count into the same recorder meanwhile.
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert!(moved(telemetry::ORDERS_CREATED, &[]) >= 3.0);
    let post_orders = [("method", "POST"), ("route", "/orders"), ("status", "201")];
    assert!(moved(HTTP_REQUESTS, &post_orders) >= 3.0);
    for name in [telemetry::PROCESSING_DURATION, telemetry::QUEUE_WAIT] {
        let observed = after.observations(name, &[]) - before.observations(name, &[]);
        assert!(observed >= 3.0, "{name} moved by {observed}");
    }
    let timed = after.observations(HTTP_REQUEST_DURATION, &post_orders)
        - before.observations(HTTP_REQUEST_DURATION, &post_orders);
    assert!(timed >= 3.0, "POST /orders timed {timed} times");
}

#[tokio::test]
async fn http_series_name_the_route_template_never_the_id() {
    let (app, _) = idle_app();
    let id = post_json(&app, "/orders", VALID_ORDER).await.body["order"]["id"]
        .as_i64()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            get(&app, &format!("/orders/{id}")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(&app, "/orders/987654321").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/no/such/route/123").await.status,
        StatusCode::NOT_FOUND
    );
    let wrong_method = send(
        &app,
        Request::builder()
            .method(Method::DELETE)
            .uri(format!("/orders/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let metrics = scrape(&app).await;

    let series = |method, route, status| [("method", method), ("route", route), ("status", status)];
    assert!(metrics.value(HTTP_REQUESTS, &series("GET", "/orders/{id}", "200")) >= 2.0);
    assert!(metrics.value(HTTP_REQUESTS, &series("GET", "/orders/{id}", "404")) >= 1.0);
    assert!(metrics.value(HTTP_REQUESTS, &series("DELETE", "/orders/{id}", "405")) >= 1.0);
    assert!(metrics.value(HTTP_REQUESTS, &series("GET", "unmatched", "404")) >= 1.0);
    assert!(
        metrics.observations(HTTP_REQUEST_DURATION, &series("GET", "/orders/{id}", "200")) >= 2.0
    );
    for name in [HTTP_REQUESTS, HTTP_REQUEST_DURATION] {
        for route in metrics.label_values(name, "route") {
            // Templates hold no digits; a concrete path of this test does.
            assert!(
                !route.chars().any(|c| c.is_ascii_digit()),
                "{name} has a series for the concrete path {route}"
            );
        }
    }
}

/// The `x-request-id` of the response to `GET uri`, sending `id` if given.
async fn request_id(app: &Router, uri: &str, id: Option<&str>) -> String {
    let mut request = Request::builder().uri(uri);
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[tokio::test]
async fn a_request_id_is_echoed_when_usable_and_made_when_not() {
    let (app, _) = idle_app();
    assert_eq!(
        request_id(&app, "/healthz", Some("client-abc-123")).await,
        "client-abc-123"
    );
    let longest = "a".repeat(128);
    assert_eq!(request_id(&app, "/healthz", Some(&longest)).await, longest);

    let made = request_id(&app, "/healthz", None).await;
    assert!(is_uuid(&made), "{made}");
    assert_ne!(made, request_id(&app, "/healthz", None).await);
    // Error responses carry one too.
    assert!(is_uuid(&request_id(&app, "/no/such/route", None).await));

    for unusable in [
        "a".repeat(129),
        "two words".to_owned(),
        "quo\"te".to_owned(),
        String::new(),
    ] {
        let got = request_id(&app, "/healthz", Some(&unusable)).await;
        assert!(is_uuid(&got), "{unusable:?} came back as {got:?}");
    }
}

fn order() -> Value {
    json!({"userId": "user-obs", "itemIds": ["item1"], "totalAmount": 12.5})
}

/// Polls `GET /orders/{id}` until the order is COMPLETED.
async fn until_completed(server: &Server, id: i64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = server.get(&format!("/orders/{id}")).await;
            if body["order"]["status"] == "COMPLETED" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the order completes within 10 s");
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_orders_log_lines_follow_it_from_its_request_to_its_completion() {
    let server = spawn_server(&[("PROCESSING_DELAY_MS", "50")]).await;
    let request_id = "checkout-7f3a";
    let response = server
        .client()
        .post(format!("{}/orders", server.base))
        .header("x-request-id", request_id)
        .json(&order())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], request_id);
    let id = response.json::<Value>().await.unwrap()["order"]["id"]
        .as_i64()
        .unwrap();
    until_completed(&server, id).await;

    // What `grep '"order_id":"<id>"'` finds. The completion is logged just after it is
    // stored, so the reader may not have it yet.
    let tag = format!("\"order_id\":\"{id}\"");
    let lines = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let lines: Vec<Value> = server
                .logs()
                .into_iter()
                .filter(|line| line.to_string().contains(&tag))
                .collect();
            if lines.iter().any(|line| message(line) == "order completed") {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the completion is logged");
    let position = |wanted: &str| {
        lines
            .iter()
            .position(|line| message(line) == wanted)
            .unwrap_or_else(|| panic!("no {wanted:?} line among {lines:#?}"))
    };
    let (accepted, started, completed) = (
        position("order accepted"),
        position("attempt started"),
        position("order completed"),
    );
    assert!(accepted < started && started < completed, "{lines:#?}");
    // Accepted inside the request's span, the rest inside the attempt's.
    assert_eq!(lines[accepted]["span"]["request_id"], request_id);
    assert_eq!(lines[accepted]["span"]["route"], "/orders");
    assert_eq!(lines[started]["fields"]["attempt"], 1);
    assert_eq!(lines[started]["span"]["delivery"], 1);
    assert_eq!(lines[completed]["span"]["name"], "order");
    let (exited, _) = server.terminate().await;
    assert!(exited);
}

async fn scrape_binary(server: &Server) -> Metrics {
    let response = server
        .client()
        .get(format!("{}/metrics/prometheus", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    Metrics::parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn the_binary_exports_exactly_what_it_did_in_memory() {
    exports_exactly_what_it_did(&[]).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_binary_exports_exactly_what_it_did_on_postgres() {
    let db = order_core::testing::TestDatabase::create().await;
    exports_exactly_what_it_did(&[("DATABASE_URL", db.url())]).await;
}

async fn exports_exactly_what_it_did(storage: &[(&str, &str)]) {
    let mut env = vec![
        ("PROCESSING_DELAY_MS", "20"),
        ("RUST_LOG", "info,order_core::processor=debug"),
    ];
    env.extend_from_slice(storage);
    let server = spawn_server(&env).await;
    // The first recovery sweep runs as the server starts: one that looked while an order was
    // stored but not yet queued would re-queue it, and count it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !server
            .logs()
            .iter()
            .any(|line| line["fields"]["message"] == "recovery sweep found nothing to re-queue")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first sweep finishes");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.create(&order()).await);
    }
    for &id in &ids {
        until_completed(&server, id).await;
    }
    // A completion is counted just after it is stored, where a GET may already see it.
    let metrics = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let metrics = scrape_binary(&server).await;
            if metrics.value(telemetry::ORDERS_COMPLETED, &[]) >= 3.0 {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("three completions are counted");

    for (name, expected) in [
        (telemetry::ORDERS_CREATED, 3.0),
        (telemetry::ORDERS_COMPLETED, 3.0),
        (telemetry::ORDERS_FAILED, 0.0),
        (telemetry::ORDERS_CANCELLED, 0.0),
        (telemetry::RETRIES, 0.0),
        (telemetry::LEASES_LOST, 0.0),
        (telemetry::SWEEP_REQUEUED, 0.0),
    ] {
        assert_eq!(metrics.value(name, &[]), expected, "{name}");
    }
    for name in [telemetry::PROCESSING_DURATION, telemetry::QUEUE_WAIT] {
        assert_eq!(metrics.observations(name, &[]), 3.0, "{name}");
    }
    // In seconds: a 20 ms handler never finishes within 10 ms, and always within 5 s.
    assert_eq!(metrics.bucket(telemetry::PROCESSING_DURATION, "0.01"), 0.0);
    assert_eq!(metrics.bucket(telemetry::PROCESSING_DURATION, "5"), 3.0);
    assert_eq!(
        metrics.value(
            HTTP_REQUESTS,
            &[("method", "POST"), ("route", "/orders"), ("status", "201")]
        ),
        3.0
    );
    assert_eq!(
        metrics.value(ORDERS_BY_STATUS, &[("status", "completed")]),
        3.0
    );
    assert_eq!(
        metrics.value(ORDERS_BY_STATUS, &[("status", "pending")]),
        0.0
    );
    assert_eq!(metrics.value(OLDEST_PENDING_AGE, &[]), 0.0);
    // Not `claimed`: an order is acked just after its completion is stored.
    assert_eq!(metrics.value(QUEUE_DEPTH, &[("state", "ready")]), 0.0);
    assert_eq!(metrics.value(QUEUE_DEPTH, &[("state", "delayed")]), 0.0);
    let (exited, _) = server.terminate().await;
    assert!(exited);
}
