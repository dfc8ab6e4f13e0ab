//! The routes of bulk actions: `POST /orders/bulk/cancel`, `POST /orders/bulk/retry` and
//! `GET /orders/bulk/{id}`.

use axum::Json;
use axum::extract::{Extension, OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use order_core::bulk::{BulkAction, BulkId, BulkKind, BulkRequest};
use order_core::order::{ID_PATTERN, MAX_ID_CHARS};
use order_core::{BulkError, OrderProcessor};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, InternalError, Unavailable};
use crate::routes::{AppJson, AppPath, IDEMPOTENT_REPLAYED, idempotency_key};
use crate::tags::ORDERS;

/// A bulk action, wrapped: `{"action": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkBody {
    action: BulkAction,
}

/// Which orders a bulk action selects, besides the status its route names (PENDING to cancel,
/// FAILED to retry): the listing's user filter and a limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"userId": "user-123", "limit": 1000}))]
pub(crate) struct BulkSelection {
    /// Only this user's orders, as the listing's `userId`: 1 to 128 characters, not all
    /// whitespace, none of them NUL (as an order's).
    #[serde(default)]
    #[schema(schema_with = user_filter)]
    user_id: Option<String>,
    /// At most this many orders, the oldest first. Required: a bulk action says how far it
    /// may go.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "whole_number")]
    limit: u32,
    /// Only count the orders it would select now, and answer `200` with the count: nothing
    /// is stored or changed. What a confirmation asks first.
    #[serde(default)]
    dry_run: bool,
}

/// A JSON integer as JSON Schema has one: `113` or `113.0` (a number with no fraction), in
/// `u32`'s range; the range the document states is checked with the rest of the request.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
            // Checked above: a whole number within u32's range converts exactly.
            .map(|n| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = n as u64;
                n
            })
    });
    whole
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number, got {number}")))
}

/// How many orders a bulk request would select now: `{"matched": 120}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkPreview {
    /// The orders it would select, at most its limit.
    matched: u64,
}

/// The schema of a bulk request's `userId`: an order's user id, by the same rule.
fn user_filter() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "Only this user's orders, as the listing's `userId`: 1 to 128 characters, not all \
             whitespace, none of them NUL.",
        ))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_CHARS))
        .pattern(Some(ID_PATTERN))
        .examples(["user-123"])
        .build()
}

/// The path of one bulk action.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct BulkPath {
    /// The action's id, a UUID.
    #[param(value_type = String, format = "uuid", example = "0b8f8c52-5e0a-4d5e-9a51-3c1b9f7c2e10")]
    id: String,
}

impl From<BulkError> for ApiError {
    fn from(err: BulkError) -> Self {
        match err {
            BulkError::Invalid(err) => err.into(),
            reused @ BulkError::KeyReused { .. } => ApiError::KeyReused(reused.to_string()),
            BulkError::Storage(err) => err.into(),
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        }
    }
}

/// Accepts `kind` on `selection`: `202` with the action and its URL.
async fn accept(
    kind: BulkKind,
    processor: OrderProcessor,
    uri: &axum::http::Uri,
    caller: Option<Extension<Caller>>,
    headers: &HeaderMap,
    selection: BulkSelection,
) -> Result<Response, ApiError> {
    let scope = caller
        .map(|Extension(caller)| caller.scope)
        .unwrap_or_default();
    let key = idempotency_key(headers, scope)?;
    let mut request = BulkRequest::new(kind, selection.limit);
    if let Some(user) = selection.user_id {
        request = request.user(user);
    }
    if selection.dry_run {
        let matched = processor.bulk_preview(request).await?;
        return Ok(Json(BulkPreview { matched }).into_response());
    }
    // On its own task, as a create: the selection is stored whole even if the client goes.
    let accepted =
        tokio::spawn(async move { processor.bulk(request, key).await }.in_current_span())
            .await
            .map_err(|err| ApiError::Internal {
                cause: format!("bulk task failed: {err}"),
            })??;
    // `/orders/bulk/cancel` -> `/orders/bulk/{id}`, under the prefix the client used.
    let collection = uri
        .path()
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or("", |(collection, _)| collection);
    let location =
        HeaderValue::from_str(&format!("{collection}/{}", accepted.action.id)).map_err(|err| {
            ApiError::Internal {
                cause: err.to_string(),
            }
        })?;
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(BulkBody {
            action: accepted.action,
        }),
    )
        .into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Cancel every PENDING order a filter selects.
