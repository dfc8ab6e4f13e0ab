//! `GET /metrics/prometheus`: this process's metrics in the Prometheus text format.
//!
//! The engine's counters and histograms are listed in [`order_core::telemetry`]. This module
//! adds:
//!
//! | metric | type | labels | what it measures |
//! |---|---|---|---|
//! | `http_requests_total` | counter | `method`, `route`, `status` | requests [`app`](crate::app) answered |
//! | `http_request_duration_seconds` | histogram | `method`, `route`, `status` | time until the response head was ready |
//! | `order_queue_depth` | gauge | `state`: `ready`, `delayed`, `claimed` | the queue, read at each scrape |
//! | `order_orders_by_status` | gauge | `status`: `pending`, `processing`, `completed`, `failed`, `cancelled` | stored orders, read at each scrape |
//! | `order_oldest_pending_age_seconds` | gauge | | how long the oldest PENDING order has waited since it was accepted (0 when none is), read at each scrape |
//!
//! `route` is the route template (`/orders/{id}`), never the path a client sent, so that ids do
//! not each become a series; a request no route matched is `unmatched`, and a method outside
//! the standard ones is `other`. Every histogram has buckets (`_bucket` series), not quantiles.
//!
//! # One recorder per process
//!
//! The `metrics` facade has one recorder per process, and whoever composes the process
//! chooses it: building a router installs nothing. [`install_recorder`] is the one function
//! of this crate with a global effect; the binary calls it first thing, and passes the
//! [`PrometheusExporter`] it returns in
//! [`RouterOptions::prometheus`](crate::RouterOptions::prometheus). A service that embeds
//! the API and keeps a recorder of its own passes none (or, if its recorder is a Prometheus
//! one, its handle): the engine's metrics and the HTTP metrics of [`app`](crate::app) go to
//! whatever recorder is installed, and without an exporter this route answers
//! `404 {"error": ...}` saying that none was given. The gauges read at scrape time are
//! process-wide too: where one process runs two processors, a scrape shows the one it went
//! through.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{Extension, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Label, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use order_core::OrderProcessor;

use crate::error::{ApiError, ErrorBody, InternalError, Unavailable};
use crate::tags::MONITORING;

/// Requests answered, by method, route template and status.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time to answer a request, in seconds, by method, route template and status.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// The queue's depth by `state`, read at scrape time.
pub const QUEUE_DEPTH: &str = "order_queue_depth";
/// Stored orders by `status`, read at scrape time.
pub const ORDERS_BY_STATUS: &str = "order_orders_by_status";

/// How long the oldest PENDING order has waited since it was accepted, in seconds (0 when none
/// is PENDING), read at scrape time.
pub const OLDEST_PENDING_AGE: &str = "order_oldest_pending_age_seconds";

/// The `route` of a request that no route matched.
const UNMATCHED: &str = "unmatched";

/// Buckets for requests, in seconds: most answer in milliseconds, none after the request
/// timeout (30 s by default).
const HTTP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for every other histogram, in seconds: a handler or a queue wait may take from
/// milliseconds to an hour.
const DEFAULT_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes: the
/// recorder keeps every sample until then.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What `GET /metrics/prometheus` renders: the handle of a Prometheus recorder. Cheap to
/// clone; every clone reads the same recorder.
#[derive(Debug, Clone)]
pub struct PrometheusExporter(PrometheusHandle);

impl PrometheusExporter {
    /// Every metric the recorder holds, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.0.render()
    }
}

impl From<PrometheusHandle> for PrometheusExporter {
    /// The handle of a recorder that the caller built (with buckets of its own, say, or inside
    /// a layered recorder) and installed, or not: the route renders whatever it holds.
    fn from(handle: PrometheusHandle) -> Self {
        Self(handle)
    }
}

/// [`install_recorder`] could not install the Prometheus recorder: most often because the
/// process has a metrics recorder already.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder")]
pub struct InstallError(#[source] BuildError);

/// Installs a Prometheus recorder as this process's metrics recorder, and returns what
/// `GET /metrics/prometheus` renders it with: pass it in
/// [`RouterOptions::prometheus`](crate::RouterOptions::prometheus).
///
/// The one function of this crate with a process-wide effect, for the composition root (a
/// `main`) to call once, before the engine counts anything. It also describes every metric
/// listed above, and starts a thread that folds histogram samples into their buckets every few
/// seconds, so that a process nobody scrapes does not keep every sample. A second call, or a
/// call in a process that has another recorder, fails and changes nothing.
pub fn install_recorder() -> Result<PrometheusExporter, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&DEFAULT_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION.to_owned()),
                &HTTP_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(InstallError)?;
    // Not a tokio task: the recorder may be installed before any runtime starts, and outlives
    // any one runtime.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the metrics upkeep thread; histograms are folded only when scraped");
    }
    order_core::telemetry::describe();
    describe_counter!(HTTP_REQUESTS, Unit::Count, "Requests answered.");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time until a request's response head was ready."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Orders in the queue by state, at the last scrape."
    );
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "How long the oldest PENDING order has waited since it was accepted, at the last scrape."
    );
    describe_gauge!(
        ORDERS_BY_STATUS,
        Unit::Count,
        "Stored orders by status, at the last scrape."
    );
    Ok(PrometheusExporter(handle))
}

