//! The migrations on a database that a server of the first design wrote.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;

use super::Migrator;
use crate::backend::Backend;
use crate::handler::SimulatedStep;
use crate::postgres::{self, PoolOptions, PostgresBackend};
use crate::testing::TestDatabase;
use crate::{IdempotencyKey, NewOrder, OrderProcessor, OrderStatus, Submission};

/// `pg_dump --inserts` of a database that a server of the first design (a queue table beside
/// the orders) wrote, with 30 orders: 13 COMPLETED (3 with idempotency keys), 3 FAILED, 2
/// CANCELLED, 3 PENDING after a failed attempt (delayed, last error kept), 3 PROCESSING under
/// a worker's claim (the process was killed while they ran), and 6 PENDING and queued (2 with
/// keys).
const FIRST_DESIGN: &str = include_str!("fixtures/first_design.sql");

/// Loads the dump on a pool of its own, psql's meta-commands (`\restrict`) left out.
async fn load_first_design(db: &TestDatabase) {
    let sql: String = FIRST_DESIGN
        .lines()
        .filter(|line| !line.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    let options = PoolOptions {
        max_connections: 2,
        ..PoolOptions::default()
    };
    let loader = postgres::connect(db.url(), &options).await.unwrap();
    // The dump empties the session's search_path; the triggers it made name their tables
    // without a schema, so the session gets it back before it writes again.
    loader
        .db()
        .execute_unprepared(&format!("{sql}\nRESET search_path;"))
        .await
        .unwrap();
    // The dump's leases, retry delays and idempotency keys (kept 24 h) ran out long ago; make
    // them live again, as they were when it was taken, so that what the migration keeps can be
    // seen.
    loader
        .db()
        .execute_unprepared(
            "UPDATE public.order_engine_orders SET lease_expires_at = now() + interval '1 hour'
              WHERE status = 'PROCESSING';
             UPDATE public.order_engine_idempotency_keys
                SET expires_at = now() + interval '1 hour';
             UPDATE public.order_engine_queue SET available_at = now() + interval '1 hour'
              WHERE available_at > '2026-01-01';
             UPDATE public.order_engine_queue SET available_at = now() - interval '1 second'
              WHERE claim_token IS NULL AND deliveries = 0;",
        )
        .await
        .unwrap();
    loader.close().await.unwrap();
}

/// Rows of `sql` as text, one string per row.
async fn text_rows(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        format!("SELECT t::text AS row FROM ({sql}) t"),
    ))
    .await
    .unwrap()
    .iter()
    .map(|row| row.try_get::<String>("", "row").unwrap())
    .collect()
}

/// What every order is, apart from its place in the queue.
const ORDERS: &str = "SELECT id, user_id, item_ids, total_amount, status, attempts, last_error,
        created_at, updated_at, processing_start_time, processing_end_time
   FROM order_engine_orders ORDER BY id";

/// The queue as the first design kept it: (id, status, due, claim, deliveries), the due time
/// and the claim of PROCESSING orders being their lease's.
const FIRST_QUEUE: &str = "SELECT q.order_id, o.status, date_trunc('second', q.available_at),
        q.claim_token, q.deliveries, date_trunc('second', o.lease_expires_at)
   FROM order_engine_queue q JOIN order_engine_orders o ON o.id = q.order_id ORDER BY 1";

/// The same in the second design.
const SECOND_QUEUE: &str = "SELECT id, status, date_trunc('second', available_at),
        claim_token, deliveries,
        date_trunc('second', CASE WHEN status = 'PROCESSING' THEN available_at END)
   FROM order_engine_orders WHERE status IN ('PENDING', 'PROCESSING') ORDER BY 1";

const KEYS: &str = "SELECT * FROM order_engine_idempotency_keys ORDER BY scope, key";

/// The orders table's storage parameters, space-separated.
const AUTOVACUUM: &str = "SELECT coalesce(array_to_string(reloptions, ' '), '')
   FROM pg_class WHERE oid = 'order_engine_orders'::regclass";

/// Counted in the table, and as the counters say.
const COUNTS: &str = "SELECT s.status, s.n, c.n FROM
        (SELECT status, count(*) AS n FROM order_engine_orders GROUP BY status) s
   JOIN (SELECT status, sum(orders) AS n FROM order_engine_status_counts GROUP BY status) c
     USING (status) ORDER BY 1";

