//! Contacts: proto ↔ model, update masks, contact references.

use std::collections::BTreeMap;

use prost_types::FieldMask;

use super::{from_ts, opt_ts};
use crate::error::{Violation, Violations};
use crate::model::contact::{
    Channel, Contact, ContactKey, CustomFieldDef, CustomFieldType, CustomValue, LabelDef,
    SourceChannel, Subscription, SubscriptionStatus, TextField,
};
use crate::model::patch::{Change, Patch};
use crate::model::validate;
use crate::proto as pb;

/// Most custom field values on one contact.
const MAX_CUSTOM: usize = 200;

fn slot(p: &mut pb::Contact, f: TextField) -> &mut String {
    match f {
        TextField::ExternalId => &mut p.external_id,
        TextField::Email => &mut p.email,
        TextField::Phone => &mut p.phone,
        TextField::FirstName => &mut p.first_name,
        TextField::LastName => &mut p.last_name,
        TextField::Gender => &mut p.gender,
        TextField::Locale => &mut p.locale,
        TextField::Country => &mut p.country,
        TextField::Region => &mut p.region,
        TextField::City => &mut p.city,
        TextField::PostalCode => &mut p.postal_code,
        TextField::Company => &mut p.company,
        TextField::JobTitle => &mut p.job_title,
        TextField::SourceDetail => &mut p.source_detail,
        TextField::Owner => &mut p.owner,
        TextField::Status => &mut p.status,
        TextField::StatusReason => &mut p.status_reason,
    }
}

/// The model's source channel as the proto enum value.
pub fn channel_to_proto(s: Option<SourceChannel>) -> pb::SourceChannel {
    use pb::SourceChannel as P;
    match s {
        None => P::Unspecified,
        Some(SourceChannel::Organic) => P::Organic,
        Some(SourceChannel::Paid) => P::Paid,
        Some(SourceChannel::Social) => P::Social,
        Some(SourceChannel::Referral) => P::Referral,
        Some(SourceChannel::Email) => P::Email,
        Some(SourceChannel::Event) => P::Event,
        Some(SourceChannel::Import) => P::Import,
        Some(SourceChannel::Other) => P::Other,
    }
}

fn channel_from_proto(v: i32) -> Result<Option<SourceChannel>, String> {
    let p = pb::SourceChannel::try_from(v).map_err(|_| format!("{v} is not a SourceChannel"))?;
    Ok(SourceChannel::ALL
        .iter()
        .copied()
        .find(|s| channel_to_proto(Some(*s)) == p))
}

/// A proto subscription channel as the model's, if it is one.
pub fn sub_channel_from(v: i32) -> Option<Channel> {
    Channel::ALL
        .iter()
        .copied()
        .find(|c| sub_channel(*c) as i32 == v)
}

/// A proto subscription status as the model's, if it is one.
pub fn sub_status_from(v: i32) -> Option<SubscriptionStatus> {
    SubscriptionStatus::ALL
        .iter()
        .copied()
        .find(|s| sub_status(*s) as i32 == v)
}

/// The model's subscription channel as proto.
pub fn sub_channel(c: Channel) -> pb::SubscriptionChannel {
    match c {
        Channel::Email => pb::SubscriptionChannel::Email,
        Channel::Sms => pb::SubscriptionChannel::Sms,
    }
}

/// The model's subscription status as proto.
pub fn sub_status(s: SubscriptionStatus) -> pb::SubscriptionStatus {
    match s {
        SubscriptionStatus::Subscribed => pb::SubscriptionStatus::Subscribed,
        SubscriptionStatus::Unsubscribed => pb::SubscriptionStatus::Unsubscribed,
        SubscriptionStatus::Pending => pb::SubscriptionStatus::Pending,
    }
}

/// A model contact as proto.
pub fn to_proto(c: &Contact) -> pb::Contact {
    let mut p = pb::Contact {
        id: c.id,
        birth_date: c.birth_date.map(|d| d.to_string()).unwrap_or_default(),
        source_channel: channel_to_proto(c.source_channel) as i32,
        created_at: opt_ts(c.created_at),
        updated_at: opt_ts(c.updated_at),
        converted_at: opt_ts(c.converted_at),
        labels: c.labels.clone(),
        lead_score: c.lead_score,
        tags: c.tags.clone(),
        custom_fields: c
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), custom_to_proto(v)))
            .collect(),
        subscriptions: Channel::ALL
            .iter()
            .filter_map(|ch| {
                c.subscription(*ch).map(|s| pb::Subscription {
                    channel: sub_channel(*ch) as i32,
                    status: sub_status(s.status) as i32,
                    changed_at: opt_ts(s.changed_at),
                })
            })
            .collect(),
        etag: c.etag(),
        ..pb::Contact::default()
    };
    for f in TextField::ALL {
        *slot(&mut p, *f) = f.get(c).unwrap_or_default().to_string();
    }
    p
}

