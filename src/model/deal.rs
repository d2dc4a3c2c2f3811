//! Deals: sales opportunities with one contact.

use chrono::{DateTime, Utc};

use super::str_enum;

str_enum!(
    /// Open, won or lost.
    DealStatus {
        /// Being worked on.
        Open => "open",
        /// Closed, won.
        Won => "won",
        /// Closed, lost.
        Lost => "lost",
    }
);

/// A deal.
#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    /// segd's id (0 when not yet stored).
    pub id: i64,
    /// Caller's id.
    pub external_id: Option<String>,
    /// The contact.
    pub contact_id: i64,
    /// Name.
    pub name: String,
    /// Status.
    pub status: DealStatus,
    /// Pipeline stage, an identifier.
    pub stage: Option<String>,
    /// Value.
    pub value: f64,
    /// Currency of the value.
    pub currency: Option<String>,
    /// Responsible manager.
    pub owner: Option<String>,
    /// Creation time (None on input means now).
    pub created_at: Option<DateTime<Utc>>,
    /// Close time.
    pub closed_at: Option<DateTime<Utc>>,
    /// Last change (output only).
    pub updated_at: Option<DateTime<Utc>>,
}

/// A deal to write: its values, and its contact by any key (the deal's
/// `contact_id` is filled in once the key is resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct DealInput {
    /// The deal's values.
    pub deal: Deal,
    /// Its contact.
    pub contact: super::contact::ContactKey,
}
