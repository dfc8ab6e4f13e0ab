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
mod chaos;
mod child_process;
mod dashboard;
mod errors;
mod failures;
mod helpers;
mod listing;
mod load;
mod metrics;
mod nest;
mod observability;
mod openapi;
mod orders;
mod outage;
mod pg_durability;
mod pg_helpers;
mod pg_list_cancel_watch;
mod properties;
mod races;
mod reliability;
