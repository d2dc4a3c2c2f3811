//! The one place domain errors become gRPC statuses. The set of codes is
//! deliberately small; invalid input carries `google.rpc.BadRequest` field
//! violations.
//!
//! Statuses travel in HTTP/2 trailers, which clients cap at a few kilobytes
//! (8 KB in gRPC C-core); a larger one reaches the caller as
//! RESOURCE_EXHAUSTED instead of the real error. So every status is bounded
//! here: at most [`MAX_VIOLATIONS`] violations, each path and description
//! clipped, and the message clipped to [`MAX_MESSAGE`] bytes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, Violation, clip};

/// Most field violations reported in one status; the rest are counted.
pub const MAX_VIOLATIONS: usize = 8;
/// Longest violation path, in bytes.
const MAX_PATH: usize = 120;
/// Longest violation description, in bytes.
pub const MAX_DESCRIPTION: usize = 200;
/// Longest status message, in bytes.
pub const MAX_MESSAGE: usize = 800;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let bounded = |m: String| clip(&m, MAX_MESSAGE);
        match e {
            Error::InvalidArgument(v) => invalid(v),
            Error::NotFound(m) => Status::not_found(bounded(m)),
            Error::AlreadyExists(m) => Status::already_exists(bounded(m)),
            Error::Aborted(m) => Status::aborted(bounded(m)),
            Error::FailedPrecondition(m) => Status::failed_precondition(bounded(m)),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(bounded(m)),
            Error::Unavailable(m) => Status::unavailable(bounded(m)),
            Error::OutOfRange(m) => Status::out_of_range(bounded(m)),
            Error::Cancelled(m) => Status::cancelled(bounded(m)),
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(bounded(m))
            }
        }
    }
}

/// `INVALID_ARGUMENT` with one field violation per problem, bounded in size.
pub fn invalid(violations: Vec<Violation>) -> Status {
    let total = violations.len();
    let mut shown: Vec<Violation> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|v| {
            Violation::new(
                clip(&v.field, MAX_PATH),
                clip(&v.description, MAX_DESCRIPTION),
            )
        })
        .collect();
    if total > shown.len() {
        shown.push(Violation::new(
            "",
            format!("and {} more problems", total - shown.len()),
        ));
    }
    let message = shown
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
    for v in shown {
        details.add_bad_request_violation(v.field, v.description);
    }
    Status::with_error_details(Code::InvalidArgument, clip(&message, MAX_MESSAGE), details)
}

/// Turns a validation result into a status under a request field prefix.
pub fn checked<T>(prefix: &str, r: Result<T, Vec<Violation>>) -> Result<T, Status> {
    r.map_err(|v| invalid(v.into_iter().map(|v| v.under(prefix)).collect()))
}

/// A row-level failure (field, reason) for per-row import results, bounded
/// like violations: the first violation of the row.
pub fn row_failure(v: Vec<Violation>) -> (String, String) {
    let first = v
        .into_iter()
        .next()
        .unwrap_or_else(|| Violation::new("", "invalid"));
    (
        clip(&first.field, MAX_PATH),
        clip(&first.description, MAX_DESCRIPTION),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_errors_stay_small() {
        let many: Vec<Violation> = (0..200_000)
            .map(|i| {
                Violation::new(
                    format!("definition.rule.all.rules[{i}]"),
                    "x".repeat(20_000),
                )
            })
            .collect();
        let s = invalid(many);
        let details = s.details().len();
        assert!(s.message().len() <= MAX_MESSAGE, "{}", s.message().len());
        assert!(details < 4096, "details of {details} bytes");
        let bad = s.get_details_bad_request().unwrap().field_violations;
        assert_eq!(bad.len(), MAX_VIOLATIONS + 1);
        assert!(bad.last().unwrap().description.contains("199992 more"));
    }

    #[test]
    fn clipping_respects_characters() {
        assert_eq!(clip("héllo", 4), "h…");
        assert_eq!(clip("héllo", 5), "h…");
        assert_eq!(clip("short", 10), "short");
        assert!(clip(&"é".repeat(1000), 100).len() <= 100);
    }
}
