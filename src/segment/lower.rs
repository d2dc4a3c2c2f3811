//! Lowers a checked predicate to one parameterised, set-based query.
//!
//! The shape is always
//!
//! ```sql
//! FROM contacts c
//! LEFT JOIN (SELECT e.contact_id, count(*) AS v FROM events e WHERE ... GROUP BY e.contact_id) ev1
//!        ON ev1.contact_id = c.id
//! WHERE c.workspace_id = $1 AND (<boolean expression over c and the joins>)
//! ```
//!
//! Event and deal conditions become grouped subqueries joined once, never a
//! subquery per contact; boolean structure stays a plain expression over the
//! joined columns, so OR and NOT cost nothing extra. Every caller value is a
//! bind parameter, custom-field and property keys included; identifiers
//! come only from fixed lists in this file. Relative times are resolved
//! against the `now` given, so the SQL never calls `now()`.

use std::fmt::Write;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::ast::{AggFunc, SetMatch, Window};
use super::ir::*;
use super::time;
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
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A compiled segment: the `FROM ... WHERE ...` body selecting its members
/// as rows of `contacts c`, and its parameters (`$1` is the workspace).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// `FROM contacts c ... WHERE c.workspace_id = $1 AND (...)`.
    pub body: String,
    /// The parameters, in order.
    pub params: Vec<Param>,
}

impl Compiled {
    /// `SELECT c.id <body>`: the member ids, unordered.
    pub fn select_ids(&self) -> String {
        format!("SELECT c.id {}", self.body)
    }

    /// Adds a parameter and returns its placeholder.
    pub fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    /// The parameters paired with their types, for `query_typed`.
    pub fn typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        typed(&self.params)
    }
}

/// Parameters paired with their types, for `query_typed`.
pub fn typed(params: &[Param]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

/// Several predicates over one scan of the workspace's contacts: each
/// condition is a boolean column expression over `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    /// `FROM contacts c <joins>` (no WHERE).
    pub from: String,
    /// One two-valued boolean expression per predicate.
    pub conds: Vec<String>,
    /// The parameters, `$1` the workspace.
    pub params: Vec<Param>,
}

impl Columns {
    /// Adds a parameter and returns its placeholder.
    pub fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }
}

/// Lowers `pred` for workspace `ws`, resolving relative times against `now`.
pub fn lower(pred: &Pred, ws: WorkspaceId, now: DateTime<Utc>) -> Compiled {
    let mut l = Lowerer {
        params: vec![Param::Int8(ws.0)],
        joins: String::new(),
        next_alias: 1,
        now,
    };
    let (cond, _) = l.pred(pred);
    let mut body = String::from("FROM contacts c");
    body.push_str(&l.joins);
    let _ = write!(body, " WHERE c.workspace_id = $1 AND ({cond})");
    Compiled {
        body,
        params: l.params,
    }
}

/// Lowers several predicates into columns over one shared scan, so a single
/// query can test a contact (or every contact) against all of them.
pub fn lower_columns(preds: &[&Pred], ws: WorkspaceId, now: DateTime<Utc>) -> Columns {
    let mut l = Lowerer {
        params: vec![Param::Int8(ws.0)],
        joins: String::new(),
        next_alias: 1,
        now,
    };
    let conds = preds
        .iter()
        .map(|p| match l.pred(p) {
            (s, true) => format!("coalesce({s}, false)"),
            (s, false) => s,
        })
        .collect();
    Columns {
        from: format!("FROM contacts c{}", l.joins),
        conds,
        params: l.params,
    }
}

