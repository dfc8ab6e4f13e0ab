//! `GET /openapi.json`: an OpenAPI 3.1 document that describes exactly the routes served,
//! whose examples the server accepts, and that holds together (every `$ref` resolves, every
//! body has a schema).
//!
//! The document is read as plain JSON, so these tests check what a client's tooling would
//! read, not what the code meant to write.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use order_core::order::{MAX_ID_CHARS, MAX_ITEMS, MAX_TOTAL_AMOUNT};
use order_server::{DEFAULT_PAGE, MAX_PAGE};
use serde_json::Value;
use tower::ServiceExt;

use crate::helpers::{VALID_ORDER, get, idle_app, post_json};

/// Every route the API serves: the document must describe these, no more and no fewer.
const ROUTES: [(&str, &str); 13] = [
    ("POST", "/orders"),
    ("GET", "/orders"),
    ("GET", "/orders/{id}"),
    ("POST", "/orders/{id}/cancel"),
    ("GET", "/orders/{id}/events"),
    ("GET", "/metrics"),
    ("GET", "/metrics/stream"),
    ("GET", "/metrics/prometheus"),
    ("GET", "/"),
    ("GET", "/dashboard"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
];

/// The keys of a path item that are operations.
const OPERATION_KEYS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation of the document.
struct Operation<'a> {
    method: Method,
    path: &'a str,
    spec: &'a Value,
    /// The path item's parameters and the operation's own, references followed.
    parameters: Vec<&'a Value>,
}

/// The document as a client gets it.
async fn document(app: &Router) -> Value {
    let reply = get(app, "/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// Follows `value`'s `$ref`s, if any, to what they point at.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not a reference into the document"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} points at nothing"));
    }
    value
}

fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut found = Vec::new();
    for (path, item) in paths {
        let item = resolve(doc, item);
        for key in OPERATION_KEYS {
            let Some(spec) = item.get(key) else { continue };
            let parameters = [item.get("parameters"), spec.get("parameters")]
                .into_iter()
                .flatten()
                .flat_map(|list| list.as_array().expect("parameters are a list"))
                .map(|parameter| resolve(doc, parameter))
                .collect();
            found.push(Operation {
                method: key.to_uppercase().parse().unwrap(),
                path,
                spec,
                parameters,
            });
        }
    }
    found
}

/// The examples a schema gives (`example`, `examples[]`), references followed.
fn schema_examples(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = resolve(doc, schema);
    let mut found: Vec<Value> = schema.get("example").cloned().into_iter().collect();
    if let Some(list) = schema.get("examples").and_then(Value::as_array) {
        found.extend(list.iter().cloned());
    }
    found
}

/// The examples of a parameter or a media type (`example`, `examples.*.value`) and of its
/// schema.
fn examples_of(doc: &Value, object: &Value) -> Vec<Value> {
    let mut found: Vec<Value> = object.get("example").cloned().into_iter().collect();
    if let Some(named) = object.get("examples").and_then(Value::as_object) {
        found.extend(
            named
                .values()
                .map(|example| resolve(doc, example)["value"].clone()),
        );
    }
    if let Some(schema) = object.get("schema") {
        found.extend(schema_examples(doc, schema));
    }
    found
}

/// The JSON request body of an operation, if it takes one.
fn json_request_body<'a>(doc: &'a Value, operation: &Operation<'a>) -> Option<&'a Value> {
    let body = resolve(doc, operation.spec.get("requestBody")?);
    Some(body["content"].get("application/json").unwrap_or_else(|| {
        panic!(
            "{} {} takes a non-JSON body",
            operation.method, operation.path
        )
    }))
}

