//! A workspace's contact schema: its custom field types and its labels.
//! Writes are checked against it, and the segment checker resolves
//! `custom.<key>` with it.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::Violation;

use super::contact::{Contact, CustomFieldType, CustomValue};

/// Custom field types and defined labels of one workspace.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Custom field types by key.
    pub custom: HashMap<String, CustomFieldType>,
    /// Defined labels, built-in ones included.
    pub labels: HashSet<String>,
}

impl Schema {
    /// Checks a contact's labels and custom fields against the schema.
    /// Violations name `labels[i]` and `custom_fields.<key>`.
    pub fn check_contact(&self, c: &Contact) -> Vec<Violation> {
        let mut out = Vec::new();
        for (i, l) in c.labels.iter().enumerate() {
            if !self.labels.contains(l) {
                out.push(Violation::new(
                    format!("labels[{i}]"),
                    format!("unknown label `{l}`; define it with DefineLabel"),
                ));
            }
        }
        for (k, v) in &c.custom {
            let field = format!("custom_fields.{k}");
            match self.custom.get(k) {
                None => out.push(Violation::new(
                    field,
                    format!("unknown custom field `{k}`; define it with DefineCustomField"),
                )),
                Some(t) if *t != v.field_type() => out.push(Violation::new(
                    field,
                    format!("`{k}` is a {t} field, got a {} value", v.field_type()),
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// Decodes the stored `attrs` object. Keys whose definition is missing or
    /// whose stored value does not fit it are skipped.
    pub fn decode_attrs(&self, attrs: &serde_json::Value) -> BTreeMap<String, CustomValue> {
        attrs
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let t = self.custom.get(k)?;
                Some((k.clone(), CustomValue::from_json(*t, v)?))
            })
            .collect()
    }
}
