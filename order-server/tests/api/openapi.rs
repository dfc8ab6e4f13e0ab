//! `GET /openapi.json`: an OpenAPI 3.1 document that describes exactly the routes served,
//! whose examples the server accepts, and that holds together (every `$ref` resolves, every
//! body has a schema).
//!
//! The document is read as plain JSON, so these tests check what a client's tooling would
//! read, not what the code meant to write.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use order_core::order::{MAX_ID_CHARS, MAX_ITEMS, MAX_TOTAL_AMOUNT};
use order_server::{DEFAULT_PAGE, MAX_PAGE};
use serde_json::{Value, json};
use tower::ServiceExt;

use order_core::OrderProcessor;
use order_core::handler::SimulatedStep;

use crate::helpers::{VALID_ORDER, get, idle_app, post_json, serve_options};

/// Every route the API serves: the document must describe these, no more and no fewer.
const ROUTES: [(&str, &str); 17] = [
    ("POST", "/orders"),
    ("GET", "/orders"),
    ("GET", "/orders/{id}"),
    ("POST", "/orders/{id}/cancel"),
    ("POST", "/orders/{id}/retry"),
    ("POST", "/orders/bulk/cancel"),
    ("POST", "/orders/bulk/retry"),
    ("GET", "/orders/bulk/{id}"),
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

/// An API whose one order has FAILED, for the route that only takes a FAILED order.
async fn app_with_a_failed_order() -> (Router, String) {
    let failing = SimulatedStep::new(Duration::ZERO).failing(1.0, false);
    let processor = OrderProcessor::builder(failing)
        .in_memory()
        .build()
        .unwrap();
    let app = order_server::app(processor.clone(), &serve_options());
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created.body["order"]["id"].as_i64().unwrap();
    let running = processor.start();
    let failed = processor
        .wait_until_done(order_core::OrderId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, order_core::OrderStatus::Failed);
    running.shutdown(Duration::from_secs(5)).await;
    (app, id.to_string())
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
    let nested = Router::new().nest(
        "/order-api",
        order_server::router(processor, &order_server::RouterOptions::default()),
    );
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
                let (app, id) = if op.path.ends_with("/retry") {
                    app_with_a_failed_order().await
                } else {
                    app_with_an_order().await
                };
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
                if op.path == "/orders/bulk/{id}" {
                    // A bulk action's id is a fresh UUID: the example is one in form (not a
                    // 400) that names no action; an action's own id is read.
                    assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {answer_body}");
                    let accepted = post_json(&app, "/orders/bulk/cancel", r#"{"limit": 10}"#).await;
                    let location = accepted.headers[header::LOCATION].to_str().unwrap();
                    assert_eq!(get(&app, location).await.status, StatusCode::OK);
                    tried += 1;
                    continue;
                }
                assert!(
                    status.is_success(),
                    "{} {uri} refused the example of {name}: {status} {answer_body}",
                    op.method
                );
                tried += 1;
            }
        }
    }
    // The NewOrder example and its three fields, one id example on each of four routes, and
    // the four parameters of the listing.
    assert!(tried >= 12, "only {tried} examples found");
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

/// The schema of a parameter of an operation.
fn parameter_schema<'a>(doc: &'a Value, operation_id: &str, name: &str) -> &'a Value {
    let operation = operations(doc)
        .into_iter()
        .find(|op| op.spec["operationId"] == operation_id)
        .unwrap_or_else(|| panic!("no operation {operation_id}"));
    let parameter = operation
        .parameters
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{operation_id} has no parameter {name}"));
    resolve(doc, &parameter["schema"])
}