/// A parameter's example as it goes in a URL: text as it is, anything else as JSON text,
/// percent-encoded.
fn url_text(example: &Value) -> String {
    let text = match example {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The status of a request, and the body of an answer that is not a success: an event
/// stream's body does not end while its order is PENDING, so a success's body is not read.
async fn answer(
    app: &Router,
    method: &Method,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    answer_with(app, method, uri, body, None).await
}

/// [`answer`], with a header.
async fn answer_with(
    app: &Router,
    method: &Method,
    uri: &str,
    body: Option<&Value>,
    header: Option<(&str, String)>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    if status.is_success() {
        return (status, Value::Null);
    }
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// True when the router has no such route: the fallback's `404`, or `405` for a path served
/// with other methods.
fn is_no_route(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND
            && body["error"]
                .as_str()
                .is_some_and(|error| error.starts_with("no route for")))
}

/// An idle app holding one order, and that order's id.
async fn app_with_an_order() -> (Router, String) {
    let (app, _) = idle_app();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["order"]["id"].to_string();
    (app, id)
}

#[tokio::test]
async fn the_document_is_openapi_3_1_served_as_json() {
    let (app, processor) = idle_app();
    let reply = get(&app, "/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    let version = reply.body["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert_eq!(reply.body["info"]["title"], "Order API");
    assert_eq!(reply.body["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        reply.body["info"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    // The API nested in another service serves its document under its prefix: the same
    // routes and schemas, without what order-server's own layers answer (a 503 from the time
    // limit on every route), which are the embedding service's to document.
    let nested = Router::new().nest("/order-api", order_server::router(processor));
    let under_prefix = get(&nested, "/order-api/openapi.json").await;
    assert_eq!(under_prefix.status, StatusCode::OK);
    assert_eq!(under_prefix.body["components"], reply.body["components"]);
    let paths = |doc: &Value| {
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&under_prefix.body), paths(&reply.body));
    let health = "/paths/~1healthz/get/responses/503";
    assert!(reply.body.pointer(health).is_some());
    assert!(under_prefix.body.pointer(health).is_none());
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_served() {
    let (app, id) = app_with_an_order().await;
    let doc = document(&app).await;
    let operations = operations(&doc);

    let documented: BTreeSet<(String, String)> = operations
        .iter()
        .map(|op| (op.method.to_string(), op.path.to_owned()))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "documented routes (left) against served ones (right)"
    );
    assert_eq!(
        documented.len(),
        operations.len(),
        "an operation is documented twice"
    );

    // The check below can tell a missing route from a missing order.
    let (status, body) = answer(&app, &Method::GET, "/no/such/route", None).await;
    assert!(is_no_route(status, &body), "{status} {body}");

    for op in &operations {
        let uri = op.path.replace("{id}", &id);
        let body = json_request_body(&doc, op)
            .and_then(|media| examples_of(&doc, media).into_iter().next());
        let (status, answer_body) = answer(&app, &op.method, &uri, body.as_ref()).await;
        assert!(
            !is_no_route(status, &answer_body),
            "{} {} is documented but not served: {status} {answer_body}",
            op.method,
            op.path
        );
    }

    // And no path answers a method its document leaves out.
    let paths: BTreeSet<&str> = operations.iter().map(|op| op.path).collect();
    for path in paths {
        let uri = path.replace("{id}", &id);
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            if documented.contains(&(method.to_string(), path.to_owned())) {
                continue;
            }
            let (status, body) = answer(&app, &method, &uri, None).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served but not documented: {body}"
            );
        }
    }
}

#[tokio::test]
async fn every_example_in_the_document_is_accepted() {
    let (app, _) = idle_app();
    let doc = document(&app).await;
    let mut tried = 0;

    for op in operations(&doc) {
        let body_examples = json_request_body(&doc, &op)
            .map(|media| examples_of(&doc, media))
            .unwrap_or_default();
        if json_request_body(&doc, &op).is_some() {
            assert!(
                !body_examples.is_empty(),
                "{} {} has no body example",
                op.method,
                op.path
            );
        }
        let mut bodies = body_examples.clone();
        // Each example of a body field, in place of that field in the body's example.
        if let (Some(media), Some(base)) = (json_request_body(&doc, &op), body_examples.first()) {
            let schema = resolve(&doc, &media["schema"]);
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                for example in schema_examples(&doc, property) {
                    let mut body = base.clone();
                    body[name] = example;
                    bodies.push(body);
                }
            }
        }
        for body in &bodies {
            // A fresh app for each: the ids in the examples name the first order stored.
            let (app, id) = app_with_an_order().await;
            let uri = op.path.replace("{id}", &id);
            let (status, answer_body) = answer(&app, &op.method, &uri, Some(body)).await;
            assert!(
                status.is_success(),
                "{} {} refused its body example {body}: {status} {answer_body}",
                op.method,
                op.path
            );
            tried += 1;
        }

        for parameter in &op.parameters {
            let name = parameter["name"].as_str().unwrap();
            let examples = examples_of(&doc, parameter);
            assert!(
                !examples.is_empty(),
                "{} {}: {name} has no example",
                op.method,
                op.path
            );
            for example in examples {
                let (app, id) = app_with_an_order().await;
                let mut uri = op.path.to_owned();
                let mut header = None;
                match parameter["in"].as_str().unwrap() {
                    "path" => uri = uri.replace(&format!("{{{name}}}"), &url_text(&example)),
                    "query" => uri = format!("{uri}?{name}={}", url_text(&example)),
                    "header" => header = Some((name, url_text(&example))),
                    other => {
                        panic!("{name} is a parameter in {other}, which this test cannot send")
                    }
                }
                let uri = uri.replace("{id}", &id);
                let (status, answer_body) =
                    answer_with(&app, &op.method, &uri, body_examples.first(), header).await;
                assert!(
                    status.is_success(),
                    "{} {uri} refused the example of {name}: {status} {answer_body}",
                    op.method
                );
                tried += 1;
            }
        }
    }
    // The NewOrder example and its three fields, one id example on each of three routes, and
    // the four parameters of the listing.
    assert!(tried >= 11, "only {tried} examples found");
}

#[tokio::test]
async fn every_reference_resolves_and_every_body_has_a_schema() {
    let (app, _) = idle_app();
    let doc = document(&app).await;

    let mut references = Vec::new();
    let mut pending = vec![&doc];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    references.push(reference.as_str().expect("a $ref is text"));
                }
                pending.extend(map.values());
            }
            Value::Array(list) => pending.extend(list),
            _ => {}
        }
    }
    assert!(!references.is_empty());
    for reference in references {
        let target = reference
            .strip_prefix("#/components/")
            .unwrap_or_else(|| panic!("{reference} points outside the components"));
        assert!(
            doc["components"].pointer(&format!("/{target}")).is_some(),
            "{reference} points at nothing"
        );
    }

    for op in operations(&doc) {
        let responses = op.spec["responses"].as_object().unwrap();
        assert!(
            !responses.is_empty(),
            "{} {} documents no answer",
            op.method,
            op.path
        );
        for (status, response) in responses {
            let response = resolve(&doc, response);
            let at = format!("{} {} {status}", op.method, op.path);
            assert!(
                response["description"].is_string(),
                "{at} has no description"
            );
            let content = response["content"].as_object();
            // A 304 has no body, by definition.
            if status == "304" {
                assert!(content.is_none(), "{at} documents a body");
                continue;
            }
            assert!(content.is_some_and(|c| !c.is_empty()), "{at} has no body");
            for (media_type, media) in content.into_iter().flatten() {
                assert!(
                    media.get("schema").is_some(),
                    "{at} {media_type} has no schema"
                );
            }
            if !status.starts_with('2') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{at} is an error whose body is not an ErrorBody"
                );
            }
            if status == "503" {
                assert!(
                    response["headers"].get("Retry-After").is_some(),
                    "{at} does not say when to retry"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_documented_limits_are_the_enforced_ones() {
    let (app, _) = idle_app();
    let doc = document(&app).await;

    let new_order = &doc["components"]["schemas"]["NewOrder"]["properties"];
    assert_eq!(new_order["userId"]["maxLength"], MAX_ID_CHARS);
    assert_eq!(new_order["itemIds"]["maxItems"], MAX_ITEMS);
    assert_eq!(new_order["itemIds"]["items"]["maxLength"], MAX_ID_CHARS);
    assert_eq!(
        new_order["totalAmount"]["maximum"].to_string(),
        MAX_TOTAL_AMOUNT.to_string()
    );
    assert_eq!(new_order["totalAmount"]["type"], "number");

    let list = operations(&doc)
        .into_iter()
        .find(|op| op.method == Method::GET && op.path == "/orders")
        .unwrap();
    let parameter = |name: &str| {
        list.parameters
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
            .clone()
    };
    assert_eq!(parameter("limit")["maximum"], MAX_PAGE);
    assert_eq!(parameter("limit")["default"], DEFAULT_PAGE);
    assert_eq!(parameter("userId")["maxLength"], MAX_ID_CHARS);
}
