//! Configuration: every setting is a flag with an environment variable of the same name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use order_core::handler::SimulatedStep;
use order_core::memory::{InMemoryQueue, InMemoryRepository};
#[cfg(feature = "postgres")]
use order_core::postgres::{self, PoolMode, PoolOptions, PostgresBackend};
use order_core::{BuildError, OrderProcessor, Pipeline, RetryPolicy, StorageError};
#[cfg(feature = "postgres")]
use tracing::{info, warn};

use crate::{ApiTokens, ServeOptions};

/// How order-server is run; `order-server --help` lists it all.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "order-server",
    version,
    about = "Serves the order API over HTTP"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// How many orders may be processed at once (tasks, not threads). 0: this server serves
    /// the API and processes nothing, leaving the work to other servers on the same database.
    #[arg(long, env = "WORKERS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub workers: u32,

    /// How long the simulated processing step takes per order, in milliseconds.
    #[arg(long, env = "PROCESSING_DELAY_MS", default_value_t = 2000)]
    pub processing_delay_ms: u64,

    /// Process each order in simulated steps with these names, comma-separated
    /// (`reserve,charge,ship`): each takes `PROCESSING_DELAY_MS`, is checkpointed, and can be
    /// compensated, so that a PROCESSING order can be cancelled. Unset: one step, as the
    /// service this replaces.
    #[arg(long, env = "PROCESSING_STEPS", value_parser = parse_steps)]
    pub processing_steps: Option<StepNames>,

    /// The share of orders whose simulated processing fails, from 0 to 1 (0.1: one in ten),
    /// drawn at random for each attempt; processed in steps, at a step drawn at random. To try
    /// failures, retries and compensations without writing a handler.
    #[arg(long, env = "SIMULATED_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub simulated_failure_rate: f64,

    /// What kind of failure the simulated processing makes: `permanent` (the order is FAILED
    /// at once) or `transient` (it is tried again, up to `MAX_ATTEMPTS`).
    #[arg(long, env = "SIMULATED_FAILURE", value_enum, default_value_t = SimulatedFailure::Permanent)]
    pub simulated_failure: SimulatedFailure,

    /// Attempts per order before it is FAILED.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// How long a worker holds an order before another may take it over, in milliseconds
    /// (renewed while the order is processed).
    #[arg(long, env = "LEASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ms: u64,

    /// Longest time a request may take before it is answered with 503, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,

    /// At shutdown, how long orders in progress may take to finish, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// PostgreSQL connection URL (`postgres://user:password@host:port/database`). Unset:
    /// orders are kept in memory and lost on exit. Set: the schema is migrated at start, and
    /// any number of servers may share the database. (Needs the `postgres` feature, on by
    /// default: a build without it refuses to start with this set.)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most connections this server opens to PostgreSQL.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub db_max_connections: u32,

    /// How long a request waits for a database connection before it is answered with 503, in
    /// milliseconds: the bound on a request's wait while PostgreSQL is down.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL `statement_timeout` for every statement, in milliseconds.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_statement_timeout_ms: u64,

    /// How the server at DATABASE_URL shares its connections to PostgreSQL: `session`
    /// (PostgreSQL itself, or a pooler in session mode) or `transaction` (PgBouncer's
    /// `pool_mode = transaction`, whose server connections change between transactions: each
    /// statement then runs in a transaction of its own that sets the statement timeout with
    /// `SET LOCAL`, and no statement is cached prepared).
    #[arg(long, env = "DATABASE_POOL_MODE", value_enum, default_value_t = DbPoolMode::Session)]
    pub database_pool_mode: DbPoolMode,

    /// A URL of the same database for LISTEN (new work, and changes made by other servers for
    /// the event streams), reaching PostgreSQL directly or through a pooler in session mode:
    /// what a pooler in transaction mode cannot hold. Unset: DATABASE_URL. A NOTIFY round trip,
    /// at start and every 30 s, decides whether notifications arrive; while they do not, idle
    /// workers and event streams poll four times a second. The mode is logged when it changes
    /// and shown by the `order_notifications_mode` metric.
    #[arg(long, env = "DATABASE_LISTEN_URL", hide_env_values = true)]
    pub database_listen_url: Option<String>,

    /// At start, how long to keep trying to reach PostgreSQL before giving up, in seconds.
    #[arg(long, env = "DB_STARTUP_TIMEOUT_SECS", default_value_t = 30)]
    pub db_startup_timeout_secs: u64,

    /// How often idle workers look for work when no notification came, in milliseconds: the
    /// fallback for connection poolers that do not pass on PostgreSQL's NOTIFY.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub poll_interval_ms: u64,

    /// Bearer tokens that may call the API, comma-separated: when set, every route but
    /// /healthz and /readyz needs `Authorization: Bearer <token>`. Unset: the API is open.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<ApiTokens>,

    /// How many requests may be in progress at once; more are answered 503 with Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// In memory (no DATABASE_URL): the most orders waiting or in progress at once; past it,
    /// POST /orders is answered 503 with Retry-After until the workers catch up.
    #[arg(long, env = "MAX_BACKLOG", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,

    /// How long an Idempotency-Key is remembered after its order was created, in seconds.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_secs: u64,

    /// Log output: human-readable text or one JSON object per line. Levels come from RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the configuration cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// PostgreSQL could not be reached or migrated in time.
    #[error("PostgreSQL is not usable: {0}")]
    Postgres(#[from] StorageError),
    /// `DATABASE_URL` is set, but this build was made without the `postgres` feature: refused
    /// rather than served from memory, where every order would be lost on exit.
    #[error(
        "DATABASE_URL is set, but this build of order-server has no PostgreSQL support; rebuild with the `postgres` feature"
    )]
    NoPostgresSupport,
    /// The engine refused a setting.
    #[error(transparent)]
    Processor(#[from] BuildError),
}

