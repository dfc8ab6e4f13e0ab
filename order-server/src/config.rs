//! Configuration: every setting is a flag with an environment variable of the same name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use order_core::{BuildError, OrderProcessor, RetryPolicy, SimulatedStep};

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

    /// How many orders may be processed at once (tasks, not threads).
    #[arg(long, env = "WORKERS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: u32,

    /// How long the simulated processing step takes per order, in milliseconds.
    #[arg(long, env = "PROCESSING_DELAY_MS", default_value_t = 2000)]
    pub processing_delay_ms: u64,

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

    /// PostgreSQL connection URL. Unset: orders are kept in memory and lost on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

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
    /// PostgreSQL storage was asked for, but this build has none.
    #[error(
        "DATABASE_URL is set, but this version of order-server keeps orders in memory only; \
         unset DATABASE_URL to run in memory"
    )]
    PostgresUnavailable,
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

    /// How long shutdown waits for orders in progress.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The order processor these settings describe, not yet started.
    pub fn processor(&self) -> Result<OrderProcessor, ConfigError> {
        if self.database_url.is_some() {
            return Err(ConfigError::PostgresUnavailable);
        }
        let step = SimulatedStep::new(Duration::from_millis(self.processing_delay_ms));
        Ok(OrderProcessor::builder(step)
            .concurrency(self.workers as usize)
            .lease(Duration::from_millis(self.lease_ms))
            .retry_policy(RetryPolicy {
                max_attempts: self.max_attempts,
                ..RetryPolicy::default()
            })
            .build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = Config::try_parse_from(["order-server"]).unwrap();
        assert_eq!(config.listen_address().to_string(), "0.0.0.0:3000");
        assert_eq!(config.workers, 64);
        assert_eq!(config.processing_delay_ms, 2000);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.processor().is_ok());
    }

    #[test]
    fn flags_are_checked() {
        assert!(Config::try_parse_from(["order-server", "--workers", "0"]).is_err());
        assert!(Config::try_parse_from(["order-server", "--port", "70000"]).is_err());
        assert!(Config::try_parse_from(["order-server", "--host", "nowhere"]).is_err());
        let config =
            Config::try_parse_from(["order-server", "--host", "::1", "--port", "0"]).unwrap();
        assert_eq!(config.listen_address().to_string(), "[::1]:0");
    }

    #[test]
    fn a_database_url_is_refused_rather_than_silently_ignored() {
        let config =
            Config::try_parse_from(["order-server", "--database-url", "postgres://db/orders"])
                .unwrap();
        assert!(matches!(
            config.processor(),
            Err(ConfigError::PostgresUnavailable)
        ));
    }
}
