//! Orders processed in steps by the real binary on PostgreSQL (`PROCESSING_STEPS`): a SIGKILL
//! mid-pipeline and a restart finish every acknowledged order with each step recorded once and
//! no step that had finished before the kill run again; a cancel mid-way ends CANCELLED with
//! the finished steps compensated.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use order_core::testing::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};

use crate::pg_durability::{killed_server_sessions_gone, pg_server};
use crate::pg_helpers::wait_until_all_finished;

const STEPS: [&str; 3] = ["reserve", "charge", "ship"];

/// Every order's status and stored steps (parsed, in their stored form: `n` the name, `s`
/// the status, `a` the attempts, `t` and `e` the start and end), by id.
async fn steps_by_id(db: &DatabaseConnection) -> HashMap<i64, (String, Vec<Value>)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, status, steps FROM order_engine_orders",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let steps: Option<String> = row.try_get("", "steps").unwrap();
            let steps = steps.map_or_else(Vec::new, |text| {
                serde_json::from_str::<Vec<Value>>(&text).unwrap()
            });
            (
                row.try_get::<i64>("", "id").unwrap(),
                (row.try_get::<String>("", "status").unwrap(), steps),
            )
        })
        .collect()
}

fn env() -> [(&'static str, &'static str); 5] {
    [
        ("PROCESSING_STEPS", "reserve,charge,ship"),
        ("PROCESSING_DELAY_MS", "200"),
        ("WORKERS", "16"),
        ("LEASE_MS", "2000"),
        ("POLL_INTERVAL_MS", "200"),
    ]
}

#[tokio::test]
async fn a_sigkill_mid_pipeline_reruns_no_finished_step() {
    let db = TestDatabase::create().await;
    let server = pg_server(&db, &env()).await;
    let mut acknowledged = HashSet::new();
    for i in 0..48 {
        let order = json!({"userId": format!("u{i}"), "itemIds": ["a"], "totalAmount": 12.10});
        acknowledged.insert(server.create(&order).await);
    }
    // Kill once orders are spread over the pipeline: some with a step done and one running.
    let began = Instant::now();
    loop {
        let orders = steps_by_id(db.connection()).await;
        let mid_way = orders
            .values()
            .filter(|(status, steps)| status == "PROCESSING" && steps.len() >= 2)
            .count();
        if mid_way >= 5 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "never mid-way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().await;
    killed_server_sessions_gone(db.connection()).await;
    let at_kill = steps_by_id(db.connection()).await;
    let finished_before: Vec<(i64, Value)> = at_kill
        .iter()
        .flat_map(|(id, (_, steps))| {
            steps
                .iter()
                .filter(|step| step["s"] == "SUCCEEDED")
                .map(|step| (*id, step.clone()))
        })
        .collect();
    let mid_way = at_kill
        .values()
        .filter(|(status, steps)| status == "PROCESSING" && !steps.is_empty())
        .count();
    let in_flight = at_kill
        .values()
        .filter(|(status, _)| status == "PROCESSING")
        .count();

    let restarted = Instant::now();
    let server = pg_server(&db, &env()).await;
    wait_until_all_finished(db.connection(), Duration::from_secs(60)).await;
    let recovered_in = restarted.elapsed();
    let after = steps_by_id(db.connection()).await;

    for id in &acknowledged {
        let (status, steps) = &after[id];
        assert_eq!(status, "COMPLETED", "order {id}: {steps:?}");
        let names: Vec<&str> = steps.iter().map(|s| s["n"].as_str().unwrap()).collect();
        assert_eq!(names, STEPS, "order {id}: each step recorded once");
        assert!(
            steps.iter().all(|step| step["s"] == "SUCCEEDED"),
            "order {id}: {steps:?}"
        );
    }
    // A step whose success was stored before the kill is the very same record after it: same
    // attempts, same start and end. Had it run again, its times would have moved.
    for (id, before) in &finished_before {
        let (_, steps) = &after[id];
        let now = steps.iter().find(|s| s["n"] == before["n"]).unwrap();
        assert_eq!(now, before, "order {id}: a finished step ran again");
    }
    let rerun = after
        .values()
        .flat_map(|(_, steps)| steps.iter())
        .filter(|step| step["a"].as_u64() != Some(1))
        .count();
    assert!(
        rerun <= in_flight,
        "only a step running at the kill runs twice: {rerun} reruns, {in_flight} orders in flight"
    );
    println!(
        "steps kill: {} acknowledged, {in_flight} in flight at the kill ({mid_way} past their first step), {} finished steps kept, {rerun} steps run again, all completed {recovered_in:?} after the restart",
        acknowledged.len(),
        finished_before.len()
    );
    server.terminate().await;
}

#[tokio::test]
async fn a_cancel_mid_way_ends_cancelled_with_its_steps_compensated() {
    let db = TestDatabase::create().await;
    let server = pg_server(&db, &env()).await;
    let order = json!({"userId": "ann", "itemIds": ["a"], "totalAmount": 12.10});
    let id = server.create(&order).await;
    let began = Instant::now();
    loop {
        let (_, body) = server.get(&format!("/orders/{id}")).await;
        let steps = body["order"]["steps"].as_array().unwrap().clone();
        if steps.len() == 2 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = server
        .post(&format!("/orders/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["order"]["status"], "PROCESSING");
    wait_until_all_finished(db.connection(), Duration::from_secs(10)).await;
    let (_, body) = server.get(&format!("/orders/{id}")).await;
    let order = &body["order"];
    assert_eq!(order["status"], "CANCELLED");
    assert!(order["cancelRequestedAt"].is_string());
    let steps: Vec<(&str, &str)> = order["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [("reserve", "COMPENSATED"), ("charge", "COMPENSATED")],
        "{order}"
    );
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(metrics["statuses"]["cancelled"], 1, "{metrics}");
    server.terminate().await;
}
