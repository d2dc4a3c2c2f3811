//! The one place domain errors become gRPC statuses. The set of codes is
//! deliberately small; invalid input carries `google.rpc.BadRequest` field
//! violations.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, Violation};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(v) => invalid(v),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(m)
            }
        }
    }
}

/// `INVALID_ARGUMENT` with one field violation per problem.
pub fn invalid(violations: Vec<Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| {
            if v.field.is_empty() {
                v.description.clone()
            } else {
                format!("{}: {}", v.field, v.description)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field, v.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Turns a validation result into a status under a request field prefix.
pub fn checked<T>(prefix: &str, r: Result<T, Vec<Violation>>) -> Result<T, Status> {
    r.map_err(|v| invalid(v.into_iter().map(|v| v.under(prefix)).collect()))
}
