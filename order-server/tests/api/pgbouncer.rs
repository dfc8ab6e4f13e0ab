//! The real binary behind PgBouncer in transaction mode (`DATABASE_POOL_MODE=transaction`),
//! with fewer server connections than clients: the API, processing, a SIGKILL, two servers,
//! idempotency races and event streams, with LISTEN on a direct connection
//! (`DATABASE_LISTEN_URL`) or without one (polling). Each test skips, saying so, where
//! pgbouncer is not installed, and fails under CI.

use std::time::{Duration, Instant};

use order_core::testing::TestDatabase;
use serde_json::{Value, json};

use crate::child_process::Server;
use crate::listing::{Watch, status_events, statuses};
use crate::pg_durability::{
    acknowledged_orders_survive_a_sigkill, keeps_orders_across_restarts, two_servers_share_the_work,
};
use crate::pg_helpers::Route;
use crate::races::{ROUNDS, distinct, race_rounds, stored};

fn order(user: &str) -> Value {
    json!({"userId": user, "itemIds": ["item1"], "totalAmount": 12.5})
}

/// The value of `order_notifications_mode{mode="<mode>"}` once the server has one, within 5 s.
async fn notifications_gauge(server: &Server, mode: &str) -> f64 {
    let series = format!("order_notifications_mode{{mode=\"{mode}\"}} ");
    let began = Instant::now();
    loop {
        let text = reqwest::get(format!("{}/metrics/prometheus", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(value) = text.lines().find_map(|line| line.strip_prefix(&series)) {
            return value.trim().parse().unwrap();
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "no {series} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `mode` field of the server's log line saying which way notifications come.
fn logged_mode(server: &Server) -> Option<String> {
    server.logs().iter().find_map(|line| {
        let message = line["fields"]["message"].as_str()?;
        message
            .starts_with("notifications ")
            .then(|| line["fields"]["mode"].as_str().map(str::to_owned))?
    })
}

#[tokio::test]
async fn through_pgbouncer_the_api_keeps_orders_across_restarts() {
    let db = TestDatabase::create().await;
    let Some(route) = Route::through_pgbouncer(&db, false) else {
        return;
    };
    keeps_orders_across_restarts(&db, &route).await;
}

#[tokio::test]
async fn through_pgbouncer_orders_acknowledged_before_a_sigkill_all_complete_exactly_once() {
    let db = TestDatabase::create().await;
    let Some(route) = Route::through_pgbouncer(&db, true) else {
        return;
    };
    acknowledged_orders_survive_a_sigkill(&db, &route).await;
}

/// Without a listen URL: the servers poll, and still share the work.
#[tokio::test]
async fn through_pgbouncer_two_servers_share_the_work_and_start_each_order_once() {
    let db = TestDatabase::create().await;
    let Some(route) = Route::through_pgbouncer(&db, false) else {
        return;
    };
    two_servers_share_the_work(&db, &route).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_pgbouncer_two_servers_racing_one_key_make_one_order() {
    let db = TestDatabase::create().await;
    let Some(route) = Route::through_pgbouncer(&db, false) else {
        return;
    };
    let env = [("PROCESSING_DELAY_MS", "0")];
    let (one, two) = (route.server(&env).await, route.server(&env).await);
    let made = race_rounds(&[one.base.clone(), two.base.clone()]).await;
    assert_eq!(distinct(&made), ROUNDS);
    let rounds = i64::try_from(ROUNDS).unwrap();
    assert_eq!(stored(db.connection()).await, (rounds, rounds, rounds));
}

/// Which way notifications come, as the log and the metric say: polling behind the pooler
/// alone, listening with a direct LISTEN connection or straight to the database.
#[tokio::test]
async fn the_notification_mode_is_logged_and_shown_as_a_metric() {
    let db = TestDatabase::create().await;
    let Some(polling) = Route::through_pgbouncer(&db, false) else {
        return;
    };
    let listening = Route::through_pgbouncer(&db, true).unwrap();
    for (route, mode) in [
        (&polling, "polling"),
        (&listening, "listening"),
        (&Route::direct(&db), "listening"),
    ] {
        let server = route.server(&[("WORKERS", "0")]).await;
        let other = if mode == "polling" {
            "listening"
        } else {
            "polling"
        };
        assert_eq!(notifications_gauge(&server, mode).await, 1.0, "{mode}");
        assert_eq!(notifications_gauge(&server, other).await, 0.0, "{mode}");
        assert_eq!(logged_mode(&server).as_deref(), Some(mode));
        server.terminate().await;
    }
}

/// A change made by one server reaches another's event stream, and an order stored by one
/// is processed by another, promptly in both modes: the watching server re-reads its orders
/// every 30 s on its own, and the worker polls every 30 s (`POLL_INTERVAL_MS`), so what
/// arrives within seconds came by a notification or by the polling that replaces them.
#[tokio::test]
async fn through_pgbouncer_event_streams_and_workers_follow_other_servers_in_both_modes() {
    let db = TestDatabase::create().await;
    for listen_direct in [false, true] {
        let Some(route) = Route::through_pgbouncer(&db, listen_direct) else {
            return;
        };
        let api = [("WORKERS", "0")];
        let (here, there) = tokio::join!(route.server(&api), route.server(&api));
        let worker = route
            .server(&[
                ("PROCESSING_DELAY_MS", "600"),
                ("POLL_INTERVAL_MS", "30000"),
            ])
            .await;
        // Past the worker's first claim, which finds nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let cancelled = here.create(&order("ann")).await;
        let mut watch = Watch::connect(&format!("{}/orders/{cancelled}/events", there.base)).await;
        // The worker, woken by the new order, may have claimed it before the watch opened.
        let first = statuses(&watch.until_events(1).await)
            .first()
            .copied()
            .map(str::to_owned);
        assert!(
            matches!(first.as_deref(), Some("PENDING" | "PROCESSING")),
            "{first:?}"
        );
        // Cancelled before the worker, which may claim it first: either way the stream shows
        // where it ends.
        let (status, _) = here
            .post(&format!("/orders/{cancelled}/cancel"), &json!({}))
            .await;
        let seen = status_events(&watch.read_to_end().await);
        let last = statuses(&seen).last().copied().map(str::to_owned);
        match status {
            200 => assert_eq!(last.as_deref(), Some("CANCELLED"), "{seen:?}"),
            _ => assert_eq!(last.as_deref(), Some("COMPLETED"), "{seen:?}"),
        }

        let began = Instant::now();
        let processed = here.create(&order("bob")).await;
        let watch = Watch::connect(&format!("{}/orders/{processed}/events", there.base)).await;
        let seen = status_events(&watch.read_to_end().await);
        // PENDING only if the watch opened before the claim.
        assert!(
            statuses(&seen).ends_with(&["PROCESSING", "COMPLETED"]),
            "listen_direct {listen_direct}: {seen:?}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "listen_direct {listen_direct}: {:?}",
            began.elapsed()
        );
        for server in [here, there, worker] {
            server.terminate().await;
        }
    }
}

/// Retries and bulk actions through the pooler: a FAILED order retried, then a bulk retry of
/// every FAILED order accepted by one server, gone through by the servers that process, and
/// followed from the other, which only serves the API.
#[tokio::test]
async fn through_pgbouncer_retries_and_bulk_actions_go_through() {
    let db = TestDatabase::create().await;
    let Some(route) = Route::through_pgbouncer(&db, false) else {
        return;
    };
    // Every run of every order fails for good: a retried order fails again, one failure more.
    let failing = [
        ("PROCESSING_DELAY_MS", "0"),
        ("SIMULATED_FAILURE_RATE", "1"),
        ("POLL_INTERVAL_MS", "200"),
    ];
    let worker = route.server(&failing).await;
    let api = route.server(&[("WORKERS", "0")]).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(api.create(&order("ann")).await);
    }
    let failed = |orders: &[Value]| orders.iter().all(|order| order["status"] == "FAILED");
    let read_all = |ids: Vec<i64>| {
        let api = &api;
        async move {
            let mut orders = Vec::new();
            for id in ids {
                orders.push(api.get(&format!("/orders/{id}")).await.1["order"].clone());
            }
            orders
        }
    };
    let began = Instant::now();
    while !failed(&read_all(ids.clone()).await) {
        assert!(began.elapsed() < Duration::from_secs(20), "not all FAILED");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, retried) = api
        .post(&format!("/orders/{}/retry", ids[0]), &json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["order"]["failures"].as_array().unwrap().len(), 1);
    let (status, again) = api
        .post(&format!("/orders/{}/retry", ids[0]), &json!({}))
        .await;
    assert_eq!(status, 409, "{again}");

    // Once the retried one has failed again, a bulk retry selects all thirty.
    let began = Instant::now();
    while !failed(&read_all(vec![ids[0]]).await) {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "order {} not FAILED again",
            ids[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, accepted) = api
        .post(
            "/orders/bulk/retry",
            &json!({"userId": "ann", "limit": 100}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["action"]["matched"], 30);
    let id = accepted["action"]["id"].as_str().unwrap().to_owned();
    let began = Instant::now();
    let done = loop {
        let (status, body) = api.get(&format!("/orders/bulk/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["action"]["status"] == "DONE" {
            break body["action"].clone();
        }
        assert!(began.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((&done["acted"], &done["skipped"]), (&json!(30), &json!(0)));
    // Each ran again and failed again: one failure more than before, kept.
    let began = Instant::now();
    loop {
        let orders = read_all(ids.clone()).await;
        let counts: Vec<usize> = orders
            .iter()
            .map(|order| order["failures"].as_array().map_or(0, Vec::len))
            .collect();
        if failed(&orders) && counts[0] == 2 && counts[1..].iter().all(|n| *n == 1) {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for server in [worker, api] {
        server.terminate().await;
    }
}