/// Whether `value` is within a string schema's `pattern`, `minLength` and `maxLength`
/// (lengths in characters, as JSON Schema counts them).
fn admits(schema: &Value, value: &str) -> bool {
    let pattern = schema["pattern"]
        .as_str()
        .expect("the schema has a pattern");
    let regex = regex::Regex::new(pattern).unwrap_or_else(|err| panic!("{pattern}: {err}"));
    let chars = value.chars().count() as u64;
    regex.is_match(value)
        && schema["minLength"].as_u64().is_none_or(|min| chars >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
}

/// A query value, percent-encoded byte by byte.
fn query_text(value: &str) -> String {
    url_text(&Value::String(value.to_owned()))
}

/// Holds `schema` to the server: each probe is within the schema exactly when the server
/// accepts it (`accepted` says whether it did).
async fn assert_schema_is_exact<F, Fut>(what: &str, schema: &Value, probes: &[String], accepted: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for probe in probes {
        assert_eq!(
            admits(schema, probe),
            accepted(probe.clone()).await,
            "{what} {probe:?}: the document (left) and the server (right) disagree"
        );
    }
}

#[tokio::test]
async fn the_idempotency_key_pattern_admits_exactly_the_keys_the_server_takes() {
    let (app, _) = idle_app();
    let doc = document(&app).await;
    let schema = parameter_schema(&doc, "createOrder", "Idempotency-Key");
    let long = |n: usize| "k".repeat(n);
    // No probe starts or ends with a space or a tab: on the wire those are not part of a
    // field value (RFC 9110 5.5), and hyper drops them before the server sees the key.
    let probes: Vec<String> = [
        "checkout-2291",
        "k",
        "\"",
        "\"\"",
        "\"k\"",
        "\" \"",
        "\"\"\"",
        "\"k",
        "k\"",
        "a b",
        "a\tb",
        "~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        long(255),
        long(256),
        format!("\"{}\"", long(255)),
        format!("\"{}\"", long(256)),
        format!("\"{}", long(254)),
        format!("\"{}", long(255)),
    ])
    .collect();
    assert_schema_is_exact("Idempotency-Key", schema, &probes, |key| {
        let app = app.clone();
        async move {
            let (status, body) = answer_with(
                &app,
                &Method::POST,
                "/orders",
                Some(&serde_json::from_str(VALID_ORDER).unwrap()),
                Some(("Idempotency-Key", key)),
            )
            .await;
            assert!(
                status == StatusCode::CREATED || status == StatusCode::BAD_REQUEST,
                "{status} {body}"
            );
            status == StatusCode::CREATED
        }
    })
    .await;
}

#[tokio::test]
async fn the_listing_filters_admit_exactly_what_the_server_takes() {
    let (app, _) = idle_app();
    let doc = document(&app).await;
    let listing = |name: &'static str| {
        let app = app.clone();
        move |value: String| {
            let app = app.clone();
            async move {
                let reply = get(&app, &format!("/orders?{name}={}", query_text(&value))).await;
                assert!(
                    reply.status == StatusCode::OK || reply.status == StatusCode::BAD_REQUEST,
                    "{name}={value:?}: {} {}",
                    reply.status,
                    reply.body
                );
                reply.status == StatusCode::OK
            }
        }
    };

    let mut statuses: Vec<String> = ["", "PENDIN", "PENDINGS", " PENDING", "pend\u{131}ng", "*"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for status in order_core::OrderStatus::ALL {
        let upper = status.as_str().to_owned();
        let mixed: String = upper
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        statuses.extend([upper.to_lowercase(), mixed, upper]);
    }
    let status = parameter_schema(&doc, "listOrders", "status");
    assert_schema_is_exact("status", status, &statuses, listing("status")).await;

    let users: Vec<String> = [
        String::new(),
        "a".to_owned(),
        " ".to_owned(),
        "a\0b".to_owned(),
        "\0".to_owned(),
        "x".repeat(MAX_ID_CHARS),
        "x".repeat(MAX_ID_CHARS + 1),
        "\u{e9}".repeat(MAX_ID_CHARS),
        "\u{e9}".repeat(MAX_ID_CHARS + 1),
    ]
    .into();
    let user = parameter_schema(&doc, "listOrders", "userId");
    assert_schema_is_exact("userId", user, &users, listing("userId")).await;
}