/// A model custom value as proto.
pub fn custom_to_proto(v: &CustomValue) -> pb::CustomValue {
    use pb::custom_value::Kind;
    let kind = match v {
        CustomValue::String(s) => Kind::StringValue(s.clone()),
        CustomValue::Number(n) => Kind::NumberValue(*n),
        CustomValue::Bool(b) => Kind::BoolValue(*b),
        CustomValue::Date(d) => Kind::DateValue(d.to_string()),
        CustomValue::StringList(l) => Kind::StringListValue(pb::StringList { values: l.clone() }),
    };
    pb::CustomValue { kind: Some(kind) }
}

pub fn custom_from_proto(v: &pb::CustomValue) -> Result<CustomValue, String> {
    use pb::custom_value::Kind;
    match &v.kind {
        None => Err("no value set".into()),
        Some(Kind::StringValue(s)) => Ok(CustomValue::String(
            validate::text(s)?.ok_or("empty string; remove the field instead")?,
        )),
        Some(Kind::NumberValue(n)) => Ok(CustomValue::Number(validate::finite(*n)?)),
        Some(Kind::BoolValue(b)) => Ok(CustomValue::Bool(*b)),
        Some(Kind::DateValue(d)) => Ok(CustomValue::Date(validate::date(d)?.ok_or("empty date")?)),
        Some(Kind::StringListValue(l)) => {
            Ok(CustomValue::StringList(validate::tag_set(&l.values)?))
        }
    }
}

/// A proto contact as a validated model contact. Every field is checked;
/// violations name fields relative to the contact.
///
/// # Errors
/// Every violation found.
pub fn from_proto(p: pb::Contact) -> Result<Contact, Vec<Violation>> {
    let (c, v) = parse(p);
    v.finish(c)
}

/// Converts every field it can, collecting violations for the rest.
fn parse(mut p: pb::Contact) -> (Contact, Violations) {
    let mut v = Violations::new();
    let mut c = Contact::default();
    for f in TextField::ALL {
        match f.normalize(slot(&mut p, *f)) {
            Ok(x) => f.set(&mut c, x),
            Err(e) => v.add(f.name(), e),
        }
    }
    match validate::date(&p.birth_date) {
        Ok(Some(d)) if d > chrono::Utc::now().date_naive() => {
            v.add("birth_date", "is in the future")
        }
        Ok(d) => c.birth_date = d,
        Err(e) => v.add("birth_date", e),
    }
    match channel_from_proto(p.source_channel) {
        Ok(s) => c.source_channel = s,
        Err(e) => v.add("source_channel", e),
    }
    for (name, t, out) in [
        ("created_at", &p.created_at, &mut c.created_at),
        ("converted_at", &p.converted_at, &mut c.converted_at),
    ] {
        if let Some(t) = t {
            match from_ts(t) {
                Ok(t) => *out = Some(t),
                Err(e) => v.add(name, e),
            }
        }
    }
    if p.labels.len() > validate::MAX_SET {
        v.add("labels", format!("more than {} labels", validate::MAX_SET));
    }
    for (i, l) in p.labels.iter().enumerate() {
        match validate::identifier(l) {
            Ok(Some(l)) => c.labels.push(l),
            Ok(None) => v.add(format!("labels[{i}]"), "empty label"),
            Err(e) => v.add(format!("labels[{i}]"), e),
        }
    }
    c.labels.sort();
    c.labels.dedup();
    if let Some(s) = p.lead_score {
        match validate::finite(s) {
            Ok(s) => c.lead_score = Some(s),
            Err(e) => v.add("lead_score", e),
        }
    }
    match validate::tag_set(&p.tags) {
        Ok(t) => c.tags = t,
        Err(e) => v.add("tags", e),
    }
    if p.custom_fields.len() > MAX_CUSTOM {
        v.add(
            "custom_fields",
            format!("more than {MAX_CUSTOM} custom fields"),
        );
    }
    for (k, val) in &p.custom_fields {
        let field = format!("custom_fields.{k}");
        if !validate::is_identifier(k) {
            v.add(field, "keys are lower-case identifiers");
            continue;
        }
        match custom_from_proto(val) {
            Ok(x) => {
                c.custom.insert(k.clone(), x);
            }
            Err(e) => v.add(field, e),
        }
    }
    if let Some(subs) = v.take("", subscriptions_from_proto(&p.subscriptions)) {
        for (ch, s) in subs {
            c.set_subscription(ch, Some(s));
        }
    }
    (c, v)
}

