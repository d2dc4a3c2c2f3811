//! Folding duplicate contacts into a primary one (pure; the db layer moves
//! the rows).

use super::contact::{Channel, Contact, TextField};

/// The primary after absorbing `dups`: the primary's values win; fields it
/// lacks come from the first duplicate that has them; tags and labels are
/// united; the earliest `created_at` and `converted_at` are kept; on each
/// channel the most recently changed subscription wins.
pub fn merge(primary: &Contact, dups: &[Contact]) -> Contact {
    let mut m = primary.clone();
    for d in dups {
        for f in TextField::ALL {
            if f.get(&m).is_none() {
                f.set(&mut m, f.get(d).map(str::to_string));
            }
        }
        m.birth_date = m.birth_date.or(d.birth_date);
        m.source_channel = m.source_channel.or(d.source_channel);
        m.lead_score = m.lead_score.or(d.lead_score);
        m.created_at = earliest(m.created_at, d.created_at);
        m.converted_at = earliest(m.converted_at, d.converted_at);
        m.tags.extend(d.tags.iter().cloned());
        m.labels.extend(d.labels.iter().cloned());
        for (k, v) in &d.custom {
            m.custom.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for ch in Channel::ALL {
            let (mine, theirs) = (m.subscription(*ch), d.subscription(*ch));
            let take = match (mine, theirs) {
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b.changed_at > a.changed_at,
                _ => false,
            };
            if take {
                m.set_subscription(*ch, theirs);
            }
        }
    }
    m.tags.sort();
    m.tags.dedup();
    m.labels.sort();
    m.labels.dedup();
    m
}

fn earliest<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::model::contact::{Subscription, SubscriptionStatus};

    #[test]
    fn primary_wins_and_gaps_fill() {
        let p = Contact {
            id: 1,
            email: Some("p@x.co".into()),
            tags: vec!["a".into()],
            created_at: Some(Utc.timestamp_opt(200, 0).unwrap()),
            ..Contact::default()
        };
        let mut d = Contact {
            id: 2,
            email: Some("d@x.co".into()),
            city: Some("Oslo".into()),
            tags: vec!["b".into(), "a".into()],
            labels: vec!["lead".into()],
            created_at: Some(Utc.timestamp_opt(100, 0).unwrap()),
            ..Contact::default()
        };
        d.set_subscription(
            Channel::Email,
            Some(Subscription {
                status: SubscriptionStatus::Unsubscribed,
                changed_at: Some(Utc.timestamp_opt(5, 0).unwrap()),
            }),
        );
        let m = merge(&p, &[d]);
        assert_eq!(m.id, 1);
        assert_eq!(m.email.as_deref(), Some("p@x.co"));
        assert_eq!(m.city.as_deref(), Some("Oslo"));
        assert_eq!(m.tags, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(m.labels, vec!["lead".to_string()]);
        assert_eq!(m.created_at, Some(Utc.timestamp_opt(100, 0).unwrap()));
        assert_eq!(
            m.subscription(Channel::Email).map(|s| s.status),
            Some(SubscriptionStatus::Unsubscribed)
        );
    }
}
