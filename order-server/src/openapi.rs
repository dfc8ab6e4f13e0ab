//! The OpenAPI document of the API, served at `/openapi.json`.
//!
//! The handlers carry their own paths, parameters and answers (`#[utoipa::path]` in
//! [`routes`](crate::routes)), and [`router`](crate::router) registers each route and its
//! documentation in one call, so a route cannot be served undocumented through it. This module
//! holds what no handler owns: the document's info and tags, and the answers every storage
//! route shares.

use std::sync::Arc;

use axum::body::Bytes;
use utoipa::{OpenApi, ToResponse};

use crate::error::{ApiError, ErrorBody};

/// The tag of the routes that create, list, read, cancel and watch orders.
pub(crate) const ORDERS: &str = "orders";
/// The tag of the routes that measure the system and say whether it can serve.
pub(crate) const MONITORING: &str = "monitoring";
/// The tag of the route that serves this document.
pub(crate) const DOCUMENTATION: &str = "documentation";

/// What the document holds besides its paths and schemas, which come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order API",
        version = env!("CARGO_PKG_VERSION"),
        description = "Create orders, follow them through processing, and measure the system.\n\n\
            Every error is `application/json` `{\"error\": \"...\"}`, with `field` naming the \
            offending field of an order that breaks a rule. A `503` from unavailable storage \
            carries `Retry-After`. Paths are relative to where the API is mounted.",
    ),
    tags(
        (name = ORDERS, description = "Create, list, read, cancel and watch orders."),
        (name = MONITORING, description = "Counts, liveness and readiness."),
        (name = DOCUMENTATION, description = "This document."),
    ),
    components(responses(StorageUnavailable, InternalError)),
)]
pub(crate) struct ApiDoc;

/// The `503` of every route that reads or writes storage.
#[derive(ToResponse)]
#[response(
    description = "The storage cannot be reached, or the request timed out; retrying later may work.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying, when storage is unavailable."))
)]
// Only its documentation is used: the response itself is an `ApiError::Unavailable`.
#[allow(dead_code)]
pub(crate) struct StorageUnavailable(ErrorBody);

/// The `500` of every route that reads or writes storage.
#[derive(ToResponse)]
#[response(description = "Something failed on the server's side; the cause is logged, not shown.")]
// Only its documentation is used: the response itself is an `ApiError::Internal`.
#[allow(dead_code)]
pub(crate) struct InternalError(ErrorBody);

/// A router's document as JSON, serialised once when the router is built and shared by every
/// request for it.
#[derive(Debug, Clone)]
pub(crate) struct ApiDocument(Result<Bytes, Arc<str>>);

impl ApiDocument {
    /// Serialises `api`.
    pub(crate) fn new(api: &utoipa::openapi::OpenApi) -> Self {
        // Serialising a document cannot fail in practice (every map key is a string); were it
        // to, `/openapi.json` answers 500 with the cause logged, and the API still serves.
        Self(
            serde_json::to_vec(api)
                .map(Bytes::from)
                .map_err(|err| Arc::from(format!("cannot serialise the OpenAPI document: {err}"))),
        )
    }

    /// The JSON text of the document.
    pub(crate) fn json(&self) -> Result<Bytes, ApiError> {
        self.0.clone().map_err(|cause| ApiError::Internal {
            cause: cause.to_string(),
        })
    }
}
