//! The handlers: one function per route.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use order_core::{
    NewOrder, Order, OrderId, OrderMetrics, OrderProcessor, QueueDepth, StatusCounts,
};
use serde::Serialize;
use tracing::Instrument;

use crate::error::ApiError;

/// `axum::Json`, with its rejections answered as [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct AppJson<T>(pub T);

/// `axum::extract::Path`, with its rejections (a segment that is not UTF-8) answered as
/// [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct AppPath<T>(pub T);

/// An `{"order": ...}` body, as the seed API shaped it.
#[derive(Debug, Serialize)]
pub(crate) struct OrderBody {
    order: Order,
}

/// `POST /orders`: validates, stores and queues an order; `201` with the order as stored.
pub(crate) async fn create_order(
    State(processor): State<OrderProcessor>,
    OriginalUri(uri): OriginalUri,
    AppJson(new_order): AppJson<NewOrder>,
) -> Result<Response, ApiError> {
    // Submitted on its own task: if the client goes away or the request times out, storing
    // and queueing still finish together instead of stopping between the two. In the
    // request's span, so that the order's acceptance is logged with the request id.
    let order = tokio::spawn(async move { processor.submit(new_order).await }.in_current_span())
        .await
        .map_err(|err| ApiError::Internal {
            cause: format!("submit task failed: {err}"),
        })??;
    // The path the client used, so that the API nested under a prefix points into it.
    let collection = uri.path().trim_end_matches('/');
    let location = HeaderValue::from_str(&format!("{collection}/{}", order.id)).map_err(|err| {
        ApiError::Internal {
            cause: err.to_string(),
        }
    })?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(OrderBody { order }),
    )
        .into_response())
}

/// `GET /orders/{id}`: `200` with the order, `400` for an id that is not a positive 64-bit
/// integer, `404` for an unknown one.
pub(crate) async fn get_order(
    State(processor): State<OrderProcessor>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id: OrderId = raw_id
        .parse()
        .map_err(|err: order_core::ParseOrderIdError| ApiError::BadRequest(err.to_string()))?;
    match processor.get(id).await? {
        Some(order) => Ok(Json(OrderBody { order })),
        None => Err(ApiError::NotFound(format!("order {id} not found"))),
    }
}

/// The body of `GET /metrics`: the seed's keys, plus `failed`/`cancelled` and the queue.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricsBody {
    total_orders: u64,
    processed_count: u64,
    avg_processing_time: f64,
    statuses: StatusCounts,
    queue: QueueDepth,
}

impl MetricsBody {
    fn new(metrics: &OrderMetrics, queue: QueueDepth) -> Self {
        Self {
            total_orders: metrics.total_orders,
            processed_count: metrics.statuses.completed,
            avg_processing_time: metrics.avg_processing_seconds(),
            statuses: metrics.statuses,
            queue,
        }
    }
}

/// `GET /metrics`: counts that cost the same however many orders are stored.
pub(crate) async fn metrics(
    State(processor): State<OrderProcessor>,
) -> Result<Json<MetricsBody>, ApiError> {
    let metrics = processor.metrics().await?;
    let queue = processor.queue_depth().await?;
    Ok(Json(MetricsBody::new(&metrics, queue)))
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the storage answers and its schema is in place (on PostgreSQL, every
/// migration applied); `503` when not.
pub(crate) async fn readyz(
    State(processor): State<OrderProcessor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    processor.check_ready().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// Any route not listed: `404`.
pub(crate) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
