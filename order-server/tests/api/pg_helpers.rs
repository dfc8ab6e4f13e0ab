//! What the PostgreSQL tests read from the database directly, not through the server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

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
