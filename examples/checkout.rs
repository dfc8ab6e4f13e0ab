//! A checkout processed in steps: reserve stock, charge the card, ship. Each step is
//! checkpointed with the order; a charge that fails for good releases the reservation; a
//! shipment that fails for good refunds the charge and releases the reservation; a worker that
//! dies between a step's work and its checkpoint leaves the next worker to run that step again
//! with the same idempotency key, which the payment service uses to charge once.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p examples --example checkout
//! ```
//!
//! The inventory, payment and shipping services are fakes in this process that count every
//! call. The run:
//!
//! 1. A first worker runs on a runtime of its own. For every other order its charge step hangs
//!    right after the card was charged; the others are charged, checkpointed, and hang at the
//!    start of the ship step: every order it takes is stuck between a step's work and its
//!    checkpoint, or in the next step. Then its runtime is dropped, as a
//!    process that dies: no hand-back, no last write.
//! 2. A second worker takes the orders over once their leases lapse, resumes each at its
//!    first step without a recorded success, and finishes them. Cards of `declined-*`
//!    customers are declined (permanent); parcels to `nowhere-*` cannot be shipped (permanent).
//! 3. The books are checked: no card charged twice for one order, every completed order
//!    charged and shipped once, every failed order's reservation released and charge refunded,
//!    and the stock back where it started but for what was shipped. Any difference is an error.

#![allow(clippy::print_stdout)] // An example's output is its point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use order_core::memory::InMemoryBackend;
use order_core::step::{Pipeline, Step, StepContext, StepOutput};
use order_core::{HandlerError, NewOrder, OrderId, OrderProcessor, OrderStatus, RetryPolicy};
use rust_decimal::Decimal;

/// Units of each item in stock at the start.
const STOCK: u32 = 100;
/// Orders placed.
const ORDERS: usize = 30;

/// Every call each fake service received, and what it holds.
#[derive(Default)]
struct Books {
    stock: Mutex<HashMap<String, u32>>,
    /// Reservations by idempotency key: the items held.
    reservations: Mutex<HashMap<String, Vec<String>>>,
    /// Charges by idempotency key: the amount, and whether it was refunded.
    charges: Mutex<HashMap<String, (Decimal, bool)>>,
    /// Shipments by idempotency key.
    shipments: Mutex<HashMap<String, u32>>,
    calls: Mutex<HashMap<&'static str, u32>>,
}

impl Books {
    fn count(&self, call: &'static str) {
        *lock(&self.calls).entry(call).or_default() += 1;
    }

    fn calls(&self, call: &'static str) -> u32 {
        lock(&self.calls).get(call).copied().unwrap_or(0)
    }

    /// Holds one unit of each item under `key`, once per key.
    fn reserve(&self, key: &str, items: &[String]) -> Result<(), HandlerError> {
        self.count("reserve");
        let mut reservations = lock(&self.reservations);
        if reservations.contains_key(key) {
            return Ok(());
        }
        let mut stock = lock(&self.stock);
        if items
            .iter()
            .any(|item| stock.get(item).copied().unwrap_or(0) == 0)
        {
            return Err(HandlerError::permanent("out of stock"));
        }
        for item in items {
            *stock.entry(item.clone()).or_default() -= 1;
        }
        reservations.insert(key.to_owned(), items.to_vec());
        Ok(())
    }

    /// Puts back what `key` held, once.
    fn release(&self, key: &str) {
        self.count("release");
        if let Some(items) = lock(&self.reservations).remove(key) {
            let mut stock = lock(&self.stock);
            for item in items {
                *stock.entry(item).or_default() += 1;
            }
        }
    }

    /// Charges `amount` under `key`, once per key: a repeat returns the first charge.
    fn charge(&self, key: &str, user: &str, amount: Decimal) -> Result<String, HandlerError> {
        self.count("charge");
        if user.starts_with("declined") {
            return Err(HandlerError::permanent("card declined"));
        }
        lock(&self.charges)
            .entry(key.to_owned())
            .or_insert((amount, false));
        Ok(format!("ch_{key}"))
    }

    /// Refunds the charge made under `key`, once.
    fn refund(&self, key: &str) {
        self.count("refund");
        if let Some(charge) = lock(&self.charges).get_mut(key) {
            charge.1 = true;
        }
    }