/// The characters that Rust's `str::trim` (and so `NewOrder::validate`) takes for whitespace,
/// and some that regex engines other than Rust's disagree about.
const SPACES_AND_NEAR_MISSES: [char; 12] = [
    ' ', '\t', '\n', '\u{b}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}',
    // Not whitespace to Rust, but to Python's `\s` (U+001C) or ECMAScript's (U+FEFF).
    '\u{1c}', '\u{1f}', '\u{feff}', '\u{200b}',
];

#[tokio::test]
async fn the_id_pattern_of_an_order_admits_exactly_the_ids_the_server_takes() {
    let (app, _) = idle_app();
    let doc = document(&app).await;
    let new_order = &doc["components"]["schemas"]["NewOrder"]["properties"];
    let mut probes: Vec<String> = ["user-123", "\0", "a\0", "\0a", "\u{1F600}", ""]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for c in SPACES_AND_NEAR_MISSES {
        probes.extend([c.to_string(), format!("{c}a{c}"), format!("{c}\0")]);
    }
    probes.extend([
        "x".repeat(MAX_ID_CHARS),
        "x".repeat(MAX_ID_CHARS + 1),
        "\u{e9}".repeat(MAX_ID_CHARS),
    ]);
    for (field, schema) in [
        ("userId", &new_order["userId"]),
        ("itemIds", &new_order["itemIds"]["items"]),
    ] {
        assert_schema_is_exact(field, schema, &probes, |id| {
            let app = app.clone();
            async move {
                let body = if field == "userId" {
                    json!({"userId": id, "itemIds": ["a"], "totalAmount": 1})
                } else {
                    json!({"userId": "u", "itemIds": [id], "totalAmount": 1})
                };
                let (status, answer) = answer(&app, &Method::POST, "/orders", Some(&body)).await;
                if status != StatusCode::CREATED {
                    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
                    assert!(
                        answer["field"]
                            .as_str()
                            .is_some_and(|f| f.starts_with(field)),
                        "{answer}"
                    );
                }
                status == StatusCode::CREATED
            }
        })
        .await;
    }
}

