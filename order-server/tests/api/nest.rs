//! The API nested in another axum service with `router()`: it answers under the prefix, with
//! its `Location` headers and JSON errors there, and the outer service's routes are its own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, Uri, header};
use axum::routing::get;
use axum::{Json, Router};
use order_core::OrderProcessor;
use order_core::handler::SimulatedStep;
use serde_json::json;

use crate::helpers::{VALID_ORDER, get as get_uri, init_logs, post_json, send};

const PREFIX: &str = "/shop/order-api";

/// The outer service's own state: nothing the order API knows of.
struct Shop {
    name: &'static str,
}

/// An outer service with its own route, state and fallback, and the order API under
/// [`PREFIX`]; its processor is not started, so orders stay PENDING.
fn shop() -> Router {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    Router::new()
        .route(
            "/",
            get(|State(shop): State<Arc<Shop>>| async move { Json(json!({"shop": shop.name})) }),
        )
        .with_state(Arc::new(Shop { name: "corner" }))
        .nest(
            PREFIX,
            order_server::router(processor, &order_server::RouterOptions::default()),
        )
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"shop": "no such page", "path": uri.path()})),
            )
        })
}

#[tokio::test]
async fn orders_are_created_and_read_under_the_prefix() {
    let app = shop();
    let created = post_json(&app, &format!("{PREFIX}/orders"), VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["order"]["id"].as_i64().unwrap();
    let location = format!("{PREFIX}/orders/{id}");
    assert_eq!(created.headers[header::LOCATION], location.as_str());

    let read = get_uri(&app, &location).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["order"]["id"], id);
    assert_eq!(read.body["order"]["userId"], "user-123");
    assert_eq!(read.body["order"]["status"], "PENDING");

    // The same API, not a copy: the metrics under the prefix count the order.
    let metrics = get_uri(&app, &format!("{PREFIX}/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.body["totalOrders"], 1);
}

#[tokio::test]
async fn errors_under_the_prefix_are_the_apis_json_errors() {
    let app = shop();
    let reply = send(
        &app,
        Request::builder()
            .method(Method::DELETE)
            .uri(format!("{PREFIX}/orders/1"))
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
            .uri(format!("{PREFIX}/orders"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(reply.error(), "method not allowed for this route");

    let reply = get_uri(&app, &format!("{PREFIX}/orders/9223372036854775807")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error(), "order 9223372036854775807 not found");
}

#[tokio::test]
async fn the_outer_services_routes_and_fallback_are_its_own() {
    let app = shop();
    let front = get_uri(&app, "/").await;
    assert_eq!(front.status, StatusCode::OK);
    assert_eq!(front.body, json!({"shop": "corner"}));

    // The API has no fallback: a path under the prefix that it does not route is the outer
    // service's to answer, as is any other.
    for path in [format!("{PREFIX}/nope"), "/nope".to_owned()] {
        let reply = get_uri(&app, &path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            reply.body,
            json!({"shop": "no such page", "path": path}),
            "{path}"
        );
    }

    // Nor does the API answer at the root: its routes are only under the prefix.
    let reply = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["shop"], "no such page");
}

/// The dashboard comes with the API, at the prefix itself and at `dashboard` under it; the
/// page reads the API relative to where it is served.
#[tokio::test]
async fn the_dashboard_is_served_under_the_prefix() {
    let app = shop();
    for path in [PREFIX.to_owned(), format!("{PREFIX}/dashboard")] {
        let page = crate::dashboard::raw(&app, &path, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(page.text().contains("<h1>Orders</h1>"), "{path}");
    }
    let stream = crate::dashboard::raw_head(&app, &format!("{PREFIX}/metrics/stream")).await;
    assert_eq!(stream, StatusCode::OK);
}
