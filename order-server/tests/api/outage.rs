//! PostgreSQL stops under a running server and comes back: requests get a quick JSON 503,
//! readiness says so, and once the database returns everything resumes without a restart and
//! no acknowledged order is lost.
//!
//! The test runs its own throwaway cluster (`initdb` + `pg_ctl` from the machine's PostgreSQL
//! binaries: `PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`), as the `postgres` user when run as root, since PostgreSQL
//! refuses to run as root. Stopping a shared server would break other tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::child_process::{Server, spawn_server};

/// A PostgreSQL cluster in a temporary directory, on a free loopback port.
pub(crate) struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The user to run the server binaries as, when we are root.
    run_as: Option<String>,
}

impl Cluster {
    pub(crate) async fn create() -> Self {
        let bindir = find_bindir().await.expect(
            "PostgreSQL's server binaries (initdb, pg_ctl) are needed: install Debian's \
             postgresql package or set PG_BINDIR",
        );
        let root = output("id", &["-u"]).await.trim() == "0";
        let run_as = root.then(|| "postgres".to_owned());
        let dir = std::env::temp_dir().join(format!("order-outage-{}", uuid_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(user) = &run_as {
            let chown = Command::new("chown")
                .args([user.as_str(), dir.to_str().unwrap()])
                .status()
                .await
                .unwrap();
            assert!(chown.success(), "chown {user} {dir:?}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bindir,
            dir,
            port,
            run_as,
        };
        let data = cluster.data();
        cluster
            .run(
                "initdb",
                &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
            )
            .await;
        cluster.start().await;
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub(crate) async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await;
    }

    /// Stops the server the hard way: no checkpoint, clients cut off, crash recovery at the
    /// next start.
    pub(crate) async fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
        .await;
    }

    async fn run(&self, program: &str, args: &[&str]) {
        let binary = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let out = command.args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.data();
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&pg_ctl);
                command
            }
            None => std::process::Command::new(&pg_ctl),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unique enough for a scratch directory: the process id and a randomly seeded hash.
fn uuid_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::process::id());
    format!("{}-{random:x}", std::process::id())
}

async fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output().await {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn order(i: usize) -> Value {
    json!({"userId": format!("user-{i}"), "itemIds": ["item1"], "totalAmount": 10})
}

/// `POST /orders`, retried while the server answers 503, as a client should during an
/// outage; the id once created.
async fn create_retrying(server: &Server, order: &Value) -> i64 {
    let began = Instant::now();
    loop {
        let (status, body) = server.post("/orders", order).await;
        match status {
            201 => return body["order"]["id"].as_i64().unwrap(),
            503 => assert!(began.elapsed() < Duration::from_secs(20), "{body}"),
            _ => panic!("unexpected {status}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_database_outage_gets_quick_503s_and_everything_resumes_when_it_returns() {
    let cluster = Cluster::create().await;
    let url = cluster.url();
    let server = spawn_server(&[
        ("DATABASE_URL", &url),
        ("PROCESSING_DELAY_MS", "100"),
        ("DB_ACQUIRE_TIMEOUT_MS", "1000"),
        ("LEASE_MS", "2000"),
        ("POLL_INTERVAL_MS", "200"),
    ])
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged.push(server.create(&order(i)).await);
    }

    cluster.crash().await;
    for path in ["/orders", "/orders/1", "/readyz", "/metrics"] {
        let began = Instant::now();
        let (status, body) = if path == "/orders" {
            server.post(path, &order(99)).await
        } else {
            server.get(path).await
        };
        let took = began.elapsed();
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
        assert!(took < Duration::from_secs(4), "{path} took {took:?}");
    }
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "the process itself is alive");
    // Workers keep failing to claim for a while; they must back off, not die. Wait until
    // they have failed more than once, so that the recovery below follows real failures.
    let began = Instant::now();
    loop {
        let failed_claims = server
            .logs()
            .iter()
            .filter(|line| line["fields"]["message"] == "could not claim orders")
            .count();
        if failed_claims >= 3 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "{failed_claims} failed claims logged 20 s into the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.start().await;
    let began = Instant::now();
    loop {
        let (status, _) = server.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "not ready again 20 s after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 20..30 {
        acknowledged.push(create_retrying(&server, &order(i)).await);
    }

    let began = Instant::now();
    loop {
        let mut unfinished = Vec::new();
        for id in &acknowledged {
            let (status, body) = server.get(&format!("/orders/{id}")).await;
            if status != 200 || body["order"]["status"] != "COMPLETED" {
                unfinished.push((*id, status, body["order"]["status"].clone()));
            }
        }
        if unfinished.is_empty() {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "not completed: {unfinished:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metrics["statuses"]["completed"],
        json!(acknowledged.len()),
        "{metrics}"
    );
    let (clean, _) = server.terminate().await;
    assert!(clean, "exits 0 after the outage");
}

#[tokio::test]
async fn idle_workers_hear_of_new_work_again_after_the_database_restarts() {
    use order_core::NewOrder;
    use order_core::backend::Backend;
    use order_core::postgres::{self, PoolOptions, PostgresBackend};
    use rust_decimal::Decimal;
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    let cluster = Cluster::create().await;
    let options = PoolOptions::default().acquire_timeout(Duration::from_secs(1));
    let db = postgres::connect(&cluster.url(), &options).await.unwrap();
    postgres::migrate(&db).await.unwrap();
    // Two pools, as two servers: only NOTIFY carries new work from one to the other.
    let waiting = PostgresBackend::new(&db).queue();
    let storing = PostgresBackend::new(&postgres::connect(&cluster.url(), &options).await.unwrap())
        .repository();
    waiting.wait(Duration::from_millis(300)).await; // opens the LISTEN connection

    cluster.crash().await;
    cluster.start().await;
    // Wait for the listener's new LISTEN to be in place, seen from the server's side.
    let watcher = sea_orm::Database::connect(cluster.url().as_str())
        .await
        .unwrap();
    let began = Instant::now();
    loop {
        waiting.wait(Duration::from_millis(100)).await;
        let listeners: i64 = watcher
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'",
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get("", "n").ok())
            .unwrap_or(0);
        if listeners > 0 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "LISTEN never came back"
        );
    }
    // The listener woke its waiters once when it came back (work may have come meanwhile);
    // drain that wake-up so that the next one can only come from a notification.
    let began = Instant::now();
    loop {
        let waited = Instant::now();
        waiting.wait(Duration::from_millis(500)).await;
        if waited.elapsed() >= Duration::from_millis(450)
            && began.elapsed() > Duration::from_secs(2)
        {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the waiter never went quiet"
        );
    }

    let order = NewOrder::new(
        "after-the-restart".to_owned(),
        vec!["item-1".to_owned()],
        Decimal::ONE,
    )
    .validate()
    .unwrap();
    let pushed = Instant::now();
    loop {
        // The storing pool's old connections died with the server; retry as the engine does.
        match storing.insert(&order).await {
            Ok(_) => break,
            Err(err) => assert!(pushed.elapsed() < Duration::from_secs(10), "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let woke = Instant::now();
    waiting.wait(Duration::from_secs(30)).await;
    let waited = woke.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "woke {waited:?} after the insert: the LISTEN connection did not come back"
    );
    assert_eq!(
        waiting
            .claim(10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );
}
