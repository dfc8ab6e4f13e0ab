//! Nests the order API in an axum service of your own, beside its own routes and state, with
//! [`order_server::router`]: the API without order-server's own server-wide layers, which
//! [`order_server::app`] adds for the binary. Building it touches nothing outside it: this
//! service installs no metrics recorder, so the API's `/metrics/prometheus` answers `404`, and
//! the engine's metrics go nowhere. A service that wants them calls
//! `order_server::prometheus::install_recorder()` in its `main` and sets
//! `RouterOptions::prometheus`.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p examples --example nest_in_axum
//! ```
//!
//! The service answers `GET /` itself, from its own state and the processor it shares with the
//! API, and serves the order API under `/order-api`. It listens on a free port of 127.0.0.1,
//! then checks itself over HTTP: its own route, `POST /order-api/orders` (a `201` whose
//! `Location` points under `/order-api`), and that `Location` until the order is COMPLETED.
//! Then it shuts down gracefully, and exits with an error if any answer was not the expected
//! one.

#![allow(clippy::print_stdout)] // An example's output is its point.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Router, http};
use order_core::OrderProcessor;
use order_core::handler::SimulatedStep;
use order_server::RouterOptions;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Where the order API is mounted.
const API: &str = "/order-api";
/// The longest the self-check waits for the order to be COMPLETED.
const DONE_WITHIN: Duration = Duration::from_secs(10);

/// The embedding service's own state.
struct Shop {
    /// Its name, shown on its front page.
    name: String,
    /// The engine it shares with the nested API, to report on orders itself.
    processor: OrderProcessor,
}

/// `GET /`: the service's own route, answered from its own state.
async fn front_page(State(shop): State<Arc<Shop>>) -> Response {
    match shop.processor.metrics().await {
        Ok(metrics) => Json(json!({
            "service": shop.name,
            "orders": metrics.total_orders,
            "api": API,
        }))
        .into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
    }
}

/// The whole service: its own routes with its own state, and the order API under [`API`].
fn service(processor: OrderProcessor) -> Router {
    let shop = Arc::new(Shop {
        name: "corner shop".to_owned(),
        processor: processor.clone(),
    });
    Router::new()
        .route("/", get(front_page))
        .with_state(shop)
        .nest(
            API,
            order_server::router(processor, &RouterOptions::default()),
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // A short step, so that the order is seen PENDING or PROCESSING before it completes.
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::from_millis(300)))
        .in_memory()
        .build()?;
    let running = processor.start();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    println!("listening on http://{address}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(order_server::run(listener, service(processor), async {
        // Resolves when `stop` sends or is dropped: either way the server stops.
        let _ = stopped.await;
    }));

    let checked = check(&format!("http://{address}")).await;

    // Stop accepting connections, let requests in progress finish, then drain the engine.
    let _ = stop.send(());
    server.await??;
    let report = running.shutdown(Duration::from_secs(5)).await;
    println!("shut down; {} order(s) left unfinished", report.abandoned);
    checked
}

/// Talks to the service as a client would, and fails on the first unexpected answer.
async fn check(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        // Loopback only: never through a proxy from the environment.
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;

    let response = client.get(format!("{base}/")).send().await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "GET / answered {}",
        response.status()
    );
    let front: Value = response.json().await?;
    println!("GET / -> {front}");
    anyhow::ensure!(front["service"] == "corner shop", "GET / answered {front}");

    let response = client
        .post(format!("{base}{API}/orders"))
        .json(&json!({"userId": "user-123", "itemIds": ["item1", "item2"], "totalAmount": 59.99}))
        .send()
        .await?;
    let status = response.status();
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .map(|value| value.to_str().map(str::to_owned))
        .transpose()?;
    let created: Value = response.json().await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "POST answered {status}: {created}"
    );
    let id = created["order"]["id"]
        .as_i64()
        .with_context(|| format!("no order id in {created}"))?;
    let expected = format!("{API}/orders/{id}");
    anyhow::ensure!(
        location.as_deref() == Some(expected.as_str()),
        "Location is {location:?}, expected {expected}"
    );
    println!(
        "POST {API}/orders -> {status}, Location: {expected}, status {}",
        created["order"]["status"]
    );

    let began = Instant::now();
    let mut seen = Vec::new();
    let order = loop {
        let response = client.get(format!("{base}{expected}")).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "GET {expected} answered {status}: {body}"
        );
        let order = body["order"].clone();
        if seen.last() != Some(&order["status"]) {
            seen.push(order["status"].clone());
            println!("GET {expected} -> {status}, status {}", order["status"]);
        }
        if order["status"] == "COMPLETED" {
            break order;
        }
        anyhow::ensure!(
            began.elapsed() < DONE_WITHIN,
            "order {id} is still {} after {DONE_WITHIN:?}",
            order["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anyhow::ensure!(
        order["attempts"] == 1,
        "order {id} took {} attempts",
        order["attempts"]
    );

    let front: Value = client.get(format!("{base}/")).send().await?.json().await?;
    println!("GET / -> {front}");
    anyhow::ensure!(front["orders"] == 1, "GET / answered {front}");
    println!("every answer was the expected one");
    Ok(())
}
