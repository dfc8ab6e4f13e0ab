//! `bench-echo`: a bare axum server with the order API's shape and none of its work, the HTTP
//! ceiling of this machine that `scripts/bench.sh` reads order-server's figures against.
//!
//! `POST /orders` deserialises the same JSON as order-server (`userId`, `itemIds`, an exact
//! `totalAmount`) with `axum::Json` and answers `201` with the order echoed in order-server's
//! response shape (an id, a status, the same field names, a `Location` header), so the bytes on
//! the wire are comparable. `GET /orders/{id}` parses the id and answers `200` with a fixed order
//! of the same shape. No validation, no storage, no middleware: what is left is axum, hyper,
//! serde and the kernel's loopback, on tokio's default multi-thread runtime as order-server uses.
//!
//! ```text
//! cargo build --release -p benches --bin bench-echo
//! PORT=18080 target/release/bench-echo     # listens on 127.0.0.1:18080 until killed
//! ```
//!
//! `PORT` unset or `0` picks a free port; the address is printed on stderr.

#![allow(clippy::print_stderr)] // The address it listens on is reported on the terminal.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The body of `POST /orders`, as order-server reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    user_id: String,
    item_ids: Vec<String>,
    #[serde(with = "order_core::order::exact_amount")]
    total_amount: Decimal,
}

/// An order in order-server's response shape; the times are fixed strings as long as the
/// RFC 3339 times order-server writes.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: i64,
    user_id: String,
    item_ids: Vec<String>,
    #[serde(with = "order_core::order::exact_amount")]
    total_amount: Decimal,
    status: &'static str,
    created_at: &'static str,
    updated_at: &'static str,
    processing_start_time: Option<&'static str>,
    processing_end_time: Option<&'static str>,
    attempts: u32,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct OrderBody {
    order: Order,
}

const TIME: &str = "2026-11-23T23:50:38.363045Z";

/// Ids for created orders: an atomic counter, the least an id can cost.
type NextId = Arc<AtomicI64>;

async fn create_order(State(next_id): State<NextId>, Json(new): Json<NewOrder>) -> Response {
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let order = Order {
        id,
        user_id: new.user_id,
        item_ids: new.item_ids,
        total_amount: new.total_amount,
        status: "PENDING",
        created_at: TIME,
        updated_at: TIME,
        processing_start_time: None,
        processing_end_time: None,
        attempts: 0,
        last_error: None,
    };
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        Json(OrderBody { order }),
    )
        .into_response()
}

async fn get_order(Path(raw_id): Path<String>) -> Response {
    let Ok(id) = raw_id.parse::<i64>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let order = Order {
        id,
        user_id: "user-1".to_owned(),
        item_ids: vec!["item1".to_owned(), "item2".to_owned()],
        total_amount: Decimal::new(5999, 2),
        status: "COMPLETED",
        created_at: TIME,
        updated_at: TIME,
        processing_start_time: Some(TIME),
        processing_end_time: Some(TIME),
        attempts: 1,
        last_error: None,
    };
    Json(OrderBody { order }).into_response()
}

async fn healthz() -> &'static str {
    "{\"status\":\"ok\"}"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .with_context(|| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 0,
    };
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/healthz", get(healthz))
        .with_state(NextId::new(AtomicI64::new(1)));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    eprintln!("bench-echo listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await.context("server failed")
}
