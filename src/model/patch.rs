//! A partial update of a contact, built from an update mask at the API edge
//! and applied inside the database transaction to the locked row.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::contact::{Channel, Contact, CustomValue, SourceChannel, Subscription, TextField};

/// One field change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set or clear a text field.
    Text(TextField, Option<String>),
    /// Set or clear the birth date.
    BirthDate(Option<NaiveDate>),
    /// Set or clear the source channel.
    SourceChannel(Option<SourceChannel>),
    /// Set the creation time (None leaves it).
    CreatedAt(Option<DateTime<Utc>>),
    /// Set or clear the conversion time.
    ConvertedAt(Option<DateTime<Utc>>),
    /// Replace the labels.
    Labels(Vec<String>),
    /// Set or clear the lead score.
    LeadScore(Option<f64>),
    /// Replace the tags.
    Tags(Vec<String>),
    /// Replace every custom field.
    Custom(BTreeMap<String, CustomValue>),
    /// Set (Some) or remove (None) one custom field.
    CustomKey(String, Option<CustomValue>),
    /// Replace the subscriptions: channels not listed are cleared.
    Subscriptions(BTreeMap<Channel, Subscription>),
}

/// An ordered list of changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch(pub Vec<Change>);

impl Patch {
    /// Applies the changes to `c`. A subscription whose status changes
    /// without a time gets `now`.
    pub fn apply(&self, c: &mut Contact, now: DateTime<Utc>) {
        for change in &self.0 {
            match change {
                Change::Text(f, v) => f.set(c, v.clone()),
                Change::BirthDate(v) => c.birth_date = *v,
                Change::SourceChannel(v) => c.source_channel = *v,
                Change::CreatedAt(v) => c.created_at = v.or(c.created_at),
                Change::ConvertedAt(v) => c.converted_at = *v,
                Change::Labels(v) => c.labels = v.clone(),
                Change::LeadScore(v) => c.lead_score = *v,
                Change::Tags(v) => c.tags = v.clone(),
                Change::Custom(m) => c.custom = m.clone(),
                Change::CustomKey(k, Some(v)) => {
                    c.custom.insert(k.clone(), v.clone());
                }
                Change::CustomKey(k, None) => {
                    c.custom.remove(k);
                }
                Change::Subscriptions(subs) => {
                    for ch in Channel::ALL {
                        let old = c.subscription(*ch);
                        let new = subs.get(ch).map(|s| Subscription {
                            status: s.status,
                            changed_at: s.changed_at.or(match old {
                                Some(o) if o.status == s.status => o.changed_at,
                                _ => Some(now),
                            }),
                        });
                        c.set_subscription(*ch, new);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::contact::SubscriptionStatus;

    #[test]
    fn subscription_times_default_only_on_change() {
        let now = Utc.timestamp_opt(1000, 0).unwrap();
        let then = Utc.timestamp_opt(10, 0).unwrap();
        let mut c = Contact::default();
        c.set_subscription(
            Channel::Email,
            Some(Subscription {
                status: SubscriptionStatus::Subscribed,
                changed_at: Some(then),
            }),
        );
        let same = BTreeMap::from([(
            Channel::Email,
            Subscription {
                status: SubscriptionStatus::Subscribed,
                changed_at: None,
            },
        )]);
        Patch(vec![Change::Subscriptions(same)]).apply(&mut c, now);
        assert_eq!(c.email_changed_at, Some(then));
        let sms = BTreeMap::from([(
            Channel::Sms,
            Subscription {
                status: SubscriptionStatus::Pending,
                changed_at: None,
            },
        )]);
        Patch(vec![Change::Subscriptions(sms)]).apply(&mut c, now);
        assert_eq!(c.email_status, None, "unlisted channels are cleared");
        assert_eq!(c.sms_changed_at, Some(now));
    }
}
