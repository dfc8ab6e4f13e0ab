//! The HTTP API of [`order_core`]: create orders, read them, and measure the system.
//!
//! The binary only parses [`Config`], installs the metrics recorder, binds and calls [`run`];
//! everything else is here. Two functions build the API, and the choice is whose service it
//! is:
//!
//! - [`router`]: the API to nest in another axum service, which brings its own fallback,
//!   timeouts, request ids, logs and authentication. Options: [`RouterOptions`].
//! - [`app`]: the whole of order-server's own service: [`router`] and the server-wide layers
//!   around it. What the binary serves, and what the tests call. Options: [`ServeOptions`].
//!
//! Neither has a process-wide side effect: [`prometheus::install_recorder`] is the one function
//! that has one, for the binary (or an embedding service's `main`) to call.
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders` | `201 {"order": ...}` with `Location`; with `Idempotency-Key`, a replay answers the first body again with `Idempotent-Replayed: true`; `400`/`415`/`422`/`413` for bad input |
//! | `GET /orders?status=&userId=&limit=&after=` | `200 {"orders": [...], "nextCursor"}`, newest first; `400` for a bad parameter |
//! | `GET /orders/{id}` | `200 {"order": ...}`; `400` for a bad id, `404` for an unknown one |
//! | `POST /orders/{id}/cancel` | `200 {"order": ...}` CANCELLED; `409` naming the status of an order no longer PENDING |
//! | `GET /orders/{id}/events` | Server-Sent Events: a `status` event `{"order": ...}` now and at each change, until a terminal status |
//! | `GET /metrics` | `200 {"totalOrders", "processedCount", "avgProcessingTime", "statuses", "queue"}` |
//! | `GET /metrics/stream` | Server-Sent Events: a `history` event with the last five minutes of samples, then a `sample` event each second ([`history`]) |
//! | `GET /metrics/prometheus` | `200`, the Prometheus text format; `404` when no Prometheus recorder was given ([`RouterOptions::prometheus`], [`prometheus`]) |
//! | `GET /healthz` | `200` while the process runs |
//! | `GET /readyz` | `200` when storage answers and its schema is in place, `503` when not |
//! | `GET /openapi.json` | `200`: this table in full, as an OpenAPI 3.1 document generated from the handlers |
//! | `GET /`, `GET /dashboard` | the dashboard: one HTML page, compiled in, that shows all of the above live; open without a token, it asks for one when the API needs it. Not routed when [`RouterOptions::dashboard`] is off |
//!
//! Every error is `application/json` `{"error": "..."}`. [`app`] adds bearer tokens
//! ([`ServeOptions::api_tokens`]: `401` with `WWW-Authenticate` on every route but the probes
//! and the dashboard page)
//! and a cap on requests in progress ([`ServeOptions::max_in_flight`]: `503` with
//! `Retry-After` past it), and [`run`] gives each client [`HEADER_READ_TIMEOUT`] to send a
//! request head.
//!
//! # Observability
//!
//! - `GET /metrics/prometheus`, given a [`PrometheusExporter`], exports the engine's metrics (`order_created_total`,
//!   `order_completed_total`, `order_failed_total`, `order_cancelled_total`,
//!   `order_retries_total`, `order_leases_lost_total`, `order_sweep_requeued_total`,
//!   `order_processing_duration_seconds`, `order_queue_wait_seconds`: see
//!   [`order_core::telemetry`]), gauges read at each scrape (`order_queue_depth{state}`,
//!   `order_orders_by_status{status}`) and, for requests [`app`] serves,
//!   `http_requests_total` and `http_request_duration_seconds` by `method`, `route` template
//!   and `status`: see [`prometheus`].
//! - [`app`] gives every request an `x-request-id` (the client's, if it is at most 128
//!   characters of `[A-Za-z0-9-_.:+/=@]`, else a fresh UUID), returns it on the response, and
//!   logs inside a `request` span carrying it with the method and route template. Each
//!   processing attempt logs inside an `order` span carrying `order_id` and `delivery`, so the
//!   order id finds an order's whole life in the logs, from `order accepted` (with the
//!   request id) through `attempt started` to `order completed` or `order failed`.
//!
//! # Features
//!
//! - `postgres` (default): PostgreSQL storage when `DATABASE_URL` is set, through
//!   order-core's `postgres` backend. Without it, nothing of sea-orm is built, orders are kept
//!   in memory, and a `DATABASE_URL` is a startup error
//!   ([`ConfigError::NoPostgresSupport`]) rather than a silent fall back to memory.
//!
//! # Other crates' types in this API, on purpose
//!
//! - axum 0.8: [`router`] and [`app`] return its `Router`, to nest or serve; [`ApiError`]
//!   is its `IntoResponse`. An axum major version is a major version of this crate.
//! - tokio 1: [`run`] takes its `TcpListener`.
//! - metrics-exporter-prometheus 0.18: a [`PrometheusExporter`] can be made `From` its
//!   `PrometheusHandle`, so that a service's own recorder backs `/metrics/prometheus`.
//! - clap 4: [`Config`] is its `Parser`, for a binary of your own with the same settings.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::middleware;
use order_core::OrderProcessor;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod auth;
mod bulk;
mod closing;
pub mod config;
mod dashboard;
mod error;
pub mod history;
mod openapi;
mod overload;
mod paths;
pub mod prometheus;
mod request_id;
mod routes;
mod tags;

pub use auth::{ApiTokens, NoTokens};
pub use closing::Closing;
pub use config::{Config, ConfigError, LogFormat};
pub use error::{ApiError, ErrorBody};
pub use prometheus::PrometheusExporter;
pub use routes::{DEFAULT_PAGE, MAX_PAGE};

/// The largest request body accepted: 1 MiB, far above the largest valid order (1000 item ids
/// of 128 characters).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the routes of [`router`] serve, beyond the processor. Build it from
/// [`default`](RouterOptions::default) and set what differs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterOptions {
    /// Whether the dashboard page is served at `/` and `/dashboard` (by default it is). Off,
    /// neither path is routed nor documented: a service that nests the API and has pages of
    /// its own turns it off. `GET /metrics/stream`, which the page reads, stays.
    pub dashboard: bool,
    /// What `GET /metrics/prometheus` renders: the handle of this process's Prometheus
    /// recorder, from [`prometheus::install_recorder`]. None (the default): the route answers
    /// `404 {"error": ...}` saying that no Prometheus recorder was given, as it should in a
    /// service that collects its metrics its own way.
    pub prometheus: Option<PrometheusExporter>,
    /// Whether the dashboard's history of counts is sampled from the start (one read of the
    /// aggregate counts a second), so that its charts show the minutes before anyone looked;
    /// otherwise (the default) sampling starts with the first look, and a nested API that
    /// nobody watches reads nothing. Only within a Tokio runtime.
    pub sample_from_start: bool,
    /// Ends the router's event streams when closed: close it when shutting down (the default
    /// is one that nobody closes).
    pub closing: Closing,
}

impl Default for RouterOptions {
    /// With the dashboard, without Prometheus, sampled from the first look.
    fn default() -> Self {
        Self {
            dashboard: true,
            prometheus: None,
            sample_from_start: false,
            closing: Closing::new(),
        }
    }
}

/// The order API, to nest in another axum service: every route, with its JSON errors, panic
/// handling and body limit, and its state applied. To serve the API as a service of its own,
/// use [`app`].
///
/// Each route is registered together with its OpenAPI description, and the document they
/// make is served at `/openapi.json`, built once per call.
///
/// With [`RouterOptions::dashboard`] (the default), it includes the dashboard page, at `/`
/// and `/dashboard` under wherever it is nested; `/metrics/stream`, which feeds it, is always
/// there; the counts behind its charts are read once a second from the first time either is
/// asked for. Because the page is at `/`, nest the router under a prefix (as below) rather
/// than merging it into a service with a `/` of its own, or turn the dashboard off. Its event
/// streams stay open until [`RouterOptions::closing`] is closed: close it when shutting down,
/// before draining connections.
///
/// It has no fallback, request timeout, request ids, request logs, bearer tokens or HTTP
/// metrics: those belong to the service that serves it, which [`app`] is for order-server
/// itself. Nested under a path, the API answers there, `Location` headers included. Building
/// it has no effect outside it: the metrics recorder is the caller's to install (see
/// [`prometheus`]).
///
/// ```
/// use axum::Router;
/// use order_core::OrderProcessor;
/// use order_core::handler::SimulatedStep;
/// use order_server::RouterOptions;
///
/// # fn main() -> Result<(), order_core::BuildError> {
/// let processor = OrderProcessor::builder(SimulatedStep::default()).in_memory().build()?;
/// let service: Router = Router::new()
///     .route("/", axum::routing::get(|| async { "the embedding service" }))
///     .nest("/order-api", order_server::router(processor, &RouterOptions::default()));
/// # let _ = service;
/// # Ok(()) }
/// ```
pub fn router(processor: OrderProcessor, options: &RouterOptions) -> Router {
    documented_router(processor, options, openapi::Served::default())
}

