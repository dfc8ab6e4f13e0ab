//! What a client sees when storage fails: a JSON 5xx with a generic message, never a dropped
//! connection. mockall produces failures a real backend cannot be made to produce on demand.

use axum::http::StatusCode;
use order_core::StorageError;
use order_core::backend::MockRepository;

use crate::helpers::{VALID_ORDER, app_with, get, post_json};

#[tokio::test]
async fn unreachable_storage_is_503() {
    let mut repository = MockRepository::new();
    repository
        .expect_get()
        .returning(|_| Err(StorageError::unavailable("connection refused")));
    repository
        .expect_insert()
        .returning(|_| Err(StorageError::unavailable("connection refused")));
    repository
        .expect_metrics()
        .returning(|| Err(StorageError::unavailable("connection refused")));
    repository
        .expect_check_ready()
        .returning(|| Err(StorageError::unavailable("connection refused")));
    let app = app_with(repository);

    for reply in [
        get(&app, "/orders/1").await,
        post_json(&app, "/orders", VALID_ORDER).await,
        get(&app, "/metrics").await,
        get(&app, "/readyz").await,
    ] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.error(), "storage unavailable, try again later");
    }
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn other_storage_failures_are_500_without_their_cause() {
    let mut repository = MockRepository::new();
    repository.expect_insert().returning(|_| {
        Err(StorageError::other(
            "duplicate key value violates unique constraint \"orders_pkey\"",
        ))
    });
    let app = app_with(repository);
    let reply = post_json(&app, "/orders", VALID_ORDER).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error(), "internal server error");
    assert!(!reply.body.to_string().contains("orders_pkey"));
}

#[tokio::test]
async fn invalid_orders_never_reach_storage() {
    let mut repository = MockRepository::new();
    repository.expect_insert().never();
    let app = app_with(repository);
    let reply = post_json(
        &app,
        "/orders",
        r#"{"userId": "", "itemIds": ["a"], "totalAmount": 1}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_panic_while_serving_is_a_json_500() {
    let mut repository = MockRepository::new();
    repository
        .expect_get()
        .returning(|_| panic!("a bug in a storage adapter"));
    let app = app_with(repository);
    let reply = get(&app, "/orders/1").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error(), "internal server error");
    // And the next request is served as usual.
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
}
