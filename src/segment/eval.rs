//! A reference evaluator: decides membership of one contact from in-memory
//! data, by the language's definition. Missing values fail every test but
//! IS NOT SET, and NOT is plain negation. The differential test checks that
//! the compiled SQL agrees with it; CheckMembership uses it to explain which
//! conditions held.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, NaiveDate, Utc};

use super::ast::{AggFunc, Rule, SetMatch, Window};
use super::ir::*;
use super::print::print;
use super::time;
use crate::model::contact::{Contact, CustomValue, TextField};
use crate::model::deal::Deal;
use crate::model::event::StoredEvent;

/// Everything membership can depend on, for one contact.
#[derive(Debug, Clone, Copy)]
pub struct ContactData<'a> {
    /// The contact.
    pub contact: &'a Contact,
    /// Its events.
    pub events: &'a [StoredEvent],
    /// Its deals.
    pub deals: &'a [Deal],
    /// The static and snapshot segments it is a stored member of.
    pub member_of: &'a HashSet<i64>,
}

/// A value under test.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Text(String),
    Num(f64),
    Bool(bool),
    Date(NaiveDate),
    Time(DateTime<Utc>),
}

/// Whether `p` holds for the contact at `now`.
pub fn eval(p: &Pred, d: &ContactData<'_>, now: DateTime<Utc>) -> bool {
    match p {
        Pred::All(v) => v.iter().all(|x| eval(x, d, now)),
        Pred::Any(v) => v.iter().any(|x| eval(x, d, now)),
        Pred::Not(x) => !eval(x, d, now),
        Pred::Field(f, t) => test(field(f, d.contact, now.date_naive()).as_ref(), t, now),
        Pred::Set(target, m, values) => set(target, *m, values, d.contact),
        Pred::Subscription(ch, st) => d.contact.subscription(*ch).is_some_and(|s| s.status == *st),
        Pred::Member(id) | Pred::Live(id) => d.member_of.contains(id),
        Pred::Event(e) => event(e, d.events, now),
        Pred::Deal(x) => deal(x, d.deals, now),
    }
}

/// One node of an explanation: its path in the definition, its text, and
/// whether it held for the contact.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResult {
    /// Path into the definition (`all[1].not`).
    pub path: String,
    /// The node's canonical text.
    pub condition: String,
    /// Whether it held.
    pub held: bool,
}

/// Explains `rule` (whose checked form is `pred`) for one contact: every
/// node of the tree with whether it held. Referenced segments appear as one
/// node.
pub fn explain(
    rule: &Rule,
    pred: &Pred,
    d: &ContactData<'_>,
    now: DateTime<Utc>,
) -> Vec<NodeResult> {
    let mut out = Vec::new();
    walk(rule, pred, "", d, now, &mut out);
    out
}

/// Pushes `rule`'s node and its descendants; returns whether it held. Each
/// condition is evaluated once: a boolean node's answer comes from its
/// children's.
fn walk(
    rule: &Rule,
    pred: &Pred,
    path: &str,
    d: &ContactData<'_>,
    now: DateTime<Utc>,
    out: &mut Vec<NodeResult>,
) -> bool {
    let at = out.len();
    out.push(NodeResult {
        path: path.to_string(),
        condition: print(rule),
        held: false,
    });
    let join = |seg: String| crate::error::join_path(path, &seg);
    let held = match (rule, pred) {
        (Rule::All(rs), Pred::All(ps)) | (Rule::Any(rs), Pred::Any(ps)) => {
            let all = matches!(rule, Rule::All(_));
            let name = if all { "all" } else { "any" };
            let held: Vec<bool> = rs
                .iter()
                .zip(ps)
                .enumerate()
                .map(|(i, (r, p))| walk(r, p, &join(format!("{name}.rules[{i}]")), d, now, out))
                .collect();
            if all {
                held.iter().all(|h| *h)
            } else {
                held.iter().any(|h| *h)
            }
        }
        (Rule::Not(r), Pred::Not(p)) => !walk(r, p, &join("not".into()), d, now, out),
        _ => eval(pred, d, now),
    };
    out[at].held = held;
    held
}

fn field(f: &Field, c: &Contact, today: NaiveDate) -> Option<V> {
    let _ = today;
    match f {
        Field::Id => Some(V::Num(c.id as f64)),
        Field::Text("source_channel") => c.source_channel.map(|s| V::Text(s.as_str().into())),
        Field::Text(name) => TextField::from_name(name)
            .and_then(|t| t.get(c))
            .map(|s| V::Text(s.into())),
        Field::LeadScore => c.lead_score.map(V::Num),
        Field::BirthDate | Field::Age => c.birth_date.map(V::Date),
        Field::Time(name) => match *name {
            "created_at" => c.created_at,
            "updated_at" => c.updated_at,
            _ => c.converted_at,
        }
        .map(V::Time),
        Field::Custom(k, _) => c.custom.get(k).map(|v| match v {
            CustomValue::String(s) => V::Text(s.clone()),
            CustomValue::Number(n) => V::Num(*n),
            CustomValue::Bool(b) => V::Bool(*b),
            CustomValue::Date(d) => V::Date(*d),
            CustomValue::StringList(l) => V::Text(l.join(",")),
        }),
    }
    .map(|v| match (f, v) {
        (Field::Age, V::Date(b)) => V::Num(time::age(b, today) as f64),
        (_, v) => v,
    })
}

