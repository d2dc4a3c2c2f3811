//! Property tests: the text form round-trips every well-formed tree, the
//! parser survives anything, and caller text never reaches SQL text.

use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;

use super::ast::*;
use super::golden::compile;
use super::parse::parse;
use super::print::print;
use crate::model::contact::{Channel, SubscriptionStatus};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,8}",
        any::<String>(),
        Just(String::new()),
        prop::sample::select(vec![
            "not",
            "AND",
            "or",
            "true",
            "last",
            "Ever",
            "since",
            "event",
            "tags",
            "all",
            "any",
            "properties.x",
            "a.b",
            ".",
            "\"",
            "\\",
            "\u{0}",
            "é😀"
        ])
        .prop_map(String::from),
    ]
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1000 to 9999, any nanosecond.
    (-30_610_224_000i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::Number),
        (-1e6f64..1e6).prop_map(Value::Number),
        any::<bool>().prop_map(Value::Bool),
        (1000i32..=9999, 1u32..=366)
            .prop_filter_map("date", |(y, d)| NaiveDate::from_yo_opt(y, d))
            .prop_map(Value::Date),
        time().prop_map(Value::Time),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        0i64..=i64::MAX,
        prop::sample::select(vec![Unit::Hours, Unit::Days, Unit::Weeks, Unit::Months]),
    )
        .prop_map(|(amount, unit)| Span { amount, unit })
}

fn cmp() -> impl Strategy<Value = Cmp> {
    use Op::*;
    let single = prop::sample::select(vec![
        Eq, Neq, Gt, Gte, Lt, Lte, Contains, StartsWith, EndsWith,
    ]);
    prop_oneof![
        (single, value()).prop_map(|(op, v)| Cmp {
            op,
            values: vec![v],
            span: None
        }),
        (
            prop::sample::select(vec![In, NotIn]),
            prop::collection::vec(value(), 0..4)
        )
            .prop_map(|(op, values)| Cmp {
                op,
                values,
                span: None
            }),
        (value(), value()).prop_map(|(a, b)| Cmp {
            op: Between,
            values: vec![a, b],
            span: None
        }),
        prop::sample::select(vec![IsSet, IsNotSet]).prop_map(|op| Cmp {
            op,
            values: vec![],
            span: None
        }),
        (
            prop::sample::select(vec![WithinLast, OlderThan, WithinNext, AnniversaryWithin]),
            span()
        )
            .prop_map(|(op, s)| Cmp {
                op,
                values: vec![],
                span: Some(s)
            }),
    ]
}

fn field_cond() -> impl Strategy<Value = FieldCond> {
    (text(), cmp()).prop_map(|(field, cmp)| FieldCond { field, cmp })
}

fn aggregate() -> impl Strategy<Value = Option<Aggregate>> {
    use AggFunc::*;
    let func = prop::sample::select(vec![Count, Sum, Avg, Min, Max, Distinct, First, Last]);
    prop::option::of(
        (func, prop::option::of(text()), cmp()).prop_map(|(func, field, cmp)| Aggregate {
            func,
            field,
            cmp,
        }),
    )
}

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        span().prop_map(Window::Last),
        span().prop_map(Window::OlderThan),
        (time(), time()).prop_map(|(a, b)| Window::Between(a, b)),
        time().prop_map(Window::Before),
        time().prop_map(Window::After),
        text().prop_map(Window::SinceLast),
    ]
}

fn leaf() -> impl Strategy<Value = Rule> {
    prop_oneof![
        field_cond().prop_map(Rule::Field),
        (
            text(),
            prop::sample::select(vec![SetMatch::Any, SetMatch::All, SetMatch::None]),
            prop::collection::vec(text(), 0..3)
        )
            .prop_map(|(field, matching, values)| Rule::Set(SetCond {
                field,
                matching,
                values
            })),
        (prop::sample::select(vec!["tags", "labels"]), text()).prop_map(|(f, v)| Rule::Set(
            SetCond {
                field: f.into(),
                matching: SetMatch::Any,
                values: vec![v]
            }
        )),
        (
            prop::sample::select(Channel::ALL.to_vec()),
            prop::sample::select(SubscriptionStatus::ALL.to_vec())
        )
            .prop_map(|(channel, status)| Rule::Subscription(SubscriptionCond { channel, status })),
        (
            prop_oneof![
                1 => Just(EventTypes::Any),
                4 => prop::collection::vec(text(), 1..4).prop_map(EventTypes::Of),
            ],
            prop::option::of(window()),
            prop::collection::vec(field_cond(), 0..3),
            aggregate()
        )
            .prop_map(
                |(types, window, filters, aggregate)| Rule::Event(EventCond {
                    types,
                    window,
                    filters,
                    aggregate
                })
            ),
        (prop::collection::vec(field_cond(), 0..3), aggregate())
            .prop_map(|(filters, aggregate)| Rule::Deal(DealCond { filters, aggregate })),
        (1i64..9_000_000_000_000_000).prop_map(|i| Rule::Segment(SegmentRef::Id(i))),
        text().prop_map(|n| Rule::Segment(SegmentRef::Name(n))),
    ]
}

pub(crate) fn rule() -> impl Strategy<Value = Rule> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::All),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::Any),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

