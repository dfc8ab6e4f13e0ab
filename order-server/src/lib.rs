//! The HTTP API of [`order_core`]: create orders, read them, and measure the system.
//!
//! The binary only parses [`Config`], binds and calls [`run`]; everything else is here, so
//! tests call [`app`] directly, and services that embed the API nest [`router`] in their own.
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders` | `201 {"order": ...}` with `Location`; `400`/`415`/`422`/`413` for bad input |
//! | `GET /orders?status=&userId=&limit=&after=` | `200 {"orders": [...], "nextCursor"}`, newest first; `400` for a bad parameter |
//! | `GET /orders/{id}` | `200 {"order": ...}`; `400` for a bad id, `404` for an unknown one |
//! | `POST /orders/{id}/cancel` | `200 {"order": ...}` CANCELLED; `409` naming the status of an order no longer PENDING |
//! | `GET /orders/{id}/events` | Server-Sent Events: a `status` event `{"order": ...}` now and at each change, until a terminal status |
//! | `GET /metrics` | `200 {"totalOrders", "processedCount", "avgProcessingTime", "statuses", "queue"}` |
//! | `GET /healthz` | `200` while the process runs |
//! | `GET /readyz` | `200` when storage answers and its schema is in place, `503` when not |
//! | `GET /openapi.json` | `200`: this table in full, as an OpenAPI 3.1 document generated from the handlers |
//!
//! Every error is `application/json` `{"error": "..."}`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::StatusCode;
use axum::middleware;
use order_core::OrderProcessor;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod config;
mod error;
mod openapi;
mod routes;

pub use config::{Config, ConfigError, LogFormat};
pub use error::{ApiError, ErrorBody};
pub use routes::{DEFAULT_PAGE, MAX_PAGE};

/// The largest request body accepted: 1 MiB, far above the largest valid order (1000 item ids
/// of 128 characters).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The order API as a router to mount in another axum service: every route, with its JSON
/// errors, panic handling and body limit, and its state applied.
///
/// Each route is registered together with its OpenAPI description, and the document they
/// make is served at `/openapi.json`, built once per call.
///
/// It has no fallback, request timeout or request logs: those belong to the service that
/// serves it, which [`app`] is for order-server itself. Nested under a path, the API answers
/// there, `Location` headers included.
///
/// ```
/// use axum::Router;
/// use order_core::{OrderProcessor, SimulatedStep};
///
/// # fn main() -> Result<(), order_core::BuildError> {
/// let processor = OrderProcessor::builder(SimulatedStep::default()).build()?;
/// let service: Router = Router::new()
///     .route("/", axum::routing::get(|| async { "the embedding service" }))
///     .nest("/order-api", order_server::router(processor));
/// # let _ = service;
/// # Ok(()) }
/// ```
pub fn router(processor: OrderProcessor) -> Router {
    // `routes!` takes each handler's path and methods from its `#[utoipa::path]`, so what is
    // served and what is documented cannot disagree. One call per path: handlers given
    // together share one method router.
    let (routes, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::create_order, routes::list_orders))
        .routes(routes!(routes::get_order))
        .routes(routes!(routes::cancel_order))
        .routes(routes!(routes::order_events))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::openapi_document))
        .split_for_parts();
    routes.with_state(processor).layer(
        // Outermost first: errors are made JSON whatever produced them, a panic included.
        ServiceBuilder::new()
            .layer(middleware::from_fn(error::json_errors))
            .layer(CatchPanicLayer::custom(error::panic_response))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(Extension(openapi::ApiDocument::new(&api))),
    )
}

/// order-server's whole service: [`router`], a JSON `404` for any other path, a request
/// timeout (`503`) and request logs.
pub fn app(processor: OrderProcessor, request_timeout: Duration) -> Router {
    router(processor).fallback(routes::no_route).layer(
        // Outermost first: the trace sees every request; a timeout is made JSON and every
        // 5xx logged with its cause.
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(middleware::from_fn(error::log_server_errors))
            .layer(middleware::from_fn(error::json_errors))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                request_timeout,
            )),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting connections and
/// waits for the requests in progress.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
