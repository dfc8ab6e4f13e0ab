//! Every bad input gets a JSON error with the right status, and the server keeps serving.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;

use crate::helpers::{VALID_ORDER, get, idle_app, post_json, send};

#[tokio::test]
async fn bad_order_ids_are_400_and_unknown_ones_404() {
    let (app, _) = idle_app();
    for bad in ["abc", "0", "-1", "1.5", "99999999999999999999", "%20"] {
        let reply = get(&app, &format!("/orders/{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.error().contains("positive integer"), "{bad}");
    }
    let reply = get(&app, "/orders/9223372036854775807").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error(), "order 9223372036854775807 not found");
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let (app, _) = idle_app();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = Request::builder().method(Method::POST).uri("/orders");
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        let reply = send(&app, request.body(Body::from(VALID_ORDER)).unwrap()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert!(reply.error().contains("application/json"));
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (app, _) = idle_app();
    for body in ["{bad", "", r#"{"userId": "u","#, "\u{0}"] {
        let reply = post_json(&app, "/orders", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(reply.error().contains("JSON"), "{}", reply.error());
    }
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_422_naming_the_field() {
    let (app, _) = idle_app();
    for (body, mentions) in [
        (
            r#"{"userId": 5, "itemIds": ["a"], "totalAmount": 1}"#,
            "userId",
        ),
        (r#"{"itemIds": ["a"], "totalAmount": 1}"#, "userId"),
        (
            r#"{"userId": "u", "itemIds": "a", "totalAmount": 1}"#,
            "itemIds",
        ),
        (
            r#"{"userId": "u", "itemIds": ["a"], "totalAmount": "1.00"}"#,
            "totalAmount",
        ),
        (
            r#"{"userId": "u", "itemIds": ["a"], "totalAmount": 1e400}"#,
            "totalAmount",
        ),
        (
            r#"{"userId": "u", "itemIds": ["a"], "totalAmount": 1, "coupon": "X"}"#,
            "coupon",
        ),
        ("[]", "expected struct"),
        ("null", "expected struct"),
    ] {
        let reply = post_json(&app, "/orders", body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            reply.error().contains(mentions),
            "{body}: {}",
            reply.error()
        );
    }
}

#[tokio::test]
async fn rule_violations_are_422_with_the_field() {
    let (app, _) = idle_app();
    let long = "x".repeat(129);
    let too_many: Vec<String> = (0..1001).map(|i| format!("i{i}")).collect();
    for (order, field) in [
        (
            json!({"userId": "", "itemIds": ["a"], "totalAmount": 1}),
            "userId",
        ),
        (
            json!({"userId": long, "itemIds": ["a"], "totalAmount": 1}),
            "userId",
        ),
        (
            json!({"userId": "u", "itemIds": [], "totalAmount": 1}),
            "itemIds",
        ),
        (
            json!({"userId": "u", "itemIds": too_many, "totalAmount": 1}),
            "itemIds",
        ),
        (
            json!({"userId": "u", "itemIds": ["a", ""], "totalAmount": 1}),
            "itemIds[1]",
        ),
        (
            json!({"userId": "u", "itemIds": ["a"], "totalAmount": -1}),
            "totalAmount",
        ),
    ] {
        let reply = post_json(&app, "/orders", order.to_string()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{order}");
        assert_eq!(reply.body["field"], field, "{order}");
        assert!(reply.error().starts_with(&format!("{field}: ")));
    }
    let reply = post_json(
        &app,
        "/orders",
        r#"{"userId": "u", "itemIds": ["a"], "totalAmount": 1.001}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.error(),
        "totalAmount: must have at most 2 decimal places"
    );
    assert_eq!(
        get(&app, "/metrics").await.body["totalOrders"],
        0,
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let (app, _) = idle_app();
    let items: Vec<String> = (0..9000).map(|i| format!("{i:0>120}")).collect();
    let body = json!({"userId": "u", "itemIds": items, "totalAmount": 1}).to_string();
    assert!(body.len() > order_server::MAX_BODY_BYTES);
    let reply = post_json(&app, "/orders", body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error().contains("length limit"), "{}", reply.error());
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let (app, _) = idle_app();
    let reply = get(&app, "/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error(), "no route for /nope");

    let reply = send(
        &app,
        Request::builder()
            .method(Method::DELETE)
            .uri("/orders/1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error(), "method not allowed for this route");
    assert!(
        reply.headers[header::ALLOW]
            .to_str()
            .unwrap()
            .contains("GET")
    );

    let reply = send(
        &app,
        Request::builder()
            .method(Method::PUT)
            .uri("/orders")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn the_server_keeps_serving_after_bad_input() {
    let (app, _) = idle_app();
    for garbage in ["{bad", "[]", r#"{"userId": ""}"#] {
        post_json(&app, "/orders", garbage).await;
    }
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(get(&app, "/metrics").await.body["totalOrders"], 1);
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_400_that_says_so() {
    let (app, _) = idle_app();
    let reply = get(&app, "/orders/%FF").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().contains("UTF-8"), "{}", reply.error());
}

#[tokio::test]
async fn a_nul_in_a_user_or_item_id_is_422_naming_the_field() {
    let (app, processor) = idle_app();
    for (body, field) in [
        (
            json!({"userId": "\u{0}", "itemIds": ["a"], "totalAmount": 1}),
            "userId",
        ),
        (
            json!({"userId": "u", "itemIds": ["a\u{0}"], "totalAmount": 1}),
            "itemIds[0]",
        ),
    ] {
        let reply = post_json(&app, "/orders", body.to_string()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(
            reply.body,
            json!({"error": format!("{field}: must not contain the NUL character"), "field": field})
        );
    }
    assert_eq!(processor.metrics().await.unwrap().total_orders, 0);
}