/// [`router`], with its document saying what the layers around it answer.
fn documented_router(
    processor: OrderProcessor,
    options: &RouterOptions,
    served: openapi::Served,
) -> Router {
    // `routes!` takes each handler's path and methods from its `#[utoipa::path]`, so what is
    // served and what is documented cannot disagree. One call per path: handlers given
    // together share one method router.
    let mut routes = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::create_order, routes::list_orders))
        .routes(routes!(routes::get_order))
        .routes(routes!(routes::cancel_order))
        .routes(routes!(routes::retry_order))
        .routes(routes!(bulk::bulk_cancel))
        .routes(routes!(bulk::bulk_retry))
        .routes(routes!(bulk::get_bulk_action))
        .routes(routes!(routes::order_events))
        .routes(routes!(routes::metrics))
        .routes(routes!(history::metrics_stream))
        .routes(routes!(prometheus::scrape))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::openapi_document));
    if options.dashboard {
        routes = routes
            .routes(routes!(dashboard::root))
            .routes(routes!(dashboard::dashboard));
    }
    let (routes, mut api) = routes.split_for_parts();
    if !options.dashboard {
        openapi::leave_out_dashboard(&mut api);
    }
    openapi::complete(&mut api, served);
    let history = history::History::new();
    if options.sample_from_start && tokio::runtime::Handle::try_current().is_ok() {
        history.start_sampling(&processor);
    }
    routes.with_state(processor).layer(
        // Outermost first: errors are made JSON whatever produced them, a panic included.
        ServiceBuilder::new()
            .layer(middleware::from_fn(error::json_errors))
            .layer(CatchPanicLayer::custom(error::panic_response))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(Extension(openapi::ApiDocument::new(&api)))
            .layer(Extension(history))
            .layer(Extension(options.closing.clone()))
            .layer(Extension(options.prometheus.clone())),
    )
}

