//! A private PostgreSQL cluster in a temporary directory, which the checker can restart the
//! hard way: a shared server must not be restarted under other users.
//!
//! The binaries come from `PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so as root the cluster is
//! run as the `postgres` user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
        let cluster = Self::prepare(bindir, run_as, "primary")?;
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    /// An empty directory of its own (`name` tells a primary from its standby) and a free
    /// port, for a cluster not yet created.
    fn prepare(bindir: PathBuf, run_as: Option<String>, name: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("order-checker-pg-{}-{name}", std::process::id()));
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
        Ok(Self {
            bindir,
            dir,
            port,
            run_as,
        })
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
        self.query("SELECT status, count(*) FROM order_engine_orders GROUP BY status")?
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

    /// Runs `sql` with `psql` on its `postgres` database; returns the rows it printed, one per
    /// line, fields separated by a space.
    pub(crate) fn query(&self, sql: &str) -> Result<String> {
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
            .arg(sql)
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A streaming standby of `primary`, copied with `pg_basebackup` and started: read-only
    /// until [`promote`](Self::promote)d. The primary waits for it on every commit once
    /// [`require_synchronous_standby`](Self::require_synchronous_standby) is called.
    pub(crate) fn standby_of(primary: &Cluster) -> Result<Self> {
        let cluster = Self::prepare(primary.bindir.clone(), primary.run_as.clone(), "standby")?;
        let data = cluster.data();
        let primary_port = primary.port.to_string();
        // -R writes `primary_conninfo` and `standby.signal`; -X stream copies the WAL written
        // meanwhile.
        cluster.run(
            "pg_basebackup",
            &[
                "-D",
                &data,
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    /// Makes every commit on this primary wait until the standby has flushed it
    /// (`synchronous_standby_names`), and returns once the standby is streaming as the
    /// synchronous one. Set after the standby was copied, so that it does not inherit the
    /// setting: promoted, it must not wait for a standby of its own.
    pub(crate) fn require_synchronous_standby(&self) -> Result<()> {
        self.query("ALTER SYSTEM SET synchronous_standby_names = '*'")?;
        self.query("SELECT pg_reload_conf()")?;
        self.wait_until(
            "SELECT sync_state FROM pg_stat_replication",
            |states| states.lines().any(|state| state == "sync"),
            Duration::from_secs(30),
            "the standby to stream synchronously",
        )
    }

    /// Runs `sql` every 10 ms until what it prints (trimmed) satisfies `done`; fails after
    /// `within`, saying what it waited for.
    fn wait_until(
        &self,
        sql: &str,
        done: impl Fn(&str) -> bool,
        within: Duration,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let printed = self.query(sql)?;
            if done(printed.trim()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "waited {} s for {what}; last seen: {printed:?}",
                    within.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to the postmaster and every process it started, at once: the machine gone, as
    /// far as clients can tell. Nothing is flushed, nothing says goodbye.
    pub(crate) fn kill_everything(&self) -> Result<()> {
        let pidfile = Path::new(&self.data()).join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("reading {}", pidfile.display()))?;
        let postmaster = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse::<u32>().ok())
            .context("postmaster.pid names no process")?;
        // pg_ctl starts the postmaster in a session of its own, and every process it forks
        // stays in its process group: one signal to the group reaches them all, including a
        // backend forked a moment ago. Otherwise, the ones /proc lists now.
        let targets = if process_group(postmaster) == Some(postmaster) {
            vec!["--".to_owned(), format!("-{postmaster}")]
        } else {
            let mut pids = vec![postmaster.to_string()];
            pids.extend(children_of(postmaster).iter().map(u32::to_string));
            pids
        };
        // kill fails when one of them exited meanwhile; what matters is that none is left.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&targets)
            .status()
            .context("running kill")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(postmaster) {
            if Instant::now() > deadline {
                bail!("the postmaster ({postmaster}) outlived kill -KILL {targets:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // So that stopping it later signals no process that took the number since.
        std::fs::remove_file(&pidfile)
            .with_context(|| format!("removing {}", pidfile.display()))?;
        // Its System V shared memory segment (a few bytes; the id is the seventh line's second
        // field) outlives it, as no server starts on this directory again. Best effort.
        if let Some(segment) = text
            .lines()
            .nth(6)
            .and_then(|line| line.split_whitespace().nth(1))
        {
            let _ = Command::new("ipcrm").args(["-m", segment]).status();
        }
        Ok(())
    }

    /// Waits until the standby has replayed all the WAL it received.
    pub(crate) fn wait_for_replay(&self) -> Result<()> {
        self.wait_until(
            "SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()",
            |caught_up| caught_up == "t",
            Duration::from_secs(30),
            "the standby to replay what it received",
        )
    }

    /// `pg_ctl promote`, returning as soon as the standby is out of recovery (asked every
    /// 10 ms: `pg_ctl -w` looks every 100 ms), so that the caller knows when it took writes.
    pub(crate) fn promote(&self) -> Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-W", "promote"])?;
        self.wait_until(
            "SELECT pg_is_in_recovery()",
            |in_recovery| in_recovery == "f",
            Duration::from_secs(60),
            "the standby to leave recovery after pg_ctl promote",
        )
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

/// The process group of `pid`, from `/proc`.
fn process_group(pid: u32) -> Option<u32> {
    stat_fields(pid)?.nth(2)?.parse().ok()
}

/// True while `pid` runs: gone from `/proc`, or a zombie its parent has not reaped, it does not.
fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|mut fields| fields.next())
        .is_some_and(|state| state != "Z")
}

/// The fields of `/proc/<pid>/stat` after the process's name: state, ppid, pgrp, ...
fn stat_fields(pid: u32) -> Option<std::vec::IntoIter<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: the name may hold spaces and parentheses, so the
    // fields are counted from the last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<String> = after_name.split_whitespace().map(str::to_owned).collect();
    Some(fields.into_iter())
}

/// The processes whose parent is `parent`, read from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let ppid: u32 = stat_fields(pid)?.nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
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
