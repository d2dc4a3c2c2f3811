//! The checked, typed predicate: fields resolved to columns, literals typed,
//! dynamic segment references inlined (or, for live segments whose stored
//! membership is current, read from it). `lower` and `eval` both consume it.

use chrono::{DateTime, NaiveDate, Utc};

use super::ast::{AggFunc, SetMatch, Span, Window};
use crate::model::contact::{Channel, CustomFieldType, SubscriptionStatus};

/// A predicate over one contact.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// Conjunction (true when empty).
    All(Vec<Pred>),
    /// Disjunction (false when empty).
    Any(Vec<Pred>),
    /// Negation.
    Not(Box<Pred>),
    /// A field test.
    Field(Field, Test),
    /// A set test.
    Set(SetTarget, SetMatch, Vec<String>),
    /// A subscription state.
    Subscription(Channel, SubscriptionStatus),
    /// An aggregate over events.
    Event(Box<EventAgg>),
    /// An aggregate over deals.
    Deal(Box<DealAgg>),
    /// Stored membership of a STATIC or SNAPSHOT segment.
    Member(i64),
    /// Stored membership of a live DYNAMIC segment.
    Live(i64),
}

/// A contact field.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// The id (number).
    Id,
    /// A text column, by its fixed name.
    Text(&'static str),
    /// `lead_score` (number).
    LeadScore,
    /// `birth_date` (date).
    BirthDate,
    /// A timestamp column: created_at, updated_at or converted_at.
    Time(&'static str),
    /// Age in whole years, derived from `birth_date`.
    Age,
    /// A custom field of the given type.
    Custom(String, CustomFieldType),
}

/// What a field holds, which decides the operators it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// A number.
    Number,
    /// A boolean.
    Bool,
    /// A calendar date.
    Date,
    /// An instant.
    Time,
}

/// A typed literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// Text.
    Text(String),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A date.
    Date(NaiveDate),
    /// An instant.
    Time(DateTime<Utc>),
}

/// An ordering comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ord {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

/// Where a case-insensitive pattern must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Like {
    /// Anywhere.
    Contains,
    /// At the start.
    StartsWith,
    /// At the end.
    EndsWith,
}

/// A test on one value. A missing value (NULL) fails every test except
/// `IsNotSet`; negation of a whole condition is handled by `Pred::Not`.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Equal.
    Eq(Lit),
    /// Set and not equal.
    Neq(Lit),
    /// Equal to one of.
    In(Vec<Lit>),
    /// Set and equal to none of.
    NotIn(Vec<Lit>),
    /// Case-insensitive text match.
    Like(Like, String),
    /// Ordering.
    Cmp(Ord, Lit),
    /// Inclusive range.
    Between(Lit, Lit),
    /// Has a value.
    IsSet,
    /// Has no value.
    IsNotSet,
    /// Within the last span (up to now).
    WithinLast(Span),
    /// Before now minus the span.
    OlderThan(Span),
    /// From now to now plus the span.
    WithinNext(Span),
    /// Month and day fall within the next span.
    Anniversary(Span),
}

/// A set-valued field.
#[derive(Debug, Clone, PartialEq)]
pub enum SetTarget {
    /// Tags.
    Tags,
    /// Lifecycle labels.
    Labels,
    /// A STRING_LIST custom field.
    CustomList(String),
}

/// A field of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventField {
    /// The amount (number).
    Value,
    /// The currency (text).
    Currency,
    /// A property; its tests compare by the literal's type.
    Prop(String),
}

/// A field of a deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealField {
    /// open, won or lost (text).
    Status,
    /// Stage (text).
    Stage,
    /// Value (number).
    Value,
    /// Currency (text).
    Currency,
    /// Owner (text).
    Owner,
    /// Name (text).
    Name,
    /// Creation time.
    CreatedAt,
    /// Close time.
    ClosedAt,
}

/// An aggregate and its test. Count, Sum and Distinct of nothing are 0;
/// the others of nothing have no value.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg<F> {
    /// The function.
    pub func: AggFunc,
    /// Its argument (Sum, Avg, Min, Max, Distinct).
    pub arg: Option<F>,
    /// The test on its result.
    pub test: Test,
}

/// Events of some types, filtered, aggregated, tested.
#[derive(Debug, Clone, PartialEq)]
pub struct EventAgg {
    /// The types, sorted and distinct; `None` for every type.
    pub types: Option<Vec<String>>,
    /// The time window.
    pub window: Option<Window>,
    /// Tests every counted event passes.
    pub filters: Vec<(EventField, Test)>,
    /// The aggregate.
    pub agg: Agg<EventField>,
}

/// Deals, filtered, aggregated, tested.
#[derive(Debug, Clone, PartialEq)]
pub struct DealAgg {
    /// Tests every counted deal passes.
    pub filters: Vec<(DealField, Test)>,
    /// The aggregate.
    pub agg: Agg<DealField>,
}
