//! Rule trees and definitions: proto ↔ AST. Only structure is checked here
//! (every oneof set, enums known, values well-formed); meaning is checked by
//! `segment::check`. Violation paths are proto field names, as the checker's:
//! `all.rules[2].event.window`.

use super::contact::{sub_channel, sub_channel_from, sub_status, sub_status_from};
use super::{from_ts, ts};
use crate::error::{Violation, Violations, join_path};
use crate::model::contact::{Channel, SubscriptionStatus};
use crate::model::segment::Definition;
use crate::proto as pb;
use crate::segment::ast::*;
use crate::segment::check::MAX_NODES;
use crate::segment::parse::{MAX_DEPTH, parse};

/// A definition (rule or text) as an AST, remembering where it sits in the
/// request (`prefix`) for problems found later.
///
/// # Errors
/// Violations under `prefix.rule…` or `prefix.filter` (a syntax error, with
/// its line and column).
pub fn definition(d: Option<&pb::Definition>, prefix: &str) -> Result<Definition, Vec<Violation>> {
    use pb::definition::Kind;
    let text = matches!(d.and_then(|d| d.kind.as_ref()), Some(Kind::Filter(_)));
    rule(d, prefix).map(|r| Definition::request(r, prefix, text))
}

fn rule(d: Option<&pb::Definition>, prefix: &str) -> Result<Rule, Vec<Violation>> {
    use pb::definition::Kind;
    match d.and_then(|d| d.kind.as_ref()) {
        None => Err(vec![Violation::new(prefix, "set rule or filter")]),
        Some(Kind::Filter(text)) => parse(text)
            .map_err(|e| vec![Violation::new(join_path(prefix, "filter"), e.to_string())]),
        Some(Kind::Rule(r)) if too_big(r) => Err(vec![Violation::new(
            join_path(prefix, "rule"),
            format!("more than {MAX_NODES} conditions; split the definition into segments"),
        )]),
        Some(Kind::Rule(r)) => {
            let mut v = Violations::new();
            let rule = from_proto(r, "", 0, &mut v);
            v.finish(rule).map_err(|vs| {
                vs.into_iter()
                    .map(|x| x.under(&join_path(prefix, "rule")))
                    .collect()
            })
        }
    }
}

/// Whether a tree has more than [`MAX_NODES`] nodes: counted without
/// recursion and stopping at the limit, so a hostile tree of millions of
/// nodes costs microseconds before it is refused, and converting and
/// checking never see it.
fn too_big(r: &pb::Rule) -> bool {
    use pb::rule::Kind;
    let mut stack = vec![r];
    let mut seen = 0usize;
    while let Some(r) = stack.pop() {
        seen += 1;
        if seen > MAX_NODES {
            return true;
        }
        match &r.kind {
            Some(Kind::All(l) | Kind::Any(l)) => stack.extend(l.rules.iter()),
            Some(Kind::Not(x)) => stack.push(x),
            _ => {}
        }
    }
    false
}

