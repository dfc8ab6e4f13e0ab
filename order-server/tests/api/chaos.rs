//! Chaos: clients create orders with idempotency keys, several clients sending each key at the
//! same moment and retrying as a real client would, while the server is killed with SIGKILL and
//! restarted, and PostgreSQL itself crashes and restarts. Afterwards every key names exactly one
//! order in the database, every client of a key was told that order, every acknowledged order
//! is COMPLETED, and `/metrics` agrees with a direct count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::child_process::{Server, spawn_server};
use crate::outage::Cluster;

/// How many clients send each key: all of them, released together.
const CLIENTS: usize = 6;
/// At least this many keys are sent, and more until the chaos is over.
const KEYS: usize = 40;

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

/// What one client was told for one key.
struct Acknowledged {
    id: i64,
    /// Whether the 201 said `Idempotent-Replayed`.
    replayed: bool,
    /// When the request that got the 201 was sent, and when its answer came.
    sent: Instant,
    answered: Instant,
}

/// Creates the order named `key` until a 201 (or a replayed 201) comes back: on a refused
/// connection, a cut response, a 503 or a timeout it waits a little and sends the same
/// request again. Returns what the 201 said and how many tries failed.
async fn create_until_acknowledged(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> (Acknowledged, usize) {
    let order = json!({"userId": key, "itemIds": ["item1"], "totalAmount": 10});
    let began = Instant::now();
    let mut failed = 0;
    loop {
        let sent_at = Instant::now();
        let sent = client
            .post(format!("{base}/orders"))
            .header("idempotency-key", key)
            .json(&order)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            if let Ok(body) = response.json::<Value>().await {
                if status == 201 {
                    let acknowledged = Acknowledged {
                        id: body["order"]["id"].as_i64().unwrap(),
                        replayed,
                        sent: sent_at,
                        answered: Instant::now(),
                    };
                    return (acknowledged, failed);
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

/// One client: waits with the others at `barrier`, then sends key after key, each at the
/// moment the other clients send it, until `KEYS` are done and the chaos is over.
async fn same_key_client(
    base: String,
    barrier: Arc<Barrier>,
    chaos_over: Arc<AtomicBool>,
    go_on: Arc<AtomicBool>,
) -> (Vec<(String, Acknowledged)>, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // A connection of its own, open before the first key, so that the first release is not
    // spread out by connection set-up.
    let warm = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for n in 0.. {
        // Everyone is done with the previous key; one decides for all whether to go on, so
        // that no client waits at the barrier for one that stopped.
        if barrier.wait().await.is_leader() {
            let more = n < KEYS || !chaos_over.load(Ordering::SeqCst);
            go_on.store(more, Ordering::SeqCst);
        }
        barrier.wait().await;
        if !go_on.load(Ordering::SeqCst) {
            break;
        }
        let key = format!("chaos-{n}");
        let (ack, failures) = create_until_acknowledged(&client, &base, &key).await;
        acknowledged.push((key, ack));
        failed += failures;
    }
    (acknowledged, failed)
}

#[tokio::test]
async fn each_key_names_one_order_through_kills_and_a_database_crash() {
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
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let go_on = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(same_key_client(
                base.clone(),
                barrier.clone(),
                chaos_over.clone(),
                go_on.clone(),
            ))
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
    chaos_over.store(true, Ordering::SeqCst);
    let mut told: BTreeMap<String, Vec<Acknowledged>> = BTreeMap::new();
    let mut failed = 0;
    for client in clients {
        let (orders, failures) = client.await.unwrap();
        for (key, ack) in orders {
            told.entry(key).or_default().push(ack);
        }
        failed += failures;
    }
    assert!(told.len() >= KEYS);
    assert!(told.values().all(|acks| acks.len() == CLIENTS));
    assert!(failed > 0, "the clients never saw the chaos");
    // The race the keys must decide: two clients' requests for one key in the server at once.
    let overlapped = told
        .values()
        .filter(|acks| {
            acks.iter().enumerate().any(|(i, a)| {
                acks[i + 1..]
                    .iter()
                    .any(|b| a.sent < b.answered && b.sent < a.answered)
            })
        })
        .count();
    assert!(
        overlapped * 2 >= told.len(),
        "only {overlapped} of {} keys were in flight twice at once",
        told.len()
    );
    println!(
        "{} keys sent by {CLIENTS} clients at once ({overlapped} in flight twice at once); \
         {failed} tries failed and were retried",
        told.len()
    );

    // Every order reaches COMPLETED (orders the killed servers held are taken over when their
    // leases run out).
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    crate::pg_helpers::wait_until_all_finished(&db, Duration::from_secs(60)).await;

    // In the database: each key's row names an order of that key, and no other order was
    // stored for it.
    let query =
        |sql: &str| db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()));
    let mut orders_of_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in query("SELECT id, user_id, status FROM order_engine_orders ORDER BY id")
        .await
        .unwrap()
    {
        let user: String = row.try_get("", "user_id").unwrap();
        let id: i64 = row.try_get("", "id").unwrap();
        let status: String = row.try_get("", "status").unwrap();
        orders_of_key.entry(user).or_default().push((id, status));
    }
    let mut keys: HashMap<String, i64> = HashMap::new();
    for row in query("SELECT scope, key, order_id FROM order_engine_idempotency_keys")
        .await
        .unwrap()
    {
        let scope: String = row.try_get("", "scope").unwrap();
        assert_eq!(scope, "", "an open API's keys have the empty scope");
        keys.insert(
            row.try_get("", "key").unwrap(),
            row.try_get("", "order_id").unwrap(),
        );
    }
    let several: Vec<_> = orders_of_key
        .iter()
        .filter(|(_, orders)| orders.len() > 1)
        .map(|(key, orders)| format!("{key} -> {orders:?} (the key names {:?})", keys.get(key)))
        .collect();
    assert!(
        several.is_empty(),
        "{} of {} keys were stored as more than one order, among them {:#?}",
        several.len(),
        orders_of_key.len(),
        &several[..several.len().min(5)]
    );
    let stored: HashMap<String, i64> = orders_of_key
        .iter()
        .map(|(key, orders)| {
            let (id, status) = &orders[0];
            assert_eq!(status, "COMPLETED", "{key}");
            (key.clone(), *id)
        })
        .collect();
    assert_eq!(keys, stored, "each key row names its one order");

    // What the clients were told: for each key, every client the one stored order, and at
    // most one of them that it was created (not replayed).
    for (key, acks) in &told {
        let ids: Vec<i64> = acks.iter().map(|ack| ack.id).collect();
        assert!(
            ids.iter().all(|id| Some(id) == stored.get(key)),
            "{key}: clients were told {ids:?}, the database has {:?}",
            stored.get(key)
        );
        let created = acks.iter().filter(|ack| !ack.replayed).count();
        assert!(
            created <= 1,
            "{key}: {created} clients were told it was created"
        );
    }
    assert_eq!(
        stored.len(),
        told.len(),
        "no order without an acknowledged key"
    );

    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metrics["totalOrders"], json!(told.len()), "{metrics}");
    assert_eq!(
        metrics["statuses"]["completed"],
        json!(told.len()),
        "{metrics}"
    );
    let (clean, _) = server.terminate().await;
    assert!(clean, "exits 0 after it all");
}
