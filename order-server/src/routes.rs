//! The handlers: one function per route.

use crate::closing::Closing;
use std::convert::Infallible;

use axum::Json;
use axum::extract::{Extension, FromRequest, FromRequestParts, OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use order_core::order::MAX_ID_CHARS;
use order_core::{
    Cancellation, IdempotencyKey, NewOrder, Order, OrderId, OrderMetrics, OrderProcessor,
    OrderQuery, OrderStatus, QueueDepth, StatusCounts, Submission,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, InternalError, Unavailable};
use crate::openapi::ApiDocument;
use crate::tags::{DOCUMENTATION, MONITORING, ORDERS};

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

/// One order, wrapped: `{"order": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderBody {
    order: Order,
}

/// The path of the routes of one order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct OrderPath {
    /// The order's id: a positive 64-bit integer.
    // Taken as text so that a bad id gets this API's `400`, naming the rule.
    #[param(value_type = i64, minimum = 1, maximum = 9_223_372_036_854_775_807_i64, example = 1)]
    id: String,
}

/// Create an order.
///
/// Validates the order, stores it and queues it for processing: `201` with the order as
/// stored (PENDING, its total in cents) and its URL in `Location`.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "createOrder",
    tag = ORDERS,
    params(
        // The pattern is exactly what `idempotency_key` accepts: 1 to 255 visible ASCII
        // characters or spaces, bare, or quoted (then 1 to 255 inside the quotes). One `"`
        // alone is a bare key; `""` is an empty quoted one. A field value starts and ends with
        // a visible character (RFC 9110 5.5): spaces and tabs around it are not part of it,
        // hyper drops them, and the pattern lets them be; which is also why it sets no
        // `maxLength`. The OpenAPI tests hold it to the server.
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "Names this submission (1 to 255 visible ASCII characters or \
                spaces, bare or quoted): a retry with the same key and body returns the first \
                response and creates nothing, for 24 h by default; keys are scoped by bearer \
                token.",
            min_length = 1,
            pattern = r#"^[\t ]*(?:[!-~]|[!#-~][ -~]{0,253}[!-~]|"[ -~]{0,253}[!#-~]|"[ -~]{1,255}")[\t ]*$"#,
            example = "checkout-2291"),
    ),
    request_body(
        content = NewOrder,
        description = "The order; any other field is refused.",
    ),
    responses(
        (status = 201, description = "The order, accepted and stored; processing follows. For a \
            replayed Idempotency-Key, the first response's body, and nothing was created.",
            body = OrderBody,
            headers(
                ("Location" = String, description = "The order's URL, under the path the API is mounted at."),
                ("Idempotent-Replayed" = bool, description = "`true` when this answers a replayed Idempotency-Key."),
            )),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key is not a \
            valid key or is given twice.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`.", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (a field missing, unknown or of \
            the wrong type, such as an amount given as a string), an order that breaks a \
            rule, whose `field` is named, or an Idempotency-Key already used for a different \
            order.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn create_order(
    State(processor): State<OrderProcessor>,
    OriginalUri(uri): OriginalUri,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    AppJson(new_order): AppJson<NewOrder>,
) -> Result<Response, ApiError> {
    let scope = caller
        .map(|Extension(caller)| caller.scope)
        .unwrap_or_default();
    let mut submission = Submission::new(new_order);
    if let Some(key) = idempotency_key(&headers, scope)? {
        submission = submission.idempotency_key(key);
    }
    // Submitted on its own task: if the client goes away or the request times out, storing
    // and queueing still finish together instead of stopping between the two. In the
    // request's span, so that the order's acceptance is logged with the request id.
    let submitted =
        tokio::spawn(async move { processor.submit_or_replay(submission).await }.in_current_span())
            .await
            .map_err(|err| ApiError::Internal {
                cause: format!("submit task failed: {err}"),
            })??;
    // The path the client used, so that the API nested under a prefix points into it.
    let collection = uri.path().trim_end_matches('/');
    let order = submitted.order;
    let location = HeaderValue::from_str(&format!("{collection}/{}", order.id)).map_err(|err| {
        ApiError::Internal {
            cause: err.to_string(),
        }
    })?;
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        // A replay answers what the first response said: the order as it was accepted.
        Json(OrderBody {
            order: if submitted.replayed {
                order.as_accepted()
            } else {
                order
            },
        }),
    )
        .into_response();
    if submitted.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The header that marks a replayed response.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, in the caller's scope: a bare value (as Stripe takes it) or
/// a quoted string (as the IETF draft writes it); `400` for more than one, or one that is not
/// 1 to 255 visible ASCII characters.
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    scope: String,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be given once".to_owned(),
        ));
    }
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest("Idempotency-Key must be visible ASCII characters".to_owned())
    })?;
    let text = text
        .strip_prefix('"')
        .and_then(|quoted| quoted.strip_suffix('"'))
        .unwrap_or(text);
    IdempotencyKey::scoped(scope, text)
        .map(Some)
        .map_err(|err| ApiError::BadRequest(err.to_string()))
}

/// Whether `raw` is a positive integer as the document's integers are written: decimal
/// digits only, without a sign or a leading zero. (`str::parse` also takes `+7` and `007`,
/// which no integer parameter of the document spells.)
fn is_positive_integer(raw: &str) -> bool {
    raw.bytes().all(|byte| byte.is_ascii_digit()) && !raw.is_empty() && !raw.starts_with('0')
}

/// An order id (from the path, or a cursor), or `400`.
fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    let invalid = || order_core::ParseOrderIdError {
        input: raw.chars().take(64).collect(),
    };
    let parsed = if is_positive_integer(raw) {
        raw.parse()
    } else {
        Err(invalid())
    };
    parsed.map_err(|err: order_core::ParseOrderIdError| ApiError::BadRequest(err.to_string()))
}

/// Read an order.
///
/// `200` with the order; `400` for an id that is not a positive 64-bit integer, `404` for an
/// unknown one.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = ORDERS,
    params(OrderPath),
    responses(
        (status = 200, description = "The order as it is now.", body = OrderBody),
        (status = 400, description = "The id is not a positive 64-bit integer.", body = ErrorBody),
        (status = 404, description = "No order has this id.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn get_order(
    State(processor): State<OrderProcessor>,
    AppPath(path): AppPath<OrderPath>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = order_id(&path.id)?;
    match processor.get(id).await? {
        Some(order) => Ok(Json(OrderBody { order })),
        None => Err(ApiError::NotFound(format!("order {id} not found"))),
    }
}

/// The query of `GET /orders`; every parameter is optional, but one that is given must have a
/// value.
// Each is taken as text and parsed in `query`, so that a bad one gets a `400` naming the rule;
// `value_type` documents what it must parse as. The limits and patterns are literals because
// utoipa's attributes take no constants; the OpenAPI tests hold them to `MAX_ID_CHARS`,
// `MAX_PAGE`, `DEFAULT_PAGE`, `OrderStatus` and what `query` accepts.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only orders in this status, in any letter case.
    // A pattern, not the `OrderStatus` enum, because the letter case is free.
    #[param(value_type = String, required = false, example = "PENDING",
        pattern = "^(?:[Pp][Ee][Nn][Dd][Ii][Nn][Gg]|[Pp][Rr][Oo][Cc][Ee][Ss][Ss][Ii][Nn][Gg]|[Cc][Oo][Mm][Pp][Ll][Ee][Tt][Ee][Dd]|[Ff][Aa][Ii][Ll][Ee][Dd]|[Cc][Aa][Nn][Cc][Ee][Ll][Ll][Ee][Dd])$")]
    status: Option<String>,
    /// Only the orders of this user: 1 to 128 characters, none of them NUL.
    #[param(value_type = String, required = false, min_length = 1, max_length = 128,
        pattern = r"^[^\u0000]*$", example = "user-123")]
    user_id: Option<String>,
    /// How many orders a page holds.
    #[param(value_type = u32, required = false, minimum = 1, maximum = 100, default = 20, example = 20)]
    limit: Option<String>,
    /// The `nextCursor` of the previous page (an order id); without it, the first page.
    #[param(value_type = i64, required = false, minimum = 1,
        maximum = 9_223_372_036_854_775_807_i64, example = 1)]
    after: Option<String>,
}

impl ListParams {
    fn query(self) -> Result<OrderQuery, ApiError> {
        // A parameter given without a value (`status=`) is a client's mistake, not a request
        // for everything: it is refused like any other value outside the parameter's rules.
        let present = |name: &str, value: Option<String>| match value {
            Some(value) if value.is_empty() => Err(ApiError::BadRequest(format!(
                "{name} must not be empty; leave it out instead"
            ))),
            value => Ok(value),
        };
        let limit = match present("limit", self.limit)? {
            None => DEFAULT_PAGE,
            Some(raw) => Some(raw)
                .filter(|raw| is_positive_integer(raw))
                .and_then(|raw| raw.parse::<usize>().ok())
                .filter(|limit| (1..=MAX_PAGE).contains(limit))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be from 1 to {MAX_PAGE}"))
                })?,
        };
        let mut query = OrderQuery::newest_first(limit);
        if let Some(raw) = present("status", self.status)? {
            let status: OrderStatus = raw.parse().map_err(|_| {
                ApiError::BadRequest(
                    "status must be one of PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED"
                        .to_owned(),
                )
            })?;
            query = query.status(status);
        }
        if let Some(user) = present("userId", self.user_id)? {
            if user.chars().count() > MAX_ID_CHARS {
                return Err(ApiError::BadRequest(format!(
                    "userId must be at most {MAX_ID_CHARS} characters"
                )));
            }
            // No stored user id holds one (`NewOrder::validate` refuses it), and PostgreSQL
            // text cannot hold one at all.
            if user.contains('\0') {
                return Err(ApiError::BadRequest(
                    "userId must not contain the NUL character".to_owned(),
                ));
            }
            query = query.user(user);
        }
        if let Some(raw) = present("after", self.after)? {
            let after = order_id(&raw).map_err(|_| {
                ApiError::BadRequest(
                    "after must be the nextCursor of a previous page (an order id)".to_owned(),
                )
            })?;
            query = query.after(after);
        }
        Ok(query)
    }
}

/// A page of orders, newest first, and where the next page starts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderListBody {
    /// The orders of this page, newest first.
    orders: Vec<Order>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[schema(required = true, examples("1"))]
    next_cursor: Option<String>,
}

/// List orders.
///
/// A page of orders, newest first, optionally only those in one status or of one user, and
/// the cursor of the next page; `400` for a parameter that does not parse, or an unknown one.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "listOrders",
    tag = ORDERS,
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders.", body = OrderListBody),
        (status = 400, description = "A parameter that does not parse or breaks its limits, \
            or one this route does not know.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
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

/// Cancel an order.
///
/// A PENDING order is cancelled at once: `200` with the CANCELLED order. A PROCESSING order
/// processed in steps that can all be compensated (see `PROCESSING_STEPS`) has the cancel
/// recorded: `202` with the order, still PROCESSING, its `cancelRequestedAt` set; its running
/// step finishes, the finished steps are compensated in reverse, and it ends CANCELLED (watch
/// it with `GET /orders/{id}/events`). `409` naming the status of an order that can no longer
/// be cancelled (finished, or PROCESSING in a step that cannot be undone); `404` for an
/// unknown one.
#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    operation_id = "cancelOrder",
    tag = ORDERS,
    params(OrderPath),
    responses(
        (status = 200, description = "The order, CANCELLED; no worker will start it.", body = OrderBody),
        (status = 202, description = "The order, still PROCESSING with the cancel recorded (`cancelRequestedAt`): its finished steps are being compensated, and it ends CANCELLED.", body = OrderBody),
        (status = 400, description = "The id is not a positive 64-bit integer.", body = ErrorBody),
        (status = 404, description = "No order has this id.", body = ErrorBody),
        (status = 409, description = "The order can no longer be cancelled: it is finished, or PROCESSING in steps that cannot be undone; the message names its status.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn cancel_order(
    State(processor): State<OrderProcessor>,
    AppPath(path): AppPath<OrderPath>,
) -> Result<(StatusCode, Json<OrderBody>), ApiError> {
    let (status, order) = match processor.cancel(order_id(&path.id)?).await? {
        Cancellation::Requested(order) => (StatusCode::ACCEPTED, order),
        cancelled => (StatusCode::OK, cancelled.into_order()),
    };
    Ok((status, Json(OrderBody { order })))
}

/// Retry a failed order.
///
/// Puts a FAILED order back in the queue: `200` with the order, PENDING again. Its
/// `attempts` keep counting, its failure (time, step, error) is kept in `failures`, and it
/// gets a full set of attempts. An order processed in steps resumes at the first step whose
/// work does not stand: the step that failed, or an earlier one that the failure compensated;
/// each step that runs again gets a new idempotency key. `409` naming the status of an order
/// that is not FAILED (a second retry of one failure finds it PENDING); `404` for an unknown
/// one.
#[utoipa::path(
    post,
    path = "/orders/{id}/retry",
    operation_id = "retryOrder",
    tag = ORDERS,
    params(OrderPath),
    responses(
        (status = 200, description = "The order, PENDING again, its earlier failure in `failures`.", body = OrderBody),
        (status = 400, description = "The id is not a positive 64-bit integer.", body = ErrorBody),
        (status = 404, description = "No order has this id.", body = ErrorBody),
        (status = 409, description = "The order is not FAILED; the message names its status.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn retry_order(
    State(processor): State<OrderProcessor>,
    AppPath(path): AppPath<OrderPath>,
) -> Result<Json<OrderBody>, ApiError> {
    let order = processor.retry(order_id(&path.id)?).await?;
    Ok(Json(OrderBody { order }))
}

/// Watch an order.
///
/// Server-Sent Events: one `status` event with the order (as in `{"order": ...}`) now and
/// after each change of its status or, for an order processed in steps, of its steps; the
/// stream ends after a terminal one. `404` for an unknown order.
#[utoipa::path(
    get,
    path = "/orders/{id}/events",
    operation_id = "watchOrder",
    tag = ORDERS,
    params(OrderPath),
    responses(
        (status = 200, description = "A stream of `status` events, each with `data` an \
            `OrderBody` as JSON and `id` the status and attempt (`PROCESSING-1`); it ends after \
            COMPLETED, FAILED or CANCELLED.", content_type = "text/event-stream", body = String),
        (status = 400, description = "The id is not a positive 64-bit integer.", body = ErrorBody),
        (status = 404, description = "No order has this id.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn order_events(
    State(processor): State<OrderProcessor>,
    Extension(closing): Extension<Closing>,
    AppPath(path): AppPath<OrderPath>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = order_id(&path.id)?;
    let watch = processor
        .watch(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    // Shutting down ends the stream, so that the connection can drain.
    let closed = async move { closing.closed().await };
    let events = watch.take_until(closed).map(|order| {
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

/// Counts of orders, by status, and of the queue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricsBody {
    /// Orders ever accepted.
    total_orders: u64,
    /// COMPLETED orders.
    processed_count: u64,
    /// Mean seconds from a COMPLETED order's first start to its completion; 0 when none has
    /// completed.
    avg_processing_time: f64,
    /// Orders in each status; they add up to `totalOrders`.
    statuses: StatusCounts,
    /// What the queue holds.
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

/// Measure the system.
///
/// Counts that cost the same however many orders are stored.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = MONITORING,
    responses(
        (status = 200, description = "The counts as they are now.", body = MetricsBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn metrics(
    State(processor): State<OrderProcessor>,
) -> Result<Json<MetricsBody>, ApiError> {
    let metrics = processor.metrics().await?;
    let queue = processor.queue_depth().await?;
    Ok(Json(MetricsBody::new(&metrics, queue)))
}

/// The body of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthBody {
    status: Health,
}

/// What a health route found.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Health {
    /// The process runs (`GET /healthz`).
    Ok,
    /// The storage answers and its schema is in place (`GET /readyz`).
    Ready,
}

/// Is the process up?
///
/// `200` while the process runs; it touches no storage.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = MONITORING,
    responses(
        (status = 200, description = "The process runs.", body = HealthBody,
            example = json!({"status": "ok"})),
    ),
)]
pub(crate) async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: Health::Ok })
}

/// Can the server serve?
///
/// The storage answers and its schema is in place (on PostgreSQL, every migration applied);
/// `503` when not.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReadiness",
    tag = MONITORING,
    responses(
        (status = 200, description = "Ready to serve.", body = HealthBody,
            example = json!({"status": "ready"})),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn readyz(
    State(processor): State<OrderProcessor>,
) -> Result<Json<HealthBody>, ApiError> {
    processor.check_ready().await?;
    Ok(Json(HealthBody {
        status: Health::Ready,
    }))
}

/// Describe this API.
///
/// The OpenAPI 3.1 document of this API: every route, its parameters, bodies and answers,
/// generated from the code that serves them.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = DOCUMENTATION,
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object,
            content_type = "application/json"),
    ),
)]
pub(crate) async fn openapi_document(
    Extension(document): Extension<ApiDocument>,
) -> Result<Response, ApiError> {
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.json()?,
    )
        .into_response())
}

/// Any route not listed: `404`.
pub(crate) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