/// Conditions the golden fixture accepts, one of each shape the compiler
/// has: contact fields, sets, subscriptions, segments, events (every
/// window, filter and aggregate kind, one type, several, any) and deals.
const VALID_LEAVES: &[&str] = &[
    r#"country = "US""#,
    r#"city STARTS_WITH "New""#,
    "lead_score BETWEEN 10 AND 20",
    "age >= 30",
    "birth_date ANNIVERSARY_WITHIN 3d",
    "created_at WITHIN_LAST 30d",
    r#"custom.plan IN ("pro", "team")"#,
    "custom.seats > 10",
    "custom.trial = true",
    r#"custom.pets HAS_ANY ("cat")"#,
    "tags:vip",
    r#"labels HAS_ALL ("lead", "donor")"#,
    "subscription(email, subscribed)",
    r#"segment("engaged")"#,
    r#"segment("vip list")"#,
    "event(purchase)",
    "event(purchase, last 90d).count >= 2",
    "event(purchase).count < 3",
    "event(purchase, older_than 1w).sum(value) > 100",
    "event(page_view, between 2026-01-01 and 2026-02-01).distinct(url) >= 2",
    "event(purchase, before 2026-01-01).avg(properties.qty) <= 2",
    "event(login, after 2026-03-01).first IS SET",
    "event(purchase).last OLDER_THAN 60d",
    "event(purchase, since cart_abandoned)",
    "event(purchase, since cart_abandoned).count >= 2",
    "event(cart_abandoned, last 7d)",
    r#"event(purchase, properties.sku IN ("a", "1")).count >= 2"#,
    r#"event(page_view, url STARTS_WITH "/pricing", properties.n > 2)"#,
    "event(email_open|email_click, last 30d).count >= 3",
    "event(*, last 90d)",
    r#"event(donation, currency = "usd").max(value) > 5"#,
    "event(purchase, last 30d).count >= 2 AND event(purchase, last 30d).sum(value) > 300",
    r#"deal(status = open, stage = "Negotiation", value > 10000)"#,
    "deal(status = won).count >= 2",
    "deal().max(value) > 5",
    "deal().count = 0",
    "deal(closed_at WITHIN_LAST 30d).last IS SET",
];

/// Trees of [`VALID_LEAVES`] under AND, OR and NOT: trees the fixture
/// accepts, with every shape of the differential test.
pub(crate) fn valid_rule() -> impl Strategy<Value = Rule> {
    let leaf = prop::sample::select(VALID_LEAVES).prop_map(|s| parse(s).expect("a valid leaf"));
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::All),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::Any),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_tree_round_trips_through_text(r in rule()) {
        let text = print(&r);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        prop_assert_eq!(back, r, "text: {}", text);
    }

    #[test]
    fn the_parser_never_panics(s in any::<String>()) {
        let _ = parse(&s);
    }

    #[test]
    fn the_parser_survives_token_soup(words in prop::collection::vec(prop::sample::select(vec![
        "(", ")", ",", ".", ":", "=", "!=", ">=", "<", "AND", "OR", "NOT", "IN", "event", "deal", "segment",
        "tags", "label", "all", "any", "last", "30d", "2024-01-01", "\"x\"", "1", "-2.5", "count", "IS", "SET",
        "BETWEEN", "since", "subscription", "email", "subscribed", "HAS_ANY", "WITHIN_LAST",
    ]), 0..40)) {
        let _ = parse(&words.join(" "));
    }
}

/// Hostile strings, in every slot that accepts free text, change only the
/// parameters: the SQL text is that of a harmless string.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(vec![
            "'; DROP TABLE contacts; --",
            "\" OR 1=1 --",
            "$1",
            "$$ || pg_sleep(10) || $$",
            "') OR ('a'='a",
            "%_\\",
            "?| ?& ?",
            "*/ SELECT 1 /*",
        ])
        .prop_map(String::from),
    ]
}

fn definition(s: &str) -> String {
    let q = |x: &str| {
        let mut out = String::new();
        for c in x.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        format!("\"{out}\"")
    };
    let v = q(s);
    format!(
        "city = {v} AND company CONTAINS {v} AND custom.plan IN ({v}, \"x\") AND tags HAS_ANY ({v}) \
         AND custom.pets HAS_NONE ({v}) AND event(page_view, properties.{v} = {v}, {v} STARTS_WITH {v}).distinct(properties.{v}) >= 1 \
         AND deal(owner = {v}, name ENDS_WITH {v})"
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn caller_text_never_becomes_sql(s in hostile()) {
        // A text's shape of SQL depends only on its class: whether it could
        // be another JSON type's text, and whether only strings can start
        // with it. Compare with a harmless text of the same class.
        let harmless = match (
            super::lower::could_be_non_string(&s),
            super::lower::only_strings_start_with(&s),
        ) {
            (true, true) => " 1",
            (true, false) => "1",
            (false, true) => "harmless",
            (false, false) => "tx",
        };
        let t = s.trim();
        let (reference, _) = compile(&definition(harmless));
        let src = definition(&s);
        let rule = parse(&src).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        // Values that fail validation (empty, control characters, too long)
        // are rejected before SQL exists; anything accepted compiles to the
        // same text.
        let s_ok = !t.is_empty() && t.chars().count() <= 128 && !t.chars().any(char::is_control);
        let checked = super::check::check(&rule, &super::check::Catalog { schema: &super::golden::schema(), segments: &[], current: None });
        prop_assert_eq!(checked.is_ok(), s_ok, "{}", src);
        if s_ok {
            let (sql, params) = compile(&src);
            prop_assert_eq!(&sql, &reference);
            prop_assert!(params.iter().any(|p| matches!(p, super::lower::Param::Text(t) if t.contains(s.trim()))));
        }
    }
}
