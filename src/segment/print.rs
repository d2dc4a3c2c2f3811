//! The canonical text of a rule tree. For every well-formed tree `t`
//! (operators with their proper operands), `parse(&print(&t)) == t`.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::ast::*;
use super::parse::WINDOW_WORDS;

/// Prints a rule in its canonical text form.
pub fn print(rule: &Rule) -> String {
    let mut out = String::new();
    rule_to(&mut out, rule);
    out
}

fn rule_to(out: &mut String, r: &Rule) {
    match r {
        Rule::All(items) if items.len() >= 2 => join(
            out,
            items,
            " AND ",
            |x| matches!(x, Rule::All(v) | Rule::Any(v) if v.len() >= 2),
        ),
        Rule::Any(items) if items.len() >= 2 => join(
            out,
            items,
            " OR ",
            |x| matches!(x, Rule::Any(v) if v.len() >= 2),
        ),
        Rule::All(items) | Rule::Any(items) => {
            out.push_str(if matches!(r, Rule::All(_)) {
                "all("
            } else {
                "any("
            });
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                rule_to(out, x);
            }
            out.push(')');
        }
        Rule::Not(inner) => {
            out.push_str("NOT ");
            let group = matches!(&**inner, Rule::All(v) | Rule::Any(v) if v.len() >= 2);
            paren(out, group, inner);
        }
        Rule::Field(f) => field_cond(out, f),
        Rule::Set(s) => set(out, s),
        Rule::Subscription(s) => {
            let _ = write!(out, "subscription({}, {})", s.channel, s.status);
        }
        Rule::Segment(SegmentRef::Id(id)) => {
            let _ = write!(out, "segment({id})");
        }
        Rule::Segment(SegmentRef::Name(n)) => {
            out.push_str("segment(");
            string(out, n);
            out.push(')');
        }
        Rule::Event(e) => event(out, e),
        Rule::Deal(d) => {
            out.push_str("deal(");
            for (i, f) in d.filters.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                field_cond(out, f);
            }
            out.push(')');
            aggregate(out, d.aggregate.as_ref());
        }
    }
}

/// Joins items with `sep`; items for which `needs_parens` holds are grouped.
fn join(out: &mut String, items: &[Rule], sep: &str, needs_parens: impl Fn(&Rule) -> bool) {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        paren(out, needs_parens(x), x);
    }
}

fn paren(out: &mut String, group: bool, r: &Rule) {
    if group {
        out.push('(');
    }
    rule_to(out, r);
    if group {
        out.push(')');
    }
}

fn event(out: &mut String, e: &EventCond) {
    out.push_str("event(");
    match &e.types {
        EventTypes::Any => out.push('*'),
        EventTypes::Of(types) => {
            for (i, t) in types.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                word(out, t, &[]);
            }
        }
    }
    if let Some(w) = &e.window {
        out.push_str(", ");
        match w {
            Window::Last(s) => {
                let _ = write!(out, "last {}", span(*s));
            }
            Window::OlderThan(s) => {
                let _ = write!(out, "older_than {}", span(*s));
            }
            Window::Between(a, b) => {
                let _ = write!(out, "between {} and {}", time(a), time(b));
            }
            Window::Before(t) => {
                let _ = write!(out, "before {}", time(t));
            }
            Window::After(t) => {
                let _ = write!(out, "after {}", time(t));
            }
            Window::SinceLast(t) => {
                out.push_str("since ");
                word(out, t, &[]);
            }
        }
    }
    for f in &e.filters {
        out.push_str(", ");
        field_cond_in(out, f, WINDOW_WORDS);
    }
    out.push(')');
    aggregate(out, e.aggregate.as_ref());
}

fn aggregate(out: &mut String, a: Option<&Aggregate>) {
    let Some(a) = a else { return };
    let name = match a.func {
        AggFunc::Count => "count",
        AggFunc::Sum => "sum",
        AggFunc::Avg => "avg",
        AggFunc::Min => "min",
        AggFunc::Max => "max",
        AggFunc::Distinct => "distinct",
        AggFunc::First => "first",
        AggFunc::Last => "last",
    };
    out.push('.');
    out.push_str(name);
    if let Some(f) = &a.field {
        out.push('(');
        path(out, f, &[]);
        out.push(')');
    }
    out.push(' ');
    cmp(out, &a.cmp);
}

