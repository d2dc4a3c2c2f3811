//! Lowers a checked predicate to one parameterised, set-based query.
//!
//! The shape is always
//!
//! ```sql
//! FROM contacts c
//! LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v FROM events e
//!            WHERE e.workspace_id = $1 AND ... GROUP BY e.contact_id, e.workspace_id) ev1
//!        ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id
//! WHERE c.workspace_id = $1 AND (<boolean expression over c and the joins>)
//! ```
//!
//! Every table is read with its own `workspace_id = $1`, and every join or
//! correlation between rows of contacts, events, deals and memberships also
//! matches `workspace_id`, so each statement routes to one shard of a
//! cluster distributed by workspace (Citus).
//!
//! Event and deal conditions become grouped subqueries joined once, never a
//! subquery per contact; boolean structure stays a plain expression over the
//! joined columns, so OR and NOT cost nothing extra. Three shapes let the
//! planner start from the selective side (see `counts` and `segd bench sql`):
//! a test that contacts without rows fail compares the joined value without
//! `coalesce`, so at the top level the outer join becomes an inner one;
//! "did not" at the top level is `NOT EXISTS`, an anti-join; and when no
//! contact column is tested, [`Compiled::ids_body`] starts from one driving
//! grouped subquery and leaves the contacts table out. Every caller value is a
//! bind parameter, custom-field and property keys included; identifiers
//! come only from fixed lists in this file. Relative times are resolved
//! against the `now` given, so the SQL never calls `now()`.

use std::fmt::Write;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::ast::{AggFunc, SetMatch, Window};
use super::ir::*;
use super::plan::{Columns, Conjunct, Grouped, Plan, Source, hole};
use super::{counts, time};
use crate::model::WorkspaceId;
use crate::model::contact::{Channel, CustomFieldType};

/// A bind parameter of a compiled query.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// bigint
    Int8(i64),
    /// double precision
    Float8(f64),
    /// text
    Text(String),
    /// boolean
    Bool(bool),
    /// date
    Date(NaiveDate),
    /// timestamptz
    Time(DateTime<Utc>),
    /// bigint[]
    Int8Array(Vec<i64>),
    /// integer[]
    Int4Array(Vec<i32>),
    /// double precision[]
    Float8Array(Vec<f64>),
    /// text[]
    TextArray(Vec<String>),
    /// date[]
    DateArray(Vec<NaiveDate>),
    /// jsonb[]
    JsonArray(Vec<serde_json::Value>),
}

impl Param {
    /// The PostgreSQL type, for `query_typed`.
    pub fn pg_type(&self) -> Type {
        match self {
            Param::Int8(_) => Type::INT8,
            Param::Float8(_) => Type::FLOAT8,
            Param::Text(_) => Type::TEXT,
            Param::Bool(_) => Type::BOOL,
            Param::Date(_) => Type::DATE,
            Param::Time(_) => Type::TIMESTAMPTZ,
            Param::Int8Array(_) => Type::INT8_ARRAY,
            Param::Int4Array(_) => Type::INT4_ARRAY,
            Param::Float8Array(_) => Type::FLOAT8_ARRAY,
            Param::TextArray(_) => Type::TEXT_ARRAY,
            Param::DateArray(_) => Type::DATE_ARRAY,
            Param::JsonArray(_) => Type::JSONB_ARRAY,
        }
    }

