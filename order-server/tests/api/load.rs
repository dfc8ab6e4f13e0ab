//! The real binary on PostgreSQL under load: past its limit it sheds instead of growing, over a
//! minute its memory stays flat, and SIGTERM under load drains cleanly.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use order_core::testing::TestDatabase;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::child_process::{Server, spawn_server};
use crate::pg_helpers::{direct_counts, wait_until_all_finished};

fn order(n: u64) -> Value {
    json!({"userId": format!("load-{n}"), "itemIds": ["item1", "item2"], "totalAmount": 12.5})
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Tally {
    created: Vec<i64>,
    shed: u64,
    other: Vec<String>,
}

/// `clients` clients, each sending a create, a read of it, a page and the metrics in turn,
/// pausing `pause` between rounds, until `stop` is set.
async fn run_clients(
    server: &Server,
    clients: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Tally {
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let base = server.base.clone();
            let (stop, counter) = (stop.clone(), counter.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let response = client
                        .post(format!("{base}/orders"))
                        .json(&order(n))
                        .send()
                        .await;
                    match response.map(|r| (r.status().as_u16(), r)) {
                        Ok((201, r)) => {
                            let body: Value = r.json().await.unwrap();
                            let id = body["order"]["id"].as_i64().unwrap();
                            tally.created.push(id);
                            for path in [
                                format!("/orders/{id}"),
                                "/orders?limit=20".to_owned(),
                                "/metrics".to_owned(),
                            ] {
                                if let Ok(r) = client.get(format!("{base}{path}")).send().await {
                                    match r.status().as_u16() {
                                        200 => {}
                                        503 => tally.shed += 1,
                                        status => tally.other.push(format!("{path}: {status}")),
                                    }
                                }
                            }
                        }
                        Ok((503, r)) => {
                            assert!(r.headers().contains_key("retry-after"));
                            tally.shed += 1;
                        }
                        Ok((status, _)) => tally.other.push(format!("POST: {status}")),
                        Err(err) => tally.other.push(format!("POST: {err}")),
                    }
                    tokio::time::sleep(pause).await;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        total.created.extend(tally.created);
        total.shed += tally.shed;
        total.other.extend(tally.other);
    }
    total
}

/// Runs the clients for `duration`.
async fn load_for(server: &Server, clients: usize, pause: Duration, duration: Duration) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let tally = run_clients(server, clients, pause, stop).await;
    stopper.await.unwrap();
    tally
}

/// Each id once in the database, COMPLETED.
async fn all_completed(db: &TestDatabase, ids: &[i64]) {
    let rows = db
        .connection()
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM order_engine_orders WHERE id = ANY($1) AND status = 'COMPLETED'",
            [ids.to_vec().into()],
        ))
        .await
        .unwrap();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id was acknowledged twice");
    assert_eq!(rows.len(), ids.len(), "every 201 is honoured");
}

/// Far more clients than the server may serve at once: the excess is shed with 503 at once,
/// the probes and the API keep answering, memory stays bounded, every 201 is honoured.
#[tokio::test]
async fn under_four_times_its_limit_the_server_sheds_and_keeps_every_promise() {
    let db = TestDatabase::create().await;
    let server = spawn_server(&[
        ("DATABASE_URL", db.url()),
        ("MAX_IN_FLIGHT", "16"),
        ("PROCESSING_DELAY_MS", "5"),
    ])
    .await;
    // Warm up, then 64 clients without pause: four times the 16 requests allowed at once.
    load_for(
        &server,
        4,
        Duration::from_millis(10),
        Duration::from_secs(2),
    )
    .await;
    let before = server.rss_kib();
    let probe = {
        let base = server.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let began = Instant::now();
                let status = client
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
                slowest = slowest.max(began.elapsed());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            slowest
        })
    };
    let tally = load_for(&server, 64, Duration::ZERO, Duration::from_secs(5)).await;
    let slowest_probe = probe.await.unwrap();
    let after = server.rss_kib();
    println!(
        "overload: {} created, {} shed, RSS {before} -> {after} KiB, slowest probe {slowest_probe:?}",
        tally.created.len(),
        tally.shed
    );
    assert!(
        tally.other.is_empty(),
        "{:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    assert!(
        tally.shed > 0,
        "nothing was shed: the test did not overload the server"
    );
    assert!(!tally.created.is_empty());
    assert!(slowest_probe < Duration::from_secs(2), "{slowest_probe:?}");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    wait_until_all_finished(db.connection(), Duration::from_secs(60)).await;
    all_completed(&db, &tally.created).await;
    server.kill().await;
}

