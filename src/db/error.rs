//! Turns PostgreSQL and pool failures into domain errors, in one place:
//! SQLSTATE classes map onto the small set of `Error` variants.

use tokio_postgres::error::SqlState;

use crate::error::Error;

/// Maps a tokio-postgres error onto a domain error.
pub fn from_pg(e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        // No server response: the connection is gone or never came up.
        return Error::Unavailable(format!("database connection: {e}"));
    };
    let msg = match db.detail() {
        Some(d) => format!("{} ({d})", db.message()),
        None => db.message().to_string(),
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        Error::AlreadyExists(msg)
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        Error::NotFound(msg)
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        Error::Aborted(msg)
    } else if *code == SqlState::QUERY_CANCELED {
        Error::DeadlineExceeded(msg)
    } else if code.code().starts_with("57P")
        || code.code().starts_with("08")
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        // admin/crash shutdown, cannot connect now, connection exceptions
        Error::Unavailable(msg)
    } else if code.code().starts_with("22") {
        // data exceptions: a value the validation let through but PostgreSQL refuses
        Error::invalid("", msg)
    } else {
        Error::Internal(format!("{msg} [{}]", code.code()))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        from_pg(e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => from_pg(e),
            other => Error::Unavailable(format!("database pool: {other}")),
        }
    }
}