fn from_proto(r: &pb::Rule, path: &str, depth: u32, v: &mut Violations) -> Rule {
    use pb::rule::Kind;
    if depth > MAX_DEPTH {
        v.add(path, format!("nested deeper than {MAX_DEPTH}"));
        return Rule::All(vec![]);
    }
    let at = |seg: &str| join_path(path, seg);
    match &r.kind {
        None => {
            v.add(
                path,
                "set one of all, any, not, field, set, subscription, event, deal, segment",
            );
            Rule::All(vec![])
        }
        Some(Kind::All(l)) => Rule::All(
            l.rules
                .iter()
                .enumerate()
                .map(|(i, x)| from_proto(x, &at(&format!("all.rules[{i}]")), depth + 1, v))
                .collect(),
        ),
        Some(Kind::Any(l)) => Rule::Any(
            l.rules
                .iter()
                .enumerate()
                .map(|(i, x)| from_proto(x, &at(&format!("any.rules[{i}]")), depth + 1, v))
                .collect(),
        ),
        Some(Kind::Not(x)) => Rule::Not(Box::new(from_proto(x, &at("not"), depth + 1, v))),
        Some(Kind::Field(f)) => Rule::Field(field(f, &at("field"), v)),
        Some(Kind::Set(s)) => {
            let p = at("set");
            let matching = match pb::SetMatch::try_from(s.r#match) {
                Ok(pb::SetMatch::Any) => SetMatch::Any,
                Ok(pb::SetMatch::All) => SetMatch::All,
                Ok(pb::SetMatch::None) => SetMatch::None,
                _ => {
                    v.add(join_path(&p, "match"), "must be ANY, ALL or NONE");
                    SetMatch::Any
                }
            };
            Rule::Set(SetCond {
                field: s.field.clone(),
                matching,
                values: s.values.clone(),
            })
        }
        Some(Kind::Subscription(s)) => {
            let p = at("subscription");
            let channel = sub_channel_from(s.channel).unwrap_or_else(|| {
                v.add(join_path(&p, "channel"), "must be EMAIL or SMS");
                Channel::Email
            });
            let status = sub_status_from(s.status).unwrap_or_else(|| {
                v.add(
                    join_path(&p, "status"),
                    "must be SUBSCRIBED, UNSUBSCRIBED or PENDING",
                );
                SubscriptionStatus::Subscribed
            });
            Rule::Subscription(SubscriptionCond { channel, status })
        }
        Some(Kind::Event(e)) => {
            let p = at("event");
            let types = match (e.r#type.as_str(), e.types.is_empty()) {
                ("*", true) => EventTypes::Any,
                (t, true) => EventTypes::one(t),
                ("", false) => EventTypes::Of(e.types.clone()),
                (_, false) => {
                    v.add(join_path(&p, "types"), "set type or types, not both");
                    EventTypes::Of(e.types.clone())
                }
            };
            Rule::Event(EventCond {
                types,
                window: e
                    .window
                    .as_ref()
                    .and_then(|w| window(w, &join_path(&p, "window"), v)),
                filters: filters(&e.filters, &p, v),
                aggregate: e
                    .aggregate
                    .as_ref()
                    .map(|a| aggregate(a, &join_path(&p, "aggregate"), v)),
            })
        }
        Some(Kind::Deal(d)) => {
            let p = at("deal");
            Rule::Deal(DealCond {
                filters: filters(&d.filters, &p, v),
                aggregate: d
                    .aggregate
                    .as_ref()
                    .map(|a| aggregate(a, &join_path(&p, "aggregate"), v)),
            })
        }
        Some(Kind::Segment(s)) => Rule::Segment(match &s.r#ref {
            Some(pb::segment_reference::Ref::Id(id)) => SegmentRef::Id(*id),
            Some(pb::segment_reference::Ref::Name(n)) => SegmentRef::Name(n.clone()),
            None => {
                v.add(at("segment"), "set id or name");
                SegmentRef::Id(0)
            }
        }),
    }
}

fn filters(fs: &[pb::FieldCondition], path: &str, v: &mut Violations) -> Vec<FieldCond> {
    fs.iter()
        .enumerate()
        .map(|(i, f)| field(f, &join_path(path, &format!("filters[{i}]")), v))
        .collect()
}

fn field(f: &pb::FieldCondition, path: &str, v: &mut Violations) -> FieldCond {
    FieldCond {
        field: f.field.clone(),
        cmp: cmp(f.op, &f.values, f.relative.as_ref(), path, v),
    }
}

fn cmp(
    op: i32,
    values: &[pb::Value],
    rel: Option<&pb::RelativeTime>,
    path: &str,
    v: &mut Violations,
) -> Cmp {
    let op = match op_from(op) {
        Some(o) => o,
        None => {
            v.add(join_path(path, "op"), "set an operator");
            Op::Eq
        }
    };
    let values = values
        .iter()
        .enumerate()
        .filter_map(|(i, x)| value(x, &join_path(path, &format!("values[{i}]")), v))
        .collect();
    let span = rel.and_then(|r| span(r, &join_path(path, "relative"), v));
    Cmp { op, values, span }
}