/// How [`app`] serves: what the routes serve, and what order-server's own layers do. Build it
/// from [`default`](ServeOptions::default) and set what differs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// What the routes serve: the dashboard, the Prometheus exporter, when sampling starts.
    pub router: RouterOptions,
    /// The longest a request may take before it is answered `503`.
    pub request_timeout: Duration,
    /// The bearer tokens that may call the API; none leaves it open.
    pub api_tokens: ApiTokens,
    /// How many requests may be in progress at once; past that, new ones are answered `503`
    /// with `Retry-After` at once, so that overload sheds work instead of queueing it in
    /// memory. The health probes are never shed.
    pub max_in_flight: usize,
}

impl Default for ServeOptions {
    /// 30 s, open, 1024 requests in progress; the dashboard sampled from the start, since the
    /// service is order-server's own; no Prometheus exporter.
    fn default() -> Self {
        Self {
            router: RouterOptions {
                sample_from_start: true,
                ..RouterOptions::default()
            },
            request_timeout: Duration::from_secs(30),
            api_tokens: ApiTokens::default(),
            max_in_flight: 1024,
        }
    }
}

/// order-server's whole service, as the binary serves it: [`router`], a JSON `404` for any
/// other path, bearer tokens when [`ServeOptions::api_tokens`] has any, a cap on requests in
/// progress, a request timeout (`503`), request ids, request logs and HTTP metrics. To mount
/// the API inside another service, use [`router`].
pub fn app(processor: OrderProcessor, options: &ServeOptions) -> Router {
    let served = openapi::Served {
        tokens: !options.api_tokens.is_empty(),
        limits: true,
    };
    documented_router(processor, &options.router, served)
        .fallback(routes::no_route)
        .layer(
            // Outermost first: every request has a usable id before its span is made; the span
            // and the metrics see every request, a refused or shed one and a timeout included,
            // each made JSON and, like every 5xx, logged with its cause. Layered onto the routes,
            // so the matched route is known to the span and the metrics.
            ServiceBuilder::new()
                .layer(middleware::map_request(
                    request_id::drop_unusable_request_id,
                ))
                .layer(SetRequestIdLayer::new(
                    request_id::REQUEST_ID_HEADER,
                    MakeRequestUuid,
                ))
                .layer(PropagateRequestIdLayer::new(request_id::REQUEST_ID_HEADER))
                .layer(TraceLayer::new_for_http().make_span_with(request_id::request_span))
                .layer(middleware::from_fn(prometheus::record_http))
                .layer(middleware::from_fn(error::log_server_errors))
                .layer(middleware::from_fn(error::json_errors))
                // Only when there are tokens: an open API pays nothing per request for it.
                .option_layer((!options.api_tokens.is_empty()).then(|| {
                    middleware::from_fn_with_state(options.api_tokens.clone(), auth::require_token)
                }))
                .layer(middleware::from_fn_with_state(
                    overload::InFlight::new(options.max_in_flight),
                    overload::shed,
                ))
                .layer(middleware::from_fn_with_state(
                    options.request_timeout,
                    overload::time_limit,
                )),
        )
}

/// How long a client may take to send a request's head (its line and headers) before its
/// connection is closed: a client that trickles bytes cannot hold a connection forever. (Its
/// body is bounded by the request timeout.)
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting connections and
/// waits for the requests in progress. HTTP/1.1, with [`HEADER_READ_TIMEOUT`] on every
/// request head.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause rather than spin, and go on.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service =
            hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                app.clone(),
                |request: axum::http::Request<hyper::body::Incoming>| {
                    request.map(axum::body::Body::new)
                },
            ));
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
