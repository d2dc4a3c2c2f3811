//! Segments: saved definitions and static member lists.

use chrono::{DateTime, Utc};

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
}
