//! HTTP tests of order-server: what a client sees (status, headers, body) and the state
//! afterwards.

mod errors;
mod failures;
mod helpers;
mod metrics;
mod orders;
mod server;