impl Config {
    /// The address to bind.
    pub fn listen_address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// How [`app`](crate::app) serves these settings: with the dashboard, sampled from the
    /// start. Without a Prometheus exporter, which is not a setting: the caller installs the
    /// recorder ([`install_recorder`](crate::prometheus::install_recorder)) and sets
    /// [`RouterOptions::prometheus`](crate::RouterOptions::prometheus).
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            request_timeout: self.request_timeout(),
            api_tokens: self.api_token.clone().unwrap_or_default(),
            max_in_flight: self.max_in_flight as usize,
            ..ServeOptions::default()
        }
    }

    /// Whether anyone who can reach the address may call the API: no token is required, and
    /// the server listens beyond this machine.
    pub fn open_beyond_loopback(&self) -> bool {
        self.api_token.is_none() && !self.host.is_loopback()
    }

    /// How long shutdown waits for orders in progress.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The connection pool settings these flags describe.
    #[cfg(feature = "postgres")]
    pub fn pool_options(&self) -> PoolOptions {
        let options = PoolOptions::default()
            .max_connections(self.db_max_connections)
            .acquire_timeout(Duration::from_millis(self.db_acquire_timeout_ms))
            .statement_timeout(Duration::from_millis(self.db_statement_timeout_ms))
            .application_name("order-server")
            .pool_mode(match self.database_pool_mode {
                DbPoolMode::Session => PoolMode::Session,
                DbPoolMode::Transaction => PoolMode::Transaction,
            });
        // Empty is unset, as a compose file's `DATABASE_LISTEN_URL:` leaves it.
        match self
            .database_listen_url
            .as_deref()
            .filter(|url| !url.is_empty())
        {
            Some(url) => options.listen_url(url),
            None => options,
        }
    }

    /// The order processor these settings describe, not yet started: in memory, or on
    /// PostgreSQL (connected, waiting up to `DB_STARTUP_TIMEOUT_SECS` for it, and migrated)
    /// when `DATABASE_URL` is set. Built without the `postgres` feature, a `DATABASE_URL` is
    /// [`ConfigError::NoPostgresSupport`].
    pub async fn processor(&self) -> Result<OrderProcessor, ConfigError> {
        let delay = Duration::from_millis(self.processing_delay_ms);
        let step = SimulatedStep::new(delay).failing(
            self.simulated_failure_rate,
            self.simulated_failure == SimulatedFailure::Transient,
        );
        let builder = match &self.processing_steps {
            Some(names) if !names.0.is_empty() => {
                OrderProcessor::pipeline_builder(Pipeline::simulated_from(names.0.clone(), step))
            }
            _ => OrderProcessor::builder(step),
        };
        let mut builder = builder
            .concurrency(self.workers.max(1) as usize)
            .lease(Duration::from_millis(self.lease_ms))
            .poll_interval(Duration::from_millis(self.poll_interval_ms))
            .idempotency_ttl(Duration::from_secs(self.idempotency_ttl_secs))
            .retry_policy(RetryPolicy::default().max_attempts(self.max_attempts));
        match &self.database_url {
            None => {
                builder = builder
                    .repository(Arc::new(InMemoryRepository::with_max_unfinished(
                        self.max_backlog,
                    )))
                    .queue(Arc::new(InMemoryQueue::new()));
            }
            #[cfg(feature = "postgres")]
            Some(url) => {
                let db = self.connect_and_migrate(url).await?;
                builder = builder.backend(&PostgresBackend::new(&db));
            }
            #[cfg(not(feature = "postgres"))]
            Some(_) => return Err(ConfigError::NoPostgresSupport),
        }
        Ok(builder.build()?)
    }

    /// Connects to PostgreSQL and migrates, each retried with a progress line while the
    /// database is unavailable, until the startup timeout passes: a server started beside its
    /// database (compose, systemd) should not fail because the database took a few seconds
    /// longer, nor replicas starting together crash-loop on each other's migration.
    #[cfg(feature = "postgres")]
    async fn connect_and_migrate(&self, url: &str) -> Result<postgres::PostgresPool, StorageError> {
        let give_up =
            tokio::time::Instant::now() + Duration::from_secs(self.db_startup_timeout_secs);
        let options = self.pool_options();
        let db = retry_at_start(give_up, "waiting for PostgreSQL", || {
            postgres::connect(url, &options)
        })
        .await?;
        retry_at_start(give_up, "migration failed; retrying", || {
            postgres::migrate(&db)
        })
        .await?;
        info!("PostgreSQL schema is up to date");
        // Starts the NOTIFY round trips now rather than at the workers' first wait: the mode
        // is logged at start, and the metric shows it from the first scrape.
        let _ = db.notification_mode();
        Ok(db)
    }
}

