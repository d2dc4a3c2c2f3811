//! Segments: saved definitions and static member lists.

use chrono::{DateTime, Utc};

use crate::error::{Error, Violation, join_path};
use crate::segment::ast::Rule;

str_enum!(
    /// How a segment's members are decided.
    SegmentKind {
        /// By its rules, evaluated at query time.
        Dynamic => "dynamic",
        /// By an explicit member list.
        Static => "static",
        /// A frozen copy of another segment's members.
        Snapshot => "snapshot",
    }
);

/// The built-in segments every workspace has: (name, description, definition).
pub const BUILTIN_SEGMENTS: &[(&str, &str, &str)] = &[
    ("Leads", "Interested, has not bought yet", "label:lead"),
    (
        "Subscribers",
        "Opted in to email or SMS",
        "subscription(email, subscribed) OR subscription(sms, subscribed)",
    ),
    ("Customers", "Has bought", "label:customer"),
    ("Donors", "Has donated", "label:donor"),
    (
        "Attendees",
        "Registered for or attended an event",
        "label:attendee",
    ),
    ("Members", "Holds a membership", "label:member"),
    ("Staff", "Works for the organisation", "label:staff"),
];

/// A stored segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Id.
    pub id: i64,
    /// Name, unique per workspace.
    pub name: String,
    /// Description.
    pub description: String,
    /// Kind.
    pub kind: SegmentKind,
    /// Disabled segments refuse queries.
    pub enabled: bool,
    /// Built in (cannot be deleted, renamed or redefined).
    pub builtin: bool,
    /// The definition (DYNAMIC only), with segment references by id.
    pub rule: Option<Rule>,
    /// Segments this one refers to directly.
    pub refs: Vec<i64>,
    /// For snapshots: the segment copied.
    pub source_segment_id: Option<i64>,
    /// For snapshots: when the copy was taken.
    pub snapshot_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Version (the etag).
    pub version: i64,
    /// Membership is maintained as contacts change (DYNAMIC only).
    pub live: bool,
    /// How the stored membership of a live segment stands.
    pub live_state: Option<LiveState>,
    /// What it does to contacts entering or leaving it (live only).
    pub actions: Vec<crate::model::action::Action>,
}

impl Segment {
    /// Whether queries can read the stored membership: live, enabled, and
    /// built from the current definition.
    pub fn stored(&self) -> bool {
        self.live
            && self.enabled
            && self.kind == SegmentKind::Dynamic
            && self
                .live_state
                .as_ref()
                .is_some_and(|l| l.built_version == Some(self.version))
    }
}

/// The maintenance state of a live segment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveState {
    /// The definition version the stored membership reflects.
    pub built_version: Option<i64>,
    /// Members.
    pub size: i64,
    /// The last entry or exit.
    pub changed_at: Option<DateTime<Utc>>,
    /// How long the last re-evaluation took, in milliseconds.
    pub eval_ms: Option<f64>,
    /// The last maintenance error.
    pub last_error: Option<String>,
    /// Age of the workspace's oldest unprocessed change, in seconds.
    pub lag_s: f64,
    /// When it was last evaluated over every contact.
    pub evaluated_at: Option<DateTime<Utc>>,
}

/// Where a definition being checked came from, so that problems found in
/// it name what the caller can fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// From the request, at this path (of a `Definition` message), as a
    /// tree (`<at>.rule`) or as text (`<at>.filter`).
    Request {
        /// Path of the `Definition` message, such as `segment.definition`.
        at: String,
        /// Given as text rather than as a tree.
        text: bool,
    },
    /// A saved segment's stored definition.
    Saved {
        /// The segment's name.
        name: String,
    },
}

/// A definition and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The rule tree.
    pub rule: Rule,
    /// Where it came from.
    pub origin: Origin,
}

impl Definition {
    /// A definition from the request at `at`.
    pub fn request(rule: Rule, at: &str, text: bool) -> Self {
        Self {
            rule,
            origin: Origin::Request {
                at: at.to_string(),
                text,
            },
        }
    }

    /// A saved segment's definition.
    pub fn saved(rule: Rule, name: &str) -> Self {
        Self {
            rule,
            origin: Origin::Saved {
                name: name.to_string(),
            },
        }
    }

    /// The error for `problems` found in the rule (paths relative to the
    /// rule, in proto field names): for a tree, violations under
    /// `<at>.rule`; for text, violations of `<at>.filter` that name the tree
    /// path in their description; for a saved segment, a failed precondition
    /// naming it (the catalog changed since it was saved).
    pub fn problems(&self, problems: Vec<Violation>) -> Error {
        match &self.origin {
            Origin::Request { at, text: false } => Error::InvalidArgument(
                problems
                    .into_iter()
                    .map(|v| v.under(&join_path(at, "rule")))
                    .collect(),
            ),
            Origin::Request { at, text: true } => {
                let field = join_path(at, "filter");
                Error::InvalidArgument(
                    problems
                        .into_iter()
                        .map(|v| {
                            let description = if v.field.is_empty() {
                                v.description
                            } else {
                                format!("{}: {}", v.field, v.description)
                            };
                            Violation::new(field.clone(), description)
                        })
                        .collect(),
                )
            }
            Origin::Saved { name } => {
                let first = problems.first().map_or_else(String::new, |v| {
                    if v.field.is_empty() {
                        v.description.clone()
                    } else {
                        format!("{}: {}", v.field, v.description)
                    }
                });
                Error::FailedPrecondition(format!(
                    "the definition of segment {name:?} no longer checks: {first}"
                ))
            }
        }
    }
}
