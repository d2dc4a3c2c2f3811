//! Membership queries: counts, previews, membership checks, breakdowns and
//! overlaps. Each wraps the compiled query of `segment::lower`; none
//! rebuilds it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::segments::{self as segs, CompiledTarget, Definitions, Target, saved_definition};
use crate::db;
use crate::error::{Error, Result, Violation};
use crate::model::WorkspaceId;
use crate::model::contact::{Contact, ContactKey};
use crate::segment::eval::{ContactData, NodeResult, explain};
use crate::segment::lower::lower_columns;
use crate::segment::plan::Plan;
use crate::segment::render::{GroupKey, Order, Query, Select};

pub use crate::segment::render::Sample;

/// Runs membership queries, each in its own transaction with the query
/// class's statement timeout, compiling inline definitions under the cost
/// ceiling; on a read replica when one is given.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    /// The primary's connections.
    pub pool: &'a crate::db::Pool,
    /// A read replica's connections, to try first, and where to note
    /// that the read went to the primary after all.
    pub replica: Option<(&'a crate::db::Pool, &'a AtomicBool)>,
    /// Statement timeout for these queries.
    pub timeout: Duration,
    /// Cost ceiling for inline definitions.
    pub max_cost: f64,
}

impl Reader<'_> {
    /// Runs `f` in a fresh transaction under the statement timeout, on the
    /// replica if there is one. A replica that cannot answer (down, a query
    /// cancelled by replication, a segment or contact it has not received
    /// yet) hands the read to the primary. If the call is dropped
    /// meanwhile, the statement is cancelled (see [`db::scope::Scoped`]).
    pub(crate) async fn within<T>(
        &self,
        ws: WorkspaceId,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T> + Clone,
    ) -> Result<T> {
        let Some((replica, fell_back)) = self.replica else {
            return self.attempt(self.pool, ws, f).await;
        };
        match self.attempt(replica, ws, f.clone()).await {
            Err(e @ (Error::Unavailable(_) | Error::NotFound(_))) => {
                tracing::info!(error = %e, "the read replica could not answer; asking the primary");
                fell_back.store(true, Ordering::Relaxed);
                self.attempt(self.pool, ws, f).await
            }
            other => other,
        }
    }

    async fn attempt<T>(
        &self,
        pool: &crate::db::Pool,
        ws: WorkspaceId,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        // The scope's statements are SETs, not queries: `f` may still
        // choose its isolation level before the snapshot is taken.
        db::scope::Scoped::get(pool, ws)
            .await?
            .with_timeout(self.timeout)
            .run(f)
            .await
    }

    /// The exact size of a target, optionally sampled.
    ///
    /// # Errors
    /// As [`compile_guarded`]; the database is unavailable or timed out.
    pub async fn count(
        &self,
        ws: WorkspaceId,
        target: &Target,
        sample: Option<&Sample>,
        allow_expensive: bool,
        now: DateTime<Utc>,
    ) -> Result<(i64, Option<Option<DateTime<Utc>>>)> {
        self.within(ws, async |tx| {
            let t = compile_guarded(tx, ws, target, now, self.max_cost, allow_expensive).await?;
            let n = count(tx, &t.compiled, sample).await?;
            Ok((n, t.live()))
        })
        .await
    }

    /// Count, sample and plan figures of a target.
    ///
    /// # Errors
    /// As [`Reader::count`].
    pub async fn preview(
        &self,
        ws: WorkspaceId,
        target: &Target,
        n: i64,
        allow_expensive: bool,
        now: DateTime<Utc>,
    ) -> Result<Preview> {
        self.within(ws, async |tx| {
            let t = compile_guarded(tx, ws, target, now, self.max_cost, allow_expensive).await?;
            preview(tx, ws, &t.compiled, n).await
        })
        .await
    }

    /// Which segments contain a contact; see [`check_membership`].
    ///
    /// # Errors
    /// As [`check_membership`].
    pub async fn check(
        &self,
        ws: WorkspaceId,
        contact: &ContactKey,
        only: &[i64],
        with_explain: bool,
        now: DateTime<Utc>,
    ) -> Result<(i64, Vec<Membership>)> {
        self.within(ws, async |tx| {
            check_membership(tx, ws, contact, only, with_explain, now).await
        })
        .await
    }

    /// A breakdown of a target; see [`breakdown`].
    ///
    /// # Errors
    /// As [`breakdown`] and [`compile_guarded`].
    pub async fn breakdown(
        &self,
        ws: WorkspaceId,
        target: &Target,
        fields: &[String],
        n: i64,
        allow_expensive: bool,
        now: DateTime<Utc>,
    ) -> Result<Breakdown> {
        self.within(ws, async |tx| {
            let t = compile_guarded(tx, ws, target, now, self.max_cost, allow_expensive).await?;
            breakdown(tx, ws, &t.compiled, fields, n).await
        })
        .await
    }

    /// Sizes and intersections of saved segments; see [`overlap`].
    ///
    /// # Errors
    /// As [`overlap`].
    pub async fn overlap(
        &self,
        ws: WorkspaceId,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<Overlaps> {
        self.within(ws, async |tx| overlap(tx, ws, ids, now).await)
            .await
    }
}

