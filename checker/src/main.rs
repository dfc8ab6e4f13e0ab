//! `order-checker`: runs concurrent clients against a real `order-server` for a bounded time,
//! optionally killing the server, restarting PostgreSQL or failing over to a standby meanwhile,
//! then checks the recorded history (see the `order_checker` library) and exits non-zero on a
//! violation.
//!
//! ```sh
//! order-checker --backend postgres --clients 8 --duration 30 --faults --seed 7
//! ```

mod cluster;
mod server;
mod workload;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use order_checker::history::{Action, FaultKind};
use order_checker::{History, check};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::server::ServerProcess;
use crate::workload::Workload;
use order_core::testing::{PgBouncer, PgBouncerSettings};

/// The server's lease on an order it processes (`LEASE_MS`).
const LEASE: Duration = Duration::from_secs(1);
/// How often the server's idle workers look for orders (`POLL_INTERVAL_MS`): on PostgreSQL
/// their claim also takes the orders whose lease ran out, so it is the sweep's interval too.
const POLL: Duration = Duration::from_millis(200);

/// Checks order-server's promises against a recorded history of concurrent clients.
#[derive(Debug, Parser)]
#[command(name = "order-checker", version)]
struct Args {
    /// Where the server keeps orders. `postgres` runs a private PostgreSQL cluster of the
    /// checker's own (initdb and pg_ctl from PG_BINDIR), so that it can restart it.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,

    /// How many clients run at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,

    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,

    /// Inject faults: SIGKILL and restart of the server (`--kills` times) and, on PostgreSQL,
    /// an immediate restart of the database (`--database-restarts` times). In memory, a killed
    /// server loses its orders by design, so kills are for the `postgres` backend.
    #[arg(long)]
    faults: bool,

    /// Server kills when `--faults` is set.
    #[arg(long, default_value_t = 2)]
    kills: usize,

    /// PostgreSQL restarts when `--faults` is set.
    #[arg(long, default_value_t = 1)]
    database_restarts: usize,

    /// With `--backend postgres`: the server reaches the cluster through a PgBouncer of the
    /// checker's own in transaction mode (`DATABASE_POOL_MODE=transaction`; the binary is
    /// PGBOUNCER, else /usr/sbin/pgbouncer), which stays up while the cluster restarts.
    /// LISTEN goes nowhere, so the server polls, unless `--listen-direct` is set.
    #[arg(long)]
    pgbouncer: bool,

    /// With `--pgbouncer`: LISTEN on a direct connection to the cluster
    /// (`DATABASE_LISTEN_URL`).
    #[arg(long, requires = "pgbouncer")]
    listen_direct: bool,

    /// With `--pgbouncer`: the cluster is a primary with a synchronous streaming standby, and
    /// once, mid-run, the primary is killed (SIGKILL to every process of it), PgBouncer is
    /// pointed at the standby while it is still read-only, and the standby is promoted; the
    /// server runs on, not restarted. Prints how many orders were acknowledged, lost and
    /// doubled, and how long the orders unfinished at the promotion took to end after it;
    /// one still unfinished at the end, or that took longer than a lease, a poll and its
    /// steps and compensations, is a violation.
    #[arg(long, requires = "pgbouncer", conflicts_with_all = ["listen_direct", "faults"])]
    failover: bool,

    /// Seed of the clients' choices and of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// The order-server binary; by default the one beside this binary.
    #[arg(long)]
    server: Option<PathBuf>,

    /// How long the server's simulated processing step takes, in milliseconds (each step,
    /// with `--processing-steps`).
    #[arg(long, default_value_t = 50)]
    processing_delay_ms: u64,

    /// Process every order in simulated steps with these names, comma-separated
    /// (`reserve,charge,ship`; the server's `PROCESSING_STEPS`): each is checkpointed and can be
    /// compensated, so that a PROCESSING order can be cancelled, and the history is checked
    /// against the steps' rules too. Unset: one plain step, as the server's default.
    #[arg(long, value_delimiter = ',')]
    processing_steps: Option<Vec<String>>,

    /// The share of orders whose simulated processing fails for good (the server's
    /// `SIMULATED_FAILURE_RATE`), for the clients to retry: 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,

    /// Write the history, as JSON, to this file.
    #[arg(long)]
    history: Option<PathBuf>,

    /// Append the server's output to this file.
    #[arg(long)]
    server_log: Option<PathBuf>,
}