///
/// Selects the PENDING orders that match now (`userId`, if given), the oldest first, up to
/// `limit`, and answers `202` with the action (`matched` says how many) and its URL in
/// `Location`. Those orders, and only those, are then cancelled a page at a time by the
/// servers on this storage; one that started meanwhile is skipped. `GET /orders/bulk/{id}`
/// follows the progress. With an `Idempotency-Key`, a request sent again answers the same
/// action and selects nothing new.
#[utoipa::path(
    post,
    path = "/orders/bulk/cancel",
    operation_id = "bulkCancelOrders",
    tag = ORDERS,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "Names this request: sent again with the same key and body, it \
                answers the action accepted the first time.",
            min_length = 1,
            pattern = r#"^[\t ]*(?:[!-~]|[!#-~][ -~]{0,253}[!-~]|"[ -~]{0,253}[!#-~]|"[ -~]{1,255}")[\t ]*$"#,
            example = "cancel-pending-2291"),
    ),
    request_body(content = BulkSelection, description = "Which orders; any other field is refused."),
    responses(
        (status = 200, description = "With `dryRun`: how many orders it would select now; nothing was stored.", body = BulkPreview),
        (status = 202, description = "The action, accepted: its orders are selected and being cancelled.",
            body = BulkBody,
            headers(
                ("Location" = String, description = "The action's URL, under the path the API is mounted at."),
                ("Idempotent-Replayed" = bool, description = "`true` when this answers a replayed Idempotency-Key."),
            )),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key is not a valid key or is given twice.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`.", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape, a limit out of range, or an Idempotency-Key already used for another request.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn bulk_cancel(
    State(processor): State<OrderProcessor>,
    OriginalUri(uri): OriginalUri,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    AppJson(selection): AppJson<BulkSelection>,
) -> Result<Response, ApiError> {
    accept(
        BulkKind::Cancel,
        processor,
        &uri,
        caller,
        &headers,
        selection,
    )
    .await
}

/// Retry every FAILED order a filter selects.
///
/// As the bulk cancel, for the FAILED orders that match now: each is put back to PENDING as
/// `POST /orders/{id}/retry` does, its failure kept; one retried meanwhile is skipped.
#[utoipa::path(
    post,
    path = "/orders/bulk/retry",
    operation_id = "bulkRetryOrders",
    tag = ORDERS,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "Names this request: sent again with the same key and body, it \
                answers the action accepted the first time.",
            min_length = 1,
            pattern = r#"^[\t ]*(?:[!-~]|[!#-~][ -~]{0,253}[!-~]|"[ -~]{0,253}[!#-~]|"[ -~]{1,255}")[\t ]*$"#,
            example = "retry-failed-2291"),
    ),
    request_body(content = BulkSelection, description = "Which orders; any other field is refused."),
    responses(
        (status = 200, description = "With `dryRun`: how many orders it would select now; nothing was stored.", body = BulkPreview),
        (status = 202, description = "The action, accepted: its orders are selected and being retried.",
            body = BulkBody,
            headers(
                ("Location" = String, description = "The action's URL, under the path the API is mounted at."),
                ("Idempotent-Replayed" = bool, description = "`true` when this answers a replayed Idempotency-Key."),
            )),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key is not a valid key or is given twice.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`.", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape, a limit out of range, or an Idempotency-Key already used for another request.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn bulk_retry(
    State(processor): State<OrderProcessor>,
    OriginalUri(uri): OriginalUri,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    AppJson(selection): AppJson<BulkSelection>,
) -> Result<Response, ApiError> {
    accept(
        BulkKind::Retry,
        processor,
        &uri,
        caller,
        &headers,
        selection,
    )
    .await
}

/// Read a bulk action.
///
/// Its counts as stored (`matched`, `acted`, `skipped`) and its status (`RUNNING`, `DONE`):
/// any server on the same storage answers. `404` for an unknown id, `400` for one that is
/// not a UUID.
#[utoipa::path(
    get,
    path = "/orders/bulk/{id}",
    operation_id = "getBulkAction",
    tag = ORDERS,
    params(BulkPath),
    responses(
        (status = 200, description = "The action, as far as it has got.", body = BulkBody),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 404, description = "No bulk action has this id.", body = ErrorBody),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn get_bulk_action(
    State(processor): State<OrderProcessor>,
    AppPath(path): AppPath<BulkPath>,
) -> Result<Json<BulkBody>, ApiError> {
    let id: BulkId = path
        .id
        .parse()
        .map_err(|err: order_core::bulk::ParseBulkIdError| ApiError::BadRequest(err.to_string()))?;
    let action = processor
        .bulk_action(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("bulk action {id} not found")))?;
    Ok(Json(BulkBody { action }))
}
