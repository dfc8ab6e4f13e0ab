//! Idempotent creates, bearer tokens and load shedding, as a client sees them.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use order_core::OrderProcessor;
use order_core::handler::SimulatedStep;
#[cfg(feature = "postgres")]
use order_core::testing::TestDatabase;
use order_server::{ApiTokens, RouterOptions, ServeOptions};
use serde_json::{Value, json};

use crate::child_process::spawn_server;
use crate::helpers::{Reply, VALID_ORDER, get, idle_app, init_logs, send};

fn create(key: Option<&str>, token: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

async fn total_orders(app: &Router, token: Option<&str>) -> i64 {
    let mut request = Request::builder().uri("/metrics");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let reply = send(app, request.body(Body::empty()).unwrap()).await;
    reply.body["totalOrders"].as_i64().unwrap()
}

const OTHER_ORDER: &str = r#"{"userId": "user-123", "itemIds": ["item9"], "totalAmount": 59.99}"#;

#[tokio::test]
async fn a_replayed_key_returns_the_first_response_and_creates_nothing() {
    let (app, processor) = idle_app();
    let first = send(&app, create(Some("order-7781"), None, VALID_ORDER)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = first.body["order"]["id"].as_i64().unwrap();

    // The order moves on; a replay still answers what the first response said.
    let running = processor.start();
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        processor.wait_until_done(order_core::OrderId::new(id).unwrap()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(done.status, order_core::OrderStatus::Completed);

    // The same body, spelt differently (spaces, amount), and the key as the IETF draft quotes it.
    let same = r#"{"totalAmount":59.990,"itemIds":["item1","item2"],"userId":"user-123"}"#;
    let replay = send(&app, create(Some("\"order-7781\""), None, same)).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body);
    assert_eq!(
        replay.headers[header::LOCATION],
        first.headers[header::LOCATION]
    );

    let reused = send(&app, create(Some("order-7781"), None, OTHER_ORDER)).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reused
            .error()
            .contains("already used for a different order"),
        "{}",
        reused.body
    );
    assert_eq!(total_orders(&app, None).await, 1);

    // Without a key, each request is an order of its own.
    send(&app, create(None, None, VALID_ORDER)).await;
    assert_eq!(total_orders(&app, None).await, 2);
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_keys_are_400() {
    let (app, _) = idle_app();
    let long = "k".repeat(256);
    for (key, expected) in [
        ("", "must not be empty"),
        (long.as_str(), "at most 255"),
        ("\"\"", "must not be empty"),
    ] {
        let reply = send(&app, create(Some(key), None, VALID_ORDER)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert!(reply.error().contains(expected), "{key:?}: {}", reply.body);
    }
    let twice = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Body::from(VALID_ORDER))
        .unwrap();
    let reply = send(&app, twice).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error(), "Idempotency-Key must be given once");
    assert_eq!(total_orders(&app, None).await, 0);
}

#[tokio::test]
async fn sixteen_concurrent_requests_with_one_key_create_one_order() {
    let (app, _) = idle_app();
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, create(Some("race"), None, VALID_ORDER)).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut replayed = 0;
    for racer in racers {
        let reply: Reply = racer.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        replayed += usize::from(reply.headers.contains_key("idempotent-replayed"));
        ids.push(reply.body["order"]["id"].as_i64().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replayed, 15);
    assert_eq!(total_orders(&app, None).await, 1);
}

/// The routes as the binary serves them: with the dashboard sampled from the start, and the
/// Prometheus exporter.
fn served_router() -> RouterOptions {
    let mut router = ServeOptions::default().router;
    router.prometheus = Some(crate::helpers::exporter());
    router
}

/// An open app but for the bearer `tokens` (comma-separated).
pub(crate) fn guarded_app(tokens: &str) -> Router {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let mut options = ServeOptions::default();
    options.api_tokens = tokens.parse::<ApiTokens>().unwrap();
    options.router = served_router();
    order_server::app(processor, &options)
}

#[tokio::test]
async fn with_tokens_every_route_but_the_probes_needs_one() {
    let app = guarded_app("token-a,token-b");
    for uri in [
        "/orders",
        "/orders/1",
        "/metrics",
        "/metrics/stream",
        "/metrics/prometheus",
        "/openapi.json",
        "/nowhere",
    ] {
        let reply = get(&app, uri).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(
            reply.headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="order-server""#
        );
        assert!(reply.error().contains("bearer token is required"), "{uri}");
    }
    let wrong = send(&app, create(None, Some("token-c"), VALID_ORDER)).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="order-server", error="invalid_token""#
    );
    let basic = send(
        &app,
        Request::builder()
            .uri("/metrics")
            .header(header::AUTHORIZATION, "Basic dG9rZW4tYTo=")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(&app, probe).await.status, StatusCode::OK, "{probe}");
    }
    let created = send(&app, create(None, Some("token-a"), VALID_ORDER)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let read = send(
        &app,
        Request::builder()
            .uri(created.headers[header::LOCATION].to_str().unwrap())
            .header(header::AUTHORIZATION, "bearer token-b")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "the scheme is case-insensitive"
    );
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_token() {
    let app = guarded_app("token-a,token-b");
    let a = send(&app, create(Some("same-key"), Some("token-a"), VALID_ORDER)).await;
    let b = send(&app, create(Some("same-key"), Some("token-b"), VALID_ORDER)).await;
    let a_again = send(&app, create(Some("same-key"), Some("token-a"), VALID_ORDER)).await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(a.body["order"]["id"], b.body["order"]["id"]);
    assert_eq!(a_again.body["order"]["id"], a.body["order"]["id"]);
    assert_eq!(a_again.headers["idempotent-replayed"], "true");
    assert_eq!(total_orders(&app, Some("token-a")).await, 2);
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_are_shed_with_503_and_retry_after() {
    init_logs();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .build()
        .unwrap();
    let mut options = ServeOptions::default();
    options.max_in_flight = 1;
    options.router = served_router();
    let app = order_server::app(processor, &options);
    // A client that sends its body slowly holds the one slot. The handler reading the body
    // proves the request is in: the probe below goes out only after that.
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let (reading_tx, reading) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            let body = Body::from_stream(tokio_stream_from(body_rx, reading_tx));
            let request = Request::builder()
                .method(Method::POST)
                .uri("/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap();
            send(&app, request).await
        }
    });
    body_tx.send(Ok(b"{\"userId\": ".to_vec())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("the handler reads the body")
        .unwrap();

    let shed = get(&app, "/metrics").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers[header::RETRY_AFTER], "1");
    assert!(
        shed.error().contains("limit of requests in progress"),
        "{}",
        shed.body
    );
    assert_eq!(
        get(&app, "/healthz").await.status,
        StatusCode::OK,
        "probes are never shed"
    );

    body_tx
        .send(Ok(br#""u", "itemIds": ["i"], "totalAmount": 1}"#.to_vec()))
        .await
        .unwrap();
    drop(body_tx);
    assert_eq!(slow.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(
        get(&app, "/metrics").await.status,
        StatusCode::OK,
        "the slot is free again"
    );
}

/// The receiver as a stream of body chunks; `reading` is sent when the body is first read.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    reading: tokio::sync::oneshot::Sender<()>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut reading = Some(reading);
    futures::stream::poll_fn(move |cx| {
        if let Some(reading) = reading.take() {
            let _ = reading.send(());
        }
        rx.poll_recv(cx)
    })
}

/// The binary on PostgreSQL, with tokens: a keyed create is replayed and a reused key refused
/// (`races.rs` races clients for one key), and the token is never logged.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn on_postgres_keys_replay_behind_tokens() {
    let db = TestDatabase::create().await;
    let server = spawn_server(&[
        ("DATABASE_URL", db.url()),
        ("API_TOKEN", "pg-token"),
        ("WORKERS", "0"),
    ])
    .await;
    let client = reqwest::Client::new();
    let post = |key: &'static str, body: Value| {
        let request = client
            .post(format!("{}/orders", server.base))
            .bearer_auth("pg-token")
            .header("idempotency-key", key)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (
                response.status().as_u16(),
                replayed,
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let order = json!({"userId": "ann", "itemIds": ["a"], "totalAmount": 5});
    let first = post("pg-race", order.clone()).await;
    let again = post("pg-race", order.clone()).await;
    assert_eq!((first.0, first.1), (201, false), "{first:?}");
    assert_eq!((again.0, again.1), (201, true), "{again:?}");
    assert_eq!(first.2, again.2);

    let (status, _, body) = post(
        "pg-race",
        json!({"userId": "bob", "itemIds": ["a"], "totalAmount": 5}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let counts = crate::pg_helpers::direct_counts(db.connection()).await;
    assert_eq!(counts.values().sum::<i64>(), 1, "{counts:?}");

    let unauthorized = client
        .get(format!("{}/orders", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let logs = server.logs();
    assert!(
        !logs
            .iter()
            .any(|line| line.to_string().contains("pg-token")),
        "the token is never logged"
    );
    server.kill().await;
}

/// A client that trickles its request head is cut off after the header timeout, while the
/// server goes on answering others.
#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = spawn_server(&[]).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: orders\r\n")
        .await
        .unwrap();
    let began = std::time::Instant::now();
    assert_eq!(
        server.get("/healthz").await.0,
        200,
        "others are served meanwhile"
    );
    let mut buffer = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buffer))
        .await
        .expect("the server closes the connection within 30 s");
    let waited = began.elapsed();
    // Closed (or reset) without a response to the unfinished request, after the timeout: no
    // 408, which is why the OpenAPI document lists none.
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "answered instead of closed: {}",
            String::from_utf8_lossy(&buffer[..n])
        ),
    }
    assert!(
        waited >= order_server::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "{waited:?}"
    );
    server.kill().await;
}

/// In memory, a burst past the backlog bound is pushed back with 503 and Retry-After, and
/// every order accepted before it is kept.
#[tokio::test]
async fn a_full_in_memory_backlog_pushes_back_with_503() {
    let server = spawn_server(&[("WORKERS", "0"), ("MAX_BACKLOG", "3")]).await;
    let order = json!({"userId": "ann", "itemIds": ["a"], "totalAmount": 5});
    for _ in 0..3 {
        server.create(&order).await;
    }
    let response = server
        .client()
        .post(format!("{}/orders", server.base))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metrics["totalOrders"], 3);
    assert_eq!(server.get("/healthz").await.0, 200);
    server.kill().await;
}
