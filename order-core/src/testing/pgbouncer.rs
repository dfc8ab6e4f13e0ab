//! PgBouncer in front of a PostgreSQL server, started by a test on a free loopback port, as
//! operators run it for most drivers: `pool_mode = transaction` and
//! `ignore_startup_parameters = extra_float_digits`.
//!
//! The binary is [`PGBOUNCER`] or `/usr/sbin/pgbouncer` (Debian's package `pgbouncer`). It
//! refuses to run as root, so a test running as root starts it as the `postgres` system user.
//! [`PgBouncer::retarget`] points it at another server and reloads it, as an operator does
//! after a failover.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The variable naming the `pgbouncer` binary; `/usr/sbin/pgbouncer` when unset.
pub const PGBOUNCER: &str = "PGBOUNCER";

const DEFAULT_BINARY: &str = "/usr/sbin/pgbouncer";

/// How a [`PgBouncer`] is set up; the defaults are an operator's for transaction pooling.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgBouncerSettings {
    /// `pool_mode`: `transaction` (the default), `session` or `statement`.
    pub pool_mode: String,
    /// `default_pool_size`: server connections per database and user. Small, so that clients
    /// share server connections as they do in production.
    pub default_pool_size: u32,
    /// `max_client_conn`.
    pub max_client_conn: u32,
}

impl Default for PgBouncerSettings {
    fn default() -> Self {
        Self {
            pool_mode: "transaction".to_owned(),
            default_pool_size: 4,
            max_client_conn: 1000,
        }
    }
}

impl PgBouncerSettings {
    /// The same settings with at most `size` server connections per database and user.
    #[must_use]
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }
}

/// A running PgBouncer, stopped (and its files removed) when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
    settings: PgBouncerSettings,
}

/// The parts of a `postgres://` URL that PgBouncer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
}

impl PgBouncer {
    /// The binary tests would start: [`PGBOUNCER`], or `/usr/sbin/pgbouncer`; `None` when
    /// it is not there.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os(PGBOUNCER)
            .filter(|path| !path.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
        path.is_file().then_some(path)
    }

    /// Starts PgBouncer in front of the server of `upstream_url` (any database on it), and
    /// waits until it accepts connections. `None` when there is no binary, after printing
    /// how to install one; under CI (`CI` set) a missing binary panics instead, so that a
    /// run that should test through PgBouncer cannot pass without it.
    pub fn start_or_skip(upstream_url: &str, settings: &PgBouncerSettings) -> Option<Self> {
        if Self::binary().is_none() {
            let help = format!(
                "pgbouncer not found at {DEFAULT_BINARY} or ${PGBOUNCER}: install it \
                 (apt-get install pgbouncer) to run the tests through PgBouncer"
            );
            assert!(std::env::var_os("CI").is_none(), "{help}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipped: {help}");
            }
            return None;
        }
        Some(Self::start(upstream_url, settings).unwrap_or_else(|err| panic!("{err}")))
    }

    /// Starts PgBouncer in front of the server of `upstream_url`; fails with its log when it
    /// does not come up within 10 seconds.
    pub fn start(upstream_url: &str, settings: &PgBouncerSettings) -> Result<Self, String> {
        let binary = Self::binary()
            .ok_or_else(|| format!("pgbouncer not found at {DEFAULT_BINARY} or ${PGBOUNCER}"))?;
        let upstream = Upstream::parse(upstream_url)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgbouncer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let port = free_port()?;
        let run_as = run_as()?;
        write_files(&dir, port, &upstream, settings, run_as.is_some())?;
        let log = File::create(dir.join("pgbouncer.log")).map_err(|err| err.to_string())?;
        let mut command = Command::new(&binary);
        // In the foreground, logging to stderr: no pid file or log file for the postgres user
        // to write in a directory root made.
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        let child = command
            .spawn()
            .map_err(|err| format!("could not start {}: {err}", binary.display()))?;
        let mut bouncer = Self {
            child,
            port,
            dir,
            settings: settings.clone(),
        };
        bouncer.wait_until_listening()?;
        Ok(bouncer)
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` (a URL of the upstream server) through this PgBouncer: the same user, password,
    /// database and parameters, this host and port.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
        let (authority, path) = rest
            .find(['/', '?'])
            .map_or((rest, ""), |at| rest.split_at(at));
        let userinfo = authority
            .rsplit_once('@')
            .map_or(String::new(), |(userinfo, _)| format!("{userinfo}@"));
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.port)
    }

    /// Points PgBouncer at the server of `upstream_url` and reloads it (`SIGHUP`), returning
    /// once it has read the new configuration: new server connections go there, and PgBouncer
    /// closes the old ones as they are released.
    pub fn retarget(&mut self, upstream_url: &str) -> Result<(), String> {
        const RELOADED: &str = "re-reading config";
        let upstream = Upstream::parse(upstream_url)?;
        write_files(
            &self.dir,
            self.port,
            &upstream,
            &self.settings,
            run_as()?.is_some(),
        )?;
        let reloads = self.log().matches(RELOADED).count();
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .map_err(|err| format!("could not signal pgbouncer: {err}"))?;
        if !status.success() {
            return Err(format!("kill -HUP {} failed", self.child.id()));
        }
        // The signal is handled in PgBouncer's own time; its log says when.
        let began = Instant::now();
        while self.log().matches(RELOADED).count() == reloads {
            if began.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "pgbouncer did not reload within 5 s:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // It logs before it reads the file.
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let began = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("pgbouncer exited ({status}):\n{}", self.log()));
            }
            if began.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "pgbouncer did not listen within 10 s:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Upstream {
    /// `postgres://user[:password]@host[:port]/...`; percent-escapes are left as they are.
    fn parse(url: &str) -> Result<Self, String> {
        let invalid = || format!("not a postgres:// URL with a user and a host: {url}");
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(invalid)?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, hostport) = authority.rsplit_once('@').ok_or_else(invalid)?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password.to_owned())),
            None => (userinfo, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| invalid())?),
            None => (hostport, 5432),
        };
        if user.is_empty() || host.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            user: user.to_owned(),
            password,
            host: host.to_owned(),
            port,
        })
    }
}

