//! Scratch PostgreSQL databases for tests: one per test, so tests run in parallel without
//! seeing one another's rows.

use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

use crate::postgres::{self, PoolOptions, PostgresPool};

/// The variable naming the server that scratch databases are created on; its database is used
/// only to create and drop them.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// Where scratch databases are created when [`TEST_DATABASE_URL`] is unset: the local
/// server on its standard port.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A freshly created and migrated database, dropped (with any connection still open to it)
/// when this value is dropped.
///
/// There is no skipping: when no PostgreSQL answers, [`TestDatabase::create`] panics with a
/// message saying how to point the tests at one, so a missing database fails the run instead
/// of passing it silently.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    admin_url: String,
    url: String,
    pool: PostgresPool,
}

impl TestDatabase {
    /// Creates an empty database on the server of `TEST_DATABASE_URL` (default
    /// `postgres://postgres@127.0.0.1:5432/postgres`) and runs the migrations on it.
    pub async fn create() -> Self {
        Self::create_with(&PoolOptions::default()).await
    }

    /// [`create`](Self::create), connecting with `options`.
    pub async fn create_with(options: &PoolOptions) -> Self {
        let db = Self::create_empty_with(options).await;
        postgres::migrate(&db.pool)
            .await
            .unwrap_or_else(|err| panic!("could not migrate {}: {err}", db.name));
        db
    }

    /// An empty database without the migrations applied: for tests of the migrations
    /// themselves.
    pub async fn create_empty() -> Self {
        Self::create_empty_with(&PoolOptions::default()).await
    }

    async fn create_empty_with(options: &PoolOptions) -> Self {
        let admin_url =
            std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "order_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        let admin = admin_connection(&admin_url).await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|err| panic!("could not create database {name}: {err}"));
        drop(admin);
        let url = with_database(&admin_url, &name);
        let pool = postgres::connect(&url, options)
            .await
            .unwrap_or_else(|err| panic!("could not connect to {name}: {err}"));
        Self {
            name,
            admin_url,
            url,
            pool,
        }
    }

    /// The URL of this database, for a server process or a second pool.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool connected to this database, for a backend.
    pub fn pool(&self) -> &PostgresPool {
        &self.pool
    }

    /// The same pool as sea-orm's connection, for tests that check what the database holds
    /// with raw SQL. The one sea-orm type in this crate's API, on purpose and only in test
    /// support (feature `testing`): nothing in `order_core::postgres` takes or returns one.
    pub fn connection(&self) -> &DatabaseConnection {
        self.pool.db()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on its own futures; a
        // thread with a runtime of its own can.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(admin) = Database::connect(ConnectOptions::new(admin_url)).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

async fn admin_connection(admin_url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(admin_url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    Database::connect(options).await.unwrap_or_else(|err| {
        panic!(
            "PostgreSQL is needed for these tests and none answered at {admin_url}: {err}\n\
             Run scripts/test.sh (it finds or starts a server), or set {TEST_DATABASE_URL} to \
             a server where this user may create databases."
        )
    })
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_is_swapped_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