fn subscriptions_from_proto(
    subs: &[pb::Subscription],
) -> Result<BTreeMap<Channel, Subscription>, Vec<Violation>> {
    let mut v = Violations::new();
    let mut out = BTreeMap::new();
    for (i, s) in subs.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        let Some(ch) = sub_channel_from(s.channel) else {
            v.add(format!("{at}.channel"), "must be EMAIL or SMS");
            continue;
        };
        let Some(status) = sub_status_from(s.status) else {
            v.add(
                format!("{at}.status"),
                "must be SUBSCRIBED, UNSUBSCRIBED or PENDING",
            );
            continue;
        };
        let changed_at = match s.changed_at.as_ref().map(from_ts).transpose() {
            Ok(t) => t,
            Err(e) => {
                v.add(format!("{at}.changed_at"), e);
                continue;
            }
        };
        if out
            .insert(ch, Subscription { status, changed_at })
            .is_some()
        {
            v.add(format!("{at}.channel"), format!("{ch} is listed twice"));
        }
    }
    v.finish(out)
}

/// Fields an update mask may name (besides `custom_fields.<key>`).
const MASKABLE: &[&str] = &[
    "birth_date",
    "source_channel",
    "created_at",
    "converted_at",
    "labels",
    "lead_score",
    "tags",
    "custom_fields",
    "subscriptions",
];

/// The patch an UpdateContact request describes. Only masked fields are
/// validated. An empty mask means every field set in the contact (custom
/// fields key by key).
///
/// # Errors
/// Violations under `contact.*` for bad values and `update_mask.paths[i]`
/// for unknown or output-only paths.
pub fn patch_from_mask(p: pb::Contact, mask: Option<FieldMask>) -> Result<Patch, Vec<Violation>> {
    let paths = match mask {
        Some(m) if !m.paths.is_empty() => m.paths,
        _ => set_paths(&p),
    };
    let mut v = Violations::new();
    let (c, bad) = parse(p);
    let bad = bad.into_vec();
    let masked = |field: &str| {
        let top = field.split(['.', '[']).next().unwrap_or_default();
        paths
            .iter()
            .any(|p| p == top || p == field || field.starts_with(&format!("{p}.")))
    };
    let relevant: Vec<Violation> = bad.into_iter().filter(|x| masked(&x.field)).collect();
    if !relevant.is_empty() {
        return Err(relevant.into_iter().map(|x| x.under("contact")).collect());
    }
    let mut changes = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let at = format!("update_mask.paths[{i}]");
        if let Some(f) = TextField::from_name(path) {
            changes.push(Change::Text(f, f.get(&c).map(str::to_string)));
            continue;
        }
        if let Some(key) = path.strip_prefix("custom_fields.") {
            if validate::is_identifier(key) {
                changes.push(Change::CustomKey(
                    key.to_string(),
                    c.custom.get(key).cloned(),
                ));
            } else {
                v.add(at, format!("`{key}` is not a custom field key"));
            }
            continue;
        }
        changes.push(match path.as_str() {
            "birth_date" => Change::BirthDate(c.birth_date),
            "source_channel" => Change::SourceChannel(c.source_channel),
            "created_at" => Change::CreatedAt(c.created_at),
            "converted_at" => Change::ConvertedAt(c.converted_at),
            "labels" => Change::Labels(c.labels.clone()),
            "lead_score" => Change::LeadScore(c.lead_score),
            "tags" => Change::Tags(c.tags.clone()),
            "custom_fields" => Change::Custom(c.custom.clone()),
            "subscriptions" => Change::Subscriptions(
                Channel::ALL
                    .iter()
                    .filter_map(|ch| c.subscription(*ch).map(|s| (*ch, s)))
                    .collect(),
            ),
            "id" | "etag" | "updated_at" => {
                v.add(at, format!("`{path}` is output only"));
                continue;
            }
            _ => {
                v.add(at, format!("`{path}` is not a Contact field"));
                continue;
            }
        });
    }
    v.finish(Patch(changes))
}