/// `GET /metrics/prometheus`: reads the queue depth and the order counts into their gauges,
/// then renders every metric; `404` when the server was given no [`PrometheusExporter`],
/// `503` when the storage cannot be read.
#[utoipa::path(
    get,
    path = "/metrics/prometheus",
    operation_id = "getPrometheusMetrics",
    tag = MONITORING,
    description = "Every metric of this process in the Prometheus text format (version 0.0.4): the engine's counters and histograms, HTTP requests by route template, and gauges read at the scrape (queue depth, orders by status, age of the oldest PENDING order).",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 404, description = "This server was given no Prometheus recorder: the service that embeds the API collects its metrics its own way.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn scrape(
    State(processor): State<OrderProcessor>,
    Extension(exporter): Extension<Option<PrometheusExporter>>,
) -> Result<Response, ApiError> {
    let exporter = exporter.ok_or_else(|| {
        ApiError::NotFound(
            "Prometheus metrics are not exported here: no Prometheus recorder was given to this server"
                .to_owned(),
        )
    })?;
    let statuses = processor.metrics().await?.statuses;
    let queue = processor.queue_depth().await?;
    // Counts are far below 2^53, where an f64 would start to round them.
    #[allow(clippy::cast_precision_loss)]
    let as_gauge = |count: u64| count as f64;
    for (status, count) in [
        ("pending", statuses.pending),
        ("processing", statuses.processing),
        ("completed", statuses.completed),
        ("failed", statuses.failed),
        ("cancelled", statuses.cancelled),
    ] {
        gauge!(ORDERS_BY_STATUS, "status" => status).set(as_gauge(count));
    }
    for (state, count) in [
        ("ready", queue.ready),
        ("delayed", queue.delayed),
        ("claimed", queue.claimed),
    ] {
        gauge!(QUEUE_DEPTH, "state" => state).set(as_gauge(count));
    }
    let oldest = processor.oldest_pending_age().await?;
    gauge!(OLDEST_PENDING_AGE).set(oldest.map_or(0.0, |age| age.as_secs_f64()));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        exporter.render(),
    )
        .into_response())
}

/// Counts and times every request by method, route template and status. Runs inside routing,
/// where the matched route is known.
pub(crate) async fn record_http(request: Request, next: Next) -> Response {
    let began = tokio::time::Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let (requests, duration) = http_series(method, route, response.status());
    duration.record(began.elapsed().as_secs_f64());
    requests.increment(1);
    response
}

/// The request counter and duration histogram of one method, route and status.
type HttpSeries = (metrics::Counter, metrics::Histogram);

/// The handles of each route's series by method and status, made at their first request:
/// building a metric's key (three labels, allocated and hashed) on every request cost more
/// than the counting. Bounded: routes are templates, methods and statuses few.
fn http_series(method: &'static str, route: &str, status: axum::http::StatusCode) -> HttpSeries {
    type ByRoute = HashMap<String, HashMap<(&'static str, u16), HttpSeries>>;
    static SERIES: OnceLock<RwLock<ByRoute>> = OnceLock::new();
    let series = SERIES.get_or_init(RwLock::default);
    let code = status.as_u16();
    let known = series
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(route)
        .and_then(|by_status| by_status.get(&(method, code)))
        .cloned();
    if let Some(known) = known {
        return known;
    }
    let labels = [
        Label::from_static_parts("method", method),
        Label::new("route", route.to_owned()),
        Label::new("status", status.as_str().to_owned()),
    ];
    let made = (
        counter!(HTTP_REQUESTS, labels.iter()),
        metrics::histogram!(HTTP_REQUEST_DURATION, labels.iter()),
    );
    series
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.to_owned())
        .or_default()
        .insert((method, code), made.clone());
    made
}

/// The standard methods by name, anything else as `other`: a client must not be able to
/// add series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use order_core::handler::SimulatedStep;
    use tower::ServiceExt;

    use super::*;
    use crate::RouterOptions;

    async fn scrape_with(exporter: Option<PrometheusExporter>) -> (StatusCode, String, String) {
        let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
            .in_memory()
            .build()
            .unwrap();
        let options = RouterOptions {
            prometheus: exporter,
            ..RouterOptions::default()
        };
        let response = crate::router(processor, &options)
            .oneshot(
                axum::http::Request::get("/metrics/prometheus")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn without_an_exporter_the_route_says_so_in_json() {
        let (status, content_type, body) = scrape_with(None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/json");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no Prometheus recorder was given"),
            "{body}"
        );
    }

    /// A recorder that is not installed: the route renders it, and the process's recorder
    /// slot stays free.
    #[tokio::test]
    async fn with_an_exporter_the_route_renders_its_recorder() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let exporter = PrometheusExporter::from(recorder.handle());
        metrics::with_local_recorder(&recorder, || {
            counter!("order_server_test_total").increment(3);
        });
        let (status, content_type, body) = scrape_with(Some(exporter)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.contains("order_server_test_total 3"), "{body}");
    }

    /// Takes this test binary's one recorder slot: no other unit test of order-server may
    /// install a recorder.
    #[test]
    fn the_recorder_is_installed_once_and_a_second_install_fails() {
        let exporter = install_recorder().unwrap();
        counter!("order_server_installed_total").increment(1);
        assert!(
            exporter.render().contains("order_server_installed_total 1"),
            "{}",
            exporter.render()
        );
        let err = install_recorder().unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot install the Prometheus recorder"),
            "{err}"
        );
    }
}
