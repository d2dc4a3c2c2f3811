//! Turns PostgreSQL and pool failures into domain errors, in one place.
//!
//! SQLSTATEs map onto the small set of `Error` variants by constant, each
//! with segd's own message: PostgreSQL's text (constraint names, values,
//! process ids, deadlock details) goes to the server log, never to clients.

use crate::error::Error;

/// Maps a tokio-postgres error onto a domain error.
pub fn from_pg(e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        return without_response(&e);
    };
    let detail = match db.detail() {
        Some(d) => format!("{} ({d})", db.message()),
        None => db.message().to_string(),
    };
    from_sqlstate(db.code().code(), &detail)
}

/// A tokio-postgres error the server did not send: a lost or refused
/// connection is `Unavailable` (retrying may help); anything else, such as a
/// value that cannot be encoded or a column that cannot be decoded, is a
/// bug in segd and `Internal`, so clients do not retry it.
fn without_response(e: &tokio_postgres::Error) -> Error {
    use std::error::Error as _;
    let io = e
        .source()
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    let text = e.to_string();
    let connection = e.is_closed()
        || io
        || text.starts_with("error connecting")
        || text.starts_with("timeout")
        || text.starts_with("error communicating");
    if connection {
        tracing::warn!(error = %e, "database connection failed");
        Error::Unavailable("the database connection failed; retry".into())
    } else {
        tracing::error!(error = %e, "database client error");
        Error::Internal(format!("database client error: {e}"))
    }
}

/// SQLSTATEs segd treats specially (PostgreSQL appendix A).
mod state {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// Class 57P: admin shutdown, crash shutdown, cannot connect now.
    pub const OPERATOR_INTERVENTION: &str = "57P";
    /// Class 08: connection exceptions.
    pub const CONNECTION_EXCEPTION: &str = "08";
    /// Class 22: data exceptions (a value out of range, a bad cast).
    pub const DATA_EXCEPTION: &str = "22";
}

/// Maps a SQLSTATE, as read off the wire, onto a domain error. `detail` is
/// PostgreSQL's message: it is logged here and not passed on.
pub fn from_sqlstate(code: &str, detail: &str) -> Error {
    use state::*;
    let e = match code {
        UNIQUE_VIOLATION => Error::AlreadyExists("a unique key is already taken".into()),
        FOREIGN_KEY_VIOLATION => Error::NotFound("a row this write refers to is gone".into()),
        // A hot standby cancels a query whose rows replication must
        // remove or lock (max_standby_streaming_delay): the same code as a
        // serialization failure, told apart by PostgreSQL's wording. The
        // caller retries (a stream resumes), perhaps on the primary.
        SERIALIZATION_FAILURE if detail.contains("conflict with recovery") => Error::Unavailable(
            "the read replica cancelled the query to apply replication; retry (streams: resume with the last token)"
                .into(),
        ),
        SERIALIZATION_FAILURE | DEADLOCK_DETECTED | LOCK_NOT_AVAILABLE => {
            Error::Aborted("the write conflicted with a concurrent one; retry".into())
        }
        // The same code for a statement timeout and for a cancel request;
        // only a timeout is the caller's deadline. PostgreSQL's own wording
        // tells them apart (segd's sessions do not localise messages).
        QUERY_CANCELED if detail.contains("statement timeout") => {
            Error::DeadlineExceeded("the query ran past its statement timeout".into())
        }
        QUERY_CANCELED => Error::Unavailable(
            "the query was cancelled on the database server; retry (streams: resume with the last token)"
                .into(),
        ),
        TOO_MANY_CONNECTIONS => {
            Error::Unavailable("the database has no free connections; retry".into())
        }
        c if c.starts_with(OPERATOR_INTERVENTION) || c.starts_with(CONNECTION_EXCEPTION) => {
            Error::Unavailable("the database is unavailable; retry".into())
        }
        c if c.starts_with(DATA_EXCEPTION) => Error::invalid(
            "",
            format!("a stored or given value is outside what the database accepts (SQLSTATE {c})"),
        ),
        c => Error::Internal(format!("database error (SQLSTATE {c})")),
    };
    match &e {
        Error::Internal(_) => tracing::error!(sqlstate = code, detail, "database error"),
        _ => tracing::info!(sqlstate = code, detail, "database error"),
    }
    e
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
            other => {
                tracing::warn!(error = %other, "no pooled connection");
                Error::Unavailable("no database connection is free; retry".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_text_never_reaches_the_message() {
        let secret = "duplicate key value violates unique constraint \"contacts_email\" (pid 4242)";
        for code in [
            "23505", "23503", "40P01", "57014", "57P01", "22008", "XX000",
        ] {
            let e = from_sqlstate(code, secret);
            assert!(!e.to_string().contains("contacts_email"), "{code}: {e}");
            assert!(!e.to_string().contains("4242"), "{code}: {e}");
        }
    }

    #[test]
    fn a_cancel_is_retryable_and_a_timeout_is_a_deadline() {
        assert!(matches!(
            from_sqlstate("57014", "canceling statement due to user request"),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            from_sqlstate("57014", "canceling statement due to statement timeout"),
            Error::DeadlineExceeded(_)
        ));
        assert!(matches!(
            from_sqlstate("40P01", "deadlock detected"),
            Error::Aborted(_)
        ));
    }

    #[test]
    fn a_replication_conflict_is_retryable_and_a_serialization_failure_aborts() {
        let conflict = from_sqlstate(
            "40001",
            "canceling statement due to conflict with recovery (User query might have needed to see row versions that must be removed.)",
        );
        assert!(matches!(conflict, Error::Unavailable(_)), "{conflict}");
        assert!(matches!(
            from_sqlstate(
                "40001",
                "terminating connection due to conflict with recovery"
            ),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            from_sqlstate(
                "40001",
                "could not serialize access due to concurrent update"
            ),
            Error::Aborted(_)
        ));
    }
}
