//! The change queue: what each write changed, appended in the write's own
//! transaction so that live memberships never miss a committed write, even
//! across a crash.

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::contact::Contact;

pub use crate::model::deps::*;

/// What one write changed: which contacts, and what about them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// The contacts (`None`: every contact of the workspace).
    pub ids: Option<BTreeSet<i64>>,
    /// Dependency keys of what changed.
    pub keys: BTreeSet<String>,
}

impl Touched {
    /// Nothing changed.
    pub fn nothing() -> Self {
        Self {
            ids: Some(BTreeSet::new()),
            keys: BTreeSet::new(),
        }
    }

    /// `ids` changed in what `keys` name.
    pub fn of(ids: impl IntoIterator<Item = i64>, keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            ids: Some(ids.into_iter().collect()),
            keys: keys.into_iter().collect(),
        }
    }

    /// Whether there is anything to record.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() || self.ids.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// Adds another write's changes.
    pub fn add(&mut self, other: Touched) {
        match (&mut self.ids, other.ids) {
            (Some(a), Some(b)) => a.extend(b),
            (a, _) => *a = None,
        }
        self.keys.extend(other.keys);
    }
}

/// The dependency keys of what differs between two versions of a contact.
pub fn contact_diff(before: &Contact, after: &Contact) -> BTreeSet<String> {
    let to_map = |c: &Contact| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (to_map(before), to_map(after));
    let mut keys = BTreeSet::new();
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let (x, y) = (a.get(name.as_str()), b.get(name.as_str()));
        if x == y {
            continue;
        }
        match name.as_str() {
            "version" => {}
            "tags" => {
                keys.insert(TAGS.to_string());
            }
            "labels" => {
                keys.insert(LABELS.to_string());
            }
            "email_status" | "email_changed_at" => {
                keys.insert(subscription("email"));
            }
            "sms_status" | "sms_changed_at" => {
                keys.insert(subscription("sms"));
            }
            "attrs" => {
                let obj = |v: Option<&serde_json::Value>| {
                    v.and_then(|v| v.as_object().cloned()).unwrap_or_default()
                };
                let (x, y) = (obj(x), obj(y));
                for k in x.keys().chain(y.keys()) {
                    if x.get(k) != y.get(k) {
                        keys.insert(attr(k));
                    }
                }
            }
            other => {
                keys.insert(column(other));
            }
        }
    }
    keys
}

/// Appends `t` to workspace `ws`'s queue, as part of the caller's
/// transaction. Nothing is appended when nothing changed.
///
/// # Errors
/// The database is unavailable.
pub async fn enqueue(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    t: &Touched,
    cause: &str,
) -> Result<()> {
    enqueue_at(tx, ws, t, cause, 0).await
}

/// [`enqueue`] for a write made by segment actions, `depth` of them in a
/// chain (0: a caller's write).
///
/// # Errors
/// The database is unavailable.
pub async fn enqueue_at(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    t: &Touched,
    cause: &str,
    depth: i32,
) -> Result<()> {
    if t.is_empty() {
        return Ok(());
    }
    let ids: Option<Vec<i64>> = t.ids.as_ref().map(|s| s.iter().copied().collect());
    let keys: Vec<&str> = t.keys.iter().map(String::as_str).collect();
    tx.execute(
        "INSERT INTO change_queue (workspace_id, contact_ids, keys, cause, depth) VALUES ($1, $2, $3, $4, $5)",
        &[&ws.0, &ids, &keys, &cause, &depth],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::contact::{CustomValue, SubscriptionStatus};

    #[test]
    fn a_contact_diff_names_what_changed() {
        let before = Contact {
            id: 1,
            country: Some("DE".into()),
            tags: vec!["a".into()],
            ..Default::default()
        };
        let mut after = before.clone();
        assert!(contact_diff(&before, &after).is_empty());
        after.country = Some("FR".into());
        after.tags.push("b".into());
        after.version += 1;
        after
            .custom
            .insert("plan".into(), CustomValue::String("pro".into()));
        after.email_status = Some(SubscriptionStatus::Subscribed);
        let keys: Vec<String> = contact_diff(&before, &after).into_iter().collect();
        assert_eq!(keys, ["attr:plan", "col:country", "sub:email", "tag"]);
    }

    #[test]
    fn touched_sets_combine() {
        let mut t = Touched::of([1, 2], [event("a")]);
        t.add(Touched::of([3], [DEAL.to_string()]));
        assert_eq!(t.ids.as_ref().map(|s| s.len()), Some(3));
        t.add(Touched {
            ids: None,
            keys: BTreeSet::new(),
        });
        assert!(t.ids.is_none());
        assert!(!Touched::nothing().keys.iter().any(|_| true));
        assert!(Touched::nothing().is_empty());
    }
}
