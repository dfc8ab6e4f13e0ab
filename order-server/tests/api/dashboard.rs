//! The dashboard page (`/`, `/dashboard`) and the stream of counts it draws from
//! (`/metrics/stream`): what a browser gets, headers included. The page itself is driven in a
//! real browser by `e2e/`.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use order_core::StorageError;
use order_core::backend::MockRepository;

use crate::helpers::{VALID_ORDER, app_with, idle_app, post_json};

/// The budget for the page: HTML, script and style together.
const PAGE_BUDGET_BYTES: usize = 100 * 1024;

pub(crate) async fn raw(
    app: &Router,
    uri: &str,
    headers: &[(header::HeaderName, &str)],
) -> RawReply {
    let mut request = Request::builder().uri(uri);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    RawReply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.into_body().collect().await.unwrap().to_bytes(),
    }
}

pub(crate) struct RawReply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl RawReply {
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// The status of a streaming route, without waiting for its body.
pub(crate) async fn raw_head(app: &Router, uri: &str) -> StatusCode {
    app.clone()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
        .status()
}

/// The body of `GET /metrics/stream`, checked to be an event stream.
async fn open_stream(app: &Router) -> Body {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics/stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    response.into_body()
}

/// The text between `open` and `close`, which must both be there.
fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).unwrap_or_else(|| panic!("no {open}")) + open.len();
    let end = start
        + text[start..]
            .find(close)
            .unwrap_or_else(|| panic!("no {close}"));
    &text[start..end]
}

