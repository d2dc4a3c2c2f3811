//! Segment actions: what a live segment does to a contact that enters or
//! leaves it (add or remove labels and tags, set a status, set or clear
//! custom fields). The maintainer applies them as ordinary contact writes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::contact::CustomValue;
use super::deps;
use super::schema::Schema;
use super::{str_enum, validate};
use crate::error::Violation;

str_enum!(
    /// When an action runs.
    Trigger {
        /// As a contact enters the segment.
        Enter => "enter",
        /// As a contact leaves it.
        Exit => "exit",
    }
);

/// One action of a live segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// When it runs.
    pub on: Trigger,
    /// Labels added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_labels: Vec<String>,
    /// Labels removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_labels: Vec<String>,
    /// Tags added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_tags: Vec<String>,
    /// Tags removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
    /// The status set, with `status_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_status: Option<String>,
    /// The reason set with `set_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// With `set_status`: the statuses it may replace (a contact with none
    /// is always set). Empty: any status, manual ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_statuses: Vec<String>,
    /// Custom fields set, by key (stored JSON values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_fields: BTreeMap<String, serde_json::Value>,
    /// Custom fields cleared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear_fields: Vec<String>,
}

impl Action {
    /// An action that does nothing yet, run on `on`.
    pub fn on(on: Trigger) -> Self {
        Self {
            on,
            add_labels: vec![],
            remove_labels: vec![],
            add_tags: vec![],
            remove_tags: vec![],
            set_status: None,
            status_reason: None,
            replace_statuses: vec![],
            set_fields: BTreeMap::new(),
            clear_fields: vec![],
        }
    }

    /// The dependency keys of what it writes (see [`deps`]).
    pub fn writes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if !(self.add_labels.is_empty() && self.remove_labels.is_empty()) {
            out.insert(deps::LABELS.to_string());
        }
        if !(self.add_tags.is_empty() && self.remove_tags.is_empty()) {
            out.insert(deps::TAGS.to_string());
        }
        if self.set_status.is_some() {
            out.insert(deps::column("status"));
            out.insert(deps::column("status_reason"));
        }
        out.extend(self.set_fields.keys().map(|k| deps::attr(k)));
        out.extend(self.clear_fields.iter().map(|k| deps::attr(k)));
        out
    }

    /// Whether it does anything.
    pub fn is_empty(&self) -> bool {
        self.writes().is_empty()
    }
}

/// Most actions on one segment.
pub const MAX_ACTIONS: usize = 16;

/// Normalises and checks `actions` against the workspace's `schema`:
/// labels defined, custom fields defined and of the right type, sets
/// bounded. Violations are named under `field` (`segment.actions`).
pub fn check(
    field: &str,
    actions: Vec<Action>,
    schema: &Schema,
) -> Result<Vec<Action>, Vec<Violation>> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    if actions.len() > MAX_ACTIONS {
        bad.push(Violation::new(
            field,
            format!("at most {MAX_ACTIONS} actions"),
        ));
        return Err(bad);
    }
    for (i, mut a) in actions.into_iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let mut set = |name: &str, v: &mut Vec<String>| match validate::tag_set(v) {
            Ok(s) => *v = s,
            Err(e) => bad.push(Violation::new(at(name), e)),
        };
        set("add_labels", &mut a.add_labels);
        set("remove_labels", &mut a.remove_labels);
        set("add_tags", &mut a.add_tags);
        set("remove_tags", &mut a.remove_tags);
        set("replace_statuses", &mut a.replace_statuses);
        set("clear_fields", &mut a.clear_fields);
        for (name, list) in [
            ("add_labels", &a.add_labels),
            ("remove_labels", &a.remove_labels),
        ] {
            for (j, l) in list.iter().enumerate() {
                if !schema.labels.contains(l) {
                    bad.push(Violation::new(
                        format!("{}[{j}]", at(name)),
                        format!("unknown label `{l}`; define it with DefineLabel"),
                    ));
                }
            }
        }
        if let Some(l) = a.add_labels.iter().find(|l| a.remove_labels.contains(l)) {
            bad.push(Violation::new(
                at("remove_labels"),
                format!("`{l}` is both added and removed"),
            ));
        }
        if let Some(t) = a.add_tags.iter().find(|t| a.remove_tags.contains(t)) {
            bad.push(Violation::new(
                at("remove_tags"),
                format!("`{t}` is both added and removed"),
            ));
        }
        match a.set_status.as_deref().map(validate::text) {
            Some(Ok(Some(s))) => a.set_status = Some(s),
            Some(Ok(None)) | None => {
                a.set_status = None;
                if a.status_reason.is_some() || !a.replace_statuses.is_empty() {
                    bad.push(Violation::new(
                        at("set_status"),
                        "required with status_reason or replace_statuses",
                    ));
                }
            }
            Some(Err(e)) => bad.push(Violation::new(at("set_status"), e)),
        }
        match a.status_reason.as_deref().map(validate::text) {
            Some(Ok(r)) => a.status_reason = r,
            Some(Err(e)) => bad.push(Violation::new(at("status_reason"), e)),
            None => {}
        }
        for (k, v) in &a.set_fields {
            let f = format!("{}.{k}", at("set_fields"));
            match schema.custom.get(k) {
                None => bad.push(Violation::new(
                    f,
                    format!("unknown custom field `{k}`; define it with DefineCustomField"),
                )),
                Some(t) if CustomValue::from_json(*t, v).is_none() => {
                    bad.push(Violation::new(f, format!("`{k}` is a {t} field")));
                }
                Some(_) => {}
            }
            if a.clear_fields.contains(k) {
                bad.push(Violation::new(
                    at("clear_fields"),
                    format!("`{k}` is both set and cleared"),
                ));
            }
        }
        for (j, k) in a.clear_fields.iter().enumerate() {
            if !schema.custom.contains_key(k) {
                bad.push(Violation::new(
                    format!("{}[{j}]", at("clear_fields")),
                    format!("unknown custom field `{k}`"),
                ));
            }
        }
        if a.is_empty() {
            bad.push(Violation::new(at("on"), "an action must change something"));
        }
        out.push(a);
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// A lifecycle rule every new workspace gets: an ordinary live segment
/// with actions, which the workspace can edit, disable or delete.
pub struct Rule {
    /// Its segment's name.
    pub name: &'static str,
    /// Its segment's description.
    pub description: &'static str,
    /// Its segment's definition.
    pub definition: &'static str,
    /// What it does on entry.
    pub on_enter: Action,
}