/// A minute of steady load: the memory at the end is within 10% of the memory after warm-up.
#[tokio::test]
async fn a_minute_of_steady_load_leaves_memory_flat() {
    let db = TestDatabase::create().await;
    let server = spawn_server(&[("DATABASE_URL", db.url()), ("PROCESSING_DELAY_MS", "5")]).await;
    let pause = Duration::from_millis(20);
    let warm_up = load_for(&server, 8, pause, Duration::from_secs(10)).await;
    let after_warm_up = server.rss_kib();
    let soak = load_for(&server, 8, pause, Duration::from_secs(60)).await;
    let at_end = server.rss_kib();
    println!(
        "soak: {} orders in 60 s, RSS {after_warm_up} KiB after warm-up, {at_end} KiB at the end",
        soak.created.len()
    );
    assert!(
        soak.other.is_empty() && warm_up.other.is_empty(),
        "{:?}",
        soak.other
    );
    assert!(
        soak.created.len() > 1000,
        "too little load: {}",
        soak.created.len()
    );
    assert!(
        at_end * 10 <= after_warm_up * 11,
        "RSS grew from {after_warm_up} KiB to {at_end} KiB"
    );
    wait_until_all_finished(db.connection(), Duration::from_secs(60)).await;
    all_completed(&db, &soak.created).await;
    server.kill().await;
}

/// SIGTERM while orders are being created and processed: the server exits 0 within its drain
/// timeout, leaves no order PROCESSING, and the next start completes every one it accepted.
#[tokio::test]
async fn sigterm_under_load_exits_zero_and_leaves_nothing_processing() {
    let db = TestDatabase::create().await;
    let env = [
        ("DATABASE_URL", db.url()),
        // Long enough that orders are still in the handler when the signal has been handled,
        // however slowly a loaded machine schedules the server; short enough to drain well
        // within the timeout.
        ("PROCESSING_DELAY_MS", "1500"),
        ("WORKERS", "64"),
        ("SHUTDOWN_TIMEOUT_SECS", "10"),
    ];
    let server = spawn_server(&env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let stop = stop.clone();
        let server_base = server.base.clone();
        tokio::spawn(async move {
            // A client of its own, as clients keep sending while the server stops.
            let stand_in = StandIn { base: server_base };
            stand_in.run(stop).await
        })
    };
    // Load until orders are in the handler and more are waiting behind them.
    let began = Instant::now();
    loop {
        let counts = direct_counts(db.connection()).await;
        let count = |status| counts.get(status).copied().unwrap_or(0);
        if count("PROCESSING") >= 8 && count("COMPLETED") >= 8 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the load never got going: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    let (clean, logs) = server.terminate().await;
    let took = stopping.elapsed();
    stop.store(true, Ordering::Relaxed);
    let created = clients.await.unwrap();
    assert!(clean, "exit status 0 after SIGTERM");
    assert!(took < Duration::from_secs(10 + 5), "{took:?}");
    let logged = |message: &str| {
        logs.iter()
            .find(|entry| entry["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line"))
    };
    // The signal came while orders were in the handler, and they finished.
    let in_flight = logged("draining orders in progress")["fields"]["in_flight"]
        .as_u64()
        .unwrap();
    assert!(
        in_flight > 0,
        "{in_flight} orders in the handler at SIGTERM"
    );
    assert_eq!(
        logged("stopped")["fields"]["abandoned"],
        0,
        "every order in the handler finished within the drain timeout"
    );
    let counts = direct_counts(db.connection()).await;
    assert_eq!(
        counts.get("PROCESSING"),
        None,
        "nothing left PROCESSING: {counts:?}"
    );

    let next = spawn_server(&env).await;
    wait_until_all_finished(db.connection(), Duration::from_secs(60)).await;
    all_completed(&db, &created).await;
    let (clean, _) = next.terminate().await;
    assert!(clean);
}

/// Clients that keep creating orders against a base URL until told to stop, ignoring refused
/// connections (the server is going away); the ids of the orders acknowledged with 201.
struct StandIn {
    base: String,
}

impl StandIn {
    async fn run(&self, stop: Arc<AtomicBool>) -> Vec<i64> {
        let tasks: Vec<_> = (0..8)
            .map(|c| {
                let (base, stop) = (self.base.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut created = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = client
                            .post(format!("{base}/orders"))
                            .json(&order(c * 1_000_000 + n))
                            .send()
                            .await;
                        if let Ok(response) = sent
                            && response.status() == 201
                            && let Ok(body) = response.json::<Value>().await
                        {
                            created.push(body["order"]["id"].as_i64().unwrap());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    created
                })
            })
            .collect();
        let mut created = Vec::new();
        for task in tasks {
            created.extend(task.await.unwrap());
        }
        created
    }
}