/// Where orders are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// In the server's memory.
    Memory,
    /// In a private PostgreSQL cluster.
    Postgres,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args = Args::parse();
    if args.faults && args.backend == Backend::Memory && args.kills > 0 {
        anyhow::bail!(
            "--faults kills the server, and a killed in-memory server loses its orders by \
             design: use --backend postgres, or --kills 0"
        );
    }
    if args.pgbouncer && args.backend != Backend::Postgres {
        anyhow::bail!("--pgbouncer stands in front of PostgreSQL: use --backend postgres");
    }
    if args.failover && args.failure_rate > 0.0 {
        // An order that failed is retried by a client at any later time, and its wait after
        // the promotion is read from its last change.
        anyhow::bail!("--failover measures how soon orders end: use it without --failure-rate");
    }
    let began = Instant::now();
    let mut cluster = match args.backend {
        Backend::Memory => None,
        Backend::Postgres => Some(Cluster::create().context("starting a private PostgreSQL")?),
    };
    let mut standby = match (&cluster, args.failover) {
        (Some(primary), true) => {
            let standby = Cluster::standby_of(primary).context("starting a standby")?;
            primary.require_synchronous_standby()?;
            Some(standby)
        }
        _ => None,
    };
    // The primary killed by the failover, kept until the end so that its directory goes.
    let mut retired = None;
    // Dropped after the server is killed, before the cluster.
    let mut bouncer = match (&cluster, args.pgbouncer) {
        (Some(cluster), true) => Some(
            PgBouncer::start(&cluster.url(), &PgBouncerSettings::default())
                .map_err(|err| anyhow::anyhow!(err))
                .context("starting PgBouncer")?,
        ),
        _ => None,
    };
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the checker's own directory")?
            .join("order-server"),
    };
    let mut env = vec![
        ("PROCESSING_DELAY_MS", args.processing_delay_ms.to_string()),
        // Short leases and polls: a killed server's orders are taken over within a second.
        ("LEASE_MS", LEASE.as_millis().to_string()),
        ("POLL_INTERVAL_MS", POLL.as_millis().to_string()),
        ("DB_ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
        ("REQUEST_TIMEOUT_SECS", "5".to_owned()),
    ];
    match (&cluster, &bouncer) {
        (Some(cluster), Some(bouncer)) => {
            env.push(("DATABASE_URL", bouncer.url(&cluster.url())));
            env.push(("DATABASE_POOL_MODE", "transaction".to_owned()));
            if args.listen_direct {
                env.push(("DATABASE_LISTEN_URL", cluster.url()));
            }
        }
        (Some(cluster), None) => env.push(("DATABASE_URL", cluster.url())),
        _ => {}
    }
    // Named as the server reads them, spaces around the commas trimmed.
    let pipeline: Option<Vec<String>> = args
        .processing_steps
        .as_ref()
        .map(|names| names.iter().map(|name| name.trim().to_owned()).collect());
    if let Some(steps) = &pipeline {
        env.push(("PROCESSING_STEPS", steps.join(",")));
    }
    if args.failure_rate > 0.0 {
        env.push(("SIMULATED_FAILURE_RATE", args.failure_rate.to_string()));
    }
    let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut server = ServerProcess::new(binary, env, args.server_log.clone())?;
    server.start().await?;

    // How long an order is processed: each of its steps takes the delay.
    let steps = pipeline.as_ref().map_or(1, Vec::len).max(1);
    let processing = Duration::from_millis(args.processing_delay_ms)
        .saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
    let workload = Arc::new(Workload::new(
        server.base(),
        args.seed,
        Duration::from_secs(10),
        processing,
    )?);
    let duration = Duration::from_secs(args.duration);
    let deadline = Instant::now() + duration;
    let plan = fault_plan(&args, duration);
    let clients = {
        let workload = workload.clone();
        let count = args.clients;
        tokio::spawn(async move { workload.run(count, deadline).await })
    };
    let start = Instant::now();
    let mut failover = None;
    for (at, kind) in plan {
        tokio::time::sleep_until(start + at).await;
        // A failover records its kill and its promotion itself, each when it happens.
        if kind != FaultKind::PrimaryKill {
            workload.fault(kind);
        }
        match kind {
            FaultKind::ServerKill => {
                server.kill().await?;
                server.start().await?;
            }
            FaultKind::DatabaseRestart => {
                if let Some(cluster) = &cluster {
                    cluster.restart_immediately()?;
                }
            }
            FaultKind::PrimaryKill => {
                let (Some(primary), Some(new_primary), Some(bouncer)) =
                    (cluster.take(), standby.take(), bouncer.as_mut())
                else {
                    anyhow::bail!("a failover needs a primary, its standby and PgBouncer");
                };
                failover = Some(fail_over(&workload, &primary, &new_primary, bouncer).await?);
                retired = Some(primary);
                cluster = Some(new_primary);
            }
            FaultKind::Promotion => {}
        }
    }
    clients.await?;
    let settling = Instant::now();
    workload.settle(Duration::from_secs(60)).await?;
    let settled_in = settling.elapsed();
    let counts = cluster.as_ref().map(Cluster::count_by_status).transpose()?;
    let failover = match (failover, &cluster, &counts) {
        (Some(failover), Some(cluster), Some(counts)) => Some(failover.ended(cluster, counts)?),
        _ => None,
    };
    if let Some(counts) = counts {
        workload.database_counts(counts);
    }
    server.kill().await?;
    drop(bouncer);
    drop(cluster);
    drop(standby);
    drop(retired);

    let mut history = workload.take_history();
    history.pipeline = pipeline.clone();
    let checking = Instant::now();
    let report = check(&history);
    let checked_in = checking.elapsed();
    let mut out = std::io::stdout().lock();
    let processed_in = match &pipeline {
        Some(steps) => format!("steps {}", steps.join(",")),
        None => "one plain step".to_owned(),
    };
    writeln!(
        out,
        "order-checker: {:?} backend{}, {processed_in}, {} clients, {} s, seed {}",
        args.backend,
        match (args.pgbouncer, args.listen_direct, args.failover) {
            (false, _, _) => "",
            (true, false, false) => " through PgBouncer (polling)",
            (true, false, true) => {
                " through PgBouncer (polling), a primary with a synchronous standby"
            }
            (true, true, _) => " through PgBouncer (LISTEN direct)",
        },
        args.clients,
        args.duration,
        args.seed
    )?;
    let kills = count(&history, FaultKind::ServerKill);
    let restarts = count(&history, FaultKind::DatabaseRestart);
    let failovers = count(&history, FaultKind::Promotion);
    writeln!(
        out,
        "checked {} operations: {} creates, {} orders acknowledged, {} indeterminate; \
         {} faults injected ({kills} server kills, {restarts} PostgreSQL restarts, \
         {failovers} failovers, each a primary killed and a standby promoted)",
        report.ops, report.creates, report.acknowledged, report.indeterminate, report.faults,
    )?;
    writeln!(
        out,
        "cancels answered {}; retries answered {}",
        answers(&history, |action| match action {
            Action::Cancel { reply, .. } => Some(reply),
            _ => None,
        }),
        answers(&history, |action| match action {
            Action::Retry { reply, .. } => Some(reply),
            _ => None,
        })
    )?;
    writeln!(
        out,
        "{:.1} s in all: quiet {:.1} s after the clients stopped, checked in {:.1} s",
        began.elapsed().as_secs_f64(),
        settled_in.as_secs_f64(),
        checked_in.as_secs_f64()
    )?;
    if let Some(path) = &args.history {
        let json = serde_json::to_string(&history)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "history written to {}", path.display())?;
    }
    let mut failed = false;
    if let Some(failover) = &failover {
        let counts = report.counts();
        let rule = |rule| counts.get(&rule).copied().unwrap_or(0);
        // Lost: acknowledged, then missing or changed. Doubled: one key, two orders; or an
        // order seen in a status no transition leads to from one seen before it (COMPLETED,
        // then PROCESSING again, say: done twice).
        writeln!(
            out,
            "failover: {} orders acknowledged, {} lost, {} doubled or out of order; promoted {:.0} ms after \
             the kill; {} orders unfinished at the promotion, the last of them ({}) ended {:.0} \
             ms after it (bound: a lease, a poll, its steps and their compensations, {:.0} ms); {} ended \
             COMPLETED, {} CANCELLED, {} FAILED, {} unfinished",
            report.acknowledged,
            rule(order_checker::check::Rule::Acknowledged),
            rule(order_checker::check::Rule::DuplicateOrder)
                + rule(order_checker::check::Rule::Transition),
            failover.promoted_after.as_secs_f64() * 1e3,
            failover.unfinished_at_promotion,
            failover
                .slowest
                .map_or_else(|| "none".to_owned(), |id| format!("order {id}")),
            failover.longest_after_promotion.as_secs_f64() * 1e3,
            failover.bound.as_secs_f64() * 1e3,
            failover.ends.completed,
            failover.ends.cancelled,
            failover.ends.failed,
            failover.ends.unfinished,
        )?;
        if failover.ends.unfinished > 0 {
            writeln!(
                out,
                "VIOLATION: orders were left unfinished after the failover"
            )?;
            failed = true;
        }
        if failover.longest_after_promotion > failover.bound {
            writeln!(
                out,
                "VIOLATION: an order waited past the bound after the promotion"
            )?;
            failed = true;
        }
    }
    let Some(first) = report.first() else {
        if failed {
            return Ok(ExitCode::FAILURE);
        }
        writeln!(out, "no violation")?;
        return Ok(ExitCode::SUCCESS);
    };
    writeln!(out, "VIOLATIONS: {}", report.violations.len())?;
    for (rule, n) in report.counts() {
        writeln!(out, "  {rule}: {n}")?;
    }
    writeln!(out, "first: {}: {}", first.rule, first.message)?;
    for &index in &first.ops {
        if let Some(op) = history.ops.get(index) {
            writeln!(out, "  op {}", serde_json::to_string(op)?)?;
        }
    }
    Ok(ExitCode::FAILURE)
}