fn value(x: &pb::Value, path: &str, v: &mut Violations) -> Option<Value> {
    use pb::value::Kind;
    match &x.kind {
        Some(Kind::StringValue(s)) => Some(Value::String(s.clone())),
        Some(Kind::NumberValue(n)) if n.is_finite() => Some(Value::Number(*n)),
        Some(Kind::BoolValue(b)) => Some(Value::Bool(*b)),
        Some(Kind::DateValue(d)) => match crate::model::validate::date(d) {
            Ok(Some(d)) => Some(Value::Date(d)),
            Ok(None) => {
                v.add(path, "not a date as YYYY-MM-DD");
                None
            }
            Err(e) => {
                v.add(path, e);
                None
            }
        },
        Some(Kind::TimeValue(t)) => match from_ts(t) {
            Ok(t) => Some(Value::Time(t)),
            Err(e) => {
                v.add(path, e);
                None
            }
        },
        Some(Kind::NumberValue(_)) => {
            v.add(path, "must be finite");
            None
        }
        None => {
            v.add(path, "set a value");
            None
        }
    }
}

fn span(r: &pb::RelativeTime, path: &str, v: &mut Violations) -> Option<Span> {
    let unit = match pb::TimeUnit::try_from(r.unit) {
        Ok(pb::TimeUnit::Hours) => Unit::Hours,
        Ok(pb::TimeUnit::Days) => Unit::Days,
        Ok(pb::TimeUnit::Weeks) => Unit::Weeks,
        Ok(pb::TimeUnit::Months) => Unit::Months,
        _ => {
            v.add(
                join_path(path, "unit"),
                "must be HOURS, DAYS, WEEKS or MONTHS",
            );
            return None;
        }
    };
    Some(Span {
        amount: r.amount,
        unit,
    })
}

fn window(w: &pb::TimeWindow, path: &str, v: &mut Violations) -> Option<Window> {
    use pb::time_window::Kind;
    let time =
        |t: Option<&prost_types::Timestamp>, p: &str, v: &mut Violations| match t.map(from_ts) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                v.add(join_path(path, p), e);
                None
            }
            None => {
                v.add(join_path(path, p), "required");
                None
            }
        };
    match &w.kind {
        None => {
            v.add(
                path,
                "set one of last, older_than, between, before, after, since_last",
            );
            None
        }
        Some(Kind::Last(r)) => span(r, path, v).map(Window::Last),
        Some(Kind::OlderThan(r)) => span(r, path, v).map(Window::OlderThan),
        Some(Kind::Between(r)) => {
            let a = time(r.start.as_ref(), "between.start", v);
            let b = time(r.end.as_ref(), "between.end", v);
            Some(Window::Between(a?, b?))
        }
        Some(Kind::Before(t)) => time(Some(t), "before", v).map(Window::Before),
        Some(Kind::After(t)) => time(Some(t), "after", v).map(Window::After),
        Some(Kind::SinceLast(t)) => Some(Window::SinceLast(t.clone())),
    }
}

fn aggregate(a: &pb::Aggregate, path: &str, v: &mut Violations) -> Aggregate {
    use pb::AggregateFunction as F;
    let func = match F::try_from(a.function) {
        Ok(F::Count) => AggFunc::Count,
        Ok(F::Sum) => AggFunc::Sum,
        Ok(F::Avg) => AggFunc::Avg,
        Ok(F::Min) => AggFunc::Min,
        Ok(F::Max) => AggFunc::Max,
        Ok(F::Distinct) => AggFunc::Distinct,
        Ok(F::First) => AggFunc::First,
        Ok(F::Last) => AggFunc::Last,
        _ => {
            v.add(join_path(path, "function"), "set an aggregate function");
            AggFunc::Count
        }
    };
    let field = (!a.field.is_empty()).then(|| a.field.clone());
    Aggregate {
        func,
        field,
        cmp: cmp(a.op, &a.values, a.relative.as_ref(), path, v),
    }
}

