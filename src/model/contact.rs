//! The contact aggregate: identity, demographics, acquisition, CRM fields,
//! tags, labels, typed custom fields and subscriptions.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::{str_enum, validate};

str_enum!(
    /// How a contact was acquired.
    SourceChannel {
        /// Organic search or direct.
        Organic => "organic",
        /// Paid ads.
        Paid => "paid",
        /// Social media.
        Social => "social",
        /// A referral.
        Referral => "referral",
        /// An email campaign.
        Email => "email",
        /// An event.
        Event => "event",
        /// Imported.
        Import => "import",
        /// Anything else.
        Other => "other",
    }
);

str_enum!(
    /// A messaging channel.
    Channel {
        /// Email.
        Email => "email",
        /// SMS.
        Sms => "sms",
    }
);

str_enum!(
    /// Consent state on a channel.
    SubscriptionStatus {
        /// Opted in.
        Subscribed => "subscribed",
        /// Opted out.
        Unsubscribed => "unsubscribed",
        /// Waiting for confirmation.
        Pending => "pending",
    }
);

str_enum!(
    /// The type of a custom field.
    CustomFieldType {
        /// Text.
        String => "string",
        /// A finite number.
        Number => "number",
        /// True or false.
        Boolean => "boolean",
        /// A calendar date.
        Date => "date",
        /// A set of strings.
        StringList => "string_list",
    }
);

/// The labels every workspace has.
pub const BUILTIN_LABELS: &[(&str, &str)] = &[
    ("lead", "Interested, has not bought yet"),
    ("subscriber", "Opted in to email or SMS"),
    ("customer", "Has bought"),
    ("donor", "Has donated"),
    ("attendee", "Registered for or attended an event"),
    ("member", "Holds a course, class or club membership"),
    ("staff", "Works for the organisation"),
];

/// A typed custom field value. Stored in the contact's `attrs` JSON object as
/// a plain JSON value (dates as `YYYY-MM-DD` strings).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CustomValue {
    /// A string.
    String(String),
    /// A finite number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A date.
    Date(NaiveDate),
    /// A sorted, deduplicated list of strings.
    StringList(Vec<String>),
}

impl CustomValue {
    /// The custom field type this value belongs to.
    pub fn field_type(&self) -> CustomFieldType {
        match self {
            CustomValue::String(_) => CustomFieldType::String,
            CustomValue::Number(_) => CustomFieldType::Number,
            CustomValue::Bool(_) => CustomFieldType::Boolean,
            CustomValue::Date(_) => CustomFieldType::Date,
            CustomValue::StringList(_) => CustomFieldType::StringList,
        }
    }

    /// Reads a stored JSON value, given the field's type.
    pub fn from_json(t: CustomFieldType, v: &serde_json::Value) -> Option<Self> {
        use serde_json::Value as J;
        Some(match (t, v) {
            (CustomFieldType::String, J::String(s)) => CustomValue::String(s.clone()),
            (CustomFieldType::Number, J::Number(n)) => CustomValue::Number(n.as_f64()?),
            (CustomFieldType::Boolean, J::Bool(b)) => CustomValue::Bool(*b),
            (CustomFieldType::Date, J::String(s)) => {
                CustomValue::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?)
            }
            (CustomFieldType::StringList, J::Array(a)) => CustomValue::StringList(
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => return None,
        })
    }
}

/// A custom field definition.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomFieldDef {
    /// The key, an identifier.
    pub key: String,
    /// The value type.
    pub field_type: CustomFieldType,
    /// Description.
    pub description: String,
    /// When it was defined.
    pub created_at: DateTime<Utc>,
}

/// A label definition.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDef {
    /// The label, an identifier.
    pub name: String,
    /// Description.
    pub description: String,
    /// Built in to every workspace.
    pub builtin: bool,
}