struct Lowerer {
    params: Vec<Param>,
    joins: String,
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

impl Lowerer {
    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
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
            Pred::Member(id) => {
                let a = self.alias("sm");
                let seg = self.bind(Param::Int8(*id));
                let _ = write!(
                    self.joins,
                    " LEFT JOIN (SELECT m.contact_id FROM segment_members m WHERE m.workspace_id = $1 AND m.segment_id = {seg}) {a} ON {a}.contact_id = c.id"
                );
                (format!("{a}.contact_id IS NOT NULL"), false)
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
                let esc = s
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
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

    fn event(&mut self, e: &EventAgg) -> Expr {
        let a = self.alias("ev");
        let t = self.bind(Param::Text(e.event_type.clone()));
        let mut from = String::from("events e");
        let mut conds = vec!["e.workspace_id = $1".to_string(), format!("e.type = {t}")];
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
            Some(Window::SinceLast(u)) => {
                let u = self.bind(Param::Text(u.clone()));
                let _ = write!(
                    from,
                    " LEFT JOIN (SELECT s.contact_id, max(s.occurred_at) AS t FROM events s WHERE s.workspace_id = $1 AND s.type = {u} GROUP BY s.contact_id) s ON s.contact_id = e.contact_id"
                );
                conds.push("(s.t IS NULL OR e.occurred_at > s.t)".into());
            }
        }
        for (f, test) in &e.filters {
            let col = self.event_field(f, test);
            let (sql, _) = self.test(&col, test, Clock::Time, false);
            conds.push(format!("({sql})"));
        }
        let value = match (e.agg.func, &e.agg.arg) {
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
        };
        let _ = write!(
            self.joins,
            " LEFT JOIN (SELECT e.contact_id, {value} AS v FROM {from} WHERE {} GROUP BY e.contact_id) {a} ON {a}.contact_id = c.id",
            conds.join(" AND ")
        );
        self.agg_test(&a, e.agg.func, &e.agg.test)
    }

    /// The column expression an event filter tests; properties are typed by
    /// the test's literals, and values of another JSON type do not match.
    fn event_field(&mut self, f: &EventField, t: &Test) -> String {
        match f {
            EventField::Value => "e.value".into(),
            EventField::Currency => "e.currency".into(),
            EventField::Prop(k) => {
                if matches!(t, Test::IsSet | Test::IsNotSet) {
                    let k = self.bind(Param::Text(k.clone()));
                    return format!("(e.properties -> {k})");
                }
                let first = match t {
                    Test::Eq(l) | Test::Neq(l) | Test::Cmp(_, l) | Test::Between(l, _) => Some(l),
                    Test::In(ls) | Test::NotIn(ls) => ls.first(),
                    _ => None,
                };
                match first {
                    Some(Lit::Num(_)) => self.event_number(f),
                    Some(Lit::Bool(_)) => {
                        let k = self.bind(Param::Text(k.clone()));
                        format!(
                            "(CASE WHEN jsonb_typeof(e.properties -> {k}) = 'boolean' THEN (e.properties -> {k})::boolean END)"
                        )
                    }
                    _ => {
                        let k = self.bind(Param::Text(k.clone()));
                        format!(
                            "(CASE WHEN jsonb_typeof(e.properties -> {k}) = 'string' THEN e.properties ->> {k} END)"
                        )
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

    fn deal(&mut self, d: &DealAgg) -> Expr {
        let a = self.alias("dl");
        let mut conds = vec!["d.workspace_id = $1".to_string()];
        for (f, test) in &d.filters {
            let (sql, _) = self.test(deal_col(*f), test, Clock::Time, false);
            conds.push(format!("({sql})"));
        }
        let value = match (d.agg.func, d.agg.arg) {
            (AggFunc::First, _) => "min(d.created_at)".to_string(),
            (AggFunc::Last, _) => "max(d.created_at)".to_string(),
            (AggFunc::Count, _) | (_, None) => "count(*)".to_string(),
            (AggFunc::Distinct, Some(f)) => format!("count(DISTINCT {})", deal_col(f)),
            (func, Some(f)) => format!("{}({})", agg_name(func), deal_col(f)),
        };
        let _ = write!(
            self.joins,
            " LEFT JOIN (SELECT d.contact_id, {value} AS v FROM deals d WHERE {} GROUP BY d.contact_id) {a} ON {a}.contact_id = c.id",
            conds.join(" AND ")
        );
        self.agg_test(&a, d.agg.func, &d.agg.test)
    }

    /// Tests an aggregate column. Contacts without matches have no row:
    /// their count, sum and distinct count are 0, the rest are missing.
    fn agg_test(&mut self, alias: &str, func: AggFunc, t: &Test) -> Expr {
        let zero = matches!(func, AggFunc::Count | AggFunc::Sum | AggFunc::Distinct);
        let col = if zero {
            format!("coalesce({alias}.v, 0)")
        } else {
            format!("{alias}.v")
        };
        let (sql, nullable) = self.test(&col, t, Clock::Time, false);
        (sql, nullable && !zero)
    }
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
