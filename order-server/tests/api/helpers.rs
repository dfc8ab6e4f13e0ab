use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use order_core::OrderProcessor;
use order_core::backend::Repository;
use order_core::handler::SimulatedStep;
use serde_json::Value;
use tower::ServiceExt;

/// What a client got back.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    /// The `error` of a JSON error body, checking it is one.
    pub(crate) fn error(&self) -> &str {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "errors are JSON"
        );
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.body))
    }
}

/// Shows the server's logs when the tests run with `TEST_LOG=1`; keeps them quiet otherwise.
pub(crate) fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "debug".into()),
                )
                .with_test_writer()
                .init();
        }
    });
}

/// An API over in-memory storage whose processor is not started: orders stay PENDING.
pub(crate) fn idle_app() -> (Router, OrderProcessor) {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    (
        order_server::app(processor.clone(), &crate::helpers::serve_options()),
        processor,
    )
}

/// An API over the given repository (a mock, for failure paths).
pub(crate) fn app_with(repository: impl Repository + 'static) -> Router {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .repository(Arc::new(repository))
        .queue(std::sync::Arc::new(order_core::memory::InMemoryQueue::new()))
        .build()
        .unwrap();
    // A mock answers only what its test expects: no background sampling of counts.
    let mut options = serve_options();
    options.router.sample_from_start = false;
    order_server::app(processor, &options)
}

pub(crate) async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub(crate) async fn get(app: &Router, uri: &str) -> Reply {
    send(
        app,
        Request::builder().uri(uri).body(Body::empty()).unwrap(),
    )
    .await
}

pub(crate) async fn post_json(app: &Router, uri: &str, body: impl Into<Body>) -> Reply {
    send(
        app,
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap(),
    )
    .await
}

pub(crate) const VALID_ORDER: &str =
    r#"{"userId": "user-123", "itemIds": ["item1", "item2"], "totalAmount": 59.99}"#;

/// How the tests serve: open, with a 5 s request timeout, and with this process's Prometheus
/// exporter, as the binary serves.
pub(crate) fn serve_options() -> order_server::ServeOptions {
    let mut options = order_server::ServeOptions::default();
    options.request_timeout = Duration::from_secs(5);
    options.router.prometheus = Some(exporter());
    options
}

/// This test process's Prometheus recorder, installed by the first test that asks: a process
/// has one recorder, and the tests build many apps.
pub(crate) fn exporter() -> order_server::PrometheusExporter {
    static EXPORTER: std::sync::OnceLock<order_server::PrometheusExporter> =
        std::sync::OnceLock::new();
    EXPORTER
        .get_or_init(|| order_server::prometheus::install_recorder().unwrap())
        .clone()
}
