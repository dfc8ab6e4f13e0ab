//! Durability of the real binary on PostgreSQL: orders kept across restarts, every
//! acknowledged order completed exactly once after a SIGKILL mid-processing, and each order
//! started once by two servers sharing one database. Each test has a scratch database of its
//! own.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use order_core::testing::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};

use crate::child_process::Server;
use crate::pg_helpers::{Route, direct_counts, wait_until_all_finished};

fn order(user: &str) -> Value {
    json!({"userId": user, "itemIds": ["item1", "item2"], "totalAmount": 59.99})
}

/// Every order's `(status, attempts)` by id.
async fn orders_by_id(db: &DatabaseConnection) -> HashMap<i64, (String, i32)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, status, attempts FROM order_engine_orders",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                row.try_get::<i64>("", "id").unwrap(),
                (
                    row.try_get::<String>("", "status").unwrap(),
                    row.try_get::<i32>("", "attempts").unwrap(),
                ),
            )
        })
        .collect()
}

/// Waits until the sessions of a killed server are gone from this database: a backend runs
/// the statement it was given to the end, commit included, and only then notices that its
/// client is gone. Then the rows are as the server left them.
pub(crate) async fn killed_server_sessions_gone(db: &DatabaseConnection) {
    killed_server_statements_landed(db, false).await;
}

/// [`killed_server_sessions_gone`]; through a pooler (`pooled`), whose server connections
/// outlive the server, until none of them is busy with its statements.
pub(crate) async fn killed_server_statements_landed(db: &DatabaseConnection, pooled: bool) {
    let busy = if pooled { "AND state <> 'idle'" } else { "" };
    let began = Instant::now();
    loop {
        let sessions: i64 = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT count(*) AS n FROM pg_stat_activity \
                      WHERE datname = current_database() AND application_name = 'order-server' \
                      {busy}"
                ),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "n")
            .unwrap();
        if sessions == 0 {
            return;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{sessions} sessions of the killed server still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_length(db: &DatabaseConnection) -> i64 {
    db.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT count(*) AS n FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING')",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}

pub(crate) async fn pg_server(db: &TestDatabase, env: &[(&str, &str)]) -> Server {
    Route::direct(db).server(env).await
}

#[tokio::test]
async fn the_api_keeps_orders_in_postgres_across_restarts() {
    let db = TestDatabase::create().await;
    keeps_orders_across_restarts(&db, &Route::direct(&db)).await;
}

/// The API, processing, a restart and readiness, with servers reaching `db` by `route`.
pub(crate) async fn keeps_orders_across_restarts(db: &TestDatabase, route: &Route) {
    let server = route.server(&[("PROCESSING_DELAY_MS", "50")]).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));

    let id = server.create(&order("user-1")).await;
    let (status, body) = server
        .post(
            "/orders",
            &json!({"userId": "", "itemIds": [], "totalAmount": 1}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].is_string());
    let (status, body) = server.get("/orders/999999").await;
    assert_eq!(status, 404, "{body}");

    wait_until_all_finished(db.connection(), Duration::from_secs(20)).await;
    let (clean, _) = server.terminate().await;
    assert!(clean);

    // A new process finds the order as the first one left it.
    let server = route.server(&[]).await;
    let (status, body) = server.get(&format!("/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["order"]["status"], "COMPLETED");
    assert_eq!(body["order"]["attempts"], 1);
    assert_eq!(body["order"]["totalAmount"], json!(59.99));
    assert_eq!(body["order"]["itemIds"], json!(["item1", "item2"]));
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metrics["totalOrders"], 1,
        "the invalid order stored nothing: {metrics}"
    );
    assert_eq!(metrics["statuses"]["completed"], 1);

    // Ready means the schema is in place too: with its migration unrecorded (as on a database
    // that another version's migrator has not finished), the server is alive but not ready.
    let applied = db
        .connection()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "DELETE FROM order_engine_migrations \
              WHERE version = (SELECT max(version) FROM order_engine_migrations) \
              RETURNING version",
        ))
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(server.get("/healthz").await.0, 200);
    let version: String = applied[0].try_get("", "version").unwrap();
    db.connection()
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO order_engine_migrations (version, applied_at) VALUES ($1, 0)",
            [version.into()],
        ))
        .await
        .unwrap();
    assert_eq!(server.get("/readyz").await.0, 200);
    server.terminate().await;
}

#[tokio::test]
async fn orders_acknowledged_before_a_sigkill_all_complete_exactly_once_after_a_restart() {
    let db = TestDatabase::create().await;
    acknowledged_orders_survive_a_sigkill(&db, &Route::direct(&db)).await;
}

