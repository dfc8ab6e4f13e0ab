//! The OpenAPI document of the API, served at `/openapi.json`.
//!
//! The handlers carry their own paths, parameters and answers (`#[utoipa::path]` in
//! [`routes`](crate::routes)), and [`router`](crate::router) registers each route and its
//! documentation in one call, so a route cannot be served undocumented through it. This module
//! holds what no handler owns: the document's info and tags, the answers that the layers
//! around the handlers add ([`Served`]), the links between operations, and the keywords that
//! utoipa cannot write.
//!
//! The document says exactly what the server accepts and answers: a schema-driven fuzzer
//! (`scripts/fuzz.sh`) sends requests that the document allows and requests that it forbids,
//! and fails on any answer that the document does not predict.
//!
//! No operation documents `408`: the server never sends one. A client that does not finish
//! its request head within [`HEADER_READ_TIMEOUT`](crate::HEADER_READ_TIMEOUT) has its
//! connection closed without an answer (hyper answers nothing to a header timeout), and a
//! request that takes longer than the request timeout is answered `503` with `Retry-After`,
//! as the shared [`Unavailable`](crate::error::Unavailable) says.
//!
//! Nor does it list what hyper answers before any of this code runs, to bytes that are not an
//! HTTP/1.1 request head at all: `400` (a malformed head), `414` (a request line over its
//! buffer) and `431` (headers over it), each without a body. They are answers to a client
//! that does not speak HTTP, not to a request of this API.

use std::sync::Arc;

use axum::body::Bytes;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi as Document, Ref, RefOr};

use crate::error::{ApiError, InternalError, Unauthorized, Unavailable};
use crate::paths::is_open;
use crate::tags::{DASHBOARD, DOCUMENTATION, MONITORING, ORDERS};

/// What the document holds besides its paths and schemas, which come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order API",
        version = env!("CARGO_PKG_VERSION"),
        description = "Create orders, follow them through processing, and measure the system.\n\n\
            Every error is `application/json` `{\"error\": \"...\"}`, with `field` naming the \
            offending field of an order that breaks a rule. A `503` (storage unavailable, too \
            many requests in progress, or a request over the time limit) carries \
            `Retry-After`. When the server runs with `API_TOKEN`, every route but `/healthz`, \
            `/readyz` and the dashboard page needs `Authorization: Bearer <token>`, and this \
            document says so. Paths are relative to where the API is mounted.",
    ),
    tags(
        (name = ORDERS, description = "Create, list, read, cancel, retry and watch orders."),
        (name = MONITORING, description = "Counts, liveness and readiness."),
        (name = DOCUMENTATION, description = "This document."),
        (name = DASHBOARD, description = "The live dashboard page, open without a token."),
    ),
    // The events of `GET /metrics/stream`, which no JSON response refers to.
    components(
        responses(
            Unavailable,
            InternalError,
            Unauthorized,
            crate::dashboard::DashboardPage,
            crate::dashboard::PageNotModified,
        ),
        schemas(crate::history::HistoryBody, crate::history::Sample),
    ),
)]
pub(crate) struct ApiDoc;

/// The layers around the routes, which answer on every route and so belong in the document
/// of each: those of [`app`](crate::app), not of a [`router`](crate::router) nested in
/// another service, whose own layers are its own to document.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served {
    /// Bearer tokens are required (`API_TOKEN`): `401` on every route but the open ones.
    pub(crate) tokens: bool,
    /// The request time limit (every route) and the cap on requests in progress (every route
    /// but the probes): `503`.
    pub(crate) limits: bool,
}

/// Adds to the handlers' document what the layers and the links between operations say:
/// `500` everywhere (a panic in any handler is caught and answered), `503` and `401` as
/// [`Served`] has it, and the links from a created order to the operations on it.
pub(crate) fn complete(api: &mut Document, served: Served) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};

    if served.tokens
        && let Some(components) = api.components.as_mut()
    {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
    for (path, item) in &mut api.paths.paths {
        let open = is_open(path);
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
            let responses = &mut operation.responses.responses;
            let mut shared = |status: &str, name: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
            };
            shared("500", "InternalError");
            if served.limits {
                shared("503", "Unavailable");
            }
            if served.tokens && !open {
                shared("401", "Unauthorized");
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
        if let Some(create) = item
            .post
            .as_mut()
            .filter(|op| is_operation(op, "createOrder"))
        {
            link_created_order(create);
        }
    }
}

/// Takes the dashboard's tag and page responses out of a document whose router serves no
/// page, so that it describes nothing the router does not serve.
pub(crate) fn leave_out_dashboard(api: &mut Document) {
    if let Some(tags) = api.tags.as_mut() {
        tags.retain(|tag| tag.name != DASHBOARD);
    }
    if let Some(components) = api.components.as_mut() {
        for page_response in ["DashboardPage", "PageNotModified"] {
            components.responses.remove(page_response);
        }
    }
}

