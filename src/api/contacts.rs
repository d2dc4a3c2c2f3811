//! ContactService.

use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::convert::{activity, contact as cc, json_to_value, page_size, ts};
use super::error::{checked, invalid};
use super::imports::{Acks, ContactImport, DealImport, EventRecording, acknowledged};
use crate::db;
use crate::error::Violation;
use crate::proto::{self as pb, contact_service_server::ContactService};
use crate::service::stats::Table;
use crate::service::writes;

/// Most duplicates in one merge.
const MAX_MERGE: usize = 100;

/// The ContactService implementation.
#[derive(Debug, Clone)]
pub struct Contacts {
    state: AppState,
}

impl Contacts {
    /// The service over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ContactService for Contacts {
    async fn create_contact(
        &self,
        req: Request<pb::CreateContactRequest>,
    ) -> Result<Response<pb::CreateContactResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let p = req.into_inner().contact.unwrap_or_default();
        let c = checked("contact", cc::from_proto(p))?;
        let mut client = self.state.conn_in(ws).await?;
        let created = writes::run(&mut client, ws, &writes::CreateContact(&c)).await?;
        self.state.statistics.inserted(Table::Contacts, ws, 1);
        Ok(Response::new(pb::CreateContactResponse {
            contact: Some(cc::to_proto(&created)),
        }))
    }

    async fn get_contact(
        &self,
        req: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::GetContactResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let key = checked(
            "contact",
            cc::key_from_proto(req.get_ref().contact.as_ref()),
        )?;
        let mut client = self.state.conn_in(ws).await?;
        let c = client
            .run(async |tx| db::contacts::get(tx, ws, &key).await)
            .await?;
        Ok(Response::new(pb::GetContactResponse {
            contact: Some(cc::to_proto(&c)),
        }))
    }

    async fn update_contact(
        &self,
        req: Request<pb::UpdateContactRequest>,
    ) -> Result<Response<pb::UpdateContactResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let p = r.contact.unwrap_or_default();
        if p.id <= 0 {
            return Err(invalid(vec![Violation::new("contact.id", "required")]));
        }
        let (id, expected) = (p.id, parse_etag("contact.etag", &p.etag)?);
        let patch = checked("", cc::patch_from_mask(p, r.update_mask))?;
        let mut client = self.state.conn_in(ws).await?;
        let update = writes::UpdateContact {
            id,
            expected,
            patch: &patch,
        };
        let c = writes::run(&mut client, ws, &update).await?;
        Ok(Response::new(pb::UpdateContactResponse {
            contact: Some(cc::to_proto(&c)),
        }))
    }

    async fn delete_contact(
        &self,
        req: Request<pb::DeleteContactRequest>,
    ) -> Result<Response<pb::DeleteContactResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        if r.id <= 0 {
            return Err(invalid(vec![Violation::new("id", "required")]));
        }
        let expected = parse_etag("etag", &r.etag)?;
        let mut client = self.state.conn_in(ws).await?;
        let delete = writes::DeleteContact { id: r.id, expected };
        writes::run(&mut client, ws, &delete).await?;
        Ok(Response::new(pb::DeleteContactResponse {}))
    }

    async fn list_contacts(
        &self,
        req: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let order = db::contacts::Order::parse(&r.order_by).ok_or_else(|| {
            invalid(vec![Violation::new(
                "order_by",
                "use id, created_at or updated_at, optionally with desc",
            )])
        })?;
        let after: Option<db::contacts::Cursor> = match r.page_token.as_str() {
            "" => None,
            t => Some(
                serde_json::from_value(db::decode_token(t)?)
                    .ok()
                    .filter(|c: &db::contacts::Cursor| c.order_by == r.order_by)
                    .ok_or_else(|| {
                        invalid(vec![Violation::new(
                            "page_token",
                            "does not belong to this order_by",
                        )])
                    })?,
            ),
        };
        let mut client = self.state.conn_in(ws).await?;
        let (contacts, next) = client
            .run(async |tx| {
                db::contacts::list(tx, ws, &r.order_by, order, after.as_ref(), limit).await
            })
            .await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: contacts.iter().map(cc::to_proto).collect(),
            next_page_token: next
                .map(|c| db::encode_token(&serde_json::to_value(c).expect("cursor serialises")))
                .unwrap_or_default(),
        }))
    }

    type BatchUpsertContactsStream = Acks<pb::BatchUpsertContactsResponse>;

    async fn batch_upsert_contacts(
        &self,
        req: Request<Streaming<pb::BatchUpsertContactsRequest>>,
    ) -> Result<Response<Self::BatchUpsertContactsStream>, Status> {
        let ws = self.state.workspace(&req).await?;
        Ok(Response::new(acknowledged(
            ContactImport::default(),
            req.into_inner(),
            &self.state,
            ws,
        )))
    }

    type RecordEventsStream = Acks<pb::RecordEventsResponse>;

    async fn record_events(
        &self,
        req: Request<Streaming<pb::RecordEventsRequest>>,
    ) -> Result<Response<Self::RecordEventsStream>, Status> {
        let ws = self.state.workspace(&req).await?;
        Ok(Response::new(acknowledged(
            EventRecording::default(),
            req.into_inner(),
            &self.state,
            ws,
        )))
    }

    type BatchUpsertDealsStream = Acks<pb::BatchUpsertDealsResponse>;

    async fn batch_upsert_deals(
        &self,
        req: Request<Streaming<pb::BatchUpsertDealsRequest>>,
    ) -> Result<Response<Self::BatchUpsertDealsStream>, Status> {
        let ws = self.state.workspace(&req).await?;
        Ok(Response::new(acknowledged(
            DealImport::default(),
            req.into_inner(),
            &self.state,
            ws,
        )))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let key = checked("contact", cc::key_from_proto(r.contact.as_ref()))?;
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let event_type = (!r.r#type.is_empty()).then_some(r.r#type.as_str());
        let after = match r.page_token.as_str() {
            "" => None,
            t => Some(serde_json::from_value(db::decode_token(t)?).map_err(|_| {
                invalid(vec![Violation::new("page_token", "not a ListEvents token")])
            })?),
        };
        let mut client = self.state.conn_in(ws).await?;
        let events = client
            .run(async |tx| db::events::list(tx, ws, &key, event_type, after, limit + 1).await)
            .await?;
        let more = events.len() as i64 > limit;
        let events = &events[..events.len().min(limit as usize)];
        let next = match (more, events.last()) {
            (true, Some(e)) => db::encode_token(&serde_json::json!([e.occurred_at, e.id])),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEventsResponse {
            events: events.iter().map(activity::event_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn list_contact_changes(
        &self,
        req: Request<pb::ListContactChangesRequest>,
    ) -> Result<Response<pb::ListContactChangesResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let key = checked("contact", cc::key_from_proto(r.contact.as_ref()))?;
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let field = (!r.field.trim().is_empty()).then(|| r.field.trim());
        let after = match r.page_token.as_str() {
            "" => 0,
            t => db::decode_token(t)?.as_i64().ok_or_else(|| {
                invalid(vec![Violation::new(
                    "page_token",
                    "not a ListContactChanges token",
                )])
            })?,
        };
        let mut client = self.state.conn_in(ws).await?;
        let mut changes = client
            .run(async |tx| db::history::list(tx, ws, &key, field, after, limit + 1).await)
            .await?;
        let next = if changes.len() as i64 > limit {
            changes.truncate(limit as usize);
            changes
                .last()
                .map(|c| db::encode_token(&c.id.into()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let value = |v: &Option<serde_json::Value>| {
            Some(json_to_value(
                v.as_ref().unwrap_or(&serde_json::Value::Null),
            ))
        };
        Ok(Response::new(pb::ListContactChangesResponse {
            changes: changes
                .iter()
                .map(|c| pb::ContactChange {
                    id: c.id,
                    field: c.field.clone(),
                    old_value: value(&c.old),
                    new_value: value(&c.new),
                    cause: c.cause.clone(),
                    change_time: Some(ts(c.at)),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn upsert_deal(
        &self,
        req: Request<pb::UpsertDealRequest>,
    ) -> Result<Response<pb::UpsertDealResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let deal = checked(
            "deal",
            activity::deal_from_proto(&req.into_inner().deal.unwrap_or_default()),
        )?;
        let mut client = self.state.conn_in(ws).await?;
        let (d, created) = writes::upsert_deal(&mut client, ws, &deal).await?;
        self.state
            .statistics
            .inserted(Table::Deals, ws, u64::from(created));
        Ok(Response::new(pb::UpsertDealResponse {
            deal: Some(activity::deal_to_proto(&d)),
            created,
        }))
    }

    async fn list_deals(
        &self,
        req: Request<pb::ListDealsRequest>,
    ) -> Result<Response<pb::ListDealsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let after: i64 = match r.page_token.as_str() {
            "" => 0,
            t => db::decode_token(t)?.as_i64().ok_or_else(|| {
                invalid(vec![Violation::new("page_token", "not a ListDeals token")])
            })?,
        };
        let contact = (r.contact_id != 0).then_some(r.contact_id);
        let mut client = self.state.conn_in(ws).await?;
        let mut deals = client
            .run(async |tx| db::deals::list(tx, ws, contact, after, limit + 1).await)
            .await?;
        let next = if deals.len() as i64 > limit {
            deals.truncate(limit as usize);
            deals
                .last()
                .map(|d| db::encode_token(&d.id.into()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDealsResponse {
            deals: deals.iter().map(activity::deal_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn define_custom_field(
        &self,
        req: Request<pb::DefineCustomFieldRequest>,
    ) -> Result<Response<pb::DefineCustomFieldResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let def = checked(
            "field",
            cc::custom_field_from_proto(&req.into_inner().field.unwrap_or_default()),
        )?;
        let mut client = self.state.conn_in(ws).await?;
        let d = client
            .run(async |tx| db::definitions::define_custom_field(tx, ws, &def).await)
            .await?;
        Ok(Response::new(pb::DefineCustomFieldResponse {
            field: Some(cc::custom_field_to_proto(&d)),
        }))
    }

    async fn list_custom_fields(
        &self,
        req: Request<pb::ListCustomFieldsRequest>,
    ) -> Result<Response<pb::ListCustomFieldsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let mut client = self.state.conn_in(ws).await?;
        let defs = client
            .run(async |tx| db::definitions::list_custom_fields(tx, ws).await)
            .await?;
        Ok(Response::new(pb::ListCustomFieldsResponse {
            fields: defs.iter().map(cc::custom_field_to_proto).collect(),
        }))
    }

    async fn define_label(
        &self,
        req: Request<pb::DefineLabelRequest>,
    ) -> Result<Response<pb::DefineLabelResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let def = checked(
            "label",
            cc::label_from_proto(&req.into_inner().label.unwrap_or_default()),
        )?;
        let mut client = self.state.conn_in(ws).await?;
        let l = client
            .run(async |tx| db::definitions::define_label(tx, ws, &def).await)
            .await?;
        Ok(Response::new(pb::DefineLabelResponse {
            label: Some(cc::label_to_proto(&l)),
        }))
    }

    async fn list_labels(
        &self,
        req: Request<pb::ListLabelsRequest>,
    ) -> Result<Response<pb::ListLabelsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let mut client = self.state.conn_in(ws).await?;
        let labels = client
            .run(async |tx| db::definitions::list_labels(tx, ws).await)
            .await?;
        Ok(Response::new(pb::ListLabelsResponse {
            labels: labels.iter().map(cc::label_to_proto).collect(),
        }))
    }

    async fn merge_contacts(
        &self,
        req: Request<pb::MergeContactsRequest>,
    ) -> Result<Response<pb::MergeContactsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let mut v = Vec::new();
        if r.primary_id <= 0 {
            v.push(Violation::new("primary_id", "required"));
        }
        if r.duplicate_ids.is_empty() || r.duplicate_ids.len() > MAX_MERGE {
            v.push(Violation::new(
                "duplicate_ids",
                format!("give 1 to {MAX_MERGE} ids"),
            ));
        }
        for (i, id) in r.duplicate_ids.iter().enumerate() {
            if *id == r.primary_id || *id <= 0 || r.duplicate_ids[..i].contains(id) {
                v.push(Violation::new(
                    format!("duplicate_ids[{i}]"),
                    "must be distinct positive ids other than the primary",
                ));
            }
        }
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let mut client = self.state.conn_in(ws).await?;
        let merge = writes::MergeContacts {
            primary: r.primary_id,
            duplicates: &r.duplicate_ids,
        };
        let m = writes::run(&mut client, ws, &merge).await?;
        Ok(Response::new(pb::MergeContactsResponse {
            contact: Some(cc::to_proto(&m.contact)),
            events_moved: m.events_moved as i64,
            deals_moved: m.deals_moved as i64,
        }))
    }
}

/// Parses an etag (`v<version>`); empty means none.
fn parse_etag(field: &str, etag: &str) -> Result<Option<i64>, Status> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.strip_prefix('v')
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| invalid(vec![Violation::new(field, "not an etag returned by segd")]))
}