/// Compiles a target and, for inline definitions, refuses plans costlier
/// than `max_cost` unless `allow_expensive`.
///
/// # Errors
/// As [`segs::compile`], plus `FailedPrecondition` over the cost ceiling.
pub async fn compile_guarded(
    client: &impl GenericClient,
    ws: WorkspaceId,
    target: &Target,
    now: DateTime<Utc>,
    max_cost: f64,
    allow_expensive: bool,
) -> Result<CompiledTarget> {
    let t = segs::compile(client, ws, target, now, true).await?;
    if matches!(target, Target::Inline(_)) && !allow_expensive {
        let e = segs::explain(client, &t.compiled, false).await?;
        if e.cost > max_cost {
            return Err(Error::FailedPrecondition(format!(
                "the definition's estimated cost is {:.0}, above the ceiling of {max_cost:.0}; set allow_expensive to run it anyway",
                e.cost
            )));
        }
    }
    Ok(t)
}

/// The exact number of members, optionally of a sample.
///
/// # Errors
/// The database is unavailable or the statement timed out.
pub async fn count(client: &impl GenericClient, c: &Plan, sample: Option<&Sample>) -> Result<i64> {
    let q = c.render(&Query {
        sample,
        ..Query::of(Select::Count)
    });
    let row = client.query_typed(&q.sql, &q.typed()).await?;
    Ok(row[0].get(0))
}

/// A preview: count, sample and plan figures.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Exact count.
    pub count: i64,
    /// Sample contacts.
    pub sample: Vec<Contact>,
    /// Cost estimate.
    pub cost: f64,
    /// Row estimate.
    pub rows: f64,
    /// Wall time of count and sample.
    pub elapsed: Duration,
}

/// Counts and samples a compiled target.
///
/// # Errors
/// The database is unavailable or the statement timed out.
pub async fn preview(
    client: &impl GenericClient,
    ws: WorkspaceId,
    c: &Plan,
    n: i64,
) -> Result<Preview> {
    let e = segs::explain(client, c, false).await?;
    let started = Instant::now();
    let count = count(client, c, None).await?;
    let q = c.render(&Query {
        order: Order::Hash,
        limit: Some(n),
        ..Query::of(Select::Contacts(&db::contacts::SELECT_COLUMNS))
    });
    let rows = client.query_typed(&q.sql, &q.typed()).await?;
    let schema = db::definitions::schema(client, ws).await?;
    let sample = rows
        .iter()
        .map(|r| db::contacts::from_row(r, &schema))
        .collect();
    Ok(Preview {
        count,
        sample,
        cost: e.cost,
        rows: e.rows,
        elapsed: started.elapsed(),
    })
}

/// One segment's answer for a contact.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Segment id.
    pub id: i64,
    /// Segment name.
    pub name: String,
    /// Member or not.
    pub member: bool,
    /// With explain: the definition's nodes and whether each held.
    pub explanation: Vec<NodeResult>,
}