    /// Ships under `key`, counting each shipment made.
    fn ship(&self, key: &str, user: &str) -> Result<(), HandlerError> {
        self.count("ship");
        if user.starts_with("nowhere") {
            return Err(HandlerError::permanent("no such address"));
        }
        *lock(&self.shipments).entry(key.to_owned()).or_default() += 1;
        Ok(())
    }
}

/// The fakes never panic while holding a lock; a poisoned one still holds consistent books.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The charge step's key: the one the refund must name.
fn charge_key(cx: &StepContext) -> String {
    format!("order-{}/charge", cx.order().id)
}

/// reserve, charge and ship against `books`. With `doomed`, charge hangs after charging and
/// ship before shipping: the worker that runs them is about to die.
fn checkout(books: &Arc<Books>, doomed: bool) -> Pipeline {
    let (b1, b2, b3, b4, b5) = (
        books.clone(),
        books.clone(),
        books.clone(),
        books.clone(),
        books.clone(),
    );
    let reserve = Step::new("reserve", move |cx: StepContext| {
        let books = b1.clone();
        async move {
            books.reserve(&cx.idempotency_key(), &cx.order().item_ids)?;
            Ok(StepOutput::json(&cx.idempotency_key())?)
        }
    })
    .compensate(move |_cx: StepContext, reservation: StepOutput| {
        let books = b2.clone();
        async move {
            books.release(&reservation.parse::<String>()?);
            Ok(())
        }
    });
    let charge = Step::new("charge", move |cx: StepContext| {
        let books = b3.clone();
        async move {
            let order = cx.order();
            let id = books.charge(&cx.idempotency_key(), &order.user_id, order.total_amount)?;
            // Every other order dies between the charge and its checkpoint; the rest get as far
            // as the ship step.
            if doomed && order.id.get() % 2 == 0 {
                std::future::pending::<()>().await;
            }
            // The amount as text: money in an output never passes through a float.
            let charge =
                serde_json::json!({"charge": id, "amount": order.total_amount.to_string()});
            Ok(StepOutput::json(&charge)?)
        }
    })
    .compensate(move |cx: StepContext, _charge: StepOutput| {
        let books = b4.clone();
        async move {
            books.refund(&charge_key(&cx));
            Ok(())
        }
    })
    .retry(RetryPolicy::default().max_attempts(3));
    let ship = Step::new("ship", move |cx: StepContext| {
        let books = b5.clone();
        async move {
            if doomed {
                std::future::pending::<()>().await;
            }
            books.ship(&cx.idempotency_key(), &cx.order().user_id)?;
            Ok(StepOutput::none())
        }
    });
    Pipeline::new().then(reserve).then(charge).then(ship)
}

fn processor(backend: &InMemoryBackend, pipeline: Pipeline) -> anyhow::Result<OrderProcessor> {
    Ok(OrderProcessor::pipeline_builder(pipeline)
        .backend(backend)
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(20))
        .sweep_interval(Duration::from_millis(100))
        .build()?)
}