fn field_cond(out: &mut String, f: &FieldCond) {
    field_cond_in(out, f, &[]);
}

fn field_cond_in(out: &mut String, f: &FieldCond, reserved: &[&str]) {
    path(out, &f.field, reserved);
    out.push(' ');
    cmp(out, &f.cmp);
}

fn set(out: &mut String, s: &SetCond) {
    let short = match s.field.as_str() {
        "tags" => Some("tags"),
        "labels" => Some("label"),
        _ => None,
    };
    if let (Some(kw), SetMatch::Any, [v]) = (short, s.matching, s.values.as_slice()) {
        out.push_str(kw);
        out.push(':');
        word(out, v, &["true", "false"]);
        return;
    }
    path(out, &s.field, &[]);
    out.push_str(match s.matching {
        SetMatch::Any => " HAS_ANY (",
        SetMatch::All => " HAS_ALL (",
        SetMatch::None => " HAS_NONE (",
    });
    for (i, v) in s.values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        string(out, v);
    }
    out.push(')');
}

fn cmp(out: &mut String, c: &Cmp) {
    let op = match c.op {
        Op::Eq => "=",
        Op::Neq => "!=",
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::In => "IN",
        Op::NotIn => "NOT IN",
        Op::Contains => "CONTAINS",
        Op::StartsWith => "STARTS_WITH",
        Op::EndsWith => "ENDS_WITH",
        Op::Between => "BETWEEN",
        Op::IsSet => "IS SET",
        Op::IsNotSet => "IS NOT SET",
        Op::WithinLast => "WITHIN_LAST",
        Op::OlderThan => "OLDER_THAN",
        Op::WithinNext => "WITHIN_NEXT",
        Op::AnniversaryWithin => "ANNIVERSARY_WITHIN",
    };
    out.push_str(op);
    match c.op {
        Op::In | Op::NotIn => {
            out.push_str(" (");
            for (i, v) in c.values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value(out, v);
            }
            out.push(')');
        }
        Op::Between => {
            out.push(' ');
            if let Some(a) = c.values.first() {
                value(out, a);
            }
            out.push_str(" AND ");
            if let Some(b) = c.values.get(1) {
                value(out, b);
            }
        }
        Op::IsSet | Op::IsNotSet => {}
        op if op.is_relative() => {
            if let Some(s) = c.span {
                out.push(' ');
                out.push_str(&span(s));
            }
        }
        _ => {
            if let Some(v) = c.values.first() {
                out.push(' ');
                value(out, v);
            }
        }
    }
}

fn value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => string(out, s),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Date(d) => {
            let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        }
        Value::Time(t) => out.push_str(&time(t)),
    }
}

fn span(s: Span) -> String {
    let unit = match s.unit {
        Unit::Hours => "h",
        Unit::Days => "d",
        Unit::Weeks => "w",
        Unit::Months => "mo",
    };
    format!("{}{unit}", s.amount)
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Words that cannot stand bare where a condition or value starts.
const RESERVED: &[&str] = &["not", "and", "or", "true", "false"];

fn is_plain(w: &str, reserved: &[&str]) -> bool {
    let mut chars = w.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED
            .iter()
            .chain(reserved)
            .any(|r| w.eq_ignore_ascii_case(r))
}

/// A word: bare when it is a plain identifier, quoted otherwise.
fn word(out: &mut String, w: &str, reserved: &[&str]) {
    if is_plain(w, reserved) {
        out.push_str(w);
    } else {
        string(out, w);
    }
}

/// A field path `head[.rest]`, each part bare or quoted.
fn path(out: &mut String, p: &str, reserved: &[&str]) {
    if is_plain(p, reserved) {
        out.push_str(p);
        return;
    }
    match p.split_once('.') {
        Some((head, rest)) if is_plain(head, reserved) && !rest.is_empty() => {
            out.push_str(head);
            out.push('.');
            word(out, rest, &[]);
        }
        _ => string(out, p),
    }
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