fn set_paths(p: &pb::Contact) -> Vec<String> {
    let mut q = p.clone();
    let mut out: Vec<String> = TextField::ALL
        .iter()
        .filter(|f| !slot(&mut q, **f).is_empty())
        .map(|f| f.name().to_string())
        .collect();
    let set = [
        ("birth_date", !p.birth_date.is_empty()),
        ("source_channel", p.source_channel != 0),
        ("created_at", p.created_at.is_some()),
        ("converted_at", p.converted_at.is_some()),
        ("labels", !p.labels.is_empty()),
        ("lead_score", p.lead_score.is_some()),
        ("tags", !p.tags.is_empty()),
        ("subscriptions", !p.subscriptions.is_empty()),
    ];
    out.extend(set.iter().filter(|(_, s)| *s).map(|(n, _)| n.to_string()));
    out.extend(p.custom_fields.keys().map(|k| format!("custom_fields.{k}")));
    debug_assert!(out.iter().all(|p| TextField::from_name(p).is_some()
        || MASKABLE.contains(&p.as_str())
        || p.starts_with("custom_fields.")));
    out
}

/// A contact reference as a key (emails normalised).
///
/// # Errors
/// A violation when no key is set or it is malformed.
pub fn key_from_proto(r: Option<&pb::ContactRef>) -> Result<ContactKey, Vec<Violation>> {
    use pb::contact_ref::Key;
    let bad = |f: &str, m: &str| vec![Violation::new(f, m)];
    match r.and_then(|r| r.key.as_ref()) {
        None => Err(bad("", "set one of id, external_id or email")),
        Some(Key::Id(id)) if *id > 0 => Ok(ContactKey::Id(*id)),
        Some(Key::Id(_)) => Err(bad("id", "must be positive")),
        Some(Key::ExternalId(x)) => match validate::text(x) {
            Ok(Some(x)) => Ok(ContactKey::ExternalId(x)),
            _ => Err(bad("external_id", "must be non-empty text")),
        },
        Some(Key::Email(e)) => match validate::email(e) {
            Ok(Some(e)) => Ok(ContactKey::Email(e)),
            Ok(None) => Err(bad("email", "must not be empty")),
            Err(m) => Err(bad("email", &m)),
        },
    }
}

fn field_type_to_proto(t: CustomFieldType) -> pb::CustomFieldType {
    match t {
        CustomFieldType::String => pb::CustomFieldType::String,
        CustomFieldType::Number => pb::CustomFieldType::Number,
        CustomFieldType::Boolean => pb::CustomFieldType::Boolean,
        CustomFieldType::Date => pb::CustomFieldType::Date,
        CustomFieldType::StringList => pb::CustomFieldType::StringList,
    }
}

/// A custom field definition as proto.
pub fn custom_field_to_proto(d: &CustomFieldDef) -> pb::CustomField {
    pb::CustomField {
        key: d.key.clone(),
        r#type: field_type_to_proto(d.field_type) as i32,
        description: d.description.clone(),
        created_at: Some(super::ts(d.created_at)),
    }
}

