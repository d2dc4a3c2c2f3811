//! Turns PostgreSQL and pool failures into domain errors, in one place:
//! SQLSTATE classes map onto the small set of `Error` variants.

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
    from_sqlstate(db.code().code(), msg)
}

/// Maps a SQLSTATE and message, as read off the wire, onto a domain error.
pub fn from_sqlstate(code: &str, msg: String) -> Error {
    match code {
        "23505" => Error::AlreadyExists(msg),
        "23503" => Error::NotFound(msg),
        "40001" | "40P01" => Error::Aborted(msg),
        // query_canceled: a statement timeout
        "57014" => Error::DeadlineExceeded(msg),
        // shutdowns, cannot connect now, connection exceptions, too many connections
        c if c.starts_with("57P") || c.starts_with("08") || c == "53300" => Error::Unavailable(msg),
        // data exceptions: a value validation let through but PostgreSQL refuses
        c if c.starts_with("22") => Error::invalid("", msg),
        c => Error::Internal(format!("{msg} [{c}]")),
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
