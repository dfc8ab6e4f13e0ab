use axum::http::{StatusCode, header};
use serde_json::json;

use crate::helpers::{VALID_ORDER, get, idle_app, post_json};

#[tokio::test]
async fn creating_an_order_returns_it_as_stored() {
    let (app, _) = idle_app();
    let created = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let order = &created.body["order"];
    let id = order["id"].as_i64().unwrap();
    assert_eq!(created.headers[header::LOCATION], format!("/orders/{id}"));
    assert_eq!(order["userId"], "user-123");
    assert_eq!(order["itemIds"], json!(["item1", "item2"]));
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["attempts"], 0);
    assert_eq!(order["lastError"], json!(null));
    assert_eq!(order["processingStartTime"], json!(null));
    assert_eq!(order["processingEndTime"], json!(null));
    assert_eq!(order["createdAt"], order["updatedAt"]);
    let created_at = order["createdAt"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "{created_at} is in UTC");
    chrono::DateTime::parse_from_rfc3339(created_at).expect("createdAt is RFC 3339");
    let keys: Vec<&str> = order
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        order["steps"],
        json!([]),
        "a plain handler records no steps"
    );
    assert_eq!(order["cancelRequestedAt"], json!(null));
    assert_eq!(order["failures"], json!([]), "never retried");
    let mut expected = [
        "attempts",
        "cancelRequestedAt",
        "createdAt",
        "failures",
        "id",
        "itemIds",
        "lastError",
        "processingEndTime",
        "processingStartTime",
        "status",
        "steps",
        "totalAmount",
        "updatedAt",
        "userId",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);

    let fetched = get(&app, &format!("/orders/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);
}

#[tokio::test]
async fn amounts_are_exact_json_numbers() {
    let (app, _) = idle_app();
    for (sent, shown) in [
        ("59.99", "59.99"),
        ("0.1", "0.10"),
        ("9999999999.99", "9999999999.99"),
        ("10000000000", "10000000000.00"),
        ("59.900", "59.90"),
        ("0", "0.00"),
        ("1.5e1", "15.00"),
    ] {
        let body = format!(r#"{{"userId":"u","itemIds":["i"],"totalAmount":{sent}}}"#);
        let created = post_json(&app, "/orders", body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{sent}");
        // The number's text as the server wrote it, not a float's rounding of it (read as
        // text: a JSON parser would make `0.10` a float).
        let id = created.body["order"]["id"].as_i64().unwrap();
        let text = crate::dashboard::raw(&app, &format!("/orders/{id}"), &[]).await;
        let written = format!(r#""totalAmount":{shown},"#);
        assert!(text.text().contains(&written), "{sent}: {}", text.text());
    }
}

#[tokio::test]
async fn ids_are_assigned_in_order() {
    let (app, _) = idle_app();
    let first = post_json(&app, "/orders", VALID_ORDER).await.body["order"]["id"]
        .as_i64()
        .unwrap();
    let second = post_json(&app, "/orders", VALID_ORDER).await.body["order"]["id"]
        .as_i64()
        .unwrap();
    assert!(second > first);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let (app, _) = idle_app();
    let health = get(&app, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, json!({"status": "ok"}));
    let ready = get(&app, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body, json!({"status": "ready"}));
}
