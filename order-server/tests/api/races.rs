//! Clients racing one `Idempotency-Key` against the real binary: each client on a connection
//! of its own, opened before the race, all released together by a barrier, round after round;
//! in memory, on PostgreSQL, and on two servers sharing one database. Orders are counted in
//! the database itself.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "postgres")]
use order_core::testing::TestDatabase;
#[cfg(feature = "postgres")]
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};

#[cfg(feature = "postgres")]
use crate::child_process::Server;
use crate::child_process::spawn_server;

/// Clients in each race.
const RACERS: usize = 16;
/// Races, each with a key of its own.
pub(crate) const ROUNDS: usize = 20;

/// What one racer got: status, whether the reply said it was a replay, and the body as sent.
#[derive(Debug)]
struct Answer {
    status: u16,
    replayed: bool,
    body: String,
}

/// A client with a connection of its own to `base`, already open.
async fn connected(base: &str) -> reqwest::Client {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let probe = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(probe.status(), 200);
    client
}

/// Runs the rounds: in each, racer `i` sends the round's key to `bases[i % bases.len()]`.
/// Checks what every client saw and returns, per round, the id of the order made.
pub(crate) async fn race_rounds(bases: &[String]) -> Vec<i64> {
    let mut clients = Vec::with_capacity(RACERS);
    for racer in 0..RACERS {
        let base = bases[racer % bases.len()].clone();
        clients.push((connected(&base).await, base));
    }
    let mut made = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let gate = Arc::new(tokio::sync::Barrier::new(RACERS));
        let order = json!({
            "userId": format!("racer-{round}"),
            "itemIds": ["sku-1", "sku-2"],
            "totalAmount": 19.9,
        });
        let tasks: Vec<_> = clients
            .iter()
            .map(|(client, base)| {
                let request = client
                    .post(format!("{base}/orders"))
                    .header("idempotency-key", format!("checkout-{round}"))
                    .json(&order);
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.wait().await;
                    let response = request.send().await.unwrap();
                    Answer {
                        status: response.status().as_u16(),
                        replayed: response.headers().get("idempotent-replayed")
                            == Some(&"true".parse().unwrap()),
                        body: String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap(),
                    }
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(RACERS);
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert!(
            answers.iter().all(|answer| answer.status == 201),
            "round {round}: {answers:?}"
        );
        let first: Vec<&Answer> = answers.iter().filter(|answer| !answer.replayed).collect();
        assert_eq!(
            first.len(),
            1,
            "round {round}: one request creates: {answers:?}"
        );
        for answer in &answers {
            assert_eq!(
                answer.body, first[0].body,
                "round {round}: a replay answers the first 201 byte for byte"
            );
        }
        let body: Value = serde_json::from_str(&first[0].body).unwrap();
        made.push(body["order"]["id"].as_i64().unwrap());
    }

    // The key, reused for another order, is refused and makes nothing.
    let (client, base) = &clients[0];
    let reused = client
        .post(format!("{base}/orders"))
        .header("idempotency-key", "checkout-0")
        .json(&json!({"userId": "racer-0", "itemIds": ["sku-9"], "totalAmount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);
    made
}

/// `(orders, keys, keys naming an order)` as the database holds them.
#[cfg(feature = "postgres")]
pub(crate) async fn stored(db: &DatabaseConnection) -> (i64, i64, i64) {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (SELECT count(*) FROM order_engine_orders) AS orders,
                    (SELECT count(*) FROM order_engine_idempotency_keys) AS keys,
                    (SELECT count(DISTINCT k.order_id) FROM order_engine_idempotency_keys k
                       JOIN order_engine_orders o ON o.id = k.order_id) AS named",
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "orders").unwrap(),
        row.try_get("", "keys").unwrap(),
        row.try_get("", "named").unwrap(),
    )
}

pub(crate) fn distinct(ids: &[i64]) -> usize {
    ids.iter().collect::<std::collections::HashSet<_>>().len()
}

/// In memory, with orders processed while the replays come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_racing_clients_with_one_key_make_one_order() {
    let server = spawn_server(&[("PROCESSING_DELAY_MS", "0")]).await;
    let made = race_rounds(std::slice::from_ref(&server.base)).await;
    assert_eq!(distinct(&made), ROUNDS);
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metrics["totalOrders"], ROUNDS, "{metrics}");
}

#[cfg(feature = "postgres")]
async fn pg_server(db: &TestDatabase) -> Server {
    spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "0")]).await
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_racing_clients_with_one_key_make_one_order() {
    let db = TestDatabase::create().await;
    let server = pg_server(&db).await;
    let made = race_rounds(std::slice::from_ref(&server.base)).await;
    assert_eq!(distinct(&made), ROUNDS);
    let rounds = i64::try_from(ROUNDS).unwrap();
    assert_eq!(stored(db.connection()).await, (rounds, rounds, rounds));
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_database_racing_one_key_make_one_order() {
    let db = TestDatabase::create().await;
    let (one, two) = (pg_server(&db).await, pg_server(&db).await);
    let made = race_rounds(&[one.base.clone(), two.base.clone()]).await;
    assert_eq!(distinct(&made), ROUNDS);
    let rounds = i64::try_from(ROUNDS).unwrap();
    assert_eq!(stored(db.connection()).await, (rounds, rounds, rounds));
}
