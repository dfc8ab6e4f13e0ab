//! The handlers: one function per route.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use order_core::order::MAX_ID_CHARS;
use order_core::{
    NewOrder, Order, OrderId, OrderMetrics, OrderProcessor, OrderQuery, OrderStatus, QueueDepth,
    StatusCounts,
};
use serde::{Deserialize, Serialize};
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

/// `axum::extract::Query`, with its rejections answered as [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct AppQuery<T>(pub T);

/// The page size of `GET /orders` when none is asked for.
pub const DEFAULT_PAGE: usize = 20;
/// The largest page `GET /orders` serves.
pub const MAX_PAGE: usize = 100;

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

/// An order id from the path, or `400`.
fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    raw.parse()
        .map_err(|err: order_core::ParseOrderIdError| ApiError::BadRequest(err.to_string()))
}

/// `GET /orders/{id}`: `200` with the order, `400` for an id that is not a positive 64-bit
/// integer, `404` for an unknown one.
pub(crate) async fn get_order(
    State(processor): State<OrderProcessor>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = order_id(&raw_id)?;
    match processor.get(id).await? {
        Some(order) => Ok(Json(OrderBody { order })),
        None => Err(ApiError::NotFound(format!("order {id} not found"))),
    }
}

/// The query of `GET /orders`; every parameter is optional, and an empty one counts as absent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    user_id: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

impl ListParams {
    fn query(self) -> Result<OrderQuery, ApiError> {
        let present = |value: Option<String>| value.filter(|v| !v.is_empty());
        let limit = match present(self.limit) {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_PAGE).contains(limit))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be from 1 to {MAX_PAGE}"))
                })?,
        };
        let mut query = OrderQuery::newest_first(limit);
        if let Some(raw) = present(self.status) {
            let status: OrderStatus = raw.parse().map_err(|_| {
                ApiError::BadRequest(
                    "status must be one of PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED"
                        .to_owned(),
                )
            })?;
            query = query.status(status);
        }
        if let Some(user) = present(self.user_id) {
            if user.chars().count() > MAX_ID_CHARS {
                return Err(ApiError::BadRequest(format!(
                    "userId must be at most {MAX_ID_CHARS} characters"
                )));
            }
            query = query.user(user);
        }
        if let Some(raw) = present(self.after) {
            let after = raw.parse().map_err(|_| {
                ApiError::BadRequest(
                    "after must be the nextCursor of a previous page (an order id)".to_owned(),
                )
            })?;
            query = query.after(after);
        }
        Ok(query)
    }
}

/// The body of `GET /orders`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderListBody {
    orders: Vec<Order>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /orders?status=&userId=&limit=&after=`: a page of orders, newest first, and the cursor
/// of the next page; `400` for a parameter that does not parse.
pub(crate) async fn list_orders(
    State(processor): State<OrderProcessor>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Json<OrderListBody>, ApiError> {
    let page = processor.list(&params.query()?).await?;
    Ok(Json(OrderListBody {
        orders: page.orders,
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// `POST /orders/{id}/cancel`: `200` with the CANCELLED order; `409` naming the status of an
/// order that is no longer PENDING; `404` for an unknown one.
pub(crate) async fn cancel_order(
    State(processor): State<OrderProcessor>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let order = processor.cancel(order_id(&raw_id)?).await?;
    Ok(Json(OrderBody { order }))
}

/// `GET /orders/{id}/events`: Server-Sent Events, one `status` event with the order (as in
/// `{"order": ...}`) now and after each change of its status; the stream ends after a terminal
/// one. `404` for an unknown order.
pub(crate) async fn order_events(
    State(processor): State<OrderProcessor>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = order_id(&raw_id)?;
    let watch = processor
        .watch(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    let events = watch.map(|order| {
        let event = Event::default()
            .event("status")
            .id(format!("{}-{}", order.status, order.attempts));
        // Serialising an `Order` to JSON cannot fail: every field is a string, number or
        // array of strings.
        Ok(event
            .json_data(OrderBody { order })
            .unwrap_or_else(|_| Event::default().event("error")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
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
