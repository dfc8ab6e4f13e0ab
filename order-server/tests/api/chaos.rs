//! Chaos: clients create orders (with idempotency keys, retrying as a real client would)
//! while the server is killed with SIGKILL and restarted, and PostgreSQL itself crashes and
//! restarts. Afterwards every acknowledged order exists exactly once and is COMPLETED, and
//! `/metrics` agrees with a direct count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::outage::Cluster;
use crate::process::{Server, spawn_server};

const CLIENTS: usize = 4;
/// Each client creates at least this many orders, and goes on until the chaos is over.
const ORDERS_PER_CLIENT: usize = 40;

/// The server on the cluster, always on `port`, so that clients find it after a restart.
async fn start_server(url: &str, port: u16) -> Server {
    let port = port.to_string();
    spawn_server(&[
        ("DATABASE_URL", url),
        ("PORT", &port),
        ("WORKERS", "16"),
        ("PROCESSING_DELAY_MS", "20"),
        ("LEASE_MS", "1500"),
        ("POLL_INTERVAL_MS", "200"),
        ("DB_ACQUIRE_TIMEOUT_MS", "1000"),
        ("DB_STARTUP_TIMEOUT_SECS", "30"),
    ])
    .await
}

/// Creates the order named `key` until a 201 (or a replayed 201) comes back: on a refused
/// connection, a cut response, a 503 or a timeout it waits a little and sends the same
/// request again. Returns the order's id and how many tries failed.
async fn create_until_acknowledged(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> (i64, usize) {
    let order = json!({"userId": key, "itemIds": ["item1"], "totalAmount": 10});
    let began = Instant::now();
    let mut failed = 0;
    loop {
        let sent = client
            .post(format!("{base}/orders"))
            .header("idempotency-key", key)
            .json(&order)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await {
                if status == 201 {
                    return (body["order"]["id"].as_i64().unwrap(), failed);
                }
                assert!(
                    status == 503 || status == 500,
                    "{key}: unexpected {status}: {body}"
                );
            }
        }
        failed += 1;
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "{key} was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn acknowledged_orders_survive_kills_and_a_database_crash_exactly_once() {
    let cluster = Cluster::create().await;
    let url = cluster.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start_server(&url, port).await;

    let chaos_over = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let base = base.clone();
            let chaos_over = chaos_over.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut acknowledged = Vec::new();
                let mut failed = 0;
                let mut n = 0;
                while n < ORDERS_PER_CLIENT || !chaos_over.load(Ordering::Relaxed) {
                    let key = format!("chaos-{c}-{n}");
                    let (id, failures) = create_until_acknowledged(&client, &base, &key).await;
                    acknowledged.push((key, id));
                    failed += failures;
                    n += 1;
                }
                (acknowledged, failed)
            })
        })
        .collect();

    // Three kills and restarts, a database crash, and one more kill, while the clients run.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if round == 2 {
            cluster.crash().await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            cluster.start().await;
            continue;
        }
        server.kill().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = start_server(&url, port).await;
    }
    chaos_over.store(true, Ordering::Relaxed);
    let mut acknowledged: HashMap<String, i64> = HashMap::new();
    let mut failed = 0;
    for client in clients {
        let (orders, failures) = client.await.unwrap();
        acknowledged.extend(orders);
        failed += failures;
    }
    assert!(acknowledged.len() >= CLIENTS * ORDERS_PER_CLIENT);
    assert!(failed > 0, "the clients never saw the chaos");
    println!(
        "{} orders acknowledged; {failed} tries failed and were retried",
        acknowledged.len()
    );

    // Every order reaches COMPLETED (orders the killed servers held are taken over when their
    // leases run out).
    let db = order_core::postgres::connect(&url, &order_core::postgres::PoolOptions::default())
        .await
        .unwrap();
    crate::postgres::wait_until_all_finished(&db, Duration::from_secs(60)).await;
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT user_id, count(*) AS n, min(id) AS id, min(status) AS status, \
                    max(status) AS last_status \
               FROM order_engine_orders GROUP BY user_id",
        ))
        .await
        .unwrap();
    let mut stored = HashMap::new();
    for row in &rows {
        let user: String = row.try_get("", "user_id").unwrap();
        let copies: i64 = row.try_get("", "n").unwrap();
        let id: i64 = row.try_get("", "id").unwrap();
        let statuses: (String, String) = (
            row.try_get("", "status").unwrap(),
            row.try_get("", "last_status").unwrap(),
        );
        assert_eq!(copies, 1, "{user} was stored {copies} times");
        assert_eq!(statuses, ("COMPLETED".into(), "COMPLETED".into()), "{user}");
        stored.insert(user, id);
    }
    assert_eq!(
        stored, acknowledged,
        "exactly the acknowledged orders, with their ids"
    );

    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metrics["totalOrders"],
        json!(acknowledged.len()),
        "{metrics}"
    );
    assert_eq!(
        metrics["statuses"]["completed"],
        json!(acknowledged.len()),
        "{metrics}"
    );
    let (clean, _) = server.terminate().await;
    assert!(clean, "exits 0 after it all");
}