fn lit(l: &Lit) -> V {
    match l {
        Lit::Text(s) => V::Text(s.clone()),
        Lit::Num(n) => V::Num(*n),
        Lit::Bool(b) => V::Bool(*b),
        Lit::Date(d) => V::Date(*d),
        Lit::Time(t) => V::Time(*t),
    }
}

fn less(a: &V, b: &V) -> Option<bool> {
    Some(match (a, b) {
        (V::Num(x), V::Num(y)) => x < y,
        (V::Date(x), V::Date(y)) => x < y,
        (V::Time(x), V::Time(y)) => x < y,
        (V::Text(x), V::Text(y)) => x < y,
        (V::Bool(x), V::Bool(y)) => x < y,
        _ => return None,
    })
}

fn test(v: Option<&V>, t: &Test, now: DateTime<Utc>) -> bool {
    let today = now.date_naive();
    let Some(v) = v else {
        return matches!(t, Test::IsNotSet);
    };
    let within = |lo: V, hi: V| less(v, &lo) == Some(false) && less(&hi, v) == Some(false);
    match t {
        Test::Eq(l) => *v == lit(l),
        Test::Neq(l) => *v != lit(l),
        Test::In(ls) => ls.iter().any(|l| *v == lit(l)),
        Test::NotIn(ls) => ls.iter().all(|l| *v != lit(l)),
        Test::Like(how, pat) => match v {
            V::Text(s) => {
                let (s, p) = (s.to_lowercase(), pat.to_lowercase());
                match how {
                    Like::Contains => s.contains(&p),
                    Like::StartsWith => s.starts_with(&p),
                    Like::EndsWith => s.ends_with(&p),
                }
            }
            _ => false,
        },
        Test::Cmp(o, l) => {
            let l = lit(l);
            match o {
                Ord::Gt => less(&l, v) == Some(true),
                Ord::Gte => less(v, &l) == Some(false),
                Ord::Lt => less(v, &l) == Some(true),
                Ord::Lte => less(&l, v) == Some(false),
            }
        }
        Test::Between(a, b) => within(lit(a), lit(b)),
        Test::IsSet => true,
        Test::IsNotSet => false,
        Test::WithinLast(s) => match v {
            V::Date(_) => within(V::Date(time::back_date(today, *s)), V::Date(today)),
            _ => within(V::Time(time::back(now, *s)), V::Time(now)),
        },
        Test::OlderThan(s) => match v {
            V::Date(d) => *d < time::back_date(today, *s),
            V::Time(t) => *t < time::back(now, *s),
            _ => false,
        },
        Test::WithinNext(s) => match v {
            V::Date(_) => within(V::Date(today), V::Date(time::forward_date(today, *s))),
            _ => within(V::Time(now), V::Time(time::forward(now, *s))),
        },
        Test::Anniversary(s) => {
            let d = match v {
                V::Date(d) => *d,
                V::Time(t) => t.date_naive(),
                _ => return false,
            };
            time::anniversary_codes(today, *s).contains(&time::md_code(d))
        }
    }
}

fn set(target: &SetTarget, m: SetMatch, values: &[String], c: &Contact) -> bool {
    let have: Option<BTreeSet<&str>> = match target {
        SetTarget::Tags => Some(c.tags.iter().map(String::as_str).collect()),
        SetTarget::Labels => Some(c.labels.iter().map(String::as_str).collect()),
        SetTarget::CustomList(k) => match c.custom.get(k) {
            Some(CustomValue::StringList(l)) => Some(l.iter().map(String::as_str).collect()),
            _ => None,
        },
    };
    let Some(have) = have else {
        return m == SetMatch::None;
    };
    match m {
        SetMatch::Any => values.iter().any(|v| have.contains(v.as_str())),
        SetMatch::All => values.iter().all(|v| have.contains(v.as_str())),
        SetMatch::None => !values.iter().any(|v| have.contains(v.as_str())),
    }
}

/// A property's value as the given test sees it: only values of the
/// literal's JSON type take part.
fn prop(e: &StoredEvent, key: &str, t: &Test) -> Option<V> {
    let j = e.properties.get(key)?;
    if matches!(t, Test::IsSet | Test::IsNotSet) {
        return Some(V::Bool(true));
    }
    let first = match t {
        Test::Eq(l) | Test::Neq(l) | Test::Cmp(_, l) | Test::Between(l, _) => Some(l),
        Test::In(ls) | Test::NotIn(ls) => ls.first(),
        _ => None,
    };
    match (first, j) {
        (Some(Lit::Num(_)), serde_json::Value::Number(n)) => n.as_f64().map(V::Num),
        (Some(Lit::Bool(_)), serde_json::Value::Bool(b)) => Some(V::Bool(*b)),
        (Some(Lit::Num(_) | Lit::Bool(_)), _) => None,
        (_, serde_json::Value::String(s)) => Some(V::Text(s.clone())),
        _ => None,
    }
}