/// How many requests of the kind `reply_of` picks got each answer: `200: 12, 202: 30, 409:
/// 40, lost or 5xx: 1`.
fn answers(
    history: &History,
    reply_of: impl Fn(&Action) -> Option<&order_checker::history::Reply>,
) -> String {
    let mut by_answer: std::collections::BTreeMap<String, usize> = Default::default();
    for op in &history.ops {
        if let Some(reply) = reply_of(&op.action) {
            let answer = match reply.decided() {
                Some((status, _)) => status.to_string(),
                None => "lost or 5xx".to_owned(),
            };
            *by_answer.entry(answer).or_default() += 1;
        }
    }
    if by_answer.is_empty() {
        return "none".to_owned();
    }
    let counts: Vec<String> = by_answer
        .iter()
        .map(|(answer, n)| format!("{answer}: {n}"))
        .collect();
    counts.join(", ")
}

/// What a failover left to measure once the run is over.
struct Failover {
    /// From the kill to the promotion's end.
    promoted_after: Duration,
    /// When the promotion ended, on the machine's clock (the database's too).
    promoted_at: std::time::SystemTime,
    /// The orders PENDING or PROCESSING when the primary died, as the standby had them.
    unfinished: Vec<i64>,
    /// The longest an order may take to end after the promotion.
    bound: Duration,
}

