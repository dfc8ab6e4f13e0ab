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
use crate::routes::is_open;

/// The tag of the routes that create, list, read, cancel and watch orders.
pub(crate) const ORDERS: &str = "orders";
/// The tag of the routes that measure the system and say whether it can serve.
pub(crate) const MONITORING: &str = "monitoring";
/// The tag of the route that serves this document.
pub(crate) const DOCUMENTATION: &str = "documentation";
/// The tag of the routes that serve the dashboard page.
pub(crate) const DASHBOARD: &str = "dashboard";

/// What the document holds besides its paths and schemas, which come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order API",
        version = env!("CARGO_PKG_VERSION"),
        description = "Create orders, follow them through processing, and measure the system.\n\n\
            Every error is `application/json` `{\"error\": \"...\"}`, with `field` naming the \
            offending field of an order that breaks a rule. A `503` (storage unavailable, or \
            too many requests in progress) carries `Retry-After`. When the server runs with \
            `API_TOKEN`, every route but `/healthz`, `/readyz` and the dashboard page needs \
            `Authorization: Bearer <token>`. Paths are relative to where the API is mounted.",
    ),
    tags(
        (name = ORDERS, description = "Create, list, read, cancel and watch orders."),
        (name = MONITORING, description = "Counts, liveness and readiness."),
        (name = DOCUMENTATION, description = "This document."),
        (name = DASHBOARD, description = "The live dashboard page, open without a token."),
    ),
    // The events of `GET /metrics/stream`, which no JSON response refers to.
    components(
        responses(
            StorageUnavailable,
            InternalError,
            Unauthorized,
            crate::dashboard::DashboardPage,
            crate::dashboard::PageNotModified,
        ),
        schemas(crate::history::HistoryBody, crate::history::Sample),
    ),
    modifiers(&BearerTokens),
)]
pub(crate) struct ApiDoc;

/// Documents the bearer tokens: a `bearer` security scheme, optional on every route but the
/// probes (a server without `API_TOKEN` is open), each of which may then answer `401`.
struct BearerTokens;

impl utoipa::Modify for BearerTokens {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{Ref, RefOr};

        if let Some(components) = api.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
        for (path, item) in &mut api.paths.paths {
            if is_open(path) {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
                operation.responses.responses.insert(
                    "401".to_owned(),
                    RefOr::Ref(Ref::from_response_name("Unauthorized")),
                );
            }
        }
    }
}

/// The `401` of every route but the probes, when the server requires tokens.
#[derive(ToResponse)]
#[response(
    description = "The server requires a bearer token (`API_TOKEN`), and the request has none or a wrong one.",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"order-server\"`, with `error=\"invalid_token\"` for a wrong token."))
)]
// Only its documentation is used: the response itself is an `ApiError::Unauthorized`.
#[allow(dead_code)]
pub(crate) struct Unauthorized(ErrorBody);

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
