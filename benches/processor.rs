//! Throughput of the in-memory engine, submit -> COMPLETED with a zero-delay handler, beside a
//! bare tokio mpsc send/recv of the same orders: the floor of handing work between tasks.
//!
//! ```text
//! cargo bench -p benches --bench processor
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use order_core::handler::SimulatedStep;
use order_core::{NewOrder, OrderProcessor};
use rust_decimal::Decimal;

const ORDERS: u64 = 10_000;

fn order(i: u64) -> NewOrder {
    NewOrder::new(
        format!("user-{i}"),
        vec!["item1".to_owned(), "item2".to_owned()],
        Decimal::new(5999, 2),
    )
}

/// Submits `ORDERS` orders to a fresh, started processor and waits until all are COMPLETED.
async fn submit_and_complete(concurrency: usize) -> Duration {
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .in_memory()
        .concurrency(concurrency)
        .build()
        .unwrap_or_else(|err| unreachable!("fixed settings are valid: {err}"));
    let running = processor.start();
    let orders: Vec<NewOrder> = (0..ORDERS).map(order).collect();
    let began = Instant::now();
    for order in orders {
        if let Err(err) = processor.submit(order).await {
            unreachable!("in-memory submit cannot fail: {err}");
        }
    }
    loop {
        match processor.metrics().await {
            Ok(metrics) if metrics.statuses.completed == ORDERS => break,
            Ok(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            Err(err) => unreachable!("in-memory metrics cannot fail: {err}"),
        }
    }
    let took = began.elapsed();
    running.shutdown(Duration::from_secs(10)).await;
    took
}

/// Sends the same orders through a bounded mpsc channel to a consumer task.
async fn mpsc_round_trip() -> Duration {
    let orders: Vec<NewOrder> = (0..ORDERS).map(order).collect();
    let began = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<NewOrder>(1024);
    let consumer = tokio::spawn(async move {
        let mut received = 0_u64;
        while let Some(order) = rx.recv().await {
            black_box(order);
            received += 1;
        }
        received
    });
    for order in orders {
        if tx.send(order).await.is_err() {
            unreachable!("the consumer outlives the sender");
        }
    }
    drop(tx);
    let received = consumer.await.unwrap_or_default();
    assert_eq!(received, ORDERS);
    began.elapsed()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| unreachable!("a runtime can be built: {err}"));
    let mut group = c.benchmark_group("in_memory");
    group.throughput(Throughput::Elements(ORDERS));
    group.sample_size(20);
    group.bench_function("submit_to_completed", |b| {
        b.to_async(&runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += submit_and_complete(64).await;
            }
            total
        });
    });
    group.bench_function("reference_mpsc_send_recv", |b| {
        b.to_async(&runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += mpsc_round_trip().await;
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
