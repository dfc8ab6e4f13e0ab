//! The real `order-server` binary, over TCP on loopback: configuration from the environment,
//! processing in real time, graceful shutdown on SIGTERM.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::child_process::{Server, spawn_server};

fn order() -> Value {
    json!({"userId": "user-123", "itemIds": ["item1", "item2"], "totalAmount": 59.99})
}

/// Waits, up to 10 s, until `/metrics` counts `count` orders PROCESSING.
async fn wait_until_processing(server: &Server, count: u64) {
    let began = Instant::now();
    loop {
        let (_, metrics) = server.get("/metrics").await;
        if metrics["statuses"]["processing"] == count {
            return;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seconds_between(order: &Value, from: &str, to: &str) -> f64 {
    let time =
        |key: &str| chrono::DateTime::parse_from_rfc3339(order[key].as_str().unwrap()).unwrap();
    (time(to) - time(from)).num_microseconds().unwrap() as f64 / 1e6
}

#[tokio::test]
async fn an_order_goes_pending_processing_completed_in_about_the_processing_delay() {
    let server = spawn_server(&[("PROCESSING_DELAY_MS", "1000")]).await;
    let (status, created) = server.post("/orders", &order()).await;
    assert_eq!(status, 201);
    assert_eq!(created["order"]["status"], "PENDING");
    let id = created["order"]["id"].as_i64().unwrap();

    let mut seen = vec!["PENDING".to_owned()];
    let began = Instant::now();
    let finished = loop {
        assert!(began.elapsed() < Duration::from_secs(20), "still {seen:?}");
        let (status, body) = server.get(&format!("/orders/{id}")).await;
        assert_eq!(status, 200);
        let current = body["order"]["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&current) {
            seen.push(current.clone());
        }
        if current == "COMPLETED" {
            break body["order"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen, ["PENDING", "PROCESSING", "COMPLETED"]);
    let took = seconds_between(&finished, "processingStartTime", "processingEndTime");
    assert!((0.95..3.0).contains(&took), "processing took {took} s");
    assert_eq!(finished["attempts"], 1);

    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metrics["totalOrders"], 1);
    assert_eq!(metrics["processedCount"], 1);
    assert_eq!(metrics["statuses"]["completed"], 1);
    let avg = metrics["avgProcessingTime"].as_f64().unwrap();
    assert!((avg - took).abs() < 1e-3, "avg {avg} vs {took}");

    let (clean, _) = server.terminate().await;
    assert!(clean, "exit status 0 after SIGTERM");
}

#[tokio::test]
async fn sigterm_drains_orders_in_progress_then_exits_zero() {
    let server = spawn_server(&[
        ("PROCESSING_DELAY_MS", "700"),
        ("SHUTDOWN_TIMEOUT_SECS", "20"),
    ])
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, created) = server.post("/orders", &order()).await;
        assert_eq!(status, 201);
        ids.push(created["order"]["id"].as_i64().unwrap());
    }
    // Wait until all three are in the handler.
    wait_until_processing(&server, 3).await;
    let stopping = Instant::now();
    let (clean, logs) = server.terminate().await;
    assert!(clean, "exit status 0 after SIGTERM");
    assert!(stopping.elapsed() < Duration::from_secs(20));
    let stopped = logs
        .iter()
        .find(|entry| entry["fields"]["message"] == "stopped")
        .unwrap_or_else(|| panic!("no 'stopped' line in {logs:?}"));
    assert_eq!(stopped["fields"]["abandoned"], 0, "all three finished");
}

/// The signal stops the workers at once, not after the requests in progress: a slow client
/// holding the HTTP drain open must not let the workers take more orders meanwhile, and its
/// request is still answered.
#[tokio::test]
async fn sigterm_stops_claiming_at_once_while_a_request_is_still_in_progress() {
    // 4 s in the handler: the order must still be there when the drain begins, however slow
    // a loaded machine is to report it PROCESSING and to deliver the signal.
    let server = spawn_server(&[
        ("PROCESSING_DELAY_MS", "4000"),
        ("WORKERS", "1"),
        ("SHUTDOWN_TIMEOUT_SECS", "20"),
    ])
    .await;
    for _ in 0..4 {
        let (status, _) = server.post("/orders", &order()).await;
        assert_eq!(status, 201);
    }
    wait_until_processing(&server, 1).await;
    // A request whose body arrives in two parts, the second well after the first order
    // could have finished and the next one started.
    let body = order().to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request_head = format!(
        "POST /orders HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    );
    slow.write_all(request_head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tail = tail.to_owned();
    let slow_client = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5000)).await;
        slow.write_all(tail.as_bytes()).await.unwrap();
        let mut answer = String::new();
        slow.read_to_string(&mut answer).await.unwrap();
        answer
    });

    let (clean, logs) = server.terminate().await;
    assert!(clean, "exit status 0 after SIGTERM");
    let answer = slow_client.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let messages: Vec<&str> = logs
        .iter()
        .filter_map(|entry| entry["fields"]["message"].as_str())
        .collect();
    let started = messages.iter().filter(|m| **m == "attempt started").count();
    assert_eq!(
        started, 1,
        "only the order in the handler at the signal ran: {messages:?}"
    );
    let draining = logs
        .iter()
        .find(|entry| entry["fields"]["message"] == "draining orders in progress")
        .unwrap_or_else(|| panic!("no drain line in {messages:?}"));
    assert_eq!(draining["fields"]["in_flight"], 1);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn an_unreachable_database_stops_the_start_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-server"))
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        // Nothing listens on port 1: refused at once, and no waiting for it to come up.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/orders")
        .env("DB_STARTUP_TIMEOUT_SECS", "0")
        .env("DB_ACQUIRE_TIMEOUT_MS", "200")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PostgreSQL is not usable"), "{stderr}");
}

/// Built without PostgreSQL, the binary refuses a `DATABASE_URL` rather than keep in memory
/// the orders its operator meant to be durable.
#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn without_postgres_support_a_database_url_stops_the_start_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-server"))
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/orders")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "this build of order-server has no PostgreSQL support; rebuild with the `postgres` feature"
        ),
        "{stderr}"
    );
}
