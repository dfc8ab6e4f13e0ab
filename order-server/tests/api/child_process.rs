//! The real `order-server` binary as a child process, over TCP on loopback.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    logs: Arc<Mutex<Vec<Value>>>,
    /// Reads the process's log lines into `logs`; ends when the process closes its stdout.
    log_reader: tokio::task::JoinHandle<()>,
    client: reqwest::Client,
}

/// Starts the binary on a free loopback port with `env`, and waits until it listens.
pub(crate) async fn spawn_server(env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_order-server"));
    command
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    spawn(command).await
}

/// Starts `command` (the binary, configured) and waits until it logs its address.
pub(crate) async fn spawn(mut command: Command) -> Server {
    command.stdout(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().expect("order-server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let entry: Value = serde_json::from_str(&line).unwrap();
            let address = entry["fields"]["address"].as_str().map(str::to_owned);
            logs.lock().unwrap().push(entry);
            if let Some(address) = address {
                return address;
            }
        }
        panic!("order-server exited before listening");
    })
    .await
    .expect("order-server listens within 30 s");
    let sink = logs.clone();
    let log_reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if std::env::var_os("TEST_LOG").is_some() {
                println!("order-server: {line}");
            }
            if let Ok(entry) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(entry);
            }
        }
    });
    Server {
        child,
        base: format!("http://{address}"),
        logs,
        log_reader,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

impl Server {
    pub(crate) async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Sends `signal` (`TERM`, `KILL`) to the process.
    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub(crate) async fn terminate(mut self) -> (bool, Vec<Value>) {
        self.signal("TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .unwrap();
        // The process has exited: its stdout ends once the reader has every line.
        tokio::time::timeout(Duration::from_secs(5), &mut self.log_reader)
            .await
            .expect("the log reader reaches the end of the output")
            .unwrap();
        let logs = self.logs.lock().unwrap().clone();
        (status.success(), logs)
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would: no drain, no
    /// goodbye.
    pub(crate) async fn kill(mut self) {
        self.signal("KILL").await;
        self.child.wait().await.unwrap();
    }

    /// The HTTP client, for requests the helpers here do not make (headers of the test's own,
    /// bodies that are not JSON).
    /// The resident memory of the process, in KiB (`VmRSS`).
    // Read only by the load tests, which run on PostgreSQL.
    #[cfg(feature = "postgres")]
    pub(crate) fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The log lines so far, parsed.
    pub(crate) fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// `POST /orders` of `order`, returning the new id; retried while the server answers
    /// 503 (a client's duty during an outage).
    pub(crate) async fn create(&self, order: &Value) -> i64 {
        let (status, body) = self.post("/orders", order).await;
        assert_eq!(status, 201, "{body}");
        body["order"]["id"].as_i64().unwrap()
    }
}
