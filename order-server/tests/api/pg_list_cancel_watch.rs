//! Listing, cancelling and watching orders through the real binary on PostgreSQL, with
//! several servers on one database.

use std::time::Duration;

use order_core::testing::TestDatabase;
use serde_json::{Value, json};

use crate::child_process::{Server, spawn_server};
use crate::listing::{Watch, ids, status_events, statuses};
use crate::pg_helpers::{direct_counts, wait_until_all_finished};

fn order(user: &str) -> Value {
    json!({"userId": user, "itemIds": ["item1"], "totalAmount": 12.5})
}

/// A server on `db` that serves the API and processes nothing.
async fn api_only(db: &TestDatabase) -> Server {
    spawn_server(&[("DATABASE_URL", db.url()), ("WORKERS", "0")]).await
}

/// The whole event stream of an order from `server`, which must end within 10 s.
async fn events(server: &Server, id: i64) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/orders/{id}/events", server.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    status_events(&response.text().await.expect("the stream ends in time"))
}

#[tokio::test]
async fn orders_list_and_cancel_on_postgres() {
    let db = TestDatabase::create().await;
    let server = api_only(&db).await;
    let mut created = Vec::new();
    for user in ["ann", "bob", "ann"] {
        created.push(server.create(&order(user)).await);
    }

    let (status, page) = server.get("/orders?limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [created[2], created[1]]);
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, rest) = server.get(&format!("/orders?limit=2&after={cursor}")).await;
    assert_eq!(
        (ids(&rest), &rest["nextCursor"]),
        (vec![created[0]], &Value::Null)
    );
    let (_, ann) = server.get("/orders?userId=ann").await;
    assert_eq!(ids(&ann), [created[2], created[0]]);

    let (status, cancelled) = server
        .post(&format!("/orders/{}/cancel", created[1]), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["order"]["status"], "CANCELLED");
    let (status, again) = server
        .post(&format!("/orders/{}/cancel", created[1]), &json!({}))
        .await;
    assert_eq!(status, 409, "{again}");
    assert!(again["error"].as_str().unwrap().contains("is CANCELLED"));
    let (_, listed) = server.get("/orders?status=CANCELLED").await;
    assert_eq!(ids(&listed), [created[1]]);
    let (_, listed) = server.get("/orders?status=PENDING&userId=bob").await;
    assert_eq!(ids(&listed), Vec::<i64>::new());
    let (status, bad) = server.get("/orders?limit=1000").await;
    assert_eq!(status, 400, "{bad}");

    // A worker that comes later never starts the cancelled order, though it was queued.
    let worker = spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "10")]).await;
    wait_until_all_finished(db.connection(), Duration::from_secs(20)).await;
    let (_, read) = server.get(&format!("/orders/{}", created[1])).await;
    assert_eq!(
        (&read["order"]["status"], &read["order"]["attempts"]),
        (&json!("CANCELLED"), &json!(0))
    );
    let counts = direct_counts(db.connection()).await;
    assert_eq!(counts.get("COMPLETED"), Some(&2), "{counts:?}");
    worker.kill().await;
}

/// PostgreSQL text cannot hold a NUL: an id with one is refused as invalid (422 naming the
/// field) before it reaches the database, where it was a 500, and a filter with one is a 400.
#[tokio::test]
async fn a_nul_in_an_id_is_refused_before_it_reaches_postgres() {
    let db = TestDatabase::create().await;
    let server = api_only(&db).await;
    for (body, field) in [
        (
            json!({"userId": "a\u{0}b", "itemIds": ["i"], "totalAmount": 1}),
            "userId",
        ),
        (
            json!({"userId": "u", "itemIds": ["i", "\u{0}"], "totalAmount": 1}),
            "itemIds[1]",
        ),
    ] {
        let (status, answer) = server.post("/orders", &body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(
            answer,
            json!({"error": format!("{field}: must not contain the NUL character"), "field": field})
        );
    }
    let (status, answer) = server.get("/orders?userId=a%00b").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer,
        json!({"error": "userId must not contain the NUL character"})
    );
    assert!(direct_counts(db.connection()).await.is_empty());
    server.kill().await;
}