/// A database the first design wrote migrates with every order, key, claim, lease and retry
/// delay kept; `down` gives the first design back as it was; migrated again, the engine
/// carries on: queued orders are processed, live leases and delays are honoured until they run
/// out, keyed orders replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_first_design_migrates_with_every_order_and_back() {
    let db = TestDatabase::create_empty().await;
    load_first_design(&db).await;
    let pool = db.connection();
    let orders = text_rows(pool, ORDERS).await;
    let queue = text_rows(pool, FIRST_QUEUE).await;
    let keys = text_rows(pool, KEYS).await;
    assert_eq!(orders.len(), 30);
    assert_eq!(queue.len(), 12, "{queue:#?}");

    postgres::migrate(db.pool()).await.unwrap();
    postgres::check_ready(db.pool()).await.unwrap();
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    assert_eq!(text_rows(pool, KEYS).await, keys);
    // Each unfinished order keeps its due time, claim and deliveries (a PROCESSING one its
    // lease, as its due time).
    assert_eq!(text_rows(pool, SECOND_QUEUE).await, queue);
    for row in text_rows(pool, COUNTS).await {
        let fields: Vec<&str> = row.trim_matches(['(', ')']).split(',').collect();
        assert_eq!(fields[1], fields[2], "{row}");
    }

    assert_eq!(
        text_rows(pool, AUTOVACUUM).await,
        ["(\"fillfactor=85 autovacuum_vacuum_scale_factor=0.02 autovacuum_vacuum_threshold=500\")"]
    );

    // The orders' autovacuum thresholds go first (back to the server's), then the bulk
    // actions' tables, then the failures' column, then the steps', then the queue comes back
    // out of the orders' rows.
    postgres::revert(db.pool(), 1).await.unwrap();
    assert_eq!(text_rows(pool, AUTOVACUUM).await, ["(fillfactor=85)"]);
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    postgres::revert(db.pool(), 1).await.unwrap();
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    postgres::revert(db.pool(), 1).await.unwrap();
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    postgres::revert(db.pool(), 1).await.unwrap();
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    assert_eq!(text_rows(pool, SECOND_QUEUE).await, queue);
    postgres::revert(db.pool(), 1).await.unwrap();
    assert_eq!(text_rows(pool, ORDERS).await, orders);
    assert_eq!(text_rows(pool, FIRST_QUEUE).await, queue);
    assert_eq!(text_rows(pool, KEYS).await, keys);
    let queued: Vec<String> = text_rows(
        pool,
        "SELECT sum(queued) = (SELECT count(*) FROM order_engine_queue)
           FROM order_engine_queue_counts",
    )
    .await;
    assert_eq!(queued, ["(t)"]);

    postgres::migrate(db.pool()).await.unwrap();
    let processor = OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
        .backend(&PostgresBackend::new(db.pool()))
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let running = processor.start();
    let settled = |completed: u64| {
        let processor = processor.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let metrics = processor.metrics().await.unwrap();
                    if metrics.statuses.completed == completed {
                        return metrics;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("the orders were processed")
        }
    };
    // The 6 queued orders are processed; the live leases and delays hold the other 6 back.
    let metrics = settled(19).await;
    assert_eq!(
        (
            metrics.statuses.pending,
            metrics.statuses.processing,
            metrics.total_orders
        ),
        (3, 3, 30)
    );
    // A keyed order replays.
    let replayed = processor
        .submit_or_replay(
            Submission::new(NewOrder {
                user_id: "waiting-keyed-0".to_owned(),
                item_ids: vec!["sku-0".to_owned(), "gift-wrap".to_owned()],
                total_amount: rust_decimal::Decimal::new(1999, 2),
            })
            .idempotency_key(IdempotencyKey::new("checkout-waiting-0").unwrap()),
        )
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.order.status, OrderStatus::Completed);
    // Once the leases and delays run out, the rest are taken over and retried.
    pool.execute_unprepared(
        "UPDATE order_engine_orders SET available_at = now() - interval '1 second'
          WHERE status IN ('PENDING', 'PROCESSING')",
    )
    .await
    .unwrap();
    let metrics = settled(25).await;
    assert_eq!(metrics.total_orders, 30);
    let attempts = text_rows(
        pool,
        "SELECT user_id, attempts FROM order_engine_orders
          WHERE user_id LIKE 'slow-%' OR user_id LIKE 'flaky-%' ORDER BY id",
    )
    .await;
    assert!(
        attempts.iter().all(|row| row.ends_with(",2)")),
        "a second attempt each: {attempts:?}"
    );
    assert_eq!(running.shutdown(Duration::from_secs(5)).await.abandoned, 0);
    assert_eq!(
        PostgresBackend::new(db.pool())
            .queue()
            .depth()
            .await
            .unwrap(),
        crate::QueueDepth::default()
    );
}

/// The migrations a server of the first design knows.
struct FirstDesign;

#[async_trait::async_trait]
impl MigratorTrait for FirstDesign {
    fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
        let mut migrations = Migrator::migrations();
        migrations.truncate(3);
        migrations
    }

    fn migration_table_name() -> sea_orm::DynIden {
        Migrator::migration_table_name()
    }
}

/// A server of the first design that meets the second fails safe: its migrator and its
/// readiness check refuse the database, its statements on the queue and the lease fail
/// without writing, and an order it stores is still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_first_design_fails_safe_on_the_second() {
    let db = TestDatabase::create().await;
    let pool = db.connection();
    let refused = FirstDesign::up(pool, None).await.unwrap_err();
    assert!(refused.to_string().contains("is missing"), "{refused}");
    assert!(
        FirstDesign::get_pending_migrations_read_only(pool)
            .await
            .is_err()
    );
    // The first design's writes, as its statements made them.
    for statement in [
        "INSERT INTO order_engine_queue (order_id) VALUES (1)",
        "UPDATE order_engine_orders SET lease_expires_at = now() WHERE id = 1",
        "UPDATE order_engine_orders SET status = 'COMPLETED', claim_token = NULL, \
         lease_expires_at = NULL, updated_at = now() WHERE id = 1",
    ] {
        assert!(
            pool.execute_unprepared(statement).await.is_err(),
            "{statement}"
        );
    }
    pool.execute_unprepared(
        "INSERT INTO order_engine_orders (user_id, item_ids, total_amount, status, attempts)
         VALUES ('old-server', ARRAY['item'], 1, 'PENDING', 0)",
    )
    .await
    .unwrap();
    let claims = PostgresBackend::new(db.pool())
        .queue()
        .claim(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1, "the old server's order is queued");
}