/// A proto custom field definition, validated.
///
/// # Errors
/// Violations on `key`, `type` or `description`.
pub fn custom_field_from_proto(p: &pb::CustomField) -> Result<CustomFieldDef, Vec<Violation>> {
    let mut v = Violations::new();
    if !validate::is_identifier(&p.key) {
        v.add(
            "key",
            "must be a lower-case identifier ([a-z][a-z0-9_]{0,62})",
        );
    }
    let t = CustomFieldType::ALL
        .iter()
        .copied()
        .find(|t| field_type_to_proto(*t) as i32 == p.r#type);
    if t.is_none() {
        v.add(
            "type",
            "must be STRING, NUMBER, BOOLEAN, DATE or STRING_LIST",
        );
    }
    let description = validate::text(&p.description).unwrap_or_else(|e| {
        v.add("description", e);
        None
    });
    v.finish(CustomFieldDef {
        key: p.key.clone(),
        field_type: t.unwrap_or(CustomFieldType::String),
        description: description.unwrap_or_default(),
        created_at: chrono::Utc::now(),
    })
}

/// A label as proto.
pub fn label_to_proto(l: &LabelDef) -> pb::Label {
    pb::Label {
        name: l.name.clone(),
        description: l.description.clone(),
        builtin: l.builtin,
    }
}

/// A proto label, validated.
///
/// # Errors
/// Violations on `name` or `description`.
pub fn label_from_proto(p: &pb::Label) -> Result<LabelDef, Vec<Violation>> {
    let mut v = Violations::new();
    let name = match validate::identifier(&p.name) {
        Ok(Some(n)) => n,
        Ok(None) => {
            v.add("name", "required");
            String::new()
        }
        Err(e) => {
            v.add("name", e);
            String::new()
        }
    };
    let description = validate::text(&p.description).unwrap_or_else(|e| {
        v.add("description", e);
        None
    });
    v.finish(LabelDef {
        name,
        description: description.unwrap_or_default(),
        builtin: false,
    })
}

/// Fields a read mask may name.
fn readable(path: &str) -> bool {
    TextField::from_name(path).is_some()
        || MASKABLE.contains(&path)
        || matches!(path, "id" | "etag" | "updated_at")
}

/// Checks read mask paths.
///
/// # Errors
/// A violation for each unknown path, under `field`.
pub fn check_read_mask(paths: &[String], field: &str) -> Result<(), Vec<Violation>> {
    let mut v = Violations::new();
    for (i, p) in paths.iter().enumerate() {
        if !readable(p) {
            v.add(
                format!("{field}.paths[{i}]"),
                format!("`{p}` is not a Contact field"),
            );
        }
    }
    v.finish(())
}

/// The contact with only the masked fields (and its id); an empty mask
/// keeps everything.
pub fn apply_read_mask(mut p: pb::Contact, paths: &[String]) -> pb::Contact {
    if paths.is_empty() {
        return p;
    }
    let mut out = pb::Contact {
        id: p.id,
        ..Default::default()
    };
    for path in paths {
        if let Some(f) = TextField::from_name(path) {
            *slot(&mut out, f) = std::mem::take(slot(&mut p, f));
            continue;
        }
        match path.as_str() {
            "birth_date" => out.birth_date = std::mem::take(&mut p.birth_date),
            "source_channel" => out.source_channel = p.source_channel,
            "created_at" => out.created_at = p.created_at,
            "updated_at" => out.updated_at = p.updated_at,
            "converted_at" => out.converted_at = p.converted_at,
            "labels" => out.labels = std::mem::take(&mut p.labels),
            "lead_score" => out.lead_score = p.lead_score,
            "tags" => out.tags = std::mem::take(&mut p.tags),
            "custom_fields" => out.custom_fields = std::mem::take(&mut p.custom_fields),
            "subscriptions" => out.subscriptions = std::mem::take(&mut p.subscriptions),
            "etag" => out.etag = std::mem::take(&mut p.etag),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_proto() {
        let p = pb::Contact {
            email: "A@B.co".into(),
            country: "us".into(),
            labels: vec!["Lead".into(), "lead".into()],
            tags: vec!["vip".into()],
            birth_date: "1990-02-03".into(),
            lead_score: Some(4.5),
            ..Default::default()
        };
        let c = from_proto(p).unwrap();
        assert_eq!(c.email.as_deref(), Some("a@b.co"));
        assert_eq!(c.labels, vec!["lead".to_string()]);
        let back = to_proto(&c);
        assert_eq!(back.country, "US");
        assert_eq!(back.birth_date, "1990-02-03");
        assert_eq!(from_proto(back).unwrap().lead_score, Some(4.5));
    }

    #[test]
    fn reports_every_bad_field() {
        let p = pb::Contact {
            email: "nope".into(),
            country: "XX".into(),
            lead_score: Some(f64::NAN),
            custom_fields: [("Bad Key".to_string(), pb::CustomValue::default())].into(),
            ..Default::default()
        };
        let fields: Vec<String> = from_proto(p)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        for f in ["email", "country", "lead_score", "custom_fields.Bad Key"] {
            assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
        }
    }

    #[test]
    fn masks_validate_only_masked_fields() {
        let p = pb::Contact {
            email: "bad".into(),
            city: "Oslo".into(),
            ..Default::default()
        };
        let patch = patch_from_mask(
            p.clone(),
            Some(FieldMask {
                paths: vec!["city".into()],
            }),
        )
        .unwrap();
        assert_eq!(
            patch.0,
            vec![Change::Text(TextField::City, Some("Oslo".into()))]
        );
        let err = patch_from_mask(
            p,
            Some(FieldMask {
                paths: vec!["email".into()],
            }),
        )
        .unwrap_err();
        assert_eq!(err[0].field, "contact.email");
        let err = patch_from_mask(
            pb::Contact::default(),
            Some(FieldMask {
                paths: vec!["nope".into()],
            }),
        )
        .unwrap_err();
        assert_eq!(err[0].field, "update_mask.paths[0]");
    }
}
