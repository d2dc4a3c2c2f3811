//! The domain error type shared by the model, segment and db layers.
//!
//! It deliberately has a small set of variants; `api::error` maps each onto
//! exactly one gRPC code, and `db::error` maps SQLSTATEs onto it.

use std::fmt;

/// One rejected input field: the path into the request and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path into the request, such as `contact.email` or `definition.all[2].event.window`.
    pub field: String,
    /// What is wrong, for a human.
    pub description: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation with `prefix.` put in front of its field path.
    #[must_use]
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when
/// cut: errors echo caller input, and error trailers are HTTP/2 headers
/// that clients cap at a few kilobytes.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Joins two field paths with a dot, skipping empty parts.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (_, true) => prefix.to_string(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}

/// Everything that can go wrong below the API layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    /// The named thing does not exist in this workspace.
    #[error("not found: {0}")]
    NotFound(String),
    /// A unique key is already taken.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A concurrency check failed (etag mismatch, serialization failure).
    #[error("aborted: {0}")]
    Aborted(String),
    /// The system is not in a state that allows the operation.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A statement ran past its timeout.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The database cannot be reached; retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A position outside what is held (a trimmed feed offset).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The caller went away.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A bug or an unexpected database failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A single-violation `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![Violation::new(field, description)])
    }

    /// An `Internal` error from anything displayable.
    pub fn internal(e: impl fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Result alias for the domain layers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collects violations while validating a request, so one response can
/// report every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation::new(field, description));
    }

    /// Records the violations of a nested validation result under `prefix`,
    /// returning its value if it had none.
    pub fn take<T>(&mut self, prefix: &str, r: Result<T, Vec<Violation>>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(vs) => {
                self.0.extend(vs.into_iter().map(|v| v.under(prefix)));
                None
            }
        }
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` if nothing was recorded, else the violations.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<Violation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// The recorded violations.
    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }
}

impl From<Vec<Violation>> for Error {
    fn from(v: Vec<Violation>) -> Self {
        Error::InvalidArgument(v)
    }
}