    /// The value as JSON, for explanations.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Param::Int8(v) => json!(v),
            Param::Float8(v) => json!(v),
            Param::Text(v) => json!(v),
            Param::Bool(v) => json!(v),
            Param::Date(v) => json!(v.to_string()),
            Param::Time(v) => json!(v.to_rfc3339()),
            Param::Int8Array(v) => json!(v),
            Param::Int4Array(v) => json!(v),
            Param::Float8Array(v) => json!(v),
            Param::TextArray(v) => json!(v),
            Param::DateArray(v) => json!(v.iter().map(ToString::to_string).collect::<Vec<_>>()),
            Param::JsonArray(v) => json!(v),
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Int8(v) => v.to_sql_checked(ty, out),
            Param::Float8(v) => v.to_sql_checked(ty, out),
            Param::Text(v) => v.to_sql_checked(ty, out),
            Param::Bool(v) => v.to_sql_checked(ty, out),
            Param::Date(v) => v.to_sql_checked(ty, out),
            Param::Time(v) => v.to_sql_checked(ty, out),
            Param::Int8Array(v) => v.to_sql_checked(ty, out),
            Param::Int4Array(v) => v.to_sql_checked(ty, out),
            Param::Float8Array(v) => v.to_sql_checked(ty, out),
            Param::TextArray(v) => v.to_sql_checked(ty, out),
            Param::DateArray(v) => v.to_sql_checked(ty, out),
            Param::JsonArray(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Parameters paired with their types, for `query_typed`.
pub fn typed(params: &[Param]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

/// Lowers `pred` for workspace `ws`, resolving relative times against `now`.
pub fn lower(pred: &Pred, ws: WorkspaceId, now: DateTime<Utc>) -> Plan {
    let mut l = Lowerer::new(ws, now);
    // Top-level conjuncts may take shapes that only hold there; nested ANDs
    // are top-level too.
    let mut top: Vec<&Pred> = Vec::new();
    flatten(pred, &mut top);
    if top.is_empty() {
        top.push(pred);
    }
    let mut conjuncts: Vec<Conjunct> = Vec::with_capacity(top.len());
    // Top-level event conditions over the same events (types, window,
    // filters) share one grouped source, with a value per aggregate.
    let mut shared: Vec<(&EventAgg, usize)> = Vec::new();
    for p in &top {
        if let Pred::Event(e) = p
            && !l.is_absence(p)
        {
            let some = e.agg.func == AggFunc::Count && counts::means_some(&e.agg.test);
            let (sql, strict, source) = match shared.iter().find(|(x, _)| same_events(x, e)) {
                Some((_, s)) => {
                    let (sql, strict) = l.event_into(*s, e);
                    (sql, strict, *s)
                }
                None => {
                    let (sql, strict) = l.event(e);
                    let s = l.sources.len() - 1;
                    shared.push((e, s));
                    (sql, strict, s)
                }
            };
            conjuncts.push(Conjunct {
                sql,
                tests: Some(source),
                strict,
                some,
            });
            continue;
        }
        if let Pred::Deal(d) = p
            && !l.is_absence(p)
        {
            let (sql, strict) = l.deal(d);
            conjuncts.push(Conjunct {
                sql,
                tests: Some(l.sources.len() - 1),
                strict,
                some: d.agg.func == AggFunc::Count && counts::means_some(&d.agg.test),
            });
            continue;
        }
        let sql = l.conjunct(p);
        conjuncts.push(Conjunct {
            sql,
            tests: None,
            strict: false,
            some: false,
        });
    }
    // A source that contacts without rows fail can drive the ids-only body
    // when nothing reads a contact column; its tests then go in its HAVING.
    let driver = if touches_contact(pred) {
        None
    } else {
        conjuncts.iter().find(|c| c.strict).and_then(|c| c.tests)
    };
    Plan {
        params: l.params,
        sources: l.sources,
        conjuncts,
        driver,
    }
}

/// The top-level conjuncts of `p`: nested ANDs flattened.
fn flatten<'a>(p: &'a Pred, out: &mut Vec<&'a Pred>) {
    match p {
        Pred::All(items) if !items.is_empty() => items.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// Whether two event conditions read the same events.
fn same_events(a: &EventAgg, b: &EventAgg) -> bool {
    a.types == b.types && a.window == b.window && a.filters == b.filters
}

/// Whether a predicate reads any column of the contact besides its id.
fn touches_contact(p: &Pred) -> bool {
    match p {
        Pred::All(items) | Pred::Any(items) => items.iter().any(touches_contact),
        Pred::Not(inner) => touches_contact(inner),
        Pred::Field(..) | Pred::Set(..) | Pred::Subscription(..) => true,
        Pred::Event(_) | Pred::Deal(_) | Pred::Member(_) | Pred::Live(_) => false,
    }
}

/// Lowers several predicates into columns over one shared scan, so a single
/// query can test a contact (or every contact) against all of them.
pub fn lower_columns(preds: &[&Pred], ws: WorkspaceId, now: DateTime<Utc>) -> Columns {
    let mut l = Lowerer::new(ws, now);
    let conds = preds
        .iter()
        .map(|p| match l.pred(p) {
            (s, true) => format!("coalesce({s}, false)"),
            (s, false) => s,
        })
        .collect();
    Columns {
        params: l.params,
        sources: l.sources,
        conds,
    }
}

struct Lowerer {
    params: Vec<Param>,
    sources: Vec<Source>,
    next_alias: usize,
    now: DateTime<Utc>,
}

/// Whether a column holds a date or an instant (for relative tests).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Date,
    Time,
}

/// A lowered boolean expression and whether it can be NULL.
type Expr = (String, bool);

/// A "did not" condition, lowered as an anti-join.
enum Absent<'a> {
    Event(&'a EventAgg),
    Deal(&'a DealAgg),
}

/// A condition ANDed at the top of the tree that says "did not" ("not at
/// least one", or "exactly none"): lowered as `NOT EXISTS`, which the
/// planner pulls up into an anti-join (it would not under OR or NOT).
fn absence(p: &Pred) -> Option<Absent<'_>> {
    let (inner, negated) = match p {
        Pred::Not(inner) => (&**inner, true),
        p => (p, false),
    };
    let zero_only = |func: AggFunc, t: &Test| {
        func == AggFunc::Count
            && if negated {
                counts::means_some(t)
            } else {
                counts::means_none(t)
            }
    };
    match inner {
        Pred::Event(e) if zero_only(e.agg.func, &e.agg.test) => Some(Absent::Event(e)),
        Pred::Deal(d) if zero_only(d.agg.func, &d.agg.test) => Some(Absent::Deal(d)),
        _ => None,
    }
}

impl Lowerer {
    fn new(ws: WorkspaceId, now: DateTime<Utc>) -> Self {
        Self {
            params: vec![Param::Int8(ws.0)],
            sources: Vec::new(),
            next_alias: 1,
            now,
        }
    }

    /// Joins grouped source `g` as a new source named `<prefix><n>`, and
    /// tests its (single) value.
    fn join_agg(&mut self, prefix: &str, g: Grouped, agg: (AggFunc, &Test)) -> Expr {
        let alias = self.alias(prefix);
        self.sources.push(Source::Grouped(alias, g));
        let s = self.sources.len() - 1;
        self.agg_test(&hole::value(s, 0), agg.0, agg.1)
    }

    /// Adds a top-level event condition to grouped source `s`, which reads
    /// the same events: one more value, and its test.
    fn event_into(&mut self, s: usize, e: &EventAgg) -> Expr {
        let value = self.event_value(e);
        let Source::Grouped(_, g) = &mut self.sources[s] else {
            unreachable!("events share grouped sources only")
        };
        g.values.push(value);
        let k = g.values.len() - 1;
        self.agg_test(&hole::value(s, k), e.agg.func, &e.agg.test)
    }

    /// Whether a top-level condition lowers as an anti-join (see
    /// [`Lowerer::conjunct`]).
    fn is_absence(&self, p: &Pred) -> bool {
        absence(p).is_some()
    }

    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        hole::param(self.params.len() - 1)
    }

    fn alias(&mut self, prefix: &str) -> String {
        let a = format!("{prefix}{}", self.next_alias);
        self.next_alias += 1;
        a
    }

    fn today(&self) -> NaiveDate {
        self.now.date_naive()
    }

    fn pred(&mut self, p: &Pred) -> Expr {
        match p {
            Pred::All(items) | Pred::Any(items) => {
                let (sep, empty) = if matches!(p, Pred::All(_)) {
                    (" AND ", "TRUE")
                } else {
                    (" OR ", "FALSE")
                };
                if items.is_empty() {
                    return (empty.into(), false);
                }
                let parts: Vec<Expr> = items.iter().map(|x| self.pred(x)).collect();
                if parts.len() == 1 {
                    return parts.into_iter().next().expect("one");
                }
                let nullable = parts.iter().any(|(_, n)| *n);
                let sql = parts
                    .into_iter()
                    .map(|(s, _)| format!("({s})"))
                    .collect::<Vec<_>>()
                    .join(sep);
                (sql, nullable)
            }
            Pred::Not(inner) => {
                let (s, nullable) = self.pred(inner);
                // Two-valued logic: a condition on a missing value is false,
                // so its negation is true.
                if nullable {
                    (format!("NOT coalesce({s}, false)"), false)
                } else {
                    (format!("NOT ({s})"), false)
                }
            }
            Pred::Field(f, t) => self.field(f, t),
            Pred::Set(target, m, values) => self.set(target, *m, values),
            Pred::Subscription(ch, status) => {
                let col = match ch {
                    Channel::Email => "c.email_status",
                    Channel::Sms => "c.sms_status",
                };
                let v = self.bind(Param::Text(status.as_str().into()));
                (format!("{col} = {v}"), true)
            }
            Pred::Member(id) | Pred::Live(id) => {
                let a = self.alias("sm");
                let seg = self.bind(Param::Int8(*id));
                let table = match p {
                    Pred::Live(_) => "live_members",
                    _ => "segment_members",
                };
                let sub = format!(
                    "SELECT m.contact_id, m.workspace_id FROM {table} m WHERE m.workspace_id = {} AND m.segment_id = {seg}{}",
                    hole::param(0),
                    hole::only('m')
                );
                let test = format!("{a}.contact_id IS NOT NULL");
                self.sources.push(Source::Rows(a, sub));
                (test, false)
            }
            Pred::Event(e) => self.event(e),
            Pred::Deal(d) => self.deal(d),
        }
    }

    fn field(&mut self, f: &Field, t: &Test) -> Expr {
        let (col, clock): (String, Clock) = match f {
            Field::Id => ("c.id".into(), Clock::Time),
            Field::Text(name) | Field::Time(name) => (format!("c.{name}"), Clock::Time),
            Field::LeadScore => ("c.lead_score".into(), Clock::Time),
            Field::BirthDate => ("c.birth_date".into(), Clock::Date),
            Field::Age => return self.age(t),
            Field::Custom(key, ty) => {
                let k = self.bind(Param::Text(key.clone()));
                match t {
                    Test::IsSet => return (format!("c.attrs ? {k}"), false),
                    Test::IsNotSet => return (format!("NOT (c.attrs ? {k})"), false),
                    _ => {}
                }
                match ty {
                    CustomFieldType::Number => (format!("(c.attrs -> {k})::float8"), Clock::Time),
                    CustomFieldType::Boolean => (format!("(c.attrs -> {k})::boolean"), Clock::Time),
                    CustomFieldType::Date => (format!("(c.attrs ->> {k})::date"), Clock::Date),
                    _ => (format!("(c.attrs ->> {k})"), Clock::Time),
                }
            }
        };
        let id = matches!(f, Field::Id);
        let (sql, nullable) = self.test(&col, t, clock, id);
        (sql, nullable && !id)
    }

    /// A test on `col`. Tests on NULL are NULL except IS [NOT] SET.
    fn test(&mut self, col: &str, t: &Test, clock: Clock, int_ids: bool) -> Expr {
        let lit = |l: &Lit| -> Param {
            match l {
                Lit::Text(s) => Param::Text(s.clone()),
                Lit::Num(n) if int_ids => Param::Int8(*n as i64),
                Lit::Num(n) => Param::Float8(*n),
                Lit::Bool(b) => Param::Bool(*b),
                Lit::Date(d) => Param::Date(*d),
                Lit::Time(t) => Param::Time(*t),
            }
        };
        let list = |ls: &[Lit]| -> Param {
            match ls.first() {
                Some(Lit::Num(_)) if int_ids => Param::Int8Array(
                    ls.iter()
                        .map(|l| if let Lit::Num(n) = l { *n as i64 } else { 0 })
                        .collect(),
                ),
                Some(Lit::Num(_)) => Param::Float8Array(
                    ls.iter()
                        .map(|l| if let Lit::Num(n) = l { *n } else { 0.0 })
                        .collect(),
                ),
                Some(Lit::Date(_)) => Param::DateArray(
                    ls.iter()
                        .filter_map(|l| if let Lit::Date(d) = l { Some(*d) } else { None })
                        .collect(),
                ),
                _ => Param::TextArray(
                    ls.iter()
                        .map(|l| {
                            if let Lit::Text(s) = l {
                                s.clone()
                            } else {
                                String::new()
                            }
                        })
                        .collect(),
                ),
            }
        };
        match t {
            Test::Eq(l) => {
                let v = self.bind(lit(l));
                (format!("{col} = {v}"), true)
            }
            Test::Neq(l) => {
                let v = self.bind(lit(l));
                (format!("{col} <> {v}"), true)
            }
            Test::In(ls) => {
                let v = self.bind(list(ls));
                (format!("{col} = ANY({v})"), true)
            }
            Test::NotIn(ls) => {
                let v = self.bind(list(ls));
                (format!("{col} <> ALL({v})"), true)
            }
            Test::Like(how, s) => {
                let esc = like_literal(s);
                let pattern = match how {
                    Like::Contains => format!("%{esc}%"),
                    Like::StartsWith => format!("{esc}%"),
                    Like::EndsWith => format!("%{esc}"),
                };
                let v = self.bind(Param::Text(pattern));
                (format!("{col} ILIKE {v}"), true)
            }
            Test::Cmp(o, l) => {
                let v = self.bind(lit(l));
                (format!("{col} {} {v}", ord(*o)), true)
            }
            Test::Between(a, b) => {
                let (a, b) = (self.bind(lit(a)), self.bind(lit(b)));
                (format!("{col} BETWEEN {a} AND {b}"), true)
            }
            Test::IsSet => (format!("{col} IS NOT NULL"), false),
            Test::IsNotSet => (format!("{col} IS NULL"), false),
            Test::WithinLast(s) => {
                let (lo, hi) = match clock {
                    Clock::Date => (
                        Param::Date(time::back_date(self.today(), *s)),
                        Param::Date(self.today()),
                    ),
                    Clock::Time => (Param::Time(time::back(self.now, *s)), Param::Time(self.now)),
                };
                let (lo, hi) = (self.bind(lo), self.bind(hi));
                (format!("{col} BETWEEN {lo} AND {hi}"), true)
            }
            Test::OlderThan(s) => {
                let cut = match clock {
                    Clock::Date => Param::Date(time::back_date(self.today(), *s)),
                    Clock::Time => Param::Time(time::back(self.now, *s)),
                };
                let cut = self.bind(cut);
                (format!("{col} < {cut}"), true)
            }
            Test::WithinNext(s) => {
                let (lo, hi) = match clock {
                    Clock::Date => (
                        Param::Date(self.today()),
                        Param::Date(time::forward_date(self.today(), *s)),
                    ),
                    Clock::Time => (
                        Param::Time(self.now),
                        Param::Time(time::forward(self.now, *s)),
                    ),
                };
                let (lo, hi) = (self.bind(lo), self.bind(hi));
                (format!("{col} BETWEEN {lo} AND {hi}"), true)
            }
            Test::Anniversary(s) => {
                let codes = self.bind(Param::Int4Array(time::anniversary_codes(self.today(), *s)));
                let d = if clock == Clock::Time {
                    format!("({col} AT TIME ZONE 'UTC')")
                } else {
                    col.to_string()
                };
                (
                    format!(
                        "(extract(month FROM {d}) * 100 + extract(day FROM {d}))::int = ANY({codes})"
                    ),
                    true,
                )
            }
        }
    }

    /// Age tests as ranges of `birth_date`: `age >= n` exactly when
    /// `birth_date <= years_before(today, n)`.
    fn age(&mut self, t: &Test) -> Expr {
        let today = self.today();
        let cut = |n: f64| Param::Date(time::years_before(today, n as u32));
        let at_least = |me: &mut Self, n: f64| format!("c.birth_date <= {}", me.bind(cut(n)));
        let below = |me: &mut Self, n: f64| format!("c.birth_date > {}", me.bind(cut(n)));
        let num = |l: &Lit| if let Lit::Num(n) = l { *n } else { 0.0 };
        let eq = |me: &mut Self, n: f64| {
            let (a, b) = (at_least(me, n), below(me, n + 1.0));
            format!("{a} AND {b}")
        };
        match t {
            Test::Cmp(Ord::Gte, l) => (at_least(self, num(l)), true),
            Test::Cmp(Ord::Gt, l) => (at_least(self, num(l) + 1.0), true),
            Test::Cmp(Ord::Lt, l) => (below(self, num(l)), true),
            Test::Cmp(Ord::Lte, l) => (below(self, num(l) + 1.0), true),
            Test::Eq(l) => (eq(self, num(l)), true),
            Test::Neq(l) => {
                let n = num(l);
                let (a, b) = (below(self, n), at_least(self, n + 1.0));
                (format!("({a} OR {b})"), true)
            }
            Test::Between(lo, hi) => {
                let (a, b) = (at_least(self, num(lo)), below(self, num(hi) + 1.0));
                (format!("{a} AND {b}"), true)
            }
            Test::In(ls) => {
                let parts: Vec<String> = ls
                    .iter()
                    .map(|l| format!("({})", eq(self, num(l))))
                    .collect();
                (format!("({})", parts.join(" OR ")), true)
            }
            Test::NotIn(ls) => {
                let parts: Vec<String> = ls
                    .iter()
                    .map(|l| {
                        let n = num(l);
                        let (a, b) = (below(self, n), at_least(self, n + 1.0));
                        format!("({a} OR {b})")
                    })
                    .collect();
                (parts.join(" AND "), true)
            }
            Test::IsSet => ("c.birth_date IS NOT NULL".into(), false),
            _ => ("c.birth_date IS NULL".into(), false),
        }
    }

    fn set(&mut self, target: &SetTarget, m: SetMatch, values: &[String]) -> Expr {
        let v = self.bind(Param::TextArray(values.to_vec()));
        let (col, nullable) = match target {
            SetTarget::Tags => ("c.tags".to_string(), false),
            SetTarget::Labels => ("c.labels".to_string(), false),
            SetTarget::CustomList(key) => {
                let k = self.bind(Param::Text(key.clone()));
                (format!("(c.attrs -> {k})"), true)
            }
        };
        let (any, all) = if nullable { ("?|", "?&") } else { ("&&", "@>") };
        match m {
            SetMatch::Any => (format!("{col} {any} {v}"), nullable),
            SetMatch::All => (format!("{col} {all} {v}"), nullable),
            SetMatch::None if nullable => (format!("NOT coalesce({col} {any} {v}, false)"), false),
            SetMatch::None => (format!("NOT ({col} {any} {v})"), false),
        }
    }

    /// A condition ANDed at the top of the tree: "did not" (count 0) becomes
    /// `NOT EXISTS`, which the planner pulls up into an anti-join (it would
    /// not under OR or NOT); everything else lowers as anywhere.
    fn conjunct(&mut self, p: &Pred) -> String {
        match absence(p) {
            Some(Absent::Event(e)) => {
                let (from, mut conds) = self.event_scope(e, true);
                conds.insert(
                    1,
                    "e.contact_id = c.id AND e.workspace_id = c.workspace_id".into(),
                );
                format!(
                    "NOT EXISTS (SELECT 1 FROM {from} WHERE {})",
                    conds.join(" AND ")
                )
            }
            Some(Absent::Deal(d)) => {
                let mut conds = self.deal_scope(d);
                conds.insert(
                    1,
                    "d.contact_id = c.id AND d.workspace_id = c.workspace_id".into(),
                );
                format!(
                    "NOT EXISTS (SELECT 1 FROM deals d WHERE {})",
                    conds.join(" AND ")
                )
            }
            None => {
                let (sql, _) = self.pred(p);
                sql
            }
        }
    }

    fn event(&mut self, e: &EventAgg) -> Expr {
        let (from, conds) = self.event_scope(e, false);
        let value = self.event_value(e);
        let open = matches!(e.window, None | Some(Window::Last(_) | Window::After(_)))
            && e.filters.is_empty();
        // The driver's own latest time answers "since the last X" only when
        // it holds every X event: one type, unfiltered, open to now.
        let last_of = match (&e.types, open) {
            (Some(ts), true) if ts.len() == 1 => Some(ts[0].clone()),
            _ => None,
        };
        let g = Grouped {
            key: "e.contact_id",
            tenant: "e.workspace_id",
            from,
            conds,
            values: vec![value],
            last_of,
        };
        self.join_agg("ev", g, (e.agg.func, &e.agg.test))
    }

    /// The events an event condition aggregates: `FROM` and `WHERE` parts
    /// over `events e`. `correlated` ties "since the last X" to the row's own
    /// contact by a scalar subquery (for `NOT EXISTS`, probed per contact)
    /// instead of a grouped join over all contacts.
    fn event_scope(&mut self, e: &EventAgg, correlated: bool) -> (String, Vec<String>) {
        let mut from = String::from("events e");
        let mut conds = vec![format!("e.workspace_id = {}", hole::param(0))];
        match e.types.as_deref() {
            None => {}
            Some([t]) => {
                let t = self.bind(Param::Text(t.clone()));
                conds.push(format!("e.type = {t}"));
            }
            Some(ts) => {
                let t = self.bind(Param::TextArray(ts.to_vec()));
                conds.push(format!("e.type = ANY({t})"));
            }
        }
        match &e.window {
            None => {}
            Some(Window::Last(s)) => {
                let cut = self.bind(Param::Time(time::back(self.now, *s)));
                conds.push(format!("e.occurred_at >= {cut}"));
            }
            Some(Window::OlderThan(s)) => {
                let cut = self.bind(Param::Time(time::back(self.now, *s)));
                conds.push(format!("e.occurred_at < {cut}"));
            }
            Some(Window::Between(lo, hi)) => {
                let (lo, hi) = (self.bind(Param::Time(*lo)), self.bind(Param::Time(*hi)));
                conds.push(format!("e.occurred_at >= {lo} AND e.occurred_at < {hi}"));
            }
            Some(Window::Before(t)) => {
                let t = self.bind(Param::Time(*t));
                conds.push(format!("e.occurred_at < {t}"));
            }
            Some(Window::After(t)) => {
                let t = self.bind(Param::Time(*t));
                conds.push(format!("e.occurred_at >= {t}"));
            }
            Some(Window::SinceLast(u)) if correlated => {
                // Tied to the outer contact, the bound is computed once per
                // contact and becomes an index condition (the renderer
                // writes it, or reads it off a driver that has it).
                self.params.push(Param::Text(u.clone()));
                let last = hole::last_of(self.params.len() - 1);
                conds.push(format!("e.occurred_at > {last}"));
            }
            Some(Window::SinceLast(u)) => {
                let u = self.bind(Param::Text(u.clone()));
                let _ = write!(
                    from,
                    " LEFT JOIN (SELECT s.contact_id, s.workspace_id, max(s.occurred_at) AS t FROM events s WHERE s.workspace_id = {} AND s.type = {u}{} GROUP BY s.contact_id, s.workspace_id) s ON s.contact_id = e.contact_id AND s.workspace_id = e.workspace_id",
                    hole::param(0),
                    hole::only('s')
                );
                conds.push("(s.t IS NULL OR e.occurred_at > s.t)".into());
            }
        }
        for (f, test) in &e.filters {
            if let Some(sql) = self.prop_is_text(f, test) {
                conds.push(sql);
                continue;
            }
            let (col, guard) = self.event_field(f, test);
            let (sql, _) = self.test(&col, test, Clock::Time, false);
            conds.push(match guard {
                Some(g) => format!("({sql}) AND {g}"),
                None => format!("({sql})"),
            });
        }
        (from, conds)
    }

    /// The aggregate an event condition tests.
    fn event_value(&mut self, e: &EventAgg) -> String {
        match (e.agg.func, &e.agg.arg) {
            (AggFunc::First, _) => "min(e.occurred_at)".to_string(),
            (AggFunc::Last, _) => "max(e.occurred_at)".to_string(),
            (AggFunc::Count, _) | (_, None) => "count(*)".to_string(),
            (AggFunc::Distinct, Some(f)) => {
                let col = match f {
                    EventField::Value => "e.value".to_string(),
                    EventField::Currency => "e.currency".to_string(),
                    EventField::Prop(k) => {
                        format!("e.properties ->> {}", self.bind(Param::Text(k.clone())))
                    }
                };
                format!("count(DISTINCT {col})")
            }
            (func, Some(f)) => {
                let col = self.event_number(f);
                format!("{}({col})", agg_name(func))
            }
        }
    }

    /// `properties.k = "text"` and `IN ("a", "b")`, matching JSON strings
    /// only. When no literal could be the text of another JSON type (a
    /// number, `true`, `null`, an object...), comparing the `->>` text is
    /// exact and the cheapest form; otherwise jsonb containment of
    /// `{"k": "text"}` checks the type too. Key and values stay bound.
    fn prop_is_text(&mut self, f: &EventField, t: &Test) -> Option<String> {
        let EventField::Prop(k) = f else {
            return None;
        };
        let texts: Vec<&Lit> = match t {
            Test::Eq(l) => vec![l],
            Test::In(ls) => ls.iter().collect(),
            _ => return None,
        };
        let texts = texts
            .iter()
            .map(|l| match l {
                Lit::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()?;
        if texts.iter().all(|s| !could_be_non_string(s)) {
            let k = self.bind(Param::Text(k.clone()));
            return Some(match texts.as_slice() {
                [one] => {
                    let v = self.bind(Param::Text((*one).to_string()));
                    format!("((e.properties ->> {k}) = {v})")
                }
                many => {
                    let v = self.bind(Param::TextArray(
                        many.iter().map(|s| (*s).to_string()).collect(),
                    ));
                    format!("((e.properties ->> {k}) = ANY({v}))")
                }
            });
        }
        let values = texts
            .iter()
            .map(|s| serde_json::json!({ k.as_str(): s }))
            .collect();
        let v = self.bind(Param::JsonArray(values));
        Some(format!("(e.properties @> ANY({v}))"))
    }

    /// The column expression an event filter tests, and a guard ANDed after
    /// the test; properties are typed by the test's literals, and values of
    /// another JSON type do not match. Text tests read `->>` and check the
    /// type only on rows that passed (every text test is strict), the
    /// cheapest order.
    fn event_field(&mut self, f: &EventField, t: &Test) -> (String, Option<String>) {
        match f {
            EventField::Value => ("e.value".into(), None),
            EventField::Currency => ("e.currency".into(), None),
            EventField::Prop(k) => {
                if matches!(t, Test::IsSet | Test::IsNotSet) {
                    let k = self.bind(Param::Text(k.clone()));
                    return (format!("(e.properties -> {k})"), None);
                }
                let first = match t {
                    Test::Eq(l) | Test::Neq(l) | Test::Cmp(_, l) | Test::Between(l, _) => Some(l),
                    Test::In(ls) | Test::NotIn(ls) => ls.first(),
                    _ => None,
                };
                match first {
                    Some(Lit::Num(_)) => (self.event_number(f), None),
                    Some(Lit::Bool(_)) => {
                        let k = self.bind(Param::Text(k.clone()));
                        (
                            format!(
                                "(CASE WHEN jsonb_typeof(e.properties -> {k}) = 'boolean' THEN (e.properties -> {k})::boolean END)"
                            ),
                            None,
                        )
                    }
                    _ => {
                        let k = self.bind(Param::Text(k.clone()));
                        // A prefix no JSON number, boolean, null, object or
                        // array text starts with needs no type check.
                        let only_strings = matches!(t, Test::Like(Like::StartsWith, p) if only_strings_start_with(p));
                        let guard = (!only_strings)
                            .then(|| format!("jsonb_typeof(e.properties -> {k}) = 'string'"));
                        (format!("(e.properties ->> {k})"), guard)
                    }
                }
            }
        }
    }

    fn event_number(&mut self, f: &EventField) -> String {
        match f {
            EventField::Prop(k) => {
                let k = self.bind(Param::Text(k.clone()));
                format!(
                    "(CASE WHEN jsonb_typeof(e.properties -> {k}) = 'number' THEN (e.properties -> {k})::float8 END)"
                )
            }
            _ => "e.value".into(),
        }
    }

    /// The `WHERE` parts over `deals d` selecting a deal condition's deals.
    fn deal_scope(&mut self, d: &DealAgg) -> Vec<String> {
        let mut conds = vec![format!("d.workspace_id = {}", hole::param(0))];
        for (f, test) in &d.filters {
            let (sql, _) = self.test(deal_col(*f), test, Clock::Time, false);
            conds.push(format!("({sql})"));
        }
        conds
    }

    fn deal(&mut self, d: &DealAgg) -> Expr {
        let conds = self.deal_scope(d);
        let value = match (d.agg.func, d.agg.arg) {
            (AggFunc::First, _) => "min(d.created_at)".to_string(),
            (AggFunc::Last, _) => "max(d.created_at)".to_string(),
            (AggFunc::Count, _) | (_, None) => "count(*)".to_string(),
            (AggFunc::Distinct, Some(f)) => format!("count(DISTINCT {})", deal_col(f)),
            (func, Some(f)) => format!("{}({})", agg_name(func), deal_col(f)),
        };
        let g = Grouped {
            key: "d.contact_id",
            tenant: "d.workspace_id",
            from: "deals d".into(),
            conds,
            values: vec![value],
            last_of: None,
        };
        self.join_agg("dl", g, (d.agg.func, &d.agg.test))
    }

    /// Tests an aggregate column. Contacts without matches have no row:
    /// their count, sum and distinct count are 0, the rest are missing.
    fn agg_test(&mut self, value: &str, func: AggFunc, t: &Test) -> Expr {
        let zero = matches!(func, AggFunc::Count | AggFunc::Sum | AggFunc::Distinct);
        if zero && counts::zero_fails(t) {
            // Contacts without a row fail the test either way; comparing the
            // column itself keeps the condition strict, so at the top level
            // the planner turns the outer join into an inner one.
            return self.test(value, t, Clock::Time, false);
        }
        let col = if zero {
            format!("coalesce({value}, 0)")
        } else {
            value.to_string()
        };
        let (sql, nullable) = self.test(&col, t, Clock::Time, false);
        (sql, nullable && !zero)
    }
}

/// `s` as a LIKE pattern that matches it literally: `\`, `%` and `_`
/// escaped (the pattern is a bound value).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether no JSON number, boolean, null, object or array has a text that
/// starts with `prefix` (case-insensitively).
pub(crate) fn only_strings_start_with(prefix: &str) -> bool {
    prefix
        .chars()
        .next()
        .is_some_and(|c| !"0123456789-tfn{[".contains(c.to_ascii_lowercase()))
}

/// Whether `s` could be the `->>` text of a JSON value that is not a
/// string: a number, `true`, `false`, `null`, an object or an array.
pub(crate) fn could_be_non_string(s: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(s).is_ok_and(|v| !v.is_string())
}

fn ord(o: Ord) -> &'static str {
    match o {
        Ord::Gt => ">",
        Ord::Gte => ">=",
        Ord::Lt => "<",
        Ord::Lte => "<=",
    }
}

fn agg_name(f: AggFunc) -> &'static str {
    match f {
        AggFunc::Sum => "sum",
        AggFunc::Avg => "avg",
        AggFunc::Min => "min",
        _ => "max",
    }
}

fn deal_col(f: DealField) -> &'static str {
    match f {
        DealField::Status => "d.status",
        DealField::Stage => "d.stage",
        DealField::Value => "d.value",
        DealField::Currency => "d.currency",
        DealField::Owner => "d.owner",
        DealField::Name => "d.name",
        DealField::CreatedAt => "d.created_at",
        DealField::ClosedAt => "d.closed_at",
    }
}
