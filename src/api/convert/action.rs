//! Segment actions between proto and model.

use super::contact::{custom_from_proto, custom_to_proto};
use crate::error::Violation;
use crate::model::action::{Action, Trigger};
use crate::model::contact::CustomValue;
use crate::model::schema::Schema;
use crate::proto as pb;

/// Actions from a request, shape-checked (names under `field`); labels and
/// custom fields are checked against the workspace by
/// [`crate::model::action::check`].
///
/// # Errors
/// Violations: an unset trigger, an undecodable custom value.
pub fn from_proto(
    field: &str,
    actions: &[pb::SegmentAction],
) -> Result<Vec<Action>, Vec<Violation>> {
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let on = match pb::ActionTrigger::try_from(a.trigger) {
            Ok(pb::ActionTrigger::Enter) => Trigger::Enter,
            Ok(pb::ActionTrigger::Exit) => Trigger::Exit,
            _ => {
                bad.push(Violation::new(
                    format!("{field}[{i}].trigger"),
                    "set ACTION_TRIGGER_ENTER or ACTION_TRIGGER_EXIT",
                ));
                continue;
            }
        };
        let mut set_fields = std::collections::BTreeMap::new();
        for (k, v) in &a.set_fields {
            match custom_from_proto(v).map(|v| serde_json::to_value(&v)) {
                Ok(Ok(j)) => {
                    set_fields.insert(k.clone(), j);
                }
                Ok(Err(e)) => bad.push(Violation::new(
                    format!("{field}[{i}].set_fields.{k}"),
                    e.to_string(),
                )),
                Err(e) => bad.push(Violation::new(format!("{field}[{i}].set_fields.{k}"), e)),
            }
        }
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        out.push(Action {
            on,
            add_labels: a.add_labels.clone(),
            remove_labels: a.remove_labels.clone(),
            add_tags: a.add_tags.clone(),
            remove_tags: a.remove_tags.clone(),
            set_status: text(&a.set_status),
            status_reason: text(&a.status_reason),
            replace_statuses: a.replace_statuses.clone(),
            set_fields,
            clear_fields: a.clear_fields.clone(),
        });
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// An action as proto; `schema` types its custom values.
pub fn to_proto(a: &Action, schema: Option<&Schema>) -> pb::SegmentAction {
    pb::SegmentAction {
        trigger: match a.on {
            Trigger::Enter => pb::ActionTrigger::Enter,
            Trigger::Exit => pb::ActionTrigger::Exit,
        } as i32,
        add_labels: a.add_labels.clone(),
        remove_labels: a.remove_labels.clone(),
        add_tags: a.add_tags.clone(),
        remove_tags: a.remove_tags.clone(),
        set_status: a.set_status.clone().unwrap_or_default(),
        status_reason: a.status_reason.clone().unwrap_or_default(),
        replace_statuses: a.replace_statuses.clone(),
        set_fields: a
            .set_fields
            .iter()
            .filter_map(|(k, v)| {
                let t = schema?.custom.get(k)?;
                Some((k.clone(), custom_to_proto(&CustomValue::from_json(*t, v)?)))
            })
            .collect(),
        clear_fields: a.clear_fields.clone(),
    }
}