/// Which segments contain one contact: one query tests every segment at
/// once (the compiled conditions as columns over the contact's row).
/// `only` restricts to listed segments (which must be enabled); otherwise
/// every enabled segment is checked.
///
/// # Errors
/// `NotFound` for an unknown contact or segment, `FailedPrecondition` for a
/// listed disabled segment.
pub async fn check_membership(
    client: &impl GenericClient,
    ws: WorkspaceId,
    contact: &ContactKey,
    only: &[i64],
    with_explain: bool,
    now: DateTime<Utc>,
) -> Result<(i64, Vec<Membership>)> {
    let contact = db::contacts::get(client, ws, contact).await?;
    let all = db::segments::all(client, ws).await?;
    for id in only {
        match all.iter().find(|s| s.id == *id) {
            None => return Err(Error::NotFound(format!("segment {id}"))),
            Some(s) if !s.enabled => {
                return Err(Error::FailedPrecondition(format!(
                    "segment {:?} is disabled",
                    s.name
                )));
            }
            Some(_) => {}
        }
    }
    let catalog = Definitions::load(client, ws).await?;
    let mut chosen = Vec::new();
    let mut checked = Vec::new();
    for s in &all {
        let listed = only.contains(&s.id);
        if !(listed || only.is_empty() && s.enabled) {
            continue;
        }
        let v = catalog.validate(&saved_definition(s), None)?;
        // A listed segment that reads a disabled one is refused like a
        // disabled one; the sweep over every segment leaves it out.
        if listed {
            v.require_enabled()?;
        } else if !v.disabled.is_empty() {
            continue;
        }
        chosen.push(s);
        checked.push(v);
    }
    let preds: Vec<_> = checked.iter().map(|v| &v.checked.pred).collect();
    let cols = lower_columns(&preds, ws, now);
    let answers: Vec<bool> = if cols.conds.is_empty() {
        vec![]
    } else {
        let q = cols.render_for(contact.id);
        let row = client.query_typed(&q.sql, &q.typed()).await?;
        let row = row
            .first()
            .ok_or_else(|| Error::NotFound(format!("contact {}", contact.id)))?;
        (0..cols.conds.len()).map(|i| row.get(i)).collect()
    };
    let explanations = if with_explain {
        let (events, deals, member_of) = contact_data(client, ws, contact.id).await?;
        let trees: Vec<_> = checked
            .iter()
            .map(|v| (v.display.clone(), v.checked.pred.clone()))
            .collect();
        let contact = contact.clone();
        // The reference evaluator is CPU-bound (events × segments); it runs
        // on a blocking thread, a few at a time, so the async runtime keeps
        // serving other calls.
        let _slot = EXPLAIN_SLOTS
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        tokio::task::spawn_blocking(move || {
            let d = ContactData {
                contact: &contact,
                events: &events,
                deals: &deals,
                member_of: &member_of,
            };
            trees
                .iter()
                .map(|(display, pred)| explain(display, pred, &d, now))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(Error::internal)?
    } else {
        vec![Vec::new(); chosen.len()]
    };
    let out = chosen
        .iter()
        .zip(answers)
        .zip(explanations)
        .map(|((s, member), explanation)| Membership {
            id: s.id,
            name: s.name.clone(),
            member,
            explanation,
        })
        .collect();
    Ok((contact.id, out))
}

/// Explanations evaluated at once (each on a blocking thread).
static EXPLAIN_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Most events loaded to explain one contact's memberships.
const MAX_EXPLAIN_EVENTS: i64 = 100_000;

async fn contact_data(
    client: &impl GenericClient,
    ws: WorkspaceId,
    id: i64,
) -> Result<(
    Vec<crate::model::event::StoredEvent>,
    Vec<crate::model::deal::Deal>,
    HashSet<i64>,
)> {
    let events = db::events::list(
        client,
        ws,
        &ContactKey::Id(id),
        None,
        None,
        MAX_EXPLAIN_EVENTS,
    )
    .await?;
    let deals = db::deals::list(client, ws, Some(id), 0, 100_000).await?;
    let member_of = client
        .query(
            "SELECT segment_id FROM segment_members WHERE workspace_id = $1 AND contact_id = $2",
            &[&ws.0, &id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((events, deals, member_of))
}

/// One breakdown group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Values of the grouping fields (None: no value).
    pub keys: Vec<Option<String>>,
    /// Members in the group.
    pub count: i64,
}

/// A breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    /// Top groups, largest first.
    pub groups: Vec<Group>,
    /// Members in the other groups.
    pub other: i64,
    /// Number of groups in all.
    pub group_count: i64,
    /// Segment size.
    pub total: i64,
}

/// The breakdown key for a field.
fn group_key(field: &str, schema: &crate::model::schema::Schema) -> Result<GroupKey> {
    use crate::model::contact::{CustomFieldType, TextField};
    if let Some(f) = TextField::from_name(field) {
        return Ok(GroupKey::Column(f.name()));
    }
    Ok(match field {
        "source_channel" => GroupKey::Column("source_channel"),
        "lead_score" => GroupKey::Expr("c.lead_score::text"),
        "birth_date" => GroupKey::Expr("c.birth_date::text"),
        "labels" | "label" => GroupKey::Set("labels"),
        "tags" | "tag" => GroupKey::Set("tags"),
        other => {
            let key = other
                .strip_prefix("custom.")
                .ok_or_else(|| Error::invalid("group_by", format!("cannot group by `{other}`")))?;
            let t = schema.custom.get(key).ok_or_else(|| {
                Error::invalid("group_by", format!("unknown custom field `{key}`"))
            })?;
            match t {
                CustomFieldType::StringList => GroupKey::CustomList(key.to_string()),
                _ => GroupKey::Custom(key.to_string()),
            }
        }
    })
}

/// Member counts grouped by one or two fields: the top `n` groups and the
/// rest summed.
///
/// # Errors
/// `InvalidArgument` for an unknown field; the database is unavailable or
/// the statement timed out.
pub async fn breakdown(
    client: &impl GenericClient,
    ws: WorkspaceId,
    compiled: &Plan,
    fields: &[String],
    n: i64,
) -> Result<Breakdown> {
    let schema = db::definitions::schema(client, ws).await?;
    let keys = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            group_key(f, &schema).map_err(|e| match e {
                Error::InvalidArgument(v) => Error::InvalidArgument(
                    v.into_iter()
                        .map(|x| Violation::new(format!("group_by[{i}]"), x.description))
                        .collect(),
                ),
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let q = compiled.render(&Query::of(Select::Breakdown(&keys, n)));
    let rows = client.query_typed(&q.sql, &q.typed()).await?;
    let k = fields.len();
    let mut out = Breakdown {
        groups: vec![],
        other: 0,
        group_count: 0,
        total: count(client, compiled, None).await?,
    };
    for r in rows {
        let (sum, other, groups): (i64, bool, i64) = (r.get(k), r.get(k + 1), r.get(k + 2));
        out.group_count += groups;
        if other {
            out.other += sum;
        } else {
            out.groups.push(Group {
                keys: (0..k).map(|i| r.get(i)).collect(),
                count: sum,
            });
        }
    }
    out.groups
        .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.keys.cmp(&b.keys)));
    Ok(out)
}

/// Sizes of 2 to 5 segments and all their intersections, from one scan:
/// each segment's condition is a column, grouped by the combination.
///
/// # Errors
/// `NotFound`, `FailedPrecondition` for disabled segments.
pub async fn overlap(
    client: &impl GenericClient,
    ws: WorkspaceId,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Overlaps> {
    let all = db::segments::all(client, ws).await?;
    let catalog = Definitions::load(client, ws).await?;
    let mut checked = Vec::new();
    for id in ids {
        let s = all
            .iter()
            .find(|s| s.id == *id)
            .ok_or_else(|| Error::NotFound(format!("segment {id}")))?;
        if !s.enabled {
            return Err(Error::FailedPrecondition(format!(
                "segment {:?} is disabled",
                s.name
            )));
        }
        let v = catalog.validate(&saved_definition(s), None)?;
        v.require_enabled()?;
        checked.push(v);
    }
    let preds: Vec<_> = checked.iter().map(|v| &v.checked.pred).collect();
    let q = lower_columns(&preds, ws, now).render_combinations();
    let rows = client.query_typed(&q.sql, &q.typed()).await?;
    let combos: HashMap<u32, i64> = rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
        .collect();
    Ok(overlaps(ids, &combos))
}

/// Sizes from the count of each exact combination of memberships.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlaps {
    /// Size of each segment, in the given order.
    pub sizes: Vec<(i64, i64)>,
    /// Size of each intersection of two or more, by ascending id sets.
    pub intersections: Vec<(Vec<i64>, i64)>,
    /// Contacts in at least one.
    pub union: i64,
}

/// Turns exact-combination counts (bit i: in segment i) into sizes of every
/// segment and every intersection: a subset's size sums the combinations
/// that contain it.
pub fn overlaps(ids: &[i64], combos: &HashMap<u32, i64>) -> Overlaps {
    let within = |subset: u32| {
        combos
            .iter()
            .filter(|(m, _)| *m & subset == subset)
            .map(|(_, n)| n)
            .sum::<i64>()
    };
    let sizes = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, within(1 << i)))
        .collect();
    let mut intersections: Vec<(Vec<i64>, i64)> = (1u32..(1 << ids.len()))
        .filter(|s| s.count_ones() >= 2)
        .map(|s| {
            let mut members: Vec<i64> = (0..ids.len())
                .filter(|i| s & (1 << i) != 0)
                .map(|i| ids[i])
                .collect();
            members.sort_unstable();
            (members, within(s))
        })
        .collect();
    intersections.sort();
    Overlaps {
        sizes,
        intersections,
        union: combos.values().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections_sum_the_combinations_that_contain_them() {
        // 3 only in A, 2 in A and B, 1 in all three, 4 only in C.
        let combos = HashMap::from([(0b001, 3), (0b011, 2), (0b111, 1), (0b100, 4)]);
        let o = overlaps(&[10, 20, 30], &combos);
        assert_eq!(o.sizes, vec![(10, 6), (20, 3), (30, 5)]);
        assert_eq!(
            o.intersections,
            vec![
                (vec![10, 20], 3),
                (vec![10, 20, 30], 1),
                (vec![10, 30], 1),
                (vec![20, 30], 1)
            ]
        );
        assert_eq!(o.union, 10);
    }
}
