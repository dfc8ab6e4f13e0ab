//! Turning sea-orm's errors into [`StorageError`]s that say whether the database was reachable.

use sea_orm::{DbErr, RuntimeErr, sqlx};

use crate::error::StorageError;

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
/// connection, a broken one, a server shutting down or refusing connections, a statement that
/// timed out, a serialisation failure or deadlock that a retry resolves.
fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            sqlx_unavailable(err)
        }
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
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources; 57P: operator
            // intervention (shutdown, cannot connect now); 57014: statement timeout;
            // 40001/40P01: serialisation failure, deadlock.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "57014"
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}
