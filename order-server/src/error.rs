//! The one error type of the API, and the layers that make every error response JSON.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use order_core::{CancelError, QueueError, RetryError, StorageError, SubmitError, ValidationError};
use serde::Serialize;
use utoipa::ToResponse;

/// Everything a request can fail with. Each variant's status is in its doc comment; the body is
/// always `{"error": "..."}` (plus `field` for a validation error).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400, 413, 415 or 422, as axum's extractor judged the request: malformed JSON (400),
    /// a body too large (413), a wrong content type (415), JSON of the wrong shape (422).
    #[error("{message}")]
    Rejected {
        /// The status the extractor chose.
        status: StatusCode,
        /// What was wrong, from the extractor.
        message: String,
    },
    /// 400: a path or query parameter that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the order broke a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// 422: the `Idempotency-Key` was used before for a different order.
    #[error("{0}")]
    KeyReused(String),
    /// 503: too many requests in progress; retrying after `Retry-After` may work.
    #[error("{0}")]
    Overloaded(String),
    /// 503: the request took longer than the request timeout; retrying after `Retry-After`
    /// may work.
    #[error("the request took longer than {0:?}; try again later")]
    TimedOut(std::time::Duration),
    /// 401: no bearer token, or not a valid one (with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// 404: no such order, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the order is not in a state that allows this (the message names its status).
    #[error("{0}")]
    Conflict(String),
    /// 503: the storage cannot be reached; retrying later may work. The cause is logged, not
    /// shown.
    #[error("storage unavailable, try again later")]
    Unavailable {
        /// Why, for the log.
        cause: String,
    },
    /// 500: anything else that went wrong on our side. The cause is logged, not shown.
    #[error("internal server error")]
    Internal {
        /// Why, for the log.
        cause: String,
    },
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        let cause = error_chain(&err);
        if err.unavailable {
            ApiError::Unavailable { cause }
        } else {
            ApiError::Internal { cause }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::Storage(err) => err.into(),
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Invalid(err) => err.into(),
            reused @ SubmitError::KeyReused { .. } => ApiError::KeyReused(reused.to_string()),
            SubmitError::Storage(err) => err.into(),
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::NotFound(_) => ApiError::NotFound(err.to_string()),
            RetryError::NotFailed { .. } => ApiError::Conflict(err.to_string()),
            RetryError::Storage(err) => err.into(),
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(err: CancelError) -> Self {
        match err {
            CancelError::NotFound(_) => ApiError::NotFound(err.to_string()),
            CancelError::NotCancellable { .. } => ApiError::Conflict(err.to_string()),
            CancelError::Storage(err) => err.into(),
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected { status, .. } => *status,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded(_) | ApiError::TimedOut(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({"error": "order 42 not found"})))]
pub struct ErrorBody {
    /// What went wrong, in words a client can act on.
    pub error: String,
    /// The offending field, for a validation error.
    #[serde(skip_serializing_if = "Option::is_none")]
    // Left out rather than `null` when there is none.
    #[schema(nullable = false)]
    pub field: Option<String>,
}

// The OpenAPI descriptions of the answers that many routes share, each an `ApiError` in
// practice: beside the errors they describe, so that every handler's module can name them.

/// The `401` of every route but the probes and the page, when the server requires tokens.
#[derive(ToResponse)]
#[response(
    description = "The server requires a bearer token (`API_TOKEN`), and the request has none or a wrong one.",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"order-server\"`, with `error=\"invalid_token\"` for a wrong token."))
)]
// Only its documentation is used: the response itself is an `ApiError::Unauthorized`.
#[allow(dead_code)]
pub(crate) struct Unauthorized(ErrorBody);

/// The `503` of every route that reads or writes storage, and, served by
/// [`app`](crate::app), of every route.
#[derive(ToResponse)]
#[response(
    description = "The storage cannot be reached, too many requests are in progress \
        (`MAX_IN_FLIGHT`; never for the probes), or the request took longer than the request \
        timeout; retrying later may work.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))
)]
// Only its documentation is used: the response itself is an `ApiError::Unavailable`,
// `Overloaded` or `TimedOut`.
#[allow(dead_code)]
pub(crate) struct Unavailable(ErrorBody);

/// The `500` of every route: a bug, a panic in a handler included.
#[derive(ToResponse)]
#[response(description = "Something failed on the server's side; the cause is logged, not shown.")]
// Only its documentation is used: the response itself is an `ApiError::Internal`.
#[allow(dead_code)]
pub(crate) struct InternalError(ErrorBody);

/// The cause of a 5xx response, carried in the response's extensions to the logging layer, so
/// the client sees a generic message and the log sees why.
#[derive(Debug, Clone)]
pub(crate) struct ServerErrorCause(Arc<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let field = match &self {
            ApiError::Invalid(err) => Some(err.field.clone()),
            _ => None,
        };
        let cause = match &self {
            ApiError::Unavailable { cause } | ApiError::Internal { cause } => Some(cause.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Storage outages are usually short: tell well-behaved clients when to retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(cause) = cause {
            response
                .extensions_mut()
                .insert(ServerErrorCause(Arc::new(cause)));
        }
        response
    }
}

/// An error and its sources, joined: "could not store: connection refused: ...".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs every 5xx response with its cause; the client saw only a generic message.
pub(crate) async fn log_server_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status().is_server_error() {
        let cause = response
            .extensions()
            .get::<ServerErrorCause>()
            .map_or("no cause recorded", |cause| cause.0.as_str());
        let status = response.status().as_u16();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            // An outage or overload: expected to pass, and logged once per request already.
            tracing::warn!(%method, %path, status, cause, "request failed");
        } else {
            tracing::error!(%method, %path, status, cause, "request failed");
        }
    }
    response
}

/// Turns any error response that is not JSON yet (a 405 from the router, a 413 from a body
/// limit) into `{"error": "<reason>"}`, keeping its status and
/// headers such as `Allow`.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let reason = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed for this route".to_owned(),
        other => other
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&ErrorBody {
        error: reason,
        field: None,
    })
    .unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

/// The response to a handler that panicked: a JSON 500, the panic logged.
// `CatchPanicLayer` hands the panic over by value.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::Internal {
        cause: format!("handler panicked: {message}"),
    }
    .into_response()
}