fn customer(i: usize) -> String {
    match i % 10 {
        3 => format!("declined-{i}"),
        7 => format!("nowhere-{i}"),
        _ => format!("customer-{i}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let books = Arc::new(Books::default());
    let items = ["book", "lamp", "mug"];
    for item in items {
        lock(&books.stock).insert(item.to_owned(), STOCK);
    }
    let backend = InMemoryBackend::new();

    // 1. A worker that dies with every order it holds stuck mid-pipeline.
    let doomed_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let doomed = processor(&backend, checkout(&books, true))?;
    // Its workers are spawned on the runtime that is about to be dropped.
    let entered = doomed_runtime.enter();
    let doomed_workers = doomed.start();
    drop(entered);
    let mut placed: Vec<OrderId> = Vec::new();
    for i in 0..ORDERS {
        let cart = items.iter().take(1 + i % items.len()).copied();
        let amount = Decimal::new(1999 + i64::try_from(i)? * 100, 2);
        let order = doomed
            .submit(NewOrder::new(customer(i), cart, amount))
            .await?;
        placed.push(order.id);
    }
    // Until every order is stuck: charged (or declined) and hanging, or hanging before ship.
    tokio::time::timeout(Duration::from_secs(10), async {
        while books.calls("charge") < u32::try_from(ORDERS).unwrap_or(u32::MAX) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .context("the first worker did not reach the charges")?;
    let charges_before_crash = books.calls("charge");
    // Dropping a runtime drops its tasks where they wait: no hand-back, no last write, as
    // when a process dies. The handle goes after its tasks: nothing is left to stop.
    doomed_runtime.shutdown_background();
    drop(doomed_workers);
    println!("first worker died holding {ORDERS} orders after {charges_before_crash} charge calls");

    // 2. The next worker takes them over and finishes them.
    let survivor = processor(&backend, checkout(&books, false))?;
    let running = survivor.start();
    let mut ends = HashMap::new();
    for &id in &placed {
        let order = tokio::time::timeout(Duration::from_secs(30), survivor.wait_until_done(id))
            .await
            .context("an order did not finish in time")??
            .context("an order went missing")?;
        ends.insert(id, order);
    }
    running.shutdown(Duration::from_secs(5)).await;

    // 3. The books.
    let completed = ends
        .values()
        .filter(|o| o.status == OrderStatus::Completed)
        .count();
    let failed = ends
        .values()
        .filter(|o| o.status == OrderStatus::Failed)
        .count();
    println!("orders: {completed} completed, {failed} failed, of {ORDERS}");
    println!(
        "calls: reserve {}, release {}, charge {}, refund {}, ship {}",
        books.calls("reserve"),
        books.calls("release"),
        books.calls("charge"),
        books.calls("refund"),
        books.calls("ship")
    );
    let charges = lock(&books.charges).clone();
    let shipments = lock(&books.shipments).clone();
    let reservations = lock(&books.reservations).clone();
    let mut shipped_items: HashMap<String, u32> = HashMap::new();
    let mut differences = Vec::new();
    let mut charged_again = 0;
    for (id, order) in &ends {
        let key = |step: &str| format!("order-{id}/{step}");
        let charge = charges.get(&key("charge"));
        let charged_runs = order.steps.get(1).map_or(0, |step| step.attempts);
        match order.status {
            OrderStatus::Completed => {
                if !matches!(charge, Some((amount, false)) if *amount == order.total_amount) {
                    differences.push(format!("order {id}: completed but charge is {charge:?}"));
                }
                if shipments.get(&key("ship")) != Some(&1) {
                    differences.push(format!("order {id}: completed but not shipped once"));
                }
                if !reservations.contains_key(&key("reserve")) {
                    differences.push(format!("order {id}: completed without its reservation"));
                }
                for item in &order.item_ids {
                    *shipped_items.entry(item.clone()).or_default() += 1;
                }
            }
            OrderStatus::Failed => {
                if matches!(charge, Some((_, false))) {
                    differences.push(format!("order {id}: failed but its charge stands"));
                }
                if reservations.contains_key(&key("reserve")) {
                    differences.push(format!("order {id}: failed but stock is still held"));
                }
                if shipments.contains_key(&key("ship")) {
                    differences.push(format!("order {id}: failed but shipped"));
                }
            }
            status => differences.push(format!("order {id}: ended {status}")),
        }
        if charged_runs > 1 {
            charged_again += 1;
        }
    }
    println!(
        "charge ran again after the crash for {charged_again} orders (its checkpoint was lost); each card was charged once"
    );
    // The payment service charges once per key: a card charged twice for one order is two
    // charges under two keys of that order (a key that changed between runs).
    for id in ends.keys() {
        let prefix = format!("order-{id}/");
        let made = charges
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .count();
        if made > 1 {
            differences.push(format!("order {id}: card charged {made} times"));
        }
    }
    let stock = lock(&books.stock).clone();
    for item in items {
        let expected = STOCK - shipped_items.get(item).copied().unwrap_or(0);
        if stock.get(item).copied() != Some(expected) {
            differences.push(format!(
                "{item}: stock {:?}, expected {expected}",
                stock.get(item)
            ));
        }
    }
    println!(
        "stock: {}",
        items
            .iter()
            .map(|item| format!("{item} {}", stock.get(*item).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    ensure!(completed > 0 && failed > 0, "the run exercised both ends");
    if !differences.is_empty() {
        bail!("the books do not balance:\n{}", differences.join("\n"));
    }
    println!(
        "books balance: no card charged twice, every failed order released and refunded, stock back but for {completed} shipped orders"
    );
    Ok(())
}