/// Writes `pgbouncer.ini` and its `users.txt` into `dir`; `for_postgres`: hands them to the
/// `postgres` user that PgBouncer runs as (whatever the umask made them).
fn write_files(
    dir: &Path,
    port: u16,
    upstream: &Upstream,
    settings: &PgBouncerSettings,
    for_postgres: bool,
) -> Result<(), String> {
    let Upstream {
        user,
        password,
        host,
        port: upstream_port,
    } = upstream;
    // Clients are trusted (loopback, tests); PgBouncer logs in to PostgreSQL with the
    // password given here, if the server asks for one.
    let mut ini = String::new();
    let _ = write!(
        ini,
        "[databases]\n\
         * = host={host} port={upstream_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {}\n\
         pool_mode = {}\n\
         default_pool_size = {}\n\
         max_client_conn = {}\n\
         ignore_startup_parameters = extra_float_digits\n\
         server_login_retry = 1\n",
        dir.join("users.txt").display(),
        settings.pool_mode,
        settings.default_pool_size,
        settings.max_client_conn,
    );
    let users = format!("\"{user}\" \"{}\"\n", password.as_deref().unwrap_or(""));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|err| format!("{name}: {err}"))
    };
    write("users.txt", &users)?;
    write("pgbouncer.ini", &ini)?;
    if for_postgres {
        let chown = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()
            .map_err(|err| format!("chown: {err}"))?;
        if !chown.success() {
            return Err(format!("chown -R postgres {} failed", dir.display()));
        }
    }
    Ok(())
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|err| err.to_string())?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|err| err.to_string())
}

/// The `postgres` user's uid and gid when this process runs as root (PgBouncer will not).
fn run_as() -> Result<Option<(u32, u32)>, String> {
    let me = std::fs::metadata("/proc/self").map_err(|err| err.to_string())?;
    if me.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|err| err.to_string())?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| "running as root, and there is no postgres user to run pgbouncer as".into())
}

/// What a failover test relies on: a reload moves PgBouncer's clients to another server
/// without their reconnecting.
#[cfg(all(test, feature = "postgres"))]
mod retargeting {
    use std::time::Duration;

    use sea_orm::{DbBackend, Statement};

    use super::{PgBouncer, PgBouncerSettings, free_port};
    use crate::postgres::{PoolMode, PoolOptions, connect};
    use crate::testing::TestDatabase;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retargeted_pgbouncer_sends_the_same_clients_to_the_new_server() {
        let db = TestDatabase::create().await;
        let Some(mut bouncer) = PgBouncer::start_or_skip(db.url(), &PgBouncerSettings::default())
        else {
            return;
        };
        let options = PoolOptions::default()
            .pool_mode(PoolMode::Transaction)
            .acquire_timeout(Duration::from_secs(1))
            .statement_timeout(Duration::from_secs(1));
        let pool = connect(&bouncer.url(db.url()), &options).await.unwrap();
        let select = || Statement::from_string(DbBackend::Postgres, "SELECT 1 AS n");
        pool.query_one(select()).await.unwrap();

        // A server that is not there: statements wait for it, and fail. (A server connection
        // that was idle at the reload may answer once more before PgBouncer closes it.)
        let nowhere = format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            free_port().unwrap()
        );
        bouncer.retarget(&nowhere).unwrap();
        let began = std::time::Instant::now();
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), pool.query_one(select())).await
        {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "still answered 10 s after the retarget:\n{}",
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Back: the same pool is answered again, within PgBouncer's login retry.
        bouncer.retarget(db.url()).unwrap();
        let began = std::time::Instant::now();
        while pool.query_one(select()).await.is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "not answered after the retarget back:\n{}",
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_read_with_and_without_password_and_port() {
        assert_eq!(
            Upstream::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap(),
            Upstream {
                user: "postgres".into(),
                password: None,
                host: "127.0.0.1".into(),
                port: 5432
            }
        );
        let with = Upstream::parse("postgresql://ann:s3cret@db.example/orders?x=1").unwrap();
        assert_eq!(
            (with.password.as_deref(), with.host.as_str(), with.port),
            (Some("s3cret"), "db.example", 5432)
        );
        assert!(Upstream::parse("mysql://a@b/c").is_err());
    }
}
