//! Property tests: whatever a client sends, it gets a valid order or a 4xx JSON error, never a
//! panic or a 500.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

use crate::helpers::{Reply, idle_app, send};

/// Any JSON value, nested a few levels, with the numbers and strings that break parsers:
/// huge, tiny, negative, fractional, non-ASCII, empty, very long.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        "[0-9]{1,40}(\\.[0-9]{1,40})?(e[+-]?[0-9]{1,4})?"
            .prop_map(|text| { serde_json::from_str(&text).unwrap_or(Value::Null) }),
        ".{0,40}".prop_map(Value::String),
        "\\PC{0,300}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,10}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like an order, each field anything from a valid value to the wrong type.
fn order_like() -> impl Strategy<Value = Value> {
    let user = prop_oneof!["[a-z0-9-]{1,20}".prop_map(Value::String), any_json(),];
    let items = prop_oneof![
        prop::collection::vec("[a-z0-9]{1,12}".prop_map(Value::String), 0..5)
            .prop_map(Value::Array),
        any_json(),
    ];
    let amount = prop_oneof![
        (0u64..1_000_000, 0u32..4).prop_map(|(units, scale)| {
            let text = if scale == 0 {
                units.to_string()
            } else {
                format!(
                    "{}.{:0width$}",
                    units / 100,
                    units % 100,
                    width = scale as usize
                )
            };
            serde_json::from_str(&text).unwrap_or(Value::Null)
        }),
        any_json(),
    ];
    let extra = prop::option::of(("[a-z]{1,8}", any_json()));
    (user, items, amount, extra).prop_map(|(user, items, amount, extra)| {
        let mut order = Map::new();
        order.insert("userId".into(), user);
        order.insert("itemIds".into(), items);
        order.insert("totalAmount".into(), amount);
        if let Some((name, value)) = extra {
            order.insert(name, value);
        }
        Value::Object(order)
    })
}

fn post(app: &Router, runtime: &tokio::runtime::Runtime, body: Vec<u8>) -> Reply {
    runtime.block_on(send(
        app,
        Request::builder()
            .method(Method::POST)
            .uri("/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap(),
    ))
}

/// A 201 whose order echoes a valid request, or a 4xx with a JSON error.
fn check(reply: &Reply, sent: &[u8]) -> Result<(), TestCaseError> {
    if reply.status == StatusCode::CREATED {
        let order = &reply.body["order"];
        prop_assert_eq!(&order["status"], "PENDING");
        let request: Value = serde_json::from_slice(sent).unwrap();
        prop_assert_eq!(&order["userId"], &request["userId"]);
        prop_assert_eq!(&order["itemIds"], &request["itemIds"]);
        let amount = order["totalAmount"].as_f64().unwrap();
        prop_assert!((0.0..=1e10).contains(&amount), "{}", amount);
    } else {
        prop_assert!(
            reply.status.is_client_error(),
            "{} for {}: {}",
            reply.status,
            String::from_utf8_lossy(sent),
            reply.body
        );
        prop_assert!(reply.body["error"].is_string(), "{}", reply.body);
    }
    Ok(())
}

/// Posts `body` to a fresh API and [`check`]s the answer.
fn posted_json_is_an_order_or_a_4xx(body: &Value) -> Result<(), TestCaseError> {
    let runtime = runtime();
    let (app, _) = runtime.block_on(async { idle_app() });
    let sent = serde_json::to_vec(body).unwrap();
    let reply = post(&app, &runtime, sent.clone());
    check(&reply, &sent)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_is_an_order_or_a_4xx(body in any_json()) {
        posted_json_is_an_order_or_a_4xx(&body)?;
    }

    #[test]
    fn anything_shaped_like_an_order_is_an_order_or_a_4xx(body in order_like()) {
        posted_json_is_an_order_or_a_4xx(&body)?;
    }

    #[test]
    fn any_bytes_are_an_order_or_a_4xx(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let runtime = runtime();
        let (app, _) = runtime.block_on(async { idle_app() });
        let reply = post(&app, &runtime, body.clone());
        if reply.status != StatusCode::CREATED {
            prop_assert!(reply.status.is_client_error(), "{}", reply.status);
            prop_assert!(reply.body["error"].is_string());
        }
    }

    #[test]
    fn any_path_and_query_is_answered_without_a_5xx(
        id in "\\PC{0,30}",
        query in "[a-zA-Z=&%0-9_-]{0,60}",
    ) {
        let runtime = runtime();
        let (app, _) = runtime.block_on(async { idle_app() });
        let encoded: String = url_escape(&id);
        for uri in [
            format!("/orders/{encoded}"),
            format!("/orders/{encoded}/cancel"),
            format!("/orders?{query}"),
        ] {
            let reply = runtime.block_on(send(
                &app,
                Request::builder().uri(&uri).body(Body::empty()).unwrap(),
            ));
            prop_assert!(!reply.status.is_server_error(), "{} for {}", reply.status, uri);
            if !reply.status.is_success() {
                prop_assert!(reply.body["error"].is_string(), "{}: {}", uri, reply.body);
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
