//! The rule tree as callers write it. Names are unresolved strings; values
//! are untyped literals. `check` turns it into `ir`.

use chrono::{DateTime, NaiveDate, Utc};

use crate::model::contact::{Channel, SubscriptionStatus};

/// A rule: boolean structure over conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Every rule holds (AND). Empty means true.
    All(Vec<Rule>),
    /// At least one rule holds (OR). Empty means false.
    Any(Vec<Rule>),
    /// The rule does not hold.
    Not(Box<Rule>),
    /// A condition on a contact field.
    Field(FieldCond),
    /// A condition on a set-valued field (tags, labels, list custom fields).
    Set(SetCond),
    /// A subscription state.
    Subscription(SubscriptionCond),
    /// A condition on the contact's events.
    Event(EventCond),
    /// A condition on the contact's deals.
    Deal(DealCond),
    /// Membership of another segment.
    Segment(SegmentRef),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `IN (...)`
    In,
    /// `NOT IN (...)`
    NotIn,
    /// `CONTAINS` (case-insensitive)
    Contains,
    /// `STARTS_WITH` (case-insensitive)
    StartsWith,
    /// `ENDS_WITH` (case-insensitive)
    EndsWith,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `BETWEEN a AND b` (inclusive)
    Between,
    /// `IS SET`
    IsSet,
    /// `IS NOT SET`
    IsNotSet,
    /// `WITHIN_LAST 30d`: between now minus the span and now.
    WithinLast,
    /// `OLDER_THAN 60d`: before now minus the span.
    OlderThan,
    /// `WITHIN_NEXT 7d`: between now and now plus the span.
    WithinNext,
    /// `ANNIVERSARY_WITHIN 7d`: month and day fall in the next span.
    AnniversaryWithin,
}

impl Op {
    /// Operators taking a relative span instead of values.
    pub fn is_relative(self) -> bool {
        matches!(
            self,
            Op::WithinLast | Op::OlderThan | Op::WithinNext | Op::AnniversaryWithin
        )
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(String),
    /// A finite number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A calendar date.
    Date(NaiveDate),
    /// An instant.
    Time(DateTime<Utc>),
}

/// A unit of relative time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Hours.
    Hours,
    /// Days.
    Days,
    /// Weeks.
    Weeks,
    /// Calendar months.
    Months,
}

/// A span of relative time, such as 90 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// How many units (positive).
    pub amount: i64,
    /// The unit.
    pub unit: Unit,
}

/// An operator with its operands.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmp {
    /// The operator.
    pub op: Op,
    /// Values (none for IS SET and relative operators).
    pub values: Vec<Value>,
    /// The span, for relative operators.
    pub span: Option<Span>,
}

/// A condition on a named field: `country IN ("US","CA")`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCond {
    /// The field: a contact field, `custom.<key>`, or inside event and deal
    /// conditions one of their fields (`properties.<key>` for event properties).
    pub field: String,
    /// The comparison.
    pub cmp: Cmp,
}

/// How a set condition matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetMatch {
    /// Has at least one of the values.
    Any,
    /// Has every value.
    All,
    /// Has none of the values.
    None,
}

/// A condition on a set-valued field: `tags HAS_ANY ("vip")`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetCond {
    /// `tags`, `labels` or `custom.<key>` of a STRING_LIST field.
    pub field: String,
    /// How to match.
    pub matching: SetMatch,
    /// The values.
    pub values: Vec<String>,
}

/// `subscription(email, subscribed)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubscriptionCond {
    /// The channel.
    pub channel: Channel,
    /// The required status.
    pub status: SubscriptionStatus,
}

/// Which events count, by time.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// Within the last span.
    Last(Span),
    /// More than the span ago.
    OlderThan(Span),
    /// From `start` (inclusive) to `end` (exclusive).
    Between(DateTime<Utc>, DateTime<Utc>),
    /// Before the instant.
    Before(DateTime<Utc>),
    /// At or after the instant.
    After(DateTime<Utc>),
    /// After the contact's most recent event of this type (all events if it
    /// has none).
    SinceLast(String),
}

/// An aggregate function over matching events or deals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// Number of matches (0 when none).
    Count,
    /// Sum of a numeric field (0 when none).
    Sum,
    /// Average of a numeric field.
    Avg,
    /// Minimum of a numeric field.
    Min,
    /// Maximum of a numeric field.
    Max,
    /// Number of distinct values of a field (0 when none).
    Distinct,
    /// Time of the first match.
    First,
    /// Time of the last match.
    Last,
}

/// An aggregate compared to a value: `.count >= 2`, `.sum(value) > 100`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The function.
    pub func: AggFunc,
    /// Its argument, for sum, avg, min, max and distinct.
    pub field: Option<String>,
    /// The comparison.
    pub cmp: Cmp,
}

/// Which events a condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTypes {
    /// Events of any type: `event(*)`.
    Any,
    /// Events of these types: `event(purchase)`, `event(email_open|email_click)`.
    Of(Vec<String>),
}

impl EventTypes {
    /// Events of one type.
    pub fn one(t: impl Into<String>) -> Self {
        EventTypes::Of(vec![t.into()])
    }
}

/// A condition on events: `event(purchase, last 90d).count >= 2`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventCond {
    /// The event types read.
    pub types: EventTypes,
    /// Which events count by time; all when absent.
    pub window: Option<Window>,
    /// Conditions every counted event meets (`value`, `currency`,
    /// `properties.<key>`).
    pub filters: Vec<FieldCond>,
    /// The aggregate; `count >= 1` when absent.
    pub aggregate: Option<Aggregate>,
}

/// A condition on deals: `deal(status = "won").count >= 2`.
#[derive(Debug, Clone, PartialEq)]
pub struct DealCond {
    /// Conditions every counted deal meets.
    pub filters: Vec<FieldCond>,
    /// The aggregate; `count >= 1` when absent.
    pub aggregate: Option<Aggregate>,
}

/// A reference to another segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SegmentRef {
    /// By id.
    Id(i64),
    /// By name.
    Name(String),
}