const OPS: &[(Op, pb::Operator)] = &[
    (Op::Eq, pb::Operator::Eq),
    (Op::Neq, pb::Operator::Neq),
    (Op::In, pb::Operator::In),
    (Op::NotIn, pb::Operator::NotIn),
    (Op::Contains, pb::Operator::Contains),
    (Op::StartsWith, pb::Operator::StartsWith),
    (Op::EndsWith, pb::Operator::EndsWith),
    (Op::Gt, pb::Operator::Gt),
    (Op::Gte, pb::Operator::Gte),
    (Op::Lt, pb::Operator::Lt),
    (Op::Lte, pb::Operator::Lte),
    (Op::Between, pb::Operator::Between),
    (Op::IsSet, pb::Operator::IsSet),
    (Op::IsNotSet, pb::Operator::IsNotSet),
    (Op::WithinLast, pb::Operator::WithinLast),
    (Op::OlderThan, pb::Operator::OlderThan),
    (Op::WithinNext, pb::Operator::WithinNext),
    (Op::AnniversaryWithin, pb::Operator::AnniversaryWithin),
];

fn op_from(x: i32) -> Option<Op> {
    OPS.iter().find(|(_, p)| *p as i32 == x).map(|(o, _)| *o)
}

fn op_to(o: Op) -> i32 {
    OPS.iter()
        .find(|(a, _)| *a == o)
        .map_or(0, |(_, p)| *p as i32)
}

/// An AST rule as proto.
pub fn to_proto(r: &Rule) -> pb::Rule {
    use pb::rule::Kind;
    let kind = match r {
        Rule::All(v) => Kind::All(pb::RuleList {
            rules: v.iter().map(to_proto).collect(),
        }),
        Rule::Any(v) => Kind::Any(pb::RuleList {
            rules: v.iter().map(to_proto).collect(),
        }),
        Rule::Not(x) => Kind::Not(Box::new(to_proto(x))),
        Rule::Field(f) => Kind::Field(field_to(f)),
        Rule::Set(s) => Kind::Set(pb::SetCondition {
            field: s.field.clone(),
            r#match: match s.matching {
                SetMatch::Any => pb::SetMatch::Any,
                SetMatch::All => pb::SetMatch::All,
                SetMatch::None => pb::SetMatch::None,
            } as i32,
            values: s.values.clone(),
        }),
        Rule::Subscription(s) => Kind::Subscription(pb::SubscriptionCondition {
            channel: sub_channel(s.channel) as i32,
            status: sub_status(s.status) as i32,
        }),
        Rule::Event(e) => Kind::Event(pb::EventCondition {
            r#type: match &e.types {
                EventTypes::Any => "*".into(),
                EventTypes::Of(ts) if ts.len() == 1 => ts[0].clone(),
                EventTypes::Of(_) => String::new(),
            },
            types: match &e.types {
                EventTypes::Of(ts) if ts.len() > 1 => ts.clone(),
                _ => vec![],
            },
            window: e.window.as_ref().map(window_to),
            filters: e.filters.iter().map(field_to).collect(),
            aggregate: e.aggregate.as_ref().map(aggregate_to),
        }),
        Rule::Deal(d) => Kind::Deal(pb::DealCondition {
            filters: d.filters.iter().map(field_to).collect(),
            aggregate: d.aggregate.as_ref().map(aggregate_to),
        }),
        Rule::Segment(s) => Kind::Segment(pb::SegmentReference {
            r#ref: Some(match s {
                SegmentRef::Id(id) => pb::segment_reference::Ref::Id(*id),
                SegmentRef::Name(n) => pb::segment_reference::Ref::Name(n.clone()),
            }),
        }),
    };
    pb::Rule { kind: Some(kind) }
}

fn field_to(f: &FieldCond) -> pb::FieldCondition {
    pb::FieldCondition {
        field: f.field.clone(),
        op: op_to(f.cmp.op),
        values: f.cmp.values.iter().map(value_to).collect(),
        relative: f.cmp.span.map(span_to),
    }
}

fn value_to(x: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match x {
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Number(n) => Kind::NumberValue(*n),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Date(d) => Kind::DateValue(d.to_string()),
        Value::Time(t) => Kind::TimeValue(ts(*t)),
    };
    pb::Value { kind: Some(kind) }
}

