//! The HTTP API of [`order_core`]: create orders, read them, and measure the system.
//!
//! The binary only parses [`Config`], binds and calls [`run`]; everything else is here, so
//! tests (and services that embed the API) call [`app`] directly.
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders` | `201 {"order": ...}` with `Location`; `400`/`415`/`422`/`413` for bad input |
//! | `GET /orders/{id}` | `200 {"order": ...}`; `400` for a bad id, `404` for an unknown one |
//! | `GET /metrics` | `200 {"totalOrders", "processedCount", "avgProcessingTime", "statuses", "queue"}` |
//! | `GET /healthz` | `200` while the process runs |
//! | `GET /readyz` | `200` when storage answers and its schema is in place, `503` when not |
//!
//! Every error is `application/json` `{"error": "..."}`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use order_core::OrderProcessor;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub mod config;
mod error;
mod routes;

pub use config::{Config, ConfigError, LogFormat};
pub use error::{ApiError, ErrorBody};

/// The largest request body accepted: 1 MiB, far above the largest valid order (1000 item ids
/// of 128 characters).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The API's router, with its error handling, body limit, request timeout and request logs.
pub fn app(processor: OrderProcessor, request_timeout: Duration) -> Router {
    Router::new()
        .route("/orders", post(routes::create_order))
        .route("/orders/{id}", get(routes::get_order))
        .route("/metrics", get(routes::metrics))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::no_route)
        .with_state(processor)
        .layer(
            // Outermost first: the trace sees every request; errors are made JSON and logged
            // whatever produced them, a panic or a timeout included.
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(middleware::from_fn(error::log_server_errors))
                .layer(middleware::from_fn(error::json_errors))
                .layer(CatchPanicLayer::custom(error::panic_response))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    request_timeout,
                ))
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
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
