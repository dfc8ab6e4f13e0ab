//! Turning sea-orm's errors into [`StorageError`]s that say whether the database was reachable.

use sea_orm::{DbErr, RuntimeErr, sqlx};

use crate::error::StorageError;

/// SQLSTATEs that a retry later may cure: 08 connection exception; 53 insufficient
/// resources; 57P operator intervention (shutdown, cannot connect now); 57014 statement
/// timeout; 40001 and 40P01 serialisation failure and deadlock; 25006 read-only transaction
/// (a replica not yet promoted); 42P01 undefined table (migrations not applied yet).
fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "57014" | "40001" | "40P01" | "25006" | "42P01")
}

/// [`storage_error`] for an error of sqlx itself, from a statement that bypassed sea-orm.
pub(crate) fn sqlx_storage_error(context: &str, err: sqlx::Error) -> StorageError {
    storage_error(
        context,
        DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(err))),
    )
}

/// `err` with `context`, marked unavailable when retrying later may cure it.
pub(crate) fn storage_error(context: &str, err: DbErr) -> StorageError {
    let unavailable = is_unavailable(&err);
    StorageError {
        message: format!("{context}: {err}"),
        unavailable,
        source: Some(Box::new(err)),
    }
}

/// True for failures of reaching the database rather than of the statement itself: no
/// connection, a broken one, a server shutting down, refusing connections or read-only after
/// a failover, a statement that timed out, a serialisation failure or deadlock that a retry
/// resolves, a schema not migrated yet. A wrong password or database name is not: retrying
/// cannot cure it.
fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(err))
        | DbErr::Exec(RuntimeErr::SqlxError(err))
        | DbErr::Query(RuntimeErr::SqlxError(err)) => sqlx_unavailable(err),
        DbErr::Conn(RuntimeErr::Internal(_)) => true,
        _ => false,
    }
}

fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| retryable_sqlstate(&code)),
        _ => false,
    }
}

/// What a node that takes no writes is refused with, in both pool modes: an I/O error, which
/// is unavailable, and says why.
pub(super) fn takes_no_writes() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "the server takes no writes (a standby, or default_transaction_read_only): \
         the connection is given up and another one tried",
    ))
}

#[cfg(test)]
mod tests {
    use super::retryable_sqlstate;

    #[test]
    fn outages_are_retryable_and_mistakes_are_not() {
        for code in [
            "08006", "53300", "57P01", "57P03", "57014", "40001", "40P01", "25006", "42P01",
        ] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        // Wrong password, unknown database, syntax error, unique violation, check violation.
        for code in ["28P01", "3D000", "42601", "23505", "23514"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }
}