/// What [`Failover::ended`] measured.
struct FailoverReport {
    promoted_after: Duration,
    unfinished_at_promotion: usize,
    longest_after_promotion: Duration,
    /// The order that ended last of them.
    slowest: Option<i64>,
    bound: Duration,
    ends: Ends,
}

/// How the orders in the new primary ended.
struct Ends {
    completed: u64,
    cancelled: u64,
    failed: u64,
    unfinished: u64,
}

/// Kills the primary, points PgBouncer at the standby, still read-only, lets connections land
/// there for a moment, then promotes it: as when a name or address is moved before the
/// promotion completes. Records both as faults.
///
/// The standby lags: it stops replaying a moment before the kill, as one does under load (a
/// synchronous standby has each acknowledged commit on disk, not yet visible). A server that
/// read from it while it is read-only would answer with orders as they were before their
/// acknowledged changes, or not at all, and the history shows it; one that refuses the node
/// answers 503s, and its clients try again. It replays everything before its promotion.
async fn fail_over(
    workload: &Workload,
    primary: &Cluster,
    standby: &Cluster,
    bouncer: &mut PgBouncer,
) -> Result<Failover> {
    /// How far behind the primary the standby's visible state is at the kill.
    const LAG: Duration = Duration::from_millis(300);
    /// How long the standby is reachable, read-only, before it takes writes: longer than
    /// PgBouncer's `server_login_retry` (1 s in its test settings), the pause it takes after
    /// logins to the dead primary failed, so that its server connections do land there.
    const READ_ONLY: Duration = Duration::from_secs(2);
    standby.query("SELECT pg_wal_replay_pause()")?;
    tokio::time::sleep(LAG).await;
    workload.fault(FaultKind::PrimaryKill);
    let killed = Instant::now();
    primary.kill_everything()?;
    bouncer
        .retarget(&standby.url())
        .map_err(|err| anyhow::anyhow!(err))
        .context("pointing PgBouncer at the standby")?;
    tokio::time::sleep(READ_ONLY).await;
    standby.query("SELECT pg_wal_replay_resume()")?;
    standby.wait_for_replay()?;
    // Everything a commit was acknowledged for is on the standby (synchronous replication),
    // now replayed, and nothing can be committed between the kill and the promotion.
    let unfinished = cluster_ids(
        standby,
        "SELECT id FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING')",
    )?;
    standby.promote()?;
    let promoted_at = std::time::SystemTime::now();
    let promoted_after = killed.elapsed();
    workload.fault(FaultKind::Promotion);
    Ok(Failover {
        promoted_after,
        promoted_at,
        unfinished,
        // A lease taken before the kill has run out by the promotion (the standby is read-only
        // for longer than a lease); one taken by a claim that the pooler held across the
        // promotion runs from then. Once it has run out, the next poll claims the order; then
        // its steps and, when it was cancelled, their compensations, which take as long.
        bound: LEASE + POLL + 2 * workload.processing(),
    })
}

