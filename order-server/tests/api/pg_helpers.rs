//! What the PostgreSQL tests read from the database directly, not through the server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use order_core::testing::{PgBouncer, PgBouncerSettings, TestDatabase};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::child_process::{Server, spawn_server};

/// `(status, count)` of every order in the database, counted directly (not from the
/// counters the server keeps).
pub(crate) async fn direct_counts(db: &DatabaseConnection) -> BTreeMap<String, i64> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT status, count(*) AS n FROM order_engine_orders GROUP BY status",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                row.try_get::<String>("", "status").unwrap(),
                row.try_get::<i64>("", "n").unwrap(),
            )
        })
        .collect()
}

/// Waits until no order is PENDING or PROCESSING, failing after `limit`.
pub(crate) async fn wait_until_all_finished(db: &DatabaseConnection, limit: Duration) {
    let began = Instant::now();
    loop {
        let counts = direct_counts(db).await;
        let unfinished =
            counts.get("PENDING").unwrap_or(&0) + counts.get("PROCESSING").unwrap_or(&0);
        if unfinished == 0 {
            return;
        }
        assert!(
            began.elapsed() < limit,
            "still unfinished after {limit:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a test's servers reach its database: directly, or through a PgBouncer in transaction
/// mode that the route keeps running.
pub(crate) struct Route {
    env: Vec<(&'static str, String)>,
    /// Whether server connections outlive the servers' own (a pooler keeps them).
    pub(crate) pooled: bool,
    /// The PgBouncer in between, stopped when the route is dropped.
    _bouncer: Option<PgBouncer>,
}

impl Route {
    /// Straight to the test's database.
    pub(crate) fn direct(db: &TestDatabase) -> Self {
        Self {
            env: vec![("DATABASE_URL", db.url().to_owned())],
            pooled: false,
            _bouncer: None,
        }
    }

    /// Through a PgBouncer in transaction mode with fewer server connections than the
    /// servers have clients, so that they share them; with `listen_direct`, LISTEN goes to
    /// the database itself (`DATABASE_LISTEN_URL`), else the servers poll. `None`, after
    /// saying so, when pgbouncer is not installed (a failure under CI).
    pub(crate) fn through_pgbouncer(db: &TestDatabase, listen_direct: bool) -> Option<Self> {
        let bouncer =
            PgBouncer::start_or_skip(db.url(), &PgBouncerSettings::default().default_pool_size(4))?;
        let mut env = vec![
            ("DATABASE_URL", bouncer.url(db.url())),
            ("DATABASE_POOL_MODE", "transaction".to_owned()),
        ];
        if listen_direct {
            env.push(("DATABASE_LISTEN_URL", db.url().to_owned()));
        }
        Some(Self {
            env,
            pooled: true,
            _bouncer: Some(bouncer),
        })
    }

    /// The variables that point a server this way.
    pub(crate) fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect()
    }

    /// A server this way, with `env` besides.
    pub(crate) async fn server(&self, env: &[(&str, &str)]) -> Server {
        let mut all = self.env();
        all.extend_from_slice(env);
        spawn_server(&all).await
    }
}