fn csp_hash(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

#[tokio::test]
async fn the_page_is_one_self_contained_document_under_budget() {
    let (app, _) = idle_app();
    let root = raw(&app, "/", &[]).await;
    let page = raw(&app, "/dashboard", &[]).await;
    for reply in [&root, &page] {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    assert_eq!(root.body, page.body, "/ and /dashboard serve the same page");
    let html = page.text();
    assert!(
        html.len() < PAGE_BUDGET_BYTES,
        "the page weighs {} bytes, over {PAGE_BUDGET_BYTES}",
        html.len()
    );
    println!("dashboard page: {} bytes", html.len());
    // Nothing is fetched from elsewhere: no absolute URL, no external script or style.
    for outside in [
        "http://",
        "https://",
        "src=\"//",
        "href=\"//",
        "<link rel=\"stylesheet",
    ] {
        assert!(!html.contains(outside), "the page refers to {outside}");
    }
    assert_eq!(html.matches("<script").count(), 1);
    assert_eq!(html.matches("<style").count(), 1);

    // The policy lets exactly the inline script and style run, and requests go only to the
    // page's own origin.
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    let script = between(html, "<script>", "</script>");
    let style = between(html, "<style>", "</style>");
    assert!(script.contains("metrics/stream"), "the script is inline");
    assert!(
        csp.contains(&format!("script-src {}", csp_hash(script))),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("style-src {}", csp_hash(style))),
        "{csp}"
    );
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
}

/// What the page shows of orders processed in steps, in its markup: the table's Step column, the
/// dialog's timeline (a list) and its cancel request. How they behave is driven in `e2e/`.
#[tokio::test]
async fn the_page_has_a_step_column_and_a_steps_timeline() {
    let (app, _) = idle_app();
    let page = raw(&app, "/dashboard", &[]).await;
    let html = page.text();
    let head = between(html, "<thead>", "</thead>");
    let columns: Vec<&str> = head
        .split("</th>")
        .filter_map(|cell| cell.rsplit_once('>').map(|(_, name)| name))
        .filter(|name| !name.trim().is_empty())
        .collect();
    assert_eq!(
        columns,
        [
            "ID",
            "User",
            "Status",
            "Step",
            "Amount",
            "Attempts",
            "Created",
            "Processing",
            "Updated"
        ]
    );
    let dialog = between(html, "<dialog id=\"detail\"", "</dialog>");
    assert!(
        dialog.contains("<ol id=\"detail-steps\" data-testid=\"detail-steps\""),
        "the steps are an ordered list"
    );
    assert!(dialog.contains("data-testid=\"detail-cancel-requested\""));
    let script = between(html, "<script>", "</script>");
    for field in ["steps", "cancelRequestedAt", "compensationAttempts", "202"] {
        assert!(script.contains(field), "the script reads {field}");
    }
}

#[tokio::test]
async fn a_browser_revalidates_the_page_and_gets_304_while_it_is_unchanged() {
    let (app, _) = idle_app();
    let first = raw(&app, "/dashboard", &[]).await;
    assert_eq!(first.headers[header::CACHE_CONTROL], "no-cache");
    let etag = first.headers[header::ETAG].to_str().unwrap().to_owned();
    let again = raw(&app, "/dashboard", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.headers[header::ETAG], etag.as_str());
    let other = raw(&app, "/", &[(header::IF_NONE_MATCH, "\"something-else\"")]).await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn with_tokens_the_page_is_open_and_what_it_reads_is_not() {
    let app = crate::reliability::guarded_app("page-token");
    for path in ["/", "/dashboard"] {
        let page = raw(&app, path, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
    }
    let stream = raw(&app, "/metrics/stream", &[]).await;
    assert_eq!(stream.status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&stream.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
}

/// The events of an SSE body, as (event, data) pairs, read until `wanted` of them arrived.
async fn sse_events(body: &mut Body, wanted: usize) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < wanted {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream is still open")
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|line| line.strip_prefix("event: "))
                .map(str::to_owned);
            let data = block
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .map(|data| serde_json::from_str(data).unwrap());
            if let (Some(name), Some(data)) = (name, data) {
                events.push((name, data));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_stream_sends_the_history_then_a_sample_each_second_and_ends_at_shutdown() {
    crate::helpers::init_logs();
    let processor = order_core::OrderProcessor::builder(order_core::handler::SimulatedStep::new(
        Duration::ZERO,
    ))
    .in_memory()
    .build()
    .unwrap();
    let options = crate::helpers::serve_options();
    let closing = options.router.closing.clone();
    let app = order_server::app(processor.clone(), &options);
    let running = processor.start();
    let mut body = open_stream(&app).await;
    let first = sse_events(&mut body, 1).await;
    assert_eq!(first[0].0, "history");
    assert_eq!(first[0].1["intervalSeconds"], 1);
    assert!(first[0].1["samples"].is_array());
    // A sample first, so that the readings its rates are measured from precede the orders.
    assert_eq!(sse_events(&mut body, 1).await[0].0, "sample");

    for _ in 0..3 {
        assert_eq!(
            post_json(&app, "/orders", VALID_ORDER).await.status,
            StatusCode::CREATED
        );
    }
    // Within a few samples the three orders show, completed (the step takes no time).
    let mut seen = None;
    for _ in 0..5 {
        let (name, sample) = sse_events(&mut body, 1).await.remove(0);
        assert_eq!(name, "sample");
        if sample["statuses"]["completed"] == 3 {
            seen = Some(sample);
            break;
        }
    }
    let sample = seen.expect("the completed orders show within 5 samples");
    assert_eq!(sample["totalOrders"], 3);
    assert_eq!(sample["statuses"]["pending"], 0);
    assert_eq!(sample["queue"]["ready"], 0);
    assert_eq!(sample["oldestPendingAgeSeconds"], Value::Null);
    assert!(sample["at"].as_str().unwrap().ends_with('Z'));

    // A later stream gets the samples so far as its history.
    let mut later = open_stream(&app).await;
    let history = sse_events(&mut later, 1).await.remove(0);
    assert_eq!(history.0, "history");
    let samples = history.1["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{samples:?}");
    let completed: f64 = samples
        .iter()
        .map(|sample| sample["completedPerSecond"].as_f64().unwrap())
        .sum();
    assert!(completed > 0.0, "the throughput shows the 3 completions");
    assert_eq!(samples.last().unwrap()["statuses"]["completed"], 3);

    // Shutting down ends both streams, so that a draining server is not held open.
    closing.close();
    for stream in [&mut body, &mut later] {
        let end = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(frame) = stream.frame().await {
                frame.unwrap();
            }
        })
        .await;
        assert!(end.is_ok(), "the stream ends once closed");
    }
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pending_backlog_shows_its_depth_and_oldest_age() {
    let (app, _processor) = idle_app();
    for _ in 0..4 {
        post_json(&app, "/orders", VALID_ORDER).await;
    }
    let mut body = open_stream(&app).await;
    let events = sse_events(&mut body, 3).await;
    let (name, sample) = events.last().unwrap();
    assert_eq!(name, "sample");
    assert_eq!(sample["statuses"]["pending"], 4);
    assert_eq!(sample["queue"]["ready"], 4);
    assert!(sample["oldestPendingAgeSeconds"].as_f64().unwrap() > 0.0);
    assert_eq!(sample["completedPerSecond"], 0.0);
    assert_eq!(sample["avgProcessingSeconds"], Value::Null);
}

/// Storage that does not answer: the stream stays open and says so every second, so that the
/// page can tell a server without storage from a server gone.
#[tokio::test]
async fn when_storage_does_not_answer_the_stream_says_so_each_second() {
    let mut repository = MockRepository::new();
    repository
        .expect_metrics()
        .returning(|| Err(StorageError::unavailable("connection refused")));
    let app = app_with(repository);
    let mut body = open_stream(&app).await;
    let events = sse_events(&mut body, 3).await;
    assert_eq!(events[0].0, "history");
    assert_eq!(events[0].1["samples"], serde_json::json!([]));
    for (name, data) in &events[1..] {
        assert_eq!(name, "unavailable");
        assert_eq!(
            data["error"],
            "the counts cannot be read: storage unavailable"
        );
    }
}

#[tokio::test]
async fn without_the_dashboard_neither_page_is_served_nor_documented() {
    crate::helpers::init_logs();
    let processor = order_core::OrderProcessor::builder(order_core::handler::SimulatedStep::new(
        Duration::ZERO,
    ))
    .in_memory()
    .build()
    .unwrap();
    let mut options = crate::helpers::serve_options();
    options.router.dashboard = false;
    let app = order_server::app(processor, &options);
    for page in ["/", "/dashboard"] {
        let reply = crate::helpers::get(&app, page).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{page}");
        assert_eq!(reply.error(), format!("no route for {page}"));
    }
    let stream = raw_head(&app, "/metrics/stream").await;
    assert_eq!(stream, StatusCode::OK, "the stream stays for other clients");

    let document = crate::helpers::get(&app, "/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    let paths = document.body["paths"].as_object().unwrap();
    assert!(!paths.contains_key("/"), "{:?}", paths.keys());
    assert!(!paths.contains_key("/dashboard"), "{:?}", paths.keys());
    assert!(paths.contains_key("/metrics/stream"));
    let tags: Vec<&str> = document.body["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tag| tag["name"].as_str())
        .collect();
    assert_eq!(tags, ["orders", "monitoring", "documentation"]);
    let responses = document.body["components"]["responses"]
        .as_object()
        .unwrap();
    assert!(!responses.contains_key("DashboardPage"));
    assert!(!responses.contains_key("PageNotModified"));
}

/// Without its page, the router has no `/`, so it merges into a service that has one.
#[tokio::test]
async fn without_the_dashboard_the_router_merges_beside_a_root_of_its_own() {
    crate::helpers::init_logs();
    let processor = order_core::OrderProcessor::builder(order_core::handler::SimulatedStep::new(
        Duration::ZERO,
    ))
    .in_memory()
    .build()
    .unwrap();
    let mut options = order_server::RouterOptions::default();
    options.dashboard = false;
    let service = Router::new()
        .route("/", axum::routing::get(|| async { "the shop's own page" }))
        .merge(order_server::router(processor, &options));
    let root = raw(&service, "/", &[]).await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.text(), "the shop's own page");
    let created = post_json(&service, "/orders", VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}