/// `SIMULATED_FAILURE`: how the simulated processing fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimulatedFailure {
    /// The order is FAILED at once.
    Permanent,
    /// The attempt is tried again, up to `MAX_ATTEMPTS`.
    Transient,
}

/// `SIMULATED_FAILURE_RATE`: a number from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("must be a number from 0 to 1, got {text:?}")),
    }
}

/// `DATABASE_POOL_MODE`: how the server at `DATABASE_URL` shares connections to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbPoolMode {
    /// One PostgreSQL session per connection, from open to close.
    Session,
    /// A PostgreSQL session per transaction (PgBouncer's `pool_mode = transaction`).
    Transaction,
}

/// The names of `PROCESSING_STEPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepNames(pub Vec<String>);

/// `PROCESSING_STEPS`: names separated by commas, each 1 to 64 characters, none twice; empty
/// (as a compose file's `PROCESSING_STEPS:` leaves it) is one plain step, as unset.
fn parse_steps(text: &str) -> Result<StepNames, String> {
    if text.trim().is_empty() {
        return Ok(StepNames(Vec::new()));
    }
    let names: Vec<String> = text.split(',').map(|name| name.trim().to_owned()).collect();
    Pipeline::simulated(names.clone(), Duration::ZERO)
        .validate()
        .map_err(|err| err.to_string())?;
    Ok(StepNames(names))
}

