//! Load shedding: a cap on requests in progress, past which new ones are refused at once, and
//! a time limit on each.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::paths::PROBE_PATHS;

/// The permits of requests in progress.
#[derive(Debug, Clone)]
pub(crate) struct InFlight(Arc<Semaphore>);

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(
            max.clamp(1, Semaphore::MAX_PERMITS),
        )))
    }
}

/// Runs the request while it holds a permit (until its response head is ready: a stream's
/// body does not hold one), or answers `503` with `Retry-After` when none is free.
pub(crate) async fn shed(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    if PROBE_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match in_flight.0.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => ApiError::Overloaded(
            "the server is at its limit of requests in progress; retry shortly".to_owned(),
        )
        .into_response(),
    }
}

/// Answers `503` with `Retry-After` (an [`ApiError::TimedOut`]) when the request's response
/// head is not ready within `limit`; the handler's future is dropped. tower-http's
/// `TimeoutLayer` would answer with no `Retry-After` and an empty body, to be patched up by
/// another layer: an error of this API, like every other, says when to retry and why.
pub(crate) async fn time_limit(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut(limit).into_response(),
    }
}