#[tokio::test]
async fn integers_are_taken_only_as_the_document_writes_them_and_within_its_range() {
    let (app, id) = app_with_an_order().await;
    let doc = document(&app).await;
    let max = i64::MAX.to_string();
    for (operation, name) in [
        ("getOrder", "id"),
        ("listOrders", "after"),
        ("listOrders", "limit"),
    ] {
        let schema = parameter_schema(&doc, operation, name);
        assert_eq!(schema["type"], "integer", "{operation} {name}");
        assert_eq!(schema["minimum"], 1, "{operation} {name}");
    }
    assert_eq!(
        parameter_schema(&doc, "getOrder", "id")["maximum"].to_string(),
        max
    );
    assert_eq!(
        parameter_schema(&doc, "listOrders", "after")["maximum"].to_string(),
        max
    );

    for (uri, expected) in [
        (format!("/orders/{id}"), StatusCode::OK),
        (format!("/orders/{max}"), StatusCode::NOT_FOUND),
        (format!("/orders/+{id}"), StatusCode::BAD_REQUEST),
        (format!("/orders/0{id}"), StatusCode::BAD_REQUEST),
        (format!("/orders/{id}.0"), StatusCode::BAD_REQUEST),
        (
            "/orders/9223372036854775808".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        ("/orders/0".to_owned(), StatusCode::BAD_REQUEST),
        ("/orders/-1".to_owned(), StatusCode::BAD_REQUEST),
        (format!("/orders/+{id}/cancel"), StatusCode::BAD_REQUEST),
        (format!("/orders/0{id}/events"), StatusCode::BAD_REQUEST),
        (format!("/orders?after={max}"), StatusCode::OK),
        ("/orders?after=1".to_owned(), StatusCode::OK),
        ("/orders?limit=1".to_owned(), StatusCode::OK),
        ("/orders?limit=100".to_owned(), StatusCode::OK),
        ("/orders?limit=1.0".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let method = if uri.ends_with("/cancel") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, body) = answer(&app, &method, &uri, None).await;
        assert_eq!(status, expected, "{uri}: {body}");
        if !status.is_success() {
            assert!(body["error"].is_string(), "{uri}: {body}");
        }
    }
}

#[tokio::test]
async fn a_created_order_links_to_reading_cancelling_retrying_and_watching_it() {
    let (app, _) = idle_app();
    let doc = document(&app).await;
    let ids: BTreeSet<&str> = operations(&doc)
        .iter()
        .filter_map(|op| op.spec["operationId"].as_str())
        .collect();
    let created = &doc["paths"]["/orders"]["post"]["responses"]["201"];
    let links = created["links"].as_object().expect("the 201 has links");
    let mut targets = BTreeSet::new();
    for (name, link) in links {
        // `operationId`, as OpenAPI spells it: a client reading `operation_id` finds no link.
        assert!(link.get("operation_id").is_none(), "{name}: {link}");
        let target = link["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {link}"));
        assert!(
            ids.contains(target),
            "{name} links to no operation: {target}"
        );
        assert_eq!(
            link["parameters"],
            json!({"id": "$response.body#/order/id"}),
            "{name}"
        );
        targets.insert(target);
    }
    assert_eq!(
        targets,
        BTreeSet::from(["cancelOrder", "getOrder", "retryOrder", "watchOrder"])
    );

    // Followed, as a client would: the expression names the created order's id.
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    let id = created
        .body
        .pointer("/order/id")
        .expect("$response.body#/order/id is in the body")
        .to_string();
    assert_eq!(
        answer(&app, &Method::GET, &format!("/orders/{id}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        answer(&app, &Method::GET, &format!("/orders/{id}/events"), None)
            .await
            .0,
        StatusCode::OK
    );
    // A retry of the new order, which has not FAILED, names its status.
    assert_eq!(
        answer(&app, &Method::POST, &format!("/orders/{id}/retry"), None)
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        answer(&app, &Method::POST, &format!("/orders/{id}/cancel"), None)
            .await
            .0,
        StatusCode::OK
    );
}

/// The responses of every operation of `doc`, by path and method.
fn responses_of(doc: &Value) -> Vec<(String, &serde_json::Map<String, Value>, bool)> {
    operations(doc)
        .into_iter()
        .map(|op| {
            (
                format!("{} {}", op.method, op.path),
                op.spec["responses"].as_object().unwrap(),
                op.spec.get("security").is_some(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_operation_documents_the_answers_of_the_layers_around_it_and_no_408() {
    // Open: 500 (a caught panic) and 503 (the time limit) everywhere, no 401, no security.
    let (app, _) = idle_app();
    let doc = document(&app).await;
    for (at, responses, secured) in responses_of(&doc) {
        assert_eq!(
            responses["500"]["$ref"], "#/components/responses/InternalError",
            "{at}"
        );
        assert_eq!(
            responses["503"]["$ref"], "#/components/responses/Unavailable",
            "{at}"
        );
        assert!(
            !responses.contains_key("401"),
            "{at}: open, yet documents 401"
        );
        assert!(!secured, "{at}: open, yet requires a token");
        // The server never answers 408: a slow request head gets its connection closed, and
        // a slow request a 503 (reliability.rs, and the test below).
        assert!(!responses.contains_key("408"), "{at}");
    }
    let unavailable = &doc["components"]["responses"]["Unavailable"];
    assert_eq!(unavailable["headers"]["Retry-After"]["required"], true);
    assert!(doc["components"].get("securitySchemes").is_none());

    // With tokens: 401 and a required bearer token on every route but the open ones.
    let processor =
        order_core::OrderProcessor::builder(order_core::handler::SimulatedStep::default())
            .in_memory()
            .build()
            .unwrap();
    let mut options = crate::helpers::serve_options();
    options.api_tokens = order_server::ApiTokens::new(["s3cret"]);
    options.router.sample_from_start = false;
    let secured_app = order_server::app(processor, &options);
    let reply = crate::helpers::send(
        &secured_app,
        Request::builder()
            .uri("/openapi.json")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    assert_eq!(
        doc["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]["required"],
        true
    );
    let open = ["GET /healthz", "GET /readyz", "GET /", "GET /dashboard"];
    for (at, responses, _) in responses_of(&doc) {
        let spec = doc["paths"][at.split_once(' ').unwrap().1]
            [at.split_once(' ').unwrap().0.to_lowercase()]
        .clone();
        if open.contains(&at.as_str()) {
            assert!(!responses.contains_key("401"), "{at}");
            assert!(spec.get("security").is_none(), "{at}");
        } else {
            assert_eq!(
                responses["401"]["$ref"], "#/components/responses/Unauthorized",
                "{at}"
            );
            assert_eq!(spec["security"], json!([{"bearer": []}]), "{at}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_time_limit_is_a_json_503_with_retry_after() {
    let mut repository = order_core::backend::MockRepository::new();
    // Storing blocks its thread (on its own task: `create_order` spawns it) for longer than
    // the request may take.
    repository.expect_insert().returning(|_| {
        std::thread::sleep(Duration::from_millis(500));
        Err(order_core::StorageError::unavailable("slow"))
    });
    let processor =
        order_core::OrderProcessor::builder(order_core::handler::SimulatedStep::default())
            .repository(std::sync::Arc::new(repository))
            .queue(std::sync::Arc::new(order_core::memory::InMemoryQueue::new()))
            .build()
            .unwrap();
    let mut options = crate::helpers::serve_options();
    options.request_timeout = Duration::from_millis(50);
    options.router.sample_from_start = false;
    let app = order_server::app(processor, &options);
    let reply = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert_eq!(
        reply.error(),
        "the request took longer than 50ms; try again later"
    );
}

#[tokio::test]
async fn each_event_of_an_order_stream_is_what_the_document_says() {
    let (app, id) = app_with_an_order().await;
    let doc = document(&app).await;
    let events = &doc["paths"]["/orders/{id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["schema"];
    assert_eq!(events["properties"]["event"]["const"], "status");
    assert_eq!(
        events["properties"]["data"]["contentMediaType"],
        "application/json"
    );
    assert_eq!(
        events["properties"]["data"]["contentSchema"]["$ref"],
        "#/components/schemas/OrderBody"
    );
    assert!(events.get("x-contentSchema").is_none());
    let id_pattern =
        regex::Regex::new(events["properties"]["id"]["pattern"].as_str().unwrap()).unwrap();

    // A cancelled order's stream: its one event, then the end.
    let cancelled = post_json(&app, &format!("/orders/{id}/cancel"), "").await;
    assert_eq!(cancelled.status, StatusCode::OK);
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri(format!("/orders/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut fields = std::collections::BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        fields.insert(name, value);
    }
    assert_eq!(fields["event"], "status", "{text}");
    assert!(id_pattern.is_match(fields["id"]), "{text}");
    let data: Value = serde_json::from_str(fields["data"]).unwrap();
    assert_eq!(data["order"]["status"], "CANCELLED");

    let metrics = &doc["paths"]["/metrics/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["schema"]["oneOf"];
    let names: Vec<&Value> = metrics
        .as_array()
        .unwrap()
        .iter()
        .map(|event| &event["properties"]["event"]["const"])
        .collect();
    assert_eq!(
        names,
        [&json!("history"), &json!("sample"), &json!("unavailable")]
    );
}