/// Runs `attempt` until it succeeds, fails for good, or `give_up` would pass during the next
/// pause; unavailable errors are logged with `waiting` and retried with growing pauses.
#[cfg(feature = "postgres")]
async fn retry_at_start<T, F, Fut>(
    give_up: tokio::time::Instant,
    waiting: &str,
    mut attempt: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let retry = RetryPolicy::default()
        .backoff_between(Duration::from_millis(250), Duration::from_secs(5))
        .jitter(false);
    let mut failures = 0;
    loop {
        failures += 1;
        let pause = retry.backoff(failures);
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if err.unavailable && tokio::time::Instant::now() + pause < give_up => {
                warn!(error = %err, retry_in_ms = pause.as_millis(), "{waiting}");
                tokio::time::sleep(pause).await;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = Config::try_parse_from(["order-server"]).unwrap();
        assert_eq!(config.listen_address().to_string(), "0.0.0.0:3000");
        assert_eq!(config.workers, 256);
        assert_eq!(config.processing_delay_ms, 2000);
        assert_eq!(config.log_format, LogFormat::Text);
        #[cfg(feature = "postgres")]
        assert_eq!(config.pool_options().max_connections, 16);
        assert!(config.serve_options().api_tokens.is_empty());
        assert!(config.open_beyond_loopback());
    }

    #[test]
    fn tokens_are_parsed_and_never_shown() {
        let config = Config::try_parse_from([
            "order-server",
            "--api-token",
            "first-secret, second-secret",
            "--host",
            "10.1.2.3",
        ])
        .unwrap();
        assert_eq!(config.serve_options().api_tokens.len(), 2);
        assert!(!config.open_beyond_loopback());
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(Config::try_parse_from(["order-server", "--api-token", " , "]).is_err());
        let local = Config::try_parse_from(["order-server", "--host", "127.0.0.1"]).unwrap();
        assert!(!local.open_beyond_loopback());
    }

    #[test]
    fn flags_are_checked() {
        assert!(Config::try_parse_from(["order-server", "--workers", "-1"]).is_err());
        assert!(Config::try_parse_from(["order-server", "--workers", "100001"]).is_err());
        assert!(Config::try_parse_from(["order-server", "--port", "70000"]).is_err());
        assert!(Config::try_parse_from(["order-server", "--host", "nowhere"]).is_err());
        let config =
            Config::try_parse_from(["order-server", "--host", "::1", "--port", "0"]).unwrap();
        assert_eq!(config.listen_address().to_string(), "[::1]:0");
        let steps = ["order-server", "--processing-steps", "reserve, charge,ship"];
        let config = Config::try_parse_from(steps).unwrap();
        let names = config.processing_steps.unwrap().0;
        assert_eq!(names, ["reserve", "charge", "ship"]);
        let empty = Config::try_parse_from(["order-server", "--processing-steps", " "]).unwrap();
        assert_eq!(
            empty.processing_steps,
            Some(StepNames(Vec::new())),
            "one plain step"
        );
        for bad in ["a,a", "a,,b", ","] {
            let refused = Config::try_parse_from(["order-server", "--processing-steps", bad]);
            assert!(refused.is_err(), "{bad:?} was accepted");
        }
        let failing = ["order-server", "--simulated-failure-rate", "0.25"];
        let config = Config::try_parse_from(failing).unwrap();
        assert_eq!(
            (config.simulated_failure_rate, config.simulated_failure),
            (0.25, SimulatedFailure::Permanent)
        );
        let transient = ["order-server", "--simulated-failure", "transient"];
        let config = Config::try_parse_from(transient).unwrap();
        assert_eq!(config.simulated_failure, SimulatedFailure::Transient);
        for bad in ["-0.1", "1.5", "NaN", "half"] {
            let refused = Config::try_parse_from(["order-server", "--simulated-failure-rate", bad]);
            assert!(refused.is_err(), "{bad:?} was accepted");
        }
        let refused = Config::try_parse_from(["order-server", "--simulated-failure", "sometimes"]);
        assert!(refused.is_err());
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn an_unreachable_database_fails_the_start_with_its_cause() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let config = Config::try_parse_from([
            "order-server",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/orders",
            "--db-startup-timeout-secs",
            "0",
            "--db-acquire-timeout-ms",
            "200",
        ])
        .unwrap();
        let err = config.processor().await.unwrap_err();
        assert!(
            matches!(&err, ConfigError::Postgres(e) if e.unavailable),
            "{err}"
        );
        assert!(err.to_string().contains("PostgreSQL"), "{err}");
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn without_postgres_support_a_database_url_fails_the_start() {
        let config = Config::try_parse_from([
            "order-server",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/orders",
        ])
        .unwrap();
        let err = config.processor().await.unwrap_err();
        assert!(matches!(err, ConfigError::NoPostgresSupport), "{err}");
        assert!(
            err.to_string()
                .contains("this build of order-server has no PostgreSQL support; rebuild with the `postgres` feature"),
            "{err}"
        );
    }
}
