//! A private PostgreSQL cluster in a temporary directory, which the checker can restart the
//! hard way: a shared server must not be restarted under other users.
//!
//! The binaries come from `PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so as root the cluster is
//! run as the `postgres` user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A running cluster; dropping it stops it and removes its directory.
#[derive(Debug)]
pub(crate) struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The user to run the server binaries as, when we are root.
    run_as: Option<String>,
}

impl Cluster {
    /// Creates a cluster with `initdb` and starts it on a free loopback port.
    pub(crate) fn create() -> Result<Self> {
        let bindir = find_bindir().context(
            "PostgreSQL's server binaries (initdb, pg_ctl) are needed: install PostgreSQL \
             (sudo apt-get install postgresql) or set PG_BINDIR",
        )?;
        let uid = Command::new("id").arg("-u").output().context("id -u")?;
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let run_as = root.then(|| "postgres".to_owned());
        let dir = std::env::temp_dir().join(format!("order-checker-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(user) = &run_as {
            let chown = Command::new("chown").arg(user).arg(&dir).status()?;
            if !chown.success() {
                bail!("chown {user} {} failed", dir.display());
            }
        }
        // Bind port 0 to learn a free port, then let it go for PostgreSQL: a race with
        // another process taking it meanwhile is possible but rare, and fails loudly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = Self {
            bindir,
            dir,
            port,
            run_as,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The URL of its `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m immediate`: every backend is cut off without a checkpoint, and the
    /// server recovers from its WAL as after a crash.
    pub(crate) fn restart_immediately(&self) -> Result<()> {
        self.pg_ctl("restart")
    }

    /// How many orders the database holds in each status, counted with `psql`: the direct
    /// count that `/metrics` must equal once all is quiet.
    pub(crate) fn count_by_status(&self) -> Result<BTreeMap<String, u64>> {
        let port = self.port.to_string();
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-F", " ", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg("SELECT status, count(*) FROM order_engine_orders GROUP BY status")
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let (status, count) = line
                    .split_once(' ')
                    .with_context(|| format!("psql printed {line:?}"))?;
                Ok((status.to_owned(), count.trim().parse()?))
            })
            .collect()
    }

    fn pg_ctl(&self, action: &str) -> Result<()> {
        // fsync off: an immediate restart kills processes, not the machine, so what was
        // written is in the OS cache and survives; syncing would only slow the run.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &options,
                "-l",
                &log,
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                action,
            ],
        )
    }

    fn command(&self, program: &str) -> Command {
        let binary = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(binary);
                command
            }
            None => Command::new(binary),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort: a cluster that will not stop is left for the OS to reap with /tmp.
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if usable(&dir) {
            return Some(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if usable(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