/// The statuses purchase frequency sets; the frequency rules replace only
/// these (or no status), never a manual one such as `in_progress`.
pub const FREQUENCY_STATUSES: [&str; 3] = ["one_time", "occasional", "regular"];

/// The lifecycle rules of a new workspace: labels that follow behaviour,
/// and a status that follows purchase frequency (thresholds and windows
/// are in the definitions: 3 purchases in 90 days make a regular buyer).
pub fn lifecycle_rules() -> Vec<Rule> {
    let labels = |add: &[&str], remove: &[&str]| Action {
        add_labels: add.iter().map(|s| (*s).to_string()).collect(),
        remove_labels: remove.iter().map(|s| (*s).to_string()).collect(),
        ..Action::on(Trigger::Enter)
    };
    let status = |s: &str| Action {
        set_status: Some(s.to_string()),
        status_reason: Some("purchase frequency".to_string()),
        replace_statuses: FREQUENCY_STATUSES
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
        ..Action::on(Trigger::Enter)
    };
    vec![
        Rule {
            name: "Rule: a purchase makes a customer",
            description: "Adds the customer label and removes lead on a first purchase",
            definition: "event(purchase)",
            on_enter: labels(&["customer"], &["lead"]),
        },
        Rule {
            name: "Rule: a donation makes a donor",
            description: "Adds the donor label on a first donation",
            definition: "event(donation)",
            on_enter: labels(&["donor"], &[]),
        },
        Rule {
            name: "Rule: attending makes an attendee",
            description: "Adds the attendee label when a contact attends an event",
            definition: "event(event_attended)",
            on_enter: labels(&["attendee"], &[]),
        },
        Rule {
            name: "Rule: an email opt-in makes a subscriber",
            description: "Adds the subscriber label when a contact subscribes to email",
            definition: "subscription(email, subscribed)",
            on_enter: labels(&["subscriber"], &[]),
        },
        Rule {
            name: "Rule: a membership purchase makes a member",
            description: "Adds the member label on a purchase of the product `membership` (edit the definition for another product or event type)",
            definition: "event(purchase, properties.product = \"membership\")",
            on_enter: labels(&["member"], &[]),
        },
        Rule {
            name: "Status: one-time buyer",
            description: "Exactly one purchase ever",
            definition: "event(purchase).count = 1",
            on_enter: status("one_time"),
        },
        Rule {
            name: "Status: occasional buyer",
            description: "More than one purchase, fewer than 3 in 90 days",
            definition: "event(purchase).count >= 2 AND NOT event(purchase, last 90d).count >= 3",
            on_enter: status("occasional"),
        },
        Rule {
            name: "Status: regular buyer",
            description: "At least 3 purchases in 90 days",
            definition: "event(purchase, last 90d).count >= 3",
            on_enter: status("regular"),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::contact::CustomFieldType;

    fn schema() -> Schema {
        Schema {
            custom: [("tier".to_string(), CustomFieldType::String)].into(),
            labels: ["lead".to_string(), "customer".to_string()].into(),
        }
    }

    #[test]
    fn actions_are_normalised_and_say_what_they_write() {
        let a = Action {
            add_labels: vec!["customer".into(), " customer ".into()],
            remove_labels: vec!["lead".into()],
            set_status: Some(" regular ".into()),
            set_fields: [("tier".to_string(), serde_json::json!("gold"))].into(),
            ..Action::on(Trigger::Enter)
        };
        let out = check("segment.actions", vec![a], &schema()).unwrap();
        assert_eq!(out[0].add_labels, ["customer"]);
        assert_eq!(out[0].set_status.as_deref(), Some("regular"));
        let w: Vec<String> = out[0].writes().into_iter().collect();
        assert_eq!(
            w,
            ["attr:tier", "col:status", "col:status_reason", "label"],
            "{w:?}"
        );
        // Stored and read back as JSON.
        let j = serde_json::to_value(&out).unwrap();
        let back: Vec<Action> = serde_json::from_value(j).unwrap();
        assert_eq!(back, out);
    }

    #[test]
    fn bad_actions_name_their_fields() {
        let bad = vec![
            Action::on(Trigger::Exit),
            Action {
                add_labels: vec!["vip".into()],
                add_tags: vec!["x".into()],
                remove_tags: vec!["x".into()],
                status_reason: Some("why".into()),
                set_fields: [("tier".to_string(), serde_json::json!(3))].into(),
                clear_fields: vec!["nope".into()],
                ..Action::on(Trigger::Enter)
            },
        ];
        let v: Vec<String> = check("segment.actions", bad, &schema())
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            v,
            [
                "segment.actions[0].on",
                "segment.actions[1].add_labels[0]",
                "segment.actions[1].remove_tags",
                "segment.actions[1].set_status",
                "segment.actions[1].set_fields.tier",
                "segment.actions[1].clear_fields[0]",
            ]
        );
    }
}
