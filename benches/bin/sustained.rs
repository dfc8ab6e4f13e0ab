//! `bench-sustained`: whether the database stays its size under sustained load. It drives a
//! running order-server with `POST /orders` at a fixed rate for a given time, and samples the
//! engine's tables in PostgreSQL every few seconds: their bytes (heap, indexes and TOAST),
//! live and dead rows, autovacuum runs, and the orders stored. At the end it checks that
//!
//! - the bytes each order adds level off: the bytes added per order inserted in the second
//!   half are under `--max-growth-ratio` (1.05) times those of the first half, for the orders
//!   table with its indexes and for the whole schema;
//! - dead rows in the orders table stay under `--max-dead-share` (10%) of its live rows in
//!   every sample after `--settle-secs`;
//! - the small hot tables (the per-status counters, the bulk actions and their items, the
//!   migrations' record) stay under `--max-hot-table-bytes` each, and the idempotency keys,
//!   whose rows live for the server's `IDEMPOTENCY_TTL_SECS`, under `--max-keys-bytes`;
//! - the server took every request (201) and the load reached 95% of the target rate, so the
//!   figures are of the load asked for.
//!
//! A missed bound prints `MISS` beside it and exits with status 2 (an error of the run itself,
//! such as a database that cannot be reached, exits with 1): the bench script reports it, the
//! test script fails on it.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/order_bench \
//!   cargo run --release -p benches --bin bench-sustained -- \
//!   --url http://127.0.0.1:3000 --rate 2000 --duration-secs 600
//! ```
//!
//! The load is open-loop: request `i` is due at `i / rate` seconds from the start, whatever
//! the answers to the ones before, with at most `--concurrency` in flight; a request that
//! waits for a free slot is sent late and counted as such. Every `--keyed-every`th request
//! carries an `Idempotency-Key` of its own, so that the keys table sees the inserts and the
//! expiry deletes a service with keyed clients gives it. The server is only reached on a
//! loopback address: this is a load generator.
//!
//! Progress goes to stderr, one line per sample; the summary, in markdown, to stdout, ending
//! with one `key=value` line for scripts.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark reports on the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Parser;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The orders table, the one whose size should grow with the orders and nothing else.
const ORDERS: &str = "order_engine_orders";
/// The table whose size is bounded by the keys' time to live rather than by a constant.
const KEYS: &str = "order_engine_idempotency_keys";

/// Drives POST /orders at a fixed rate and checks the database's size, dead rows and hot
/// tables.
#[derive(Debug, Parser)]
#[command(name = "bench-sustained")]
struct Args {
    /// The order-server to load, on a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: reqwest::Url,

    /// The server's database, sampled directly (read only).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Orders posted per second.
    #[arg(long)]
    rate: f64,

    /// How long the load runs.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(4..))]
    duration_secs: u64,

    /// Seconds between samples of the database.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    sample_secs: u64,

    /// Requests in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,

    /// Every Nth request carries an Idempotency-Key of its own (0: none does).
    #[arg(long, default_value_t = 10)]
    keyed_every: u64,

    /// Samples before this many seconds do not count for the dead-row bound: autovacuum
    /// wakes once a minute (autovacuum_naptime), so the first minute shows only its absence.
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,

    /// The most bytes added per order in the second half, as a multiple of the first half's.
    #[arg(long, default_value_t = 1.05)]
    max_growth_ratio: f64,

    /// The halves compared for growth are those of the run from the first sample at or after
    /// this many seconds: a table that starts with a history has free space on its pages
    /// (its fillfactor's share), which the first updates fill before the table grows.
    #[arg(long, default_value_t = 0)]
    growth_from_secs: u64,

    /// The most dead rows in the orders table, as a share of its live rows.
    #[arg(long, default_value_t = 0.10)]
    max_dead_share: f64,

    /// The most bytes (heap, indexes, TOAST) of each small hot table: the per-status
    /// counters, the bulk actions and items, the migrations' record.
    #[arg(long, default_value_t = 1 << 20)]
    max_hot_table_bytes: i64,

    /// The most bytes of the idempotency keys table, which holds the keys of the last
    /// `IDEMPOTENCY_TTL_SECS` (and until the next prune).
    #[arg(long, default_value_t = 16 << 20)]
    max_keys_bytes: i64,
}