fn span_to(s: Span) -> pb::RelativeTime {
    pb::RelativeTime {
        amount: s.amount,
        unit: match s.unit {
            Unit::Hours => pb::TimeUnit::Hours,
            Unit::Days => pb::TimeUnit::Days,
            Unit::Weeks => pb::TimeUnit::Weeks,
            Unit::Months => pb::TimeUnit::Months,
        } as i32,
    }
}

fn window_to(w: &Window) -> pb::TimeWindow {
    use pb::time_window::Kind;
    let kind = match w {
        Window::Last(s) => Kind::Last(span_to(*s)),
        Window::OlderThan(s) => Kind::OlderThan(span_to(*s)),
        Window::Between(a, b) => Kind::Between(pb::TimeRange {
            start: Some(ts(*a)),
            end: Some(ts(*b)),
        }),
        Window::Before(t) => Kind::Before(ts(*t)),
        Window::After(t) => Kind::After(ts(*t)),
        Window::SinceLast(t) => Kind::SinceLast(t.clone()),
    };
    pb::TimeWindow { kind: Some(kind) }
}

fn aggregate_to(a: &Aggregate) -> pb::Aggregate {
    use pb::AggregateFunction as F;
    pb::Aggregate {
        function: match a.func {
            AggFunc::Count => F::Count,
            AggFunc::Sum => F::Sum,
            AggFunc::Avg => F::Avg,
            AggFunc::Min => F::Min,
            AggFunc::Max => F::Max,
            AggFunc::Distinct => F::Distinct,
            AggFunc::First => F::First,
            AggFunc::Last => F::Last,
        } as i32,
        field: a.field.clone().unwrap_or_default(),
        op: op_to(a.cmp.op),
        values: a.cmp.values.iter().map(value_to).collect(),
        relative: a.cmp.span.map(span_to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_tree_agree() {
        let src = r#"label:lead AND NOT (event(purchase, last 90d, properties.sku IN ("a", "b")).sum(value) > 10 OR deal(status = won).first WITHIN_LAST 2w) AND birth_date ANNIVERSARY_WITHIN 7d AND segment("x") AND subscription(email, subscribed) AND NOT event(*, last 90d) AND event(email_open|email_click).count >= 2"#;
        let ast = parse(src).unwrap();
        let d = pb::Definition {
            kind: Some(pb::definition::Kind::Rule(to_proto(&ast))),
        };
        assert_eq!(definition(Some(&d), "d").unwrap().rule, ast);
    }

    #[test]
    fn huge_trees_are_refused_before_conversion() {
        let wide = pb::Definition {
            kind: Some(pb::definition::Kind::Rule(pb::Rule {
                kind: Some(pb::rule::Kind::All(pb::RuleList {
                    rules: vec![pb::Rule { kind: None }; 200_000],
                })),
            })),
        };
        let v = definition(Some(&wide), "definition").unwrap_err();
        assert_eq!(v.len(), 1, "one violation, not one per node");
        assert_eq!(v[0].field, "definition.rule");
    }

    #[test]
    fn structural_problems_have_paths() {
        let bad = pb::Rule {
            kind: Some(pb::rule::Kind::All(pb::RuleList {
                rules: vec![
                    pb::Rule { kind: None },
                    pb::Rule {
                        kind: Some(pb::rule::Kind::Field(pb::FieldCondition {
                            field: "age".into(),
                            op: 0,
                            values: vec![pb::Value { kind: None }],
                            relative: None,
                        })),
                    },
                ],
            })),
        };
        let d = pb::Definition {
            kind: Some(pb::definition::Kind::Rule(bad)),
        };
        let fields: Vec<String> = definition(Some(&d), "definition")
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "definition.rule.all.rules[0]",
                "definition.rule.all.rules[1].field.op",
                "definition.rule.all.rules[1].field.values[0]"
            ]
        );
        let t = pb::Definition {
            kind: Some(pb::definition::Kind::Filter("age >".into())),
        };
        let e = definition(Some(&t), "definition").unwrap_err();
        assert_eq!(e[0].field, "definition.filter");
        assert!(
            e[0].description
                .starts_with("line 1, column 6: expected a value"),
            "{}",
            e[0].description
        );
    }
}