fn prop_number(e: &StoredEvent, key: &str) -> Option<f64> {
    e.properties
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .filter(|_| e.properties[key].is_number())
}

fn prop_text(e: &StoredEvent, key: &str) -> Option<String> {
    match e.properties.get(key)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn event(x: &EventAgg, events: &[StoredEvent], now: DateTime<Utc>) -> bool {
    let since = match &x.window {
        Some(Window::SinceLast(u)) => events
            .iter()
            .filter(|e| &e.event_type == u)
            .map(|e| e.occurred_at)
            .max(),
        _ => None,
    };
    let matching: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| x.types.as_ref().is_none_or(|ts| ts.contains(&e.event_type)))
        .filter(|e| match &x.window {
            None => true,
            Some(Window::Last(s)) => e.occurred_at >= time::back(now, *s),
            Some(Window::OlderThan(s)) => e.occurred_at < time::back(now, *s),
            Some(Window::Between(a, b)) => e.occurred_at >= *a && e.occurred_at < *b,
            Some(Window::Before(t)) => e.occurred_at < *t,
            Some(Window::After(t)) => e.occurred_at >= *t,
            Some(Window::SinceLast(_)) => since.is_none_or(|s| e.occurred_at > s),
        })
        .filter(|e| {
            x.filters.iter().all(|(f, t)| {
                let v = match f {
                    EventField::Value => e.value.map(V::Num),
                    EventField::Currency => e.currency.clone().map(V::Text),
                    EventField::Prop(k) => prop(e, k, t),
                };
                test(v.as_ref(), t, now)
            })
        })
        .collect();
    let value = aggregate(
        &x.agg,
        &matching,
        |e, f| match f {
            EventField::Value => e.value,
            EventField::Currency => None,
            EventField::Prop(k) => prop_number(e, k),
        },
        |e, f| match f {
            EventField::Value => e.value.map(|v| format!("{v}")),
            EventField::Currency => e.currency.clone(),
            EventField::Prop(k) => prop_text(e, k),
        },
        |e| e.occurred_at,
    );
    test(value.as_ref(), &x.agg.test, now)
}

fn deal(x: &DealAgg, deals: &[Deal], now: DateTime<Utc>) -> bool {
    let col = |d: &Deal, f: DealField| -> Option<V> {
        match f {
            DealField::Status => Some(V::Text(d.status.as_str().into())),
            DealField::Stage => d.stage.clone().map(V::Text),
            DealField::Value => Some(V::Num(d.value)),
            DealField::Currency => d.currency.clone().map(V::Text),
            DealField::Owner => d.owner.clone().map(V::Text),
            DealField::Name => Some(V::Text(d.name.clone())),
            DealField::CreatedAt => d.created_at.map(V::Time),
            DealField::ClosedAt => d.closed_at.map(V::Time),
        }
    };
    let matching: Vec<&Deal> = deals
        .iter()
        .filter(|d| {
            x.filters
                .iter()
                .all(|(f, t)| test(col(d, *f).as_ref(), t, now))
        })
        .collect();
    let value = aggregate(
        &x.agg,
        &matching,
        |d, f| match col(d, *f) {
            Some(V::Num(n)) => Some(n),
            _ => None,
        },
        |d, f| match col(d, *f) {
            Some(V::Text(s)) => Some(s),
            Some(V::Num(n)) => Some(format!("{n}")),
            Some(V::Time(t)) => Some(t.to_rfc3339()),
            _ => None,
        },
        |d| d.created_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
    );
    test(value.as_ref(), &x.agg.test, now)
}

/// The aggregate over `rows`, or None when it has no value.
fn aggregate<R, F>(
    a: &Agg<F>,
    rows: &[&R],
    number: impl Fn(&R, &F) -> Option<f64>,
    text: impl Fn(&R, &F) -> Option<String>,
    at: impl Fn(&R) -> DateTime<Utc>,
) -> Option<V> {
    let nums = || -> Vec<f64> {
        a.arg
            .as_ref()
            .map(|f| rows.iter().filter_map(|r| number(r, f)).collect())
            .unwrap_or_default()
    };
    match a.func {
        AggFunc::Count => Some(V::Num(rows.len() as f64)),
        AggFunc::Sum => Some(V::Num(nums().iter().sum())),
        AggFunc::Avg => {
            let n = nums();
            (!n.is_empty()).then(|| V::Num(n.iter().sum::<f64>() / n.len() as f64))
        }
        AggFunc::Min => nums().into_iter().reduce(f64::min).map(V::Num),
        AggFunc::Max => nums().into_iter().reduce(f64::max).map(V::Num),
        AggFunc::Distinct => {
            let set: BTreeSet<String> = a
                .arg
                .as_ref()
                .map(|f| rows.iter().filter_map(|r| text(r, f)).collect())
                .unwrap_or_default();
            Some(V::Num(set.len() as f64))
        }
        AggFunc::First => rows.iter().map(|r| at(r)).min().map(V::Time),
        AggFunc::Last => rows.iter().map(|r| at(r)).max().map(V::Time),
    }
}