/// One table's figures in one sample.
#[derive(Debug, Clone, Copy, Default)]
struct TableSample {
    /// Heap, indexes and TOAST (`pg_total_relation_size`).
    total_bytes: i64,
    live: i64,
    dead: i64,
    autovacuums: i64,
    autoanalyzes: i64,
}

/// The database at one moment of the run.
#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    tables: BTreeMap<String, TableSample>,
    /// Orders stored, from the engine's own per-status counters (exact, and cheap where a
    /// `count(*)` would read the whole table every sample).
    orders: i64,
    /// Orders not yet finished: a backlog that grows means the workers are not keeping up.
    unfinished: i64,
    posted: u64,
}

impl Sample {
    fn orders_table(&self) -> TableSample {
        self.tables.get(ORDERS).copied().unwrap_or_default()
    }

    fn schema_bytes(&self) -> i64 {
        self.tables.values().map(|t| t.total_bytes).sum()
    }
}

/// What the load generator counts, shared by its request tasks.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    created: AtomicU64,
    failed: AtomicU64,
    /// Requests sent more than 100 ms after their due time, for want of a free slot.
    late: AtomicU64,
    /// The failures by what went wrong (a status, a timeout, a refused connection), each with
    /// when the first of its kind came, so that a report says which. A std mutex, not tokio's:
    /// no critical section awaits.
    failures: Mutex<BTreeMap<String, (u64, f64)>>,
}

impl Counters {
    fn failed(&self, kind: String, secs: f64) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        // A poisoned map only lost a count to a panicking task; the counts stay usable.
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.entry(kind).or_insert((0, secs)).0 += 1;
    }

    /// "503 Service Unavailable: 2 (first at 312 s), timeout: 1 (first at 400 s)".
    fn failures(&self) -> String {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures
            .iter()
            .map(|(kind, (n, first))| format!("{kind}: {n} (first at {first:.0} s)"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of orders per second"
    );
    check_loopback(&args.url)?;
    let db = sea_orm::Database::connect(&args.database_url)
        .await
        .context("could not connect to DATABASE_URL")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::try_from(args.concurrency).unwrap_or(usize::MAX))
        .build()
        .context("could not build the HTTP client")?;
    let orders_url = args.url.join("orders").context("bad --url")?;
    let health = client
        .get(args.url.join("readyz").context("bad --url")?)
        .send()
        .await
        .with_context(|| format!("order-server at {} does not answer", args.url))?;
    ensure!(
        health.status().is_success(),
        "order-server at {} is not ready: {}",
        args.url,
        health.status()
    );

    let counters = Arc::new(Counters::default());
    let duration = Duration::from_secs(args.duration_secs);
    eprintln!(
        "bench-sustained: {:.0} orders/s for {} s against {}, at most {} in flight, a sample every {} s",
        args.rate, args.duration_secs, args.url, args.concurrency, args.sample_secs
    );
    let began = Instant::now();
    let first = sample(&db, 0.0, 0).await?;
    let load = tokio::spawn(drive(
        client,
        orders_url,
        args.rate,
        duration,
        args.concurrency,
        args.keyed_every,
        counters.clone(),
        began,
    ));

    let first_sample = first.clone();
    let mut samples = vec![first];
    let every = Duration::from_secs(args.sample_secs);
    let mut next = began + every;
    while next <= began + duration {
        tokio::time::sleep_until(next).await;
        let s = sample(
            &db,
            began.elapsed().as_secs_f64(),
            counters.sent.load(Ordering::Relaxed),
        )
        .await?;
        progress(&s);
        samples.push(s);
        next += every;
    }
    load.await.context("the load generator panicked")??;
    // The last sample after the last answer, so that it holds every order the load made.
    let last = sample(
        &db,
        began.elapsed().as_secs_f64(),
        counters.sent.load(Ordering::Relaxed),
    )
    .await?;
    progress(&last);
    samples.push(last.clone());

    let report = Report::new(&args, &samples, &first_sample, &last, &counters);
    print!("{}", report.markdown);
    println!("{}", report.line);
    if report.missed > 0 {
        eprintln!("bench-sustained: {} bound(s) missed", report.missed);
        std::process::exit(2);
    }
    Ok(())
}

/// Refuses a server that is not on this machine: the load is not meant for anything else.
fn check_loopback(url: &reqwest::Url) -> anyhow::Result<()> {
    // An IPv6 host comes in brackets ("[::1]").
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(
        url.scheme() == "http" && loopback,
        "--url must be http:// on a loopback address (127.0.0.1, ::1, localhost), not {url}"
    );
    Ok(())
}

