//! The text form, parsed by recursive descent. The grammar, informally:
//!
//! ```text
//! expr      = and ("OR" and)*
//! and       = unary ("AND" unary)*
//! unary     = "NOT" unary | "(" expr ")" | condition
//! condition = "all" "(" [expr ("," expr)*] ")" | "any" "(" ... ")"
//!           | "tags" ":" word | "label" ":" word
//!           | "subscription" "(" channel "," status ")"
//!           | "segment" "(" string | integer ")"
//!           | "event" "(" types ("," window | "," filter)* ")" ["." aggregate]
//! types     := "*" | type ("|" type)*
//!           | "deal" "(" [filter ("," filter)*] ")" ["." aggregate]
//!           | path ("HAS_ANY" | "HAS_ALL" | "HAS_NONE") "(" words ")"
//!           | path cmp
//! cmp       = ("=" | "!=" | ">" | ">=" | "<" | "<=") value
//!           | ["NOT"] "IN" "(" [value ("," value)*] ")" | "BETWEEN" value "AND" value
//!           | "IS" ["NOT"] "SET" | ("CONTAINS" | "STARTS_WITH" | "ENDS_WITH") value
//!           | ("WITHIN_LAST" | "OLDER_THAN" | "WITHIN_NEXT" | "ANNIVERSARY_WITHIN") span
//! window    = "last" span | "older_than" span | "between" time "and" time
//!           | "before" time | "after" time | "since" type | "ever"
//! aggregate = ("count" | "first" | "last" | ("sum" | "avg" | "min" | "max" | "distinct") "(" path ")") cmp
//! path      = word ["." word]          word = identifier | "string"
//! value     = "string" | identifier | number | true | false | 2024-01-31 | 2024-01-31T10:00:00Z
//! span      = 12h | 30d | 2w | 3mo
//! ```
//!
//! Keywords are case-insensitive. Nesting is limited to [`MAX_DEPTH`].

use chrono::{DateTime, NaiveTime, Utc};

use super::ast::*;
use super::lex::{SyntaxError, Tok, Token, lex};
use crate::model::contact::{Channel, SubscriptionStatus};

/// Deepest nesting of groups and NOTs accepted.
pub const MAX_DEPTH: u32 = 64;

/// Words that name event windows where a filter could also start.
pub(crate) const WINDOW_WORDS: &[&str] = &[
    "last",
    "older_than",
    "between",
    "before",
    "after",
    "since",
    "ever",
];