/// Every order acknowledged before a SIGKILL mid-processing completes exactly once after a
/// restart, with servers reaching `db` by `route`.
pub(crate) async fn acknowledged_orders_survive_a_sigkill(db: &TestDatabase, route: &Route) {
    // Short leases so that orders the killed server held are taken over within seconds, yet
    // long enough that a loaded machine's stalls do not cause takeovers of their own.
    let env = [
        ("PROCESSING_DELAY_MS", "300"),
        ("WORKERS", "16"),
        ("LEASE_MS", "3000"),
        ("POLL_INTERVAL_MS", "200"),
    ];
    let server = route.server(&env).await;

    // Clients keep creating orders while the server is killed under them.
    let base = server.base.clone();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8 {
        let base = base.clone();
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut acknowledged, mut unanswered) = (Vec::new(), 0_usize);
            for _ in 0..40 {
                match http
                    .post(format!("{base}/orders"))
                    .json(&order(&format!("client-{client}")))
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 201 => {
                        let body: Value = response.json().await.unwrap();
                        acknowledged.push(body["order"]["id"].as_i64().unwrap());
                    }
                    // Overloaded (no connection in time) or dying: not acknowledged, and the
                    // order may or may not exist.
                    Ok(response) if response.status() == 503 => {
                        unanswered += 1;
                        break;
                    }
                    Ok(response) => panic!("unexpected status {}", response.status()),
                    // The server died mid-request: not acknowledged, may or may not exist.
                    Err(_) => {
                        unanswered += 1;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acknowledged, unanswered)
        });
    }
    // Kill once some orders are being processed and more are arriving.
    let began = Instant::now();
    loop {
        let counts = direct_counts(db.connection()).await;
        if counts.get("PROCESSING").copied().unwrap_or(0) >= 5 && counts.values().sum::<i64>() >= 60
        {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "{counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().await;
    // The state at the kill, once its last statements have landed; nothing else writes.
    killed_server_statements_landed(db.connection(), route.pooled).await;
    let at_kill = orders_by_id(db.connection()).await;
    let in_flight: HashSet<i64> = at_kill
        .iter()
        .filter(|(_, (status, _))| status == "PROCESSING")
        .map(|(id, _)| *id)
        .collect();
    let mut acknowledged = HashSet::new();
    let mut unanswered = 0;
    while let Some(result) = clients.join_next().await {
        let (ids, lost) = result.unwrap();
        unanswered += lost;
        for id in ids {
            assert!(acknowledged.insert(id), "id {id} acknowledged twice");
        }
    }
    assert!(
        !in_flight.is_empty(),
        "the kill must hit orders mid-processing"
    );
    assert!(
        at_kill.iter().all(|(id, (status, attempts))| *attempts
            == i32::from(in_flight.contains(id))
            || status == "COMPLETED" && *attempts == 1),
        "before the kill, each order was started at most once: {at_kill:?}"
    );

    let restarted = Instant::now();
    let server = route.server(&env).await;
    wait_until_all_finished(db.connection(), Duration::from_secs(30)).await;
    let recovered_in = restarted.elapsed();

    let orders = orders_by_id(db.connection()).await;
    for id in &acknowledged {
        assert!(orders.contains_key(id), "acknowledged order {id} is gone");
    }
    assert_eq!(
        orders.keys().collect::<HashSet<_>>(),
        at_kill.keys().collect::<HashSet<_>>(),
        "no order came or went after the kill"
    );
    // Started once, except an order the killed server was running: that one once before the
    // kill, and once more when its lease ran out.
    let started_twice: Vec<_> = orders
        .iter()
        .filter(|(id, (_, attempts))| *attempts != 1 + i32::from(in_flight.contains(id)))
        .map(|(id, (_, attempts))| (*id, *attempts, in_flight.contains(id)))
        .collect();
    assert!(
        started_twice.is_empty(),
        "(id, attempts, in flight at the kill) of orders started more or less often than \
         that: {started_twice:?}"
    );
    // Nothing extra: at most one order per request that got no answer.
    assert!(
        orders.len() <= acknowledged.len() + unanswered,
        "{} rows for {} acknowledged and {unanswered} unanswered requests",
        orders.len(),
        acknowledged.len()
    );
    assert!(orders.values().all(|(status, _)| status == "COMPLETED"));
    assert_eq!(queue_length(db.connection()).await, 0, "the queue drained");
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metrics["totalOrders"], json!(orders.len()), "{metrics}");
    assert_eq!(metrics["statuses"]["completed"], json!(orders.len()));
    assert!(
        recovered_in < Duration::from_secs(20),
        "recovery took {recovered_in:?}"
    );
    server.terminate().await;
}

#[tokio::test]
async fn two_servers_on_one_database_share_the_work_and_start_each_order_once() {
    let db = TestDatabase::create().await;
    two_servers_share_the_work(&db, &Route::direct(&db)).await;
}

/// Two servers reaching `db` by `route` share the work and start each order once.
pub(crate) async fn two_servers_share_the_work(db: &TestDatabase, route: &Route) {
    let env = [
        ("PROCESSING_DELAY_MS", "40"),
        ("WORKERS", "4"),
        ("RUST_LOG", "info,order_core=debug"),
    ];
    let servers = [route.server(&env).await, route.server(&env).await];
    let mut ids = HashSet::new();
    for i in 0..120 {
        let server = &servers[i % 2];
        ids.insert(server.create(&order(&format!("user-{i}"))).await);
    }
    assert_eq!(ids.len(), 120);
    wait_until_all_finished(db.connection(), Duration::from_secs(30)).await;

    let orders = orders_by_id(db.connection()).await;
    assert_eq!(orders.len(), 120);
    for (id, (status, attempts)) in &orders {
        assert_eq!(
            (status.as_str(), *attempts),
            ("COMPLETED", 1),
            "order {id}: claimed by one worker, once"
        );
    }
    // Which server completed what, from each one's own log.
    let mut completed_by = Vec::new();
    for server in servers {
        let logs = server.logs();
        let done: HashSet<String> = logs
            .iter()
            .filter(|line| line["fields"]["message"] == "order completed")
            .filter_map(|line| line["span"]["order_id"].as_str().map(str::to_owned))
            .collect();
        completed_by.push(done);
        server.terminate().await;
    }
    let (a, b) = (&completed_by[0], &completed_by[1]);
    assert!(a.is_disjoint(b), "no order completed by both servers");
    assert_eq!(a.len() + b.len(), 120, "every completion logged once");
    assert!(
        a.len() >= 10 && b.len() >= 10,
        "both servers took work: {} and {}",
        a.len(),
        b.len()
    );
}