#[tokio::test]
async fn an_order_being_processed_on_postgres_cannot_be_cancelled() {
    let db = TestDatabase::create().await;
    let server =
        spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "20000")]).await;
    let id = server.create(&order("ann")).await;
    let began = std::time::Instant::now();
    loop {
        let (_, read) = server.get(&format!("/orders/{id}")).await;
        if read["order"]["status"] == "PROCESSING" {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "{read}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, refused) = server
        .post(&format!("/orders/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        refused["error"],
        format!("order {id} is PROCESSING and can no longer be cancelled")
    );
    server.kill().await;
}

/// Each server streams changes made by another: the watchers' own servers process nothing
/// and poll only every 30 s, so what they stream within the 10 s bound came by NOTIFY.
#[tokio::test]
async fn event_streams_follow_changes_made_by_other_servers() {
    let db = TestDatabase::create().await;
    let (here, there) = tokio::join!(api_only(&db), api_only(&db));

    // Each change is made once the watch has its first event, so the stream is open (and
    // listening) before the change, whatever the scheduling.
    let cancelled = here.create(&order("ann")).await;
    let mut watch = Watch::connect(&format!("{}/orders/{cancelled}/events", there.base)).await;
    assert_eq!(statuses(&watch.until_events(1).await), ["PENDING"]);
    let (status, body) = here
        .post(&format!("/orders/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = status_events(&watch.read_to_end().await);
    assert_eq!(statuses(&seen), ["PENDING", "CANCELLED"]);

    let processed = here.create(&order("bob")).await;
    let mut watch = Watch::connect(&format!("{}/orders/{processed}/events", there.base)).await;
    assert_eq!(statuses(&watch.until_events(1).await), ["PENDING"]);
    let worker = spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "500")]).await;
    let seen = status_events(&watch.read_to_end().await);
    assert_eq!(statuses(&seen), ["PENDING", "PROCESSING", "COMPLETED"]);
    assert_eq!(seen[2]["order"]["attempts"], 1);

    // Late watchers get the final state and the stream ends, on either server.
    assert_eq!(statuses(&events(&here, processed).await), ["COMPLETED"]);
    assert_eq!(statuses(&events(&there, cancelled).await), ["CANCELLED"]);
    let (status, body) = there.get("/orders/424242/events").await;
    assert_eq!(status, 404, "{body}");

    // SIGTERM with a stream open: the stream is closed and the server exits promptly.
    // The worker gone first, so that the order stays PENDING.
    worker.kill().await;
    let pending = here.create(&order("cy")).await;
    let streamed = terminate_while_streaming(here, &format!("/orders/{pending}/events")).await;
    assert_eq!(statuses(&status_events(&streamed)), ["PENDING"]);
    there.kill().await;
}

/// Sends SIGTERM to `server` while a client holds the stream at `path` open: the server must
/// exit 0 within 5 s and the stream end cleanly. Returns what was streamed.
async fn terminate_while_streaming(server: Server, path: &str) -> String {
    // Its head received first: the stream is open before the signal.
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let open = tokio::spawn(response.text());
    let began = std::time::Instant::now();
    let (clean, _) = server.terminate().await;
    assert!(clean, "exit 0");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    open.await.unwrap().expect("the stream ended cleanly")
}

/// The `sample` events of `server`'s `/metrics/stream`, read until one satisfies `done`
/// (within `within`), with the `history` event first.
async fn samples_until(
    server: &Server,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Vec<Value>) {
    let mut response = server
        .client()
        .get(format!("{}/metrics/stream", server.base))
        .timeout(within)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut history = None;
    let mut samples = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("a sample in time") {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|line| line.strip_prefix("data: ")) else {
                continue;
            };
            let data: Value = serde_json::from_str(data).unwrap();
            if block.starts_with("event: history") {
                history = Some(data);
            } else if done(&data) {
                samples.push(data);
                return (history.expect("history comes first"), samples);
            } else {
                samples.push(data);
            }
        }
    }
    panic!("the stream ended before the sample awaited");
}

/// The counts a server streams are the database's: a server that processes nothing shows
/// the throughput and processing time of the worker beside it, and its stream ends at SIGTERM.
#[tokio::test]
async fn the_metrics_stream_shows_the_work_of_every_server_on_the_database() {
    let db = TestDatabase::create().await;
    let here = api_only(&db).await;
    let mut ids = Vec::new();
    for user in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        ids.push(here.create(&order(user)).await);
    }
    let (_, before) = samples_until(&here, Duration::from_secs(10), |sample| {
        sample["statuses"]["pending"] == 6
    })
    .await;
    let backlog = before.last().unwrap();
    assert_eq!(backlog["queue"]["ready"], 6);
    assert!(backlog["oldestPendingAgeSeconds"].as_f64().unwrap() > 0.0);

    let worker = spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "300")]).await;
    let (_, after) = samples_until(&here, Duration::from_secs(20), |sample| {
        sample["statuses"]["completed"] == 6
    })
    .await;
    let done = after.last().unwrap();
    assert_eq!(done["totalOrders"], 6);
    assert_eq!(done["statuses"]["pending"], 0);
    assert_eq!(done["oldestPendingAgeSeconds"], Value::Null);
    // The completions show as throughput and processing time in the samples that saw them.
    let (history, _) = samples_until(&here, Duration::from_secs(5), |_| true).await;
    let samples = history["samples"].as_array().unwrap();
    let completed: f64 = samples
        .iter()
        .map(|sample| sample["completedPerSecond"].as_f64().unwrap())
        .sum();
    assert!(completed > 0.0, "{samples:?}");
    let processing: Vec<f64> = samples
        .iter()
        .filter_map(|sample| sample["avgProcessingSeconds"].as_f64())
        .collect();
    assert!(!processing.is_empty());
    assert!(
        processing.iter().all(|seconds| *seconds >= 0.3),
        "each order takes at least 300 ms: {processing:?}"
    );
    worker.kill().await;

    // SIGTERM with the metrics stream open: it ends, and the server exits promptly.
    let streamed = terminate_while_streaming(here, "/metrics/stream").await;
    assert!(streamed.starts_with("event: history"), "{streamed}");
}