/// Parses the text form of a rule.
///
/// # Errors
/// The first syntax error, with its line and column and what was expected.
pub fn parse(src: &str) -> Result<Rule, SyntaxError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        depth: 0,
    };
    if matches!(p.peek().tok, Tok::Eof) {
        return Err(p.error("a condition"));
    }
    let rule = p.expr()?;
    if !matches!(p.peek().tok, Tok::Eof) {
        return Err(p.error("AND, OR or the end of the definition"));
    }
    Ok(rule)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: u32,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)].tok
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].tok.clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn error(&self, expected: &str) -> SyntaxError {
        let t = self.peek();
        SyntaxError {
            line: t.line,
            col: t.col,
            expected: expected.to_string(),
            found: t.tok.to_string(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.next();
        }
        yes
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), SyntaxError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.error(&format!("`{kw}`")))
        }
    }

    fn eat(&mut self, t: &Tok) -> bool {
        let yes = &self.peek().tok == t;
        if yes {
            self.next();
        }
        yes
    }

    fn expect(&mut self, t: &Tok) -> Result<(), SyntaxError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.error(&t.to_string()))
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, SyntaxError>,
    ) -> Result<T, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Rule, SyntaxError> {
        let mut items = vec![self.and()?];
        while self.eat_kw("or") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one")
        } else {
            Rule::Any(items)
        })
    }

    fn and(&mut self) -> Result<Rule, SyntaxError> {
        let mut items = vec![self.unary()?];
        while self.eat_kw("and") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one")
        } else {
            Rule::All(items)
        })
    }

    fn unary(&mut self) -> Result<Rule, SyntaxError> {
        if self.eat_kw("not") {
            return self.nested(|p| Ok(Rule::Not(Box::new(p.unary()?))));
        }
        if self.eat(&Tok::LParen) {
            let r = self.nested(Self::expr)?;
            self.expect(&Tok::RParen)?;
            return Ok(r);
        }
        self.condition()
    }

    fn word_then(&self, kw: &str, t: &Tok) -> bool {
        self.is_kw(kw) && self.peek_at(1) == t
    }

    fn condition(&mut self) -> Result<Rule, SyntaxError> {
        for (kw, any) in [("all", false), ("any", true)] {
            if self.word_then(kw, &Tok::LParen) {
                self.next();
                self.next();
                let items = self.nested(|p| p.list(Self::expr))?;
                return Ok(if any {
                    Rule::Any(items)
                } else {
                    Rule::All(items)
                });
            }
        }
        for (kw, field) in [("tags", "tags"), ("label", "labels")] {
            if self.word_then(kw, &Tok::Colon) {
                self.next();
                self.next();
                let v = self.word("a tag or label")?;
                return Ok(Rule::Set(SetCond {
                    field: field.into(),
                    matching: SetMatch::Any,
                    values: vec![v],
                }));
            }
        }
        if self.word_then("subscription", &Tok::LParen) {
            self.next();
            self.next();
            return self.subscription();
        }
        if self.word_then("segment", &Tok::LParen) {
            self.next();
            self.next();
            let r = match self.next() {
                Tok::Str(s) => SegmentRef::Name(s),
                Tok::Num(n) if n.fract() == 0.0 && (1.0..9.0e15).contains(&n) => {
                    SegmentRef::Id(n as i64)
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error("a segment name in quotes or a segment id"));
                }
            };
            self.expect(&Tok::RParen)?;
            return Ok(Rule::Segment(r));
        }
        if self.word_then("event", &Tok::LParen) {
            self.next();
            self.next();
            return self.event();
        }
        if self.word_then("deal", &Tok::LParen) {
            self.next();
            self.next();
            let filters = self.list(Self::filter)?;
            let aggregate = self.aggregate()?;
            return Ok(Rule::Deal(DealCond { filters, aggregate }));
        }
        let field = self.path()?;
        for (kw, matching) in [
            ("has_any", SetMatch::Any),
            ("has_all", SetMatch::All),
            ("has_none", SetMatch::None),
        ] {
            if self.eat_kw(kw) {
                self.expect(&Tok::LParen)?;
                let values = self.list(|p| p.word("a string"))?;
                return Ok(Rule::Set(SetCond {
                    field,
                    matching,
                    values,
                }));
            }
        }
        let cmp = self.cmp()?;
        Ok(Rule::Field(FieldCond { field, cmp }))
    }

    /// Items separated by commas up to the closing `)` (already past `(`).
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, SyntaxError>,
    ) -> Result<Vec<T>, SyntaxError> {
        let mut out = Vec::new();
        if self.eat(&Tok::RParen) {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat(&Tok::RParen) {
                return Ok(out);
            }
            if !self.eat(&Tok::Comma) {
                return Err(self.error("`,` or `)`"));
            }
        }
    }

    fn word(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.peek().tok.clone() {
            Tok::Ident(w) | Tok::Str(w) => {
                self.next();
                Ok(w)
            }
            _ => Err(self.error(what)),
        }
    }

    fn path(&mut self) -> Result<String, SyntaxError> {
        let head =
            self.word("a condition (a field, tags:, label:, event(...), deal(...), segment(...))")?;
        if self.eat(&Tok::Dot) {
            let rest = self.word("a name after `.`")?;
            return Ok(format!("{head}.{rest}"));
        }
        Ok(head)
    }

    fn subscription(&mut self) -> Result<Rule, SyntaxError> {
        let ch = self.word("a channel (email or sms)")?;
        let channel = Channel::parse(&ch.to_ascii_lowercase()).ok_or_else(|| {
            self.pos -= 1;
            self.error("a channel (email or sms)")
        })?;
        self.expect(&Tok::Comma)?;
        let st = self.word("a status (subscribed, unsubscribed or pending)")?;
        let status = SubscriptionStatus::parse(&st.to_ascii_lowercase()).ok_or_else(|| {
            self.pos -= 1;
            self.error("a status (subscribed, unsubscribed or pending)")
        })?;
        self.expect(&Tok::RParen)?;
        Ok(Rule::Subscription(SubscriptionCond { channel, status }))
    }

    fn event(&mut self) -> Result<Rule, SyntaxError> {
        let types = if self.eat(&Tok::Star) {
            EventTypes::Any
        } else {
            let mut types = vec![self.word("an event type or `*`")?];
            while self.eat(&Tok::Pipe) {
                types.push(self.word("an event type")?);
            }
            EventTypes::Of(types)
        };
        let mut window = None;
        let mut filters = Vec::new();
        while self.eat(&Tok::Comma) {
            let is_window = matches!(&self.peek().tok, Tok::Ident(w)
                if WINDOW_WORDS.iter().any(|k| w.eq_ignore_ascii_case(k)));
            if is_window {
                if window.is_some() {
                    return Err(self.error("one time window only"));
                }
                window = self.window()?;
                if window.is_none() {
                    continue;
                }
            } else {
                filters.push(self.filter()?);
            }
        }
        self.expect(&Tok::RParen)?;
        let aggregate = self.aggregate()?;
        Ok(Rule::Event(EventCond {
            types,
            window,
            filters,
            aggregate,
        }))
    }

    fn window(&mut self) -> Result<Option<Window>, SyntaxError> {
        let Tok::Ident(kw) = self.next() else {
            unreachable!("checked by caller")
        };
        Ok(Some(match kw.to_ascii_lowercase().as_str() {
            "ever" => return Ok(None),
            "last" => Window::Last(self.span()?),
            "older_than" => Window::OlderThan(self.span()?),
            "before" => Window::Before(self.time()?),
            "after" => Window::After(self.time()?),
            "since" => Window::SinceLast(self.word("an event type")?),
            _ => {
                let start = self.time()?;
                self.expect_kw("and")?;
                Window::Between(start, self.time()?)
            }
        }))
    }

    fn filter(&mut self) -> Result<FieldCond, SyntaxError> {
        let field = self.path()?;
        let cmp = self.cmp()?;
        Ok(FieldCond { field, cmp })
    }

    fn aggregate(&mut self) -> Result<Option<Aggregate>, SyntaxError> {
        if !self.eat(&Tok::Dot) {
            return Ok(None);
        }
        let name = self.word("an aggregate (count, sum, avg, min, max, distinct, first, last)")?;
        let func = match name.to_ascii_lowercase().as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "distinct" => AggFunc::Distinct,
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            _ => {
                self.pos -= 1;
                return Err(
                    self.error("an aggregate (count, sum, avg, min, max, distinct, first, last)")
                );
            }
        };
        let field = if self.eat(&Tok::LParen) {
            let f = self.path()?;
            self.expect(&Tok::RParen)?;
            Some(f)
        } else {
            None
        };
        let cmp = self.cmp()?;
        Ok(Some(Aggregate { func, field, cmp }))
    }

    fn cmp(&mut self) -> Result<Cmp, SyntaxError> {
        let simple = |op| Cmp {
            op,
            values: vec![],
            span: None,
        };
        let tok = self.peek().tok.clone();
        let op = match tok {
            Tok::Eq => Some(Op::Eq),
            Tok::Neq => Some(Op::Neq),
            Tok::Gt => Some(Op::Gt),
            Tok::Gte => Some(Op::Gte),
            Tok::Lt => Some(Op::Lt),
            Tok::Lte => Some(Op::Lte),
            _ => None,
        };
        if let Some(op) = op {
            self.next();
            return Ok(Cmp {
                values: vec![self.value()?],
                ..simple(op)
            });
        }
        if self.eat_kw("in") {
            self.expect(&Tok::LParen)?;
            return Ok(Cmp {
                values: self.list(Self::value)?,
                ..simple(Op::In)
            });
        }
        if self.is_kw("not")
            && matches!(self.peek_at(1), Tok::Ident(w) if w.eq_ignore_ascii_case("in"))
        {
            self.next();
            self.next();
            self.expect(&Tok::LParen)?;
            return Ok(Cmp {
                values: self.list(Self::value)?,
                ..simple(Op::NotIn)
            });
        }
        if self.eat_kw("between") {
            let a = self.value()?;
            self.expect_kw("and")?;
            return Ok(Cmp {
                values: vec![a, self.value()?],
                ..simple(Op::Between)
            });
        }
        if self.eat_kw("is") {
            let op = if self.eat_kw("not") {
                Op::IsNotSet
            } else {
                Op::IsSet
            };
            self.expect_kw("set")?;
            return Ok(simple(op));
        }
        for (kw, op) in [
            ("contains", Op::Contains),
            ("starts_with", Op::StartsWith),
            ("ends_with", Op::EndsWith),
        ] {
            if self.eat_kw(kw) {
                return Ok(Cmp {
                    values: vec![self.value()?],
                    ..simple(op)
                });
            }
        }
        for (kw, op) in [
            ("within_last", Op::WithinLast),
            ("older_than", Op::OlderThan),
            ("within_next", Op::WithinNext),
            ("anniversary_within", Op::AnniversaryWithin),
        ] {
            if self.eat_kw(kw) {
                return Ok(Cmp {
                    span: Some(self.span()?),
                    ..simple(op)
                });
            }
        }
        Err(self.error(
            "an operator (=, !=, >, >=, <, <=, IN, NOT IN, BETWEEN, IS SET, CONTAINS, STARTS_WITH, \
             ENDS_WITH, WITHIN_LAST, OLDER_THAN, WITHIN_NEXT, ANNIVERSARY_WITHIN)",
        ))
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        let v = match self.peek().tok.clone() {
            Tok::Str(s) => Value::String(s),
            Tok::Num(n) => Value::Number(n),
            Tok::Date(d) => Value::Date(d),
            Tok::Time(t) => Value::Time(t),
            Tok::Ident(w) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Ident(w) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Ident(w)
                if !["and", "or", "not"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                Value::String(w)
            }
            _ => {
                return Err(
                    self.error("a value (\"text\", a number, true, false, a date or a time)")
                );
            }
        };
        self.next();
        Ok(v)
    }

    fn span(&mut self) -> Result<Span, SyntaxError> {
        match self.peek().tok.clone() {
            Tok::Span(s) => {
                self.next();
                Ok(s)
            }
            _ => Err(self.error("a span such as 12h, 30d, 2w or 3mo")),
        }
    }

    fn time(&mut self) -> Result<DateTime<Utc>, SyntaxError> {
        let t = match self.peek().tok.clone() {
            Tok::Time(t) => t,
            Tok::Date(d) => d.and_time(NaiveTime::MIN).and_utc(),
            _ => return Err(self.error("a date (2024-01-31) or a time (2024-01-31T10:00:00Z)")),
        };
        self.next();
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(field: &str, op: Op, values: Vec<Value>) -> Rule {
        Rule::Field(FieldCond {
            field: field.into(),
            cmp: Cmp {
                op,
                values,
                span: None,
            },
        })
    }

    #[test]
    fn the_issue_example_parses() {
        let src = r#"label:lead AND country IN ("US","CA") AND age >= 25 AND tags:vip AND NOT label:customer
AND event(purchase, last 90d).count >= 2 AND segment("newsletter-engaged")"#;
        let Rule::All(items) = parse(src).unwrap() else {
            panic!("not an AND")
        };
        assert_eq!(items.len(), 7);
        assert_eq!(
            items[1],
            f(
                "country",
                Op::In,
                vec![Value::String("US".into()), Value::String("CA".into())]
            )
        );
        assert_eq!(items[2], f("age", Op::Gte, vec![Value::Number(25.0)]));
        assert!(matches!(&items[4], Rule::Not(r) if matches!(**r, Rule::Set(_))));
        let Rule::Event(e) = &items[5] else { panic!() };
        assert_eq!(
            e.window,
            Some(Window::Last(Span {
                amount: 90,
                unit: Unit::Days
            }))
        );
        assert_eq!(
            e.aggregate.as_ref().unwrap().cmp.values,
            vec![Value::Number(2.0)]
        );
        assert_eq!(
            items[6],
            Rule::Segment(SegmentRef::Name("newsletter-engaged".into()))
        );
    }

    #[test]
    fn precedence_and_groups() {
        let r = parse("a = 1 OR b = 2 AND c = 3").unwrap();
        let Rule::Any(items) = r else { panic!() };
        assert!(matches!(items[1], Rule::All(_)));
        assert_eq!(parse("all()").unwrap(), Rule::All(vec![]));
        assert_eq!(
            parse("any(x = 1)").unwrap(),
            Rule::Any(vec![f("x", Op::Eq, vec![Value::Number(1.0)])])
        );
    }

    #[test]
    fn events_deals_and_windows() {
        let r = parse(
            r#"event(cart_abandoned, last 7d) AND NOT event(purchase, since cart_abandoned)"#,
        )
        .unwrap();
        let Rule::All(items) = r else { panic!() };
        let Rule::Not(inner) = &items[1] else {
            panic!()
        };
        let Rule::Event(e) = &**inner else { panic!() };
        assert_eq!(e.window, Some(Window::SinceLast("cart_abandoned".into())));
        let r =
            parse("NOT event(*, last 90d) AND event(email_open|email_click, last 30d)").unwrap();
        let Rule::All(items) = r else { panic!() };
        let Rule::Not(inner) = &items[0] else {
            panic!()
        };
        let Rule::Event(any) = &**inner else { panic!() };
        assert_eq!(any.types, EventTypes::Any);
        let Rule::Event(two) = &items[1] else {
            panic!()
        };
        assert_eq!(
            two.types,
            EventTypes::Of(vec!["email_open".into(), "email_click".into()])
        );
        let r = parse(r#"event(page_view, url STARTS_WITH "/pricing", between 2024-01-01 and 2024-02-01).distinct(properties.url) >= 3"#).unwrap();
        let Rule::Event(e) = r else { panic!() };
        assert_eq!(e.filters[0].field, "url");
        assert!(matches!(e.window, Some(Window::Between(_, _))));
        assert_eq!(
            e.aggregate.unwrap().field.as_deref(),
            Some("properties.url")
        );
        let r = parse(r#"deal(status = won, value > 10000).sum(value) BETWEEN 1 AND 5"#).unwrap();
        assert!(
            matches!(r, Rule::Deal(DealCond { ref filters, aggregate: Some(_) }) if filters.len() == 2)
        );
        let r = parse("event(purchase).last OLDER_THAN 60d").unwrap();
        let Rule::Event(e) = r else { panic!() };
        assert_eq!(e.aggregate.unwrap().func, AggFunc::Last);
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse("country IN (\"US\"\n  AND x").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert_eq!(e.expected, "`,` or `)`");
        let e = parse("age >>= 3").unwrap_err();
        assert_eq!((e.line, e.col), (1, 6));
        let e = parse("").unwrap_err();
        assert_eq!(e.expected, "a condition");
        let e = parse("a = 1 b = 2").unwrap_err();
        assert_eq!((e.line, e.col), (1, 7));
        let deep = "NOT ".repeat(100) + "a = 1";
        assert!(parse(&deep).unwrap_err().expected.contains("nesting"));
    }
}