/// A contact. Serialises to the JSON row shape the db layer writes with
/// `jsonb_to_recordset`, so field names are column names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Contact {
    /// Server-assigned id (0 before creation).
    pub id: i64,
    /// Caller's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Lower-cased email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Given name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Date of birth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    /// Gender, lower-cased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// BCP 47 locale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// ISO country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Company.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// Job title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    /// Acquisition channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_channel: Option<SourceChannel>,
    /// Acquisition detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_detail: Option<String>,
    /// Creation time (None on input means now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last change (output only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// First conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted_at: Option<DateTime<Utc>>,
    /// Responsible manager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Lifecycle labels, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Pipeline status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Reason for the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Lead score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_score: Option<f64>,
    /// Tags, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Custom field values by key.
    #[serde(rename = "attrs", skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, CustomValue>,
    /// Email subscription status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_status: Option<SubscriptionStatus>,
    /// When the email status changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_changed_at: Option<DateTime<Utc>>,
    /// SMS subscription status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_status: Option<SubscriptionStatus>,
    /// When the SMS status changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_changed_at: Option<DateTime<Utc>>,
    /// Optimistic-concurrency version (the etag).
    pub version: i64,
}

/// A contact's subscription on one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subscription {
    /// Status.
    pub status: SubscriptionStatus,
    /// When it changed.
    pub changed_at: Option<DateTime<Utc>>,
}

impl Contact {
    /// The subscription on `channel`, if any.
    pub fn subscription(&self, channel: Channel) -> Option<Subscription> {
        let (status, changed_at) = match channel {
            Channel::Email => (self.email_status, self.email_changed_at),
            Channel::Sms => (self.sms_status, self.sms_changed_at),
        };
        status.map(|status| Subscription { status, changed_at })
    }

    /// Sets or clears the subscription on `channel`.
    pub fn set_subscription(&mut self, channel: Channel, sub: Option<Subscription>) {
        let (status, changed_at) = match channel {
            Channel::Email => (&mut self.email_status, &mut self.email_changed_at),
            Channel::Sms => (&mut self.sms_status, &mut self.sms_changed_at),
        };
        *status = sub.map(|s| s.status);
        *changed_at = sub.and_then(|s| s.changed_at);
    }

    /// The etag for this version.
    pub fn etag(&self) -> String {
        format!("v{}", self.version)
    }
}

/// The plain text fields of a contact, named as in the API, the database and
/// the segment language. One registry for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    /// external_id
    ExternalId,
    /// email
    Email,
    /// phone
    Phone,
    /// first_name
    FirstName,
    /// last_name
    LastName,
    /// gender
    Gender,
    /// locale
    Locale,
    /// country
    Country,
    /// region
    Region,
    /// city
    City,
    /// postal_code
    PostalCode,
    /// company
    Company,
    /// job_title
    JobTitle,
    /// source_detail
    SourceDetail,
    /// owner
    Owner,
    /// status
    Status,
    /// status_reason
    StatusReason,
}

