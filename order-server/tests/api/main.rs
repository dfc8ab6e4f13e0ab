//! HTTP tests of order-server: what a client sees (status, headers, body) and the state
//! afterwards.

// Helpers of a test binary: a broken expectation panics, which is how a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod binary_lifecycle;
mod bulk;
#[cfg(feature = "postgres")]
mod chaos;
mod child_process;
mod dashboard;
mod errors;
mod failures;
mod helpers;
mod listing;
#[cfg(feature = "postgres")]
mod load;
mod metrics;
mod nest;
mod observability;
mod openapi;
mod orders;
#[cfg(feature = "postgres")]
mod outage;
#[cfg(feature = "postgres")]
mod pg_durability;
#[cfg(feature = "postgres")]
mod pg_helpers;
#[cfg(feature = "postgres")]
mod pg_list_cancel_watch;
#[cfg(feature = "postgres")]
mod pg_steps;
#[cfg(feature = "postgres")]
mod pgbouncer;
mod properties;
mod races;
mod reliability;
mod retries;
mod steps;