fn is_operation(operation: &Operation, id: &str) -> bool {
    operation.operation_id.as_deref() == Some(id)
}

/// Links the `201` of `createOrder` to the operations on the order it created, so that a
/// client (or a fuzzer) that follows links reads, watches, cancels and retries real orders.
fn link_created_order(create: &mut Operation) {
    use utoipa::openapi::link::LinkBuilder;

    let Some(RefOr::T(created)) = create.responses.responses.get_mut("201") else {
        return;
    };
    for (name, operation_id, description) in [
        ("GetOrder", "getOrder", "Read the order just created."),
        (
            "CancelOrder",
            "cancelOrder",
            "Cancel the order just created.",
        ),
        (
            "RetryOrder",
            "retryOrder",
            "Retry the order just created, once it has FAILED.",
        ),
        (
            "WatchOrder",
            "watchOrder",
            "Follow the status of the order just created.",
        ),
    ] {
        let link = LinkBuilder::new()
            .operation_id(operation_id)
            .parameter("id", "$response.body#/order/id")
            .description(description)
            .build();
        created.links.insert(name.to_owned(), RefOr::T(link));
    }
}

/// What utoipa's types cannot write, written into the document as JSON: links named by
/// `operationId` (utoipa 5 writes its field as `operation_id`), required response headers (its
/// `Header` has no `required`), and the schema of each event of the two event streams, whose
/// `data` is JSON text (`contentMediaType` and `contentSchema`, absent from its `Schema`).
fn refine(doc: &mut Value) {
    rename_link_keys(doc);
    for (response, header) in [
        ("/components/responses/Unavailable", "Retry-After"),
        ("/components/responses/Unauthorized", "WWW-Authenticate"),
        ("/paths/~1orders/post/responses/201", "Location"),
    ] {
        if let Some(header) = doc
            .pointer_mut(&format!("{response}/headers/{header}"))
            .and_then(Value::as_object_mut)
        {
            header.insert("required".to_owned(), Value::Bool(true));
        }
    }
    for (operation, events) in [
        ("/paths/~1orders~1{id}~1events/get", order_events()),
        ("/paths/~1metrics~1stream/get", metrics_events()),
    ] {
        if let Some(media) = doc
            .pointer_mut(&format!(
                "{operation}/responses/200/content/text~1event-stream"
            ))
            .and_then(Value::as_object_mut)
        {
            media.insert("schema".to_owned(), events);
        }
    }
}

/// Renames `operation_id` to `operationId` in every link of the document.
fn rename_link_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut().filter_map(Value::as_object_mut) {
                    if let Some(id) = link.remove("operation_id") {
                        link.insert("operationId".to_owned(), id);
                    }
                }
            }
            map.values_mut().for_each(rename_link_keys);
        }
        Value::Array(list) => list.iter_mut().for_each(rename_link_keys),
        _ => {}
    }
}

/// One Server-Sent Event as a fuzzer or a client library reads it: its `event` name, its
/// `data` (JSON text of the schema named) and, when `id` is given, its id's pattern.
fn event(name: &str, data: &str, id: Option<&str>) -> Value {
    let mut properties = json!({
        "event": {"const": name},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": format!("#/components/schemas/{data}")},
        },
    });
    let mut required = vec!["event", "data"];
    if let Some(pattern) = id {
        properties["id"] = json!({"type": "string", "pattern": pattern});
        required.push("id");
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// An event of `GET /orders/{id}/events`.
fn order_events() -> Value {
    let mut status = event(
        "status",
        "OrderBody",
        Some("^(?:PENDING|PROCESSING|COMPLETED|FAILED|CANCELLED)-[0-9]+$"),
    );
    status["description"] =
        json!("A `status` event: `data` is the order as JSON, `id` its status and attempts.");
    status
}

/// An event of `GET /metrics/stream`.
fn metrics_events() -> Value {
    json!({
        "description": "A `history` event first, then a `sample` event each second, or an \
            `unavailable` event each second that the storage does not answer.",
        "oneOf": [
            event("history", "HistoryBody", None),
            event("sample", "Sample", None),
            event("unavailable", "ErrorBody", None),
        ],
    })
}

/// A router's document as JSON, serialised once when the router is built and shared by every
/// request for it.
#[derive(Debug, Clone)]
pub(crate) struct ApiDocument(Result<Bytes, Arc<str>>);

impl ApiDocument {
    /// Serialises `api`, with what utoipa cannot write added.
    pub(crate) fn new(api: &Document) -> Self {
        // Serialising a document cannot fail in practice (every map key is a string); were it
        // to, `/openapi.json` answers 500 with the cause logged, and the API still serves.
        let json = serde_json::to_value(api).and_then(|mut doc| {
            refine(&mut doc);
            serde_json::to_vec(&doc)
        });
        Self(
            json.map(Bytes::from)
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
