//! A shop that embeds the order engine the way a dependent service does, then checks its own
//! answers over loopback:
//!
//! - it installs its own Prometheus recorder before anything of the engine's is built, and
//!   hands its handle to the order API (building the router installs nothing);
//! - it nests `order_server::router()` under a prefix of its own axum app, without the
//!   dashboard, beside routes of its own;
//! - it deserializes its own untagged enum with numbers in it, which breaks when serde_json's
//!   `arbitrary_precision` is turned on anywhere in the build;
//! - it runs an `OrderProcessor` with its own handler, in memory.
//!
//! It exits with an error, naming what failed, when any answer is not what a user expects.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusBuilder;
use order_core::{HandlerError, Order, OrderHandler, OrderProcessor};
use order_server::{PrometheusExporter, RouterOptions};
use serde::Deserialize;
use serde_json::{Value, json};

/// A price as the shop's partners send it: whole cents, an amount with a fraction, or text.
/// Untagged, with numbers: serde buffers the value before trying each variant, and with
/// `arbitrary_precision` a buffered number no longer matches `u64` or `f64`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(untagged)]
enum Price {
    Cents(u64),
    Amount(f64),
    Text(String),
}

/// A partner's quote: its price, and whatever else it sends, kept aside (`flatten`, which
/// buffers the same way).
#[derive(Debug, Deserialize)]
struct Quote {
    price: Price,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// The shop's own processing step: counts the orders it ships.
#[derive(Debug, Default)]
struct Ship {
    shipped: AtomicU32,
}

#[async_trait]
impl OrderHandler for Ship {
    async fn process(&self, order: &Order) -> Result<(), HandlerError> {
        if order.item_ids.iter().any(|item| item == "discontinued") {
            return Err(HandlerError::permanent("item discontinued"));
        }
        self.shipped.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn quote(Json(quote): Json<Quote>) -> Json<Value> {
    let price = match quote.price {
        Price::Cents(cents) => json!({"cents": cents}),
        Price::Amount(amount) => json!({"amount": amount}),
        Price::Text(text) => json!({"text": text}),
    };
    Json(json!({"price": price, "extra": quote.rest.len()}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First, before the engine exists: the service's own recorder.
    let recorder = PrometheusBuilder::new()
        .install_recorder()
        .context("the service's own Prometheus recorder could not be installed")?;

    let ship = Arc::new(Ship::default());
    let processor = OrderProcessor::builder(ship.clone())
        .in_memory()
        .concurrency(4)
        .build()?;
    let running = processor.start();

    let mut options = RouterOptions::default();
    options.dashboard = false;
    options.prometheus = Some(PrometheusExporter::from(recorder.clone()));
    let exporter = recorder.clone();
    let app = Router::new()
        .route("/", get(|| async { "the shop" }))
        .route("/quote", post(quote))
        .route("/shop-metrics", get(move || async move { exporter.render() }))
        .nest("/orders-api", order_server::router(processor.clone(), &options));

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let checked = check(addr, &ship).await;
    running.shutdown(Duration::from_secs(5)).await;
    server.abort();
    checked?;
    println!("downstream service: every check passed on {addr}");
    Ok(())
}

async fn check(addr: SocketAddr, ship: &Ship) -> anyhow::Result<()> {
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    // Its own untagged enum, in process and over HTTP.
    for (text, expected) in [
        ("12", Price::Cents(12)),
        ("12.5", Price::Amount(12.5)),
        ("\"on request\"", Price::Text("on request".to_owned())),
    ] {
        let price: Price = serde_json::from_str(text)
            .with_context(|| format!("the untagged price {text} did not deserialize"))?;
        ensure!(price == expected, "{text} read as {price:?}");
    }
    let answer: Value = client
        .post(format!("{base}/quote"))
        .json(&json!({"price": 1999, "partner": "acme", "valid_days": 30}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        answer == json!({"price": {"cents": 1999}, "extra": 2}),
        "the quote route answered {answer}"
    );

    // The nested order API: create, then read until the shop's handler has shipped it.
    let created = client
        .post(format!("{base}/orders-api/orders"))
        .json(&json!({"userId": "shopper-1", "itemIds": ["kettle"], "totalAmount": 12345678.91}))
        .send()
        .await?;
    ensure!(created.status() == 201, "POST answered {}", created.status());
    let location = created
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .context("no Location header")?;
    ensure!(
        location.starts_with("/orders-api/orders/"),
        "Location {location} is not under the prefix"
    );
    let body = created.text().await?;
    ensure!(
        body.contains("\"totalAmount\":12345678.91"),
        "the amount did not come back exactly: {body}"
    );
    let began = Instant::now();
    loop {
        let order: Value = client
            .get(format!("{base}{location}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if order["order"]["status"] == "COMPLETED" {
            break;
        }
        if began.elapsed() > Duration::from_secs(10) {
            bail!("the order never completed: {order}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(ship.shipped.load(Ordering::SeqCst) == 1, "the handler shipped no order");

    // Errors are the API's JSON, under the prefix too.
    let refused = client
        .post(format!("{base}/orders-api/orders"))
        .json(&json!({"userId": "", "itemIds": [], "totalAmount": 1}))
        .send()
        .await?;
    ensure!(refused.status() == 422, "an invalid order answered {}", refused.status());
    let error: Value = refused.json().await?;
    ensure!(error["error"].is_string(), "the error body was {error}");

    // The dashboard was left out.
    let dashboard = client.get(format!("{base}/orders-api/dashboard")).send().await?;
    ensure!(dashboard.status() == 404, "the dashboard answered {}", dashboard.status());

    // The engine's metrics went to the service's recorder, and the nested route renders it.
    for path in ["/shop-metrics", "/orders-api/metrics/prometheus"] {
        let text = client
            .get(format!("{base}{path}"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        ensure!(
            text.lines().any(|line| line.starts_with("order_completed_total") && line.ends_with(" 1")),
            "{path} does not count the completed order:\n{text}"
        );
    }
    Ok(())
}