/// Posts orders at `rate` per second for `duration`, open loop, with at most `concurrency`
/// in flight; returns once every request sent has been answered.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn drive(
    client: reqwest::Client,
    url: reqwest::Url,
    rate: f64,
    duration: Duration,
    concurrency: u64,
    keyed_every: u64,
    counters: Arc<Counters>,
    began: Instant,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(
        usize::try_from(concurrency).unwrap_or(usize::MAX),
    ));
    // Unique across runs against one database, so that a key never names an earlier run's order.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut tasks = JoinSet::new();
    let end = began + duration;
    for i in 0u64.. {
        let due = began + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => slots.clone().acquire_owned().await?,
        };
        if due.elapsed() > Duration::from_millis(100) {
            counters.late.fetch_add(1, Ordering::Relaxed);
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let mut request = client.post(url.clone()).json(&serde_json::json!({
            "userId": format!("user-{}", i % 1000),
            "itemIds": ["item1", "item2"],
            "totalAmount": 59.99,
        }));
        if keyed_every > 0 && i % keyed_every == 0 {
            request = request.header("Idempotency-Key", format!("sustained-{run}-{i}"));
        }
        let counters = counters.clone();
        tasks.spawn(async move {
            let failure = match request.send().await {
                Ok(answer) if answer.status() == reqwest::StatusCode::CREATED => None,
                Ok(answer) => Some(answer.status().to_string()),
                Err(err) if err.is_timeout() => Some("timeout".to_owned()),
                Err(err) if err.is_connect() => Some("connection refused or reset".to_owned()),
                Err(err) => Some(format!("request error: {err}")),
            };
            match failure {
                None => {
                    counters.created.fetch_add(1, Ordering::Relaxed);
                }
                Some(kind) => counters.failed(kind, began.elapsed().as_secs_f64()),
            }
            drop(permit);
        });
        // Answered requests are reaped as the run goes, so the set holds only those in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One sample: every `order_engine_*` table of the current schema with its statistics, and the
/// engine's counters.
async fn sample(db: &DatabaseConnection, secs: f64, posted: u64) -> anyhow::Result<Sample> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            r"SELECT c.relname::text AS name,
                     pg_total_relation_size(c.oid) AS total_bytes,
                     coalesce(s.n_live_tup, 0) AS live,
                     coalesce(s.n_dead_tup, 0) AS dead,
                     coalesce(s.autovacuum_count, 0) AS autovacuums,
                     coalesce(s.autoanalyze_count, 0) AS autoanalyzes
                FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
               WHERE c.relkind = 'r' AND n.nspname = current_schema()
                 AND c.relname LIKE 'order\_engine\_%'",
        ))
        .await
        .context("could not read the tables' sizes and statistics")?;
    let mut tables = BTreeMap::new();
    for row in rows {
        let name: String = row.try_get("", "name")?;
        let table = TableSample {
            total_bytes: row.try_get("", "total_bytes")?,
            live: row.try_get("", "live")?,
            dead: row.try_get("", "dead")?,
            autovacuums: row.try_get("", "autovacuums")?,
            autoanalyzes: row.try_get("", "autoanalyzes")?,
        };
        tables.insert(name, table);
    }
    ensure!(
        tables.contains_key(ORDERS),
        "no {ORDERS} table in the database's current schema: is this the server's database?"
    );
    let counts = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT coalesce(sum(orders), 0)::bigint AS orders,
                    coalesce(sum(orders) FILTER (WHERE status IN ('PENDING', 'PROCESSING')), 0)::bigint
                        AS unfinished
               FROM order_engine_status_counts",
        ))
        .await
        .context("could not read the engine's counters")?
        .context("the counters' query returned no row")?;
    Ok(Sample {
        secs,
        tables,
        orders: counts.try_get("", "orders")?,
        unfinished: counts.try_get("", "unfinished")?,
        posted,
    })
}

fn progress(s: &Sample) {
    let orders = s.orders_table();
    let mut hot = String::new();
    for (name, table) in &s.tables {
        if name != ORDERS {
            let short = name.trim_start_matches("order_engine_");
            let _ = write!(hot, " {short}={}", kib(table.total_bytes));
        }
    }
    eprintln!(
        "bench-sustained: t={:.0}s posted={} stored={} unfinished={} orders_table={} schema={} \
         bytes/order={:.0} dead={} ({:.1}% of live) autovacuums={}{hot}",
        s.secs,
        s.posted,
        s.orders,
        s.unfinished,
        mib(orders.total_bytes),
        mib(s.schema_bytes()),
        per(s.schema_bytes(), s.orders),
        orders.dead,
        share(orders.dead, orders.live) * 100.0,
        orders.autovacuums,
    );
}

