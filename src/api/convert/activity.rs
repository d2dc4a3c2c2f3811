//! Events and deals: proto ↔ model.

use chrono::Utc;

use super::contact::key_from_proto;
use super::{from_ts, json_to_struct, opt_ts, struct_to_json, ts};
use crate::error::{Violation, Violations};
use crate::model::contact::ContactKey;
use crate::model::deal::{Deal, DealInput, DealStatus};
use crate::model::event::{MAX_PROPERTIES_BYTES, NewEvent, StoredEvent};
use crate::model::validate;
use crate::proto as pb;

/// Longest accepted event id.
const MAX_EVENT_ID: usize = 256;

/// A proto event as a validated event to record.
///
/// # Errors
/// Violations relative to the event.
pub fn event_from_proto(p: &pb::Event) -> Result<NewEvent, Vec<Violation>> {
    let mut v = Violations::new();
    let event_key = match p.event_id.trim() {
        "" => None,
        k if k.len() > MAX_EVENT_ID || k.chars().any(char::is_control) => {
            v.add(
                "event_id",
                format!("at most {MAX_EVENT_ID} bytes without control characters"),
            );
            None
        }
        k => Some(k.to_string()),
    };
    let contact = v.take("contact", key_from_proto(p.contact.as_ref()));
    let event_type = match validate::identifier(&p.r#type) {
        Ok(Some(t)) => Some(t),
        Ok(None) => {
            v.add("type", "required");
            None
        }
        Err(e) => {
            v.add("type", e);
            None
        }
    };
    let occurred_at = match p.occurred_at.as_ref().map(from_ts).transpose() {
        Ok(t) => t.unwrap_or_else(Utc::now),
        Err(e) => {
            v.add("occurred_at", e);
            Utc::now()
        }
    };
    let value = p
        .value
        .map(validate::finite)
        .transpose()
        .unwrap_or_else(|e| {
            v.add("value", e);
            None
        });
    let currency = validate::currency(&p.currency).unwrap_or_else(|e| {
        v.add("currency", e);
        None
    });
    let properties = match p.properties.as_ref().map(struct_to_json).transpose() {
        Ok(props) => props.unwrap_or_default(),
        Err((path, e)) => {
            v.add(crate::error::join_path("properties", &path), e);
            Default::default()
        }
    };
    if serde_json::to_vec(&properties).map_or(0, |b| b.len()) > MAX_PROPERTIES_BYTES {
        v.add(
            "properties",
            format!("larger than {MAX_PROPERTIES_BYTES} bytes of JSON"),
        );
    }
    match (contact, event_type) {
        (Some(contact), Some(event_type)) if v.is_empty() => Ok(NewEvent {
            event_key,
            contact,
            event_type,
            occurred_at,
            value,
            currency,
            properties,
        }),
        _ => Err(v.into_vec()),
    }
}

/// A stored event as proto.
pub fn event_to_proto(e: &StoredEvent) -> pb::Event {
    pb::Event {
        event_id: e.event_key.clone().unwrap_or_default(),
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(e.contact_id)),
        }),
        r#type: e.event_type.clone(),
        occurred_at: Some(ts(e.occurred_at)),
        value: e.value,
        currency: e.currency.clone().unwrap_or_default(),
        properties: Some(json_to_struct(&e.properties)),
        contact_id: e.contact_id,
    }
}

fn status_to_proto(s: DealStatus) -> pb::DealStatus {
    match s {
        DealStatus::Open => pb::DealStatus::Open,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
    }
}

/// A deal as proto.
pub fn deal_to_proto(d: &Deal) -> pb::Deal {
    pb::Deal {
        id: d.id,
        external_id: d.external_id.clone().unwrap_or_default(),
        contact_id: d.contact_id,
        name: d.name.clone(),
        status: status_to_proto(d.status) as i32,
        stage: d.stage.clone().unwrap_or_default(),
        value: d.value,
        currency: d.currency.clone().unwrap_or_default(),
        owner: d.owner.clone().unwrap_or_default(),
        created_at: opt_ts(d.created_at),
        closed_at: opt_ts(d.closed_at),
        updated_at: opt_ts(d.updated_at),
        contact: None,
    }
}

/// A proto deal, validated, with its contact by `contact` or `contact_id`.
///
/// # Errors
/// Violations relative to the deal.
pub fn deal_from_proto(p: &pb::Deal) -> Result<DealInput, Vec<Violation>> {
    let mut v = Violations::new();
    if p.id < 0 {
        v.add("id", "must not be negative");
    }
    let contact = match (&p.contact, p.contact_id) {
        (Some(r), 0) => v.take("contact", key_from_proto(Some(r))),
        (None, id) if id > 0 => Some(ContactKey::Id(id)),
        (Some(_), _) => {
            v.add("contact", "set contact or contact_id, not both");
            None
        }
        (None, _) => {
            v.add("contact", "required (or contact_id)");
            None
        }
    };
    let status = DealStatus::ALL
        .iter()
        .copied()
        .find(|s| status_to_proto(*s) as i32 == p.status);
    if status.is_none() {
        v.add("status", "must be OPEN, WON or LOST");
    }
    let mut text = |field: &str, r: Result<Option<String>, String>| {
        r.unwrap_or_else(|e| {
            v.add(field, e);
            None
        })
    };
    let external_id = text("external_id", validate::text(&p.external_id));
    let name = text("name", validate::text(&p.name));
    let stage = text("stage", validate::identifier(&p.stage));
    let currency = text("currency", validate::currency(&p.currency));
    let owner = text("owner", validate::text(&p.owner));
    if !p.value.is_finite() {
        v.add("value", "must be a finite number");
    }
    let mut time = |field: &str, t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(from_ts).transpose().unwrap_or_else(|e| {
            v.add(field, e);
            None
        })
    };
    let created_at = time("created_at", &p.created_at);
    let closed_at = time("closed_at", &p.closed_at);
    let deal = Deal {
        id: p.id,
        external_id,
        contact_id: 0,
        name: name.unwrap_or_default(),
        status: status.unwrap_or(DealStatus::Open),
        stage,
        value: p.value,
        currency,
        owner,
        created_at,
        closed_at,
        updated_at: None,
    };
    match contact {
        Some(contact) if v.is_empty() => Ok(DealInput { deal, contact }),
        _ => Err(v.into_vec()),
    }
}