impl TextField {
    /// Every text field.
    pub const ALL: &'static [TextField] = &[
        TextField::ExternalId,
        TextField::Email,
        TextField::Phone,
        TextField::FirstName,
        TextField::LastName,
        TextField::Gender,
        TextField::Locale,
        TextField::Country,
        TextField::Region,
        TextField::City,
        TextField::PostalCode,
        TextField::Company,
        TextField::JobTitle,
        TextField::SourceDetail,
        TextField::Owner,
        TextField::Status,
        TextField::StatusReason,
    ];

    /// The field's name (API field, column and segment-language name).
    pub fn name(self) -> &'static str {
        match self {
            TextField::ExternalId => "external_id",
            TextField::Email => "email",
            TextField::Phone => "phone",
            TextField::FirstName => "first_name",
            TextField::LastName => "last_name",
            TextField::Gender => "gender",
            TextField::Locale => "locale",
            TextField::Country => "country",
            TextField::Region => "region",
            TextField::City => "city",
            TextField::PostalCode => "postal_code",
            TextField::Company => "company",
            TextField::JobTitle => "job_title",
            TextField::SourceDetail => "source_detail",
            TextField::Owner => "owner",
            TextField::Status => "status",
            TextField::StatusReason => "status_reason",
        }
    }

    /// Looks a field up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Normalises and validates a raw value for this field (empty → None).
    pub fn normalize(self, raw: &str) -> Result<Option<String>, String> {
        match self {
            TextField::Email => validate::email(raw),
            TextField::Phone => validate::phone(raw),
            TextField::Country => validate::country(raw),
            TextField::Locale => validate::locale(raw),
            TextField::Gender => validate::lower_text(raw),
            TextField::Status | TextField::StatusReason => validate::identifier(raw),
            _ => validate::text(raw),
        }
    }

    /// The value on `c`.
    pub fn get(self, c: &Contact) -> Option<&str> {
        self.slot_ref(c).as_deref()
    }

    /// Sets the value on `c`.
    pub fn set(self, c: &mut Contact, v: Option<String>) {
        *self.slot(c) = v;
    }

    fn slot_ref(self, c: &Contact) -> &Option<String> {
        match self {
            TextField::ExternalId => &c.external_id,
            TextField::Email => &c.email,
            TextField::Phone => &c.phone,
            TextField::FirstName => &c.first_name,
            TextField::LastName => &c.last_name,
            TextField::Gender => &c.gender,
            TextField::Locale => &c.locale,
            TextField::Country => &c.country,
            TextField::Region => &c.region,
            TextField::City => &c.city,
            TextField::PostalCode => &c.postal_code,
            TextField::Company => &c.company,
            TextField::JobTitle => &c.job_title,
            TextField::SourceDetail => &c.source_detail,
            TextField::Owner => &c.owner,
            TextField::Status => &c.status,
            TextField::StatusReason => &c.status_reason,
        }
    }

    fn slot(self, c: &mut Contact) -> &mut Option<String> {
        match self {
            TextField::ExternalId => &mut c.external_id,
            TextField::Email => &mut c.email,
            TextField::Phone => &mut c.phone,
            TextField::FirstName => &mut c.first_name,
            TextField::LastName => &mut c.last_name,
            TextField::Gender => &mut c.gender,
            TextField::Locale => &mut c.locale,
            TextField::Country => &mut c.country,
            TextField::Region => &mut c.region,
            TextField::City => &mut c.city,
            TextField::PostalCode => &mut c.postal_code,
            TextField::Company => &mut c.company,
            TextField::JobTitle => &mut c.job_title,
            TextField::SourceDetail => &mut c.source_detail,
            TextField::Owner => &mut c.owner,
            TextField::Status => &mut c.status,
            TextField::StatusReason => &mut c.status_reason,
        }
    }
}

/// A contact key used to find one contact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContactKey {
    /// By segd id.
    Id(i64),
    /// By external id.
    ExternalId(String),
    /// By normalised email.
    Email(String),
}

impl std::fmt::Display for ContactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContactKey::Id(id) => write!(f, "contact {id}"),
            ContactKey::ExternalId(x) => write!(f, "contact with external id {x:?}"),
            ContactKey::Email(e) => write!(f, "contact with email {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_field_registry_round_trips() {
        let mut c = Contact::default();
        for f in TextField::ALL {
            assert_eq!(TextField::from_name(f.name()), Some(*f));
            f.set(&mut c, Some(f.name().to_string()));
        }
        for f in TextField::ALL {
            assert_eq!(f.get(&c), Some(f.name()));
        }
    }

    #[test]
    fn contact_serialises_to_row_json() {
        let mut c = Contact {
            email: Some("a@b.co".into()),
            source_channel: Some(SourceChannel::Paid),
            ..Contact::default()
        };
        c.custom.insert(
            "plan".into(),
            CustomValue::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        );
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["email"], "a@b.co");
        assert_eq!(j["source_channel"], "paid");
        assert_eq!(j["attrs"]["plan"], "2024-02-29");
        assert_eq!(
            CustomValue::from_json(CustomFieldType::Date, &j["attrs"]["plan"]),
            c.custom.get("plan").cloned()
        );
    }
}