fn per(bytes: i64, orders: i64) -> f64 {
    if orders > 0 {
        bytes as f64 / orders as f64
    } else {
        0.0
    }
}

fn share(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: i64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// The run's figures and bounds, as markdown and as one line for scripts.
struct Report {
    markdown: String,
    line: String,
    missed: usize,
}

/// The bytes added per order between two samples.
fn growth(from: &Sample, to: &Sample, bytes: fn(&Sample) -> i64) -> f64 {
    per(bytes(to) - bytes(from), to.orders - from.orders)
}

impl Report {
    /// `samples` runs from `first` to `last`, both included.
    fn new(
        args: &Args,
        samples: &[Sample],
        first: &Sample,
        last: &Sample,
        counters: &Counters,
    ) -> Self {
        let start = samples
            .iter()
            .find(|s| s.secs >= args.growth_from_secs as f64)
            .unwrap_or(first);
        // The half-way sample: the one nearest to half-way from `start` to the end.
        let half = f64::midpoint(start.secs, last.secs);
        let mid = samples
            .iter()
            .min_by(|a, b| (a.secs - half).abs().total_cmp(&(b.secs - half).abs()))
            .unwrap_or(first);
        let orders_bytes = |s: &Sample| s.orders_table().total_bytes;
        let schema_bytes = |s: &Sample| s.schema_bytes();
        let orders_first = growth(start, mid, orders_bytes);
        let orders_second = growth(mid, last, orders_bytes);
        let schema_first = growth(start, mid, schema_bytes);
        let schema_second = growth(mid, last, schema_bytes);
        // Without orders stored in each half, there is nothing to compare.
        let judged = mid.orders > start.orders && last.orders > mid.orders;
        let orders_ratio = if judged {
            orders_second / orders_first
        } else {
            f64::NAN
        };
        let schema_ratio = if judged {
            schema_second / schema_first
        } else {
            f64::NAN
        };
        let settled: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.secs >= args.settle_secs as f64)
            .collect();
        let worst_dead = settled
            .iter()
            .map(|s| {
                let t = s.orders_table();
                (share(t.dead, t.live), s.secs, t.dead, t.live)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let mut hot_max: BTreeMap<&str, i64> = BTreeMap::new();
        for s in samples {
            for (name, t) in &s.tables {
                if name != ORDERS {
                    let max = hot_max.entry(name.as_str()).or_default();
                    *max = (*max).max(t.total_bytes);
                }
            }
        }
        let autovacuums = |name: &str| {
            last.tables.get(name).map_or(0, |t| t.autovacuums)
                - first.tables.get(name).map_or(0, |t| t.autovacuums)
        };
        let autoanalyzes = last.orders_table().autoanalyzes - first.orders_table().autoanalyzes;
        let sent = counters.sent.load(Ordering::Relaxed);
        let created = counters.created.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let late = counters.late.load(Ordering::Relaxed);
        let achieved = created as f64 / last.secs;

        let mut missed = 0;
        let mut md = String::new();
        let mut check =
            |md: &mut String, figure: String, value: String, bound: String, ok: bool| {
                if !ok {
                    missed += 1;
                }
                let _ = writeln!(md, "| {figure} | {value} | {bound} | {} |", verdict(ok));
            };
        let _ = writeln!(
            md,
            "\nSustained load: {created} orders created of {sent} posted in {:.0} s \
             ({achieved:.0}/s against a target of {:.0}/s; {failed} not created, {late} sent \
             over 100 ms late for want of a free slot); {} unfinished at the end.\n",
            last.secs, args.rate, last.unfinished
        );
        let _ = writeln!(md, "| figure | value | bound | result |\n|---|---|---|---|");
        check(
            &mut md,
            "orders created at the target rate".to_owned(),
            if failed == 0 {
                format!("{achieved:.0}/s, no failed requests")
            } else {
                format!(
                    "{achieved:.0}/s, {failed} failed requests ({})",
                    counters.failures()
                )
            },
            format!("≥ {:.0}/s (95%), none failed", args.rate * 0.95),
            failed == 0 && achieved >= args.rate * 0.95,
        );
        let _ = writeln!(
            md,
            "| schema bytes per stored order, half-way ({:.0} s) and at the end | {:.0} B at {} orders, {:.0} B at {} | — | — |",
            mid.secs,
            per(mid.schema_bytes(), mid.orders),
            mid.orders,
            per(last.schema_bytes(), last.orders),
            last.orders,
        );
        check(
            &mut md,
            format!(
                "orders table and indexes: bytes added per order from {:.0} s, second half / first half",
                start.secs
            ),
            format!("{orders_second:.0} B / {orders_first:.0} B = {orders_ratio:.3}"),
            format!("< {}", args.max_growth_ratio),
            judged && orders_ratio < args.max_growth_ratio,
        );
        check(
            &mut md,
            format!(
                "every engine table: bytes added per order from {:.0} s, second half / first half",
                start.secs
            ),
            format!("{schema_second:.0} B / {schema_first:.0} B = {schema_ratio:.3}"),
            format!("< {}", args.max_growth_ratio),
            judged && schema_ratio < args.max_growth_ratio,
        );
        let (dead_share, dead_value) = match worst_dead {
            Some((share, secs, dead, live)) => (
                share,
                format!(
                    "{:.1}% ({dead} dead of {live} live at {secs:.0} s)",
                    share * 100.0
                ),
            ),
            None => (0.0, "no sample after the settling time".to_owned()),
        };
        check(
            &mut md,
            format!(
                "orders table: most dead rows as a share of live ones, after {} s",
                args.settle_secs
            ),
            dead_value,
            format!("< {:.0}%", args.max_dead_share * 100.0),
            worst_dead.is_some() && dead_share < args.max_dead_share,
        );
        for (name, max) in &hot_max {
            let bound = if *name == KEYS {
                args.max_keys_bytes
            } else {
                args.max_hot_table_bytes
            };
            check(
                &mut md,
                format!("{name}: largest size"),
                format!(
                    "{} (at the end {}; {} autovacuums)",
                    kib(*max),
                    kib(last.tables.get(*name).map_or(0, |t| t.total_bytes)),
                    autovacuums(name)
                ),
                format!("≤ {}", kib(bound)),
                *max <= bound,
            );
        }
        let _ = writeln!(
            md,
            "| orders table: autovacuum and autoanalyze runs | {} and {autoanalyzes}; at the end {} of table and indexes, {} dead rows | — | — |",
            autovacuums(ORDERS),
            mib(last.orders_table().total_bytes),
            last.orders_table().dead,
        );
        let keys_max = hot_max.get(KEYS).copied().unwrap_or(0);
        let other_hot_max = hot_max
            .iter()
            .filter(|(name, _)| **name != KEYS)
            .map(|(_, max)| *max)
            .max()
            .unwrap_or(0);
        let line = format!(
            "target_rate={:.1} achieved_rate={achieved:.1} seconds={:.1} created={created} failed={failed} late={late} \
             unfinished={} mid_secs={:.0} mid_bytes_per_order={:.1} end_bytes_per_order={:.1} \
             orders_first_half={orders_first:.1} orders_second_half={orders_second:.1} orders_ratio={orders_ratio:.4} \
             schema_first_half={schema_first:.1} schema_second_half={schema_second:.1} schema_ratio={schema_ratio:.4} \
             max_dead_share={dead_share:.4} keys_max_bytes={keys_max} hot_max_bytes={other_hot_max} \
             orders_autovacuums={} orders_bytes={} missed={missed}",
            args.rate,
            last.secs,
            last.unfinished,
            mid.secs,
            per(mid.schema_bytes(), mid.orders),
            per(last.schema_bytes(), last.orders),
            autovacuums(ORDERS),
            last.orders_table().total_bytes,
        );
        Self {
            markdown: md,
            line,
            missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_are_loaded() {
        for url in [
            "http://127.0.0.1:3000",
            "http://localhost:1/",
            "http://[::1]:8080",
        ] {
            assert!(check_loopback(&url.parse().unwrap()).is_ok(), "{url}");
        }
        for url in [
            "http://10.0.0.1:3000",
            "https://127.0.0.1:3000",
            "http://example.com",
        ] {
            assert!(check_loopback(&url.parse().unwrap()).is_err(), "{url}");
        }
    }
}
