//! The `order-server` under test, as a child process on a fixed loopback port, so that the
//! clients reach it at the same address after it is killed and started again.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// The server process and how to start it again.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    binary: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    /// Where its output goes, appended across restarts; nowhere when unset.
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl ServerProcess {
    /// A server to be run from `binary` with `env` (besides the address and log settings).
    pub(crate) fn new(
        binary: PathBuf,
        env: Vec<(String, String)>,
        log: Option<PathBuf>,
    ) -> Result<Self> {
        if !binary.is_file() {
            bail!(
                "no order-server binary at {} (build it with cargo build -p order-server, or \
                 pass --server)",
                binary.display()
            );
        }
        // Bind port 0 to learn a free port; the server binds it itself at each start.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Self {
            binary,
            env,
            port,
            log,
            child: None,
        })
    }

    /// Where the API is served.
    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until `/readyz` answers 200.
    pub(crate) async fn start(&mut self) -> Result<()> {
        let output = || -> Result<Stdio> {
            Ok(match &self.log {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?
                    .into(),
                None => Stdio::null(),
            })
        };
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(output()?)
            .stderr(output()?)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let ready = format!("{}/readyz", self.base());
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("order-server exited at start: {status}");
            }
            if let Ok(response) = client.get(&ready).send().await
                && response.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > give_up {
                bail!("order-server was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would: no drain, no goodbye.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }
}