impl Failover {
    /// Reads, from the new primary once all is quiet, when each order unfinished at the
    /// promotion ended (its last change); `counts` are its orders by status then.
    fn ended(self, primary: &Cluster, counts: &BTreeMap<String, u64>) -> Result<FailoverReport> {
        let promoted = self
            .promoted_at
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let mut slowest = None;
        let longest_ms = if self.unfinished.is_empty() {
            0.0
        } else {
            let ids: Vec<String> = self.unfinished.iter().map(i64::to_string).collect();
            let out = primary.query(&format!(
                "SELECT id, (extract(epoch FROM updated_at) - {promoted}) * 1000 \
                 FROM order_engine_orders WHERE id IN ({}) ORDER BY updated_at DESC LIMIT 1",
                ids.join(",")
            ))?;
            let (id, ms) = out.trim().split_once(' ').context("the longest wait")?;
            slowest = id.parse().ok();
            ms.parse::<f64>().context("the longest wait")?
        };
        let of = |status: &str| counts.get(status).copied().unwrap_or(0);
        let total: u64 = counts.values().sum();
        let ends = Ends {
            completed: of("COMPLETED"),
            cancelled: of("CANCELLED"),
            failed: of("FAILED"),
            unfinished: total - of("COMPLETED") - of("CANCELLED") - of("FAILED"),
        };
        Ok(FailoverReport {
            promoted_after: self.promoted_after,
            unfinished_at_promotion: self.unfinished.len(),
            longest_after_promotion: Duration::from_secs_f64(longest_ms.max(0.0) / 1e3),
            slowest,
            bound: self.bound,
            ends,
        })
    }
}

/// The ids `sql` selects on `cluster`.
fn cluster_ids(cluster: &Cluster, sql: &str) -> Result<Vec<i64>> {
    cluster
        .query(sql)?
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Ok(line.trim().parse()?))
        .collect()
}

fn count(history: &History, kind: FaultKind) -> usize {
    history.faults.iter().filter(|f| f.kind == kind).count()
}

/// When each fault is injected: spread evenly over the run, in an order the seed shuffles,
/// each at a jittered point of its own slot.
fn fault_plan(args: &Args, duration: Duration) -> Vec<(Duration, FaultKind)> {
    let mut kinds = Vec::new();
    if args.faults {
        kinds.extend(vec![FaultKind::ServerKill; args.kills]);
        if args.backend == Backend::Postgres {
            kinds.extend(vec![FaultKind::DatabaseRestart; args.database_restarts]);
        }
    }
    if args.failover {
        kinds.push(FaultKind::PrimaryKill);
    }
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    kinds.shuffle(&mut rng);
    let slot = duration / u32::try_from(kinds.len() + 1).unwrap_or(u32::MAX);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let own_slot = slot * u32::try_from(i).unwrap_or(u32::MAX);
            (own_slot + slot.mul_f64(rng.random_range(0.75..1.25)), kind)
        })
        .collect()
}
