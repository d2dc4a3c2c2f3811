//! Activity events: append-only facts about what a contact did.

use chrono::{DateTime, Utc};

use super::contact::ContactKey;

/// Event types with a documented meaning. Any other identifier is a custom type.
pub const BUILTIN_EVENT_TYPES: &[&str] = &[
    "page_view",
    "product_view",
    "email_open",
    "email_click",
    "form_submit",
    "content_download",
    "cart_abandoned",
    "purchase",
    "donation",
    "event_registered",
    "event_attended",
    "call",
];

/// The event type that marks a conversion: recording one sets the contact's
/// `converted_at` if it is unset or later.
pub const CONVERSION_EVENT: &str = "purchase";

/// Largest accepted `properties` object, in bytes of JSON.
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;

/// An event to record, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Caller's idempotency key.
    pub event_key: Option<String>,
    /// Whose event.
    pub contact: ContactKey,
    /// The type, an identifier.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Amount.
    pub value: Option<f64>,
    /// Currency of the amount.
    pub currency: Option<String>,
    /// Properties (a JSON object).
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// segd's id.
    pub id: i64,
    /// Caller's idempotency key.
    pub event_key: Option<String>,
    /// Whose event.
    pub contact_id: i64,
    /// The type.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Amount.
    pub value: Option<f64>,
    /// Currency.
    pub currency: Option<String>,
    /// Properties.
    pub properties: serde_json::Map<String, serde_json::Value>,
}
