//! Checks a rule tree against a workspace and resolves it to `ir`: field
//! names to columns, literals to typed values, segment references to ids
//! (dynamic ones are inlined). Every problem is reported with its path into
//! the tree in proto field names, such as `all.rules[2].event.window`.

use std::collections::BTreeSet;

use crate::model::validate::date_in_range;

use super::ast::*;
use super::ir::{self, DealField, EventField, Field, Kind, Lit, Pred, SetTarget, Test};
use crate::error::{Violation, Violations, join_path};
use crate::model::contact::{CustomFieldType, SourceChannel, TextField};
use crate::model::deal::DealStatus;
use crate::model::schema::Schema;
use crate::model::segment::SegmentKind;
use crate::model::validate;

/// Most values in one IN list or set condition.
pub const MAX_VALUES: usize = 1000;
/// Most nodes in a definition, referenced segments included.
pub const MAX_NODES: usize = 2000;
/// Most event types one condition names.
pub const MAX_EVENT_TYPES: usize = 50;
/// Deepest chain of segment references.
pub const MAX_REF_DEPTH: usize = 16;

/// What a referenced segment looks like to the checker.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: SegmentKind,
    /// Definition, for dynamic segments.
    pub rule: Option<Rule>,
    /// Disabled segments refuse queries, also through references.
    pub enabled: bool,
    /// A live segment whose stored membership is current: references read
    /// it instead of evaluating its definition.
    pub stored: bool,
}

/// The workspace a definition is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    /// Custom field types and labels.
    pub schema: &'a Schema,
    /// Every segment of the workspace.
    pub segments: &'a [SegmentInfo],
    /// The segment being saved, so references back to it are cycles.
    pub current: Option<i64>,
}

/// A checked definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The predicate, dynamic references inlined.
    pub pred: Pred,
    /// Segments referenced directly, by id.
    pub refs: Vec<i64>,
    /// Every segment the definition reads, directly or through other
    /// segments' definitions, by id.
    pub uses: Vec<i64>,
}

/// Checks and resolves `rule`.
///
/// # Errors
/// Every violation, with paths relative to the rule.
pub fn check(rule: &Rule, cat: &Catalog<'_>) -> Result<Checked, Vec<Violation>> {
    let mut c = Checker {
        cat,
        v: Violations::new(),
        refs: BTreeSet::new(),
        uses: BTreeSet::new(),
        stack: cat.current.into_iter().collect(),
        nodes: 0,
    };
    let pred = c.rule(rule, "");
    if c.nodes > MAX_NODES {
        c.v.add(
            "",
            format!(
                "the definition has {} conditions with its references; at most {MAX_NODES}",
                c.nodes
            ),
        );
    }
    let refs = c.refs.into_iter().collect();
    let uses = c.uses.into_iter().collect();
    match pred {
        Some(pred) if c.v.is_empty() => Ok(Checked { pred, refs, uses }),
        _ => Err(c.v.into_vec()),
    }
}

/// Replaces segment names by ids (for storage), leaving unknown names.
pub fn refs_to_ids(rule: &Rule, segments: &[SegmentInfo]) -> Rule {
    map_refs(rule, &|r| match r {
        SegmentRef::Name(n) => segments
            .iter()
            .find(|s| &s.name == n)
            .map(|s| SegmentRef::Id(s.id)),
        SegmentRef::Id(_) => None,
    })
}

/// Replaces segment ids by names (for display), leaving unknown ids.
pub fn refs_to_names(rule: &Rule, segments: &[SegmentInfo]) -> Rule {
    map_refs(rule, &|r| match r {
        SegmentRef::Id(id) => segments
            .iter()
            .find(|s| s.id == *id)
            .map(|s| SegmentRef::Name(s.name.clone())),
        SegmentRef::Name(_) => None,
    })
}

fn map_refs(rule: &Rule, f: &dyn Fn(&SegmentRef) -> Option<SegmentRef>) -> Rule {
    match rule {
        Rule::All(v) => Rule::All(v.iter().map(|r| map_refs(r, f)).collect()),
        Rule::Any(v) => Rule::Any(v.iter().map(|r| map_refs(r, f)).collect()),
        Rule::Not(r) => Rule::Not(Box::new(map_refs(r, f))),
        Rule::Segment(s) => Rule::Segment(f(s).unwrap_or_else(|| s.clone())),
        other => other.clone(),
    }
}

struct Checker<'a> {
    cat: &'a Catalog<'a>,
    v: Violations,
    refs: BTreeSet<i64>,
    uses: BTreeSet<i64>,
    stack: Vec<i64>,
    nodes: usize,
}

type Norm = fn(&str) -> Result<Option<String>, String>;

impl Checker<'_> {
    fn bad<T>(&mut self, path: &str, msg: impl Into<String>) -> Option<T> {
        self.v.add(path, msg);
        None
    }

    fn rule(&mut self, r: &Rule, path: &str) -> Option<Pred> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return None;
        }
        match r {
            Rule::All(items) | Rule::Any(items) => {
                let name = if matches!(r, Rule::All(_)) {
                    "all"
                } else {
                    "any"
                };
                let preds: Vec<Option<Pred>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.rule(x, &join_path(path, &format!("{name}.rules[{i}]"))))
                    .collect();
                let preds: Option<Vec<Pred>> = preds.into_iter().collect();
                preds.map(|p| {
                    if name == "all" {
                        Pred::All(p)
                    } else {
                        Pred::Any(p)
                    }
                })
            }
            Rule::Not(inner) => self
                .rule(inner, &join_path(path, "not"))
                .map(|p| Pred::Not(Box::new(p))),
            Rule::Field(f) => self.field(f, &join_path(path, "field")),
            Rule::Set(s) => self.set(s, &join_path(path, "set")),
            Rule::Subscription(s) => Some(Pred::Subscription(s.channel, s.status)),
            Rule::Event(e) => self.event(e, &join_path(path, "event")),
            Rule::Deal(d) => self.deal(d, &join_path(path, "deal")),
            Rule::Segment(s) => self.segment(s, &join_path(path, "segment")),
        }
    }

    fn contact_field(&self, name: &str) -> Result<(Field, Kind, Option<Norm>), String> {
        if let Some(f) = TextField::from_name(name) {
            let norm: Norm = match f {
                TextField::Email => validate::email,
                TextField::Phone => validate::phone,
                TextField::Country => validate::country,
                TextField::Locale => validate::locale,
                TextField::Gender => validate::lower_text,
                TextField::Status | TextField::StatusReason => validate::identifier,
                _ => validate::text,
            };
            return Ok((Field::Text(f.name()), Kind::Text, Some(norm)));
        }
        Ok(match name {
            "id" => (Field::Id, Kind::Number, None),
            "source_channel" => (
                Field::Text("source_channel"),
                Kind::Text,
                Some(source_channel),
            ),
            "lead_score" => (Field::LeadScore, Kind::Number, None),
            "birth_date" => (Field::BirthDate, Kind::Date, None),
            "created_at" => (Field::Time("created_at"), Kind::Time, None),
            "updated_at" => (Field::Time("updated_at"), Kind::Time, None),
            "converted_at" => (Field::Time("converted_at"), Kind::Time, None),
            "age" => (Field::Age, Kind::Number, None),
            _ => {
                let Some(key) = name.strip_prefix("custom.") else {
                    return Err(format!(
                        "unknown field `{name}`; contact fields are {}, or custom.<key>",
                        field_list()
                    ));
                };
                let t = self
                    .cat
                    .schema
                    .custom
                    .get(key)
                    .ok_or_else(|| format!("unknown custom field `{key}`"))?;
                let kind = match t {
                    CustomFieldType::String => Kind::Text,
                    CustomFieldType::Number => Kind::Number,
                    CustomFieldType::Boolean => Kind::Bool,
                    CustomFieldType::Date => Kind::Date,
                    CustomFieldType::StringList => {
                        return Err(format!(
                            "`{key}` is a string list: use HAS_ANY, HAS_ALL or HAS_NONE"
                        ));
                    }
                };
                (Field::Custom(key.to_string(), *t), kind, None)
            }
        })
    }

    fn field(&mut self, f: &FieldCond, path: &str) -> Option<Pred> {
        let (field, kind, norm) = match self.contact_field(&f.field) {
            Ok(x) => x,
            Err(e) => return self.bad(&join_path(path, "field"), e),
        };
        let test = self.test(&f.cmp, kind, norm, path)?;
        if field == Field::Age || field == Field::Id {
            self.whole_numbers(
                &test,
                path,
                if field == Field::Age {
                    0.0..=200.0
                } else {
                    1.0..=9.0e15
                },
            )?;
        }
        Some(Pred::Field(field, test))
    }

    fn whole_numbers(
        &mut self,
        t: &Test,
        path: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Option<()> {
        let lits: Vec<&Lit> = match t {
            Test::Eq(l) | Test::Neq(l) | Test::Cmp(_, l) => vec![l],
            Test::In(ls) | Test::NotIn(ls) => ls.iter().collect(),
            Test::Between(a, b) => vec![a, b],
            _ => vec![],
        };
        let ok = lits
            .iter()
            .all(|l| matches!(l, Lit::Num(n) if n.fract() == 0.0 && range.contains(n)));
        if ok {
            Some(())
        } else {
            self.v.add(
                join_path(path, "values"),
                format!(
                    "must be whole numbers from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    /// Checks operator, arity and values against the kind of the field.
    fn test(&mut self, c: &Cmp, kind: Kind, norm: Option<Norm>, path: &str) -> Option<Test> {
        use Op::*;
        let allowed: &[Op] = match kind {
            Kind::Text => &[
                Eq, Neq, In, NotIn, Contains, StartsWith, EndsWith, IsSet, IsNotSet,
            ],
            Kind::Number => &[
                Eq, Neq, In, NotIn, Gt, Gte, Lt, Lte, Between, IsSet, IsNotSet,
            ],
            Kind::Bool => &[Eq, Neq, IsSet, IsNotSet],
            Kind::Date => &[
                Eq,
                Neq,
                In,
                NotIn,
                Gt,
                Gte,
                Lt,
                Lte,
                Between,
                IsSet,
                IsNotSet,
                WithinLast,
                OlderThan,
                WithinNext,
                AnniversaryWithin,
            ],
            Kind::Time => &[
                Gt,
                Gte,
                Lt,
                Lte,
                Between,
                IsSet,
                IsNotSet,
                WithinLast,
                OlderThan,
                WithinNext,
                AnniversaryWithin,
            ],
        };
        if !allowed.contains(&c.op) {
            let names: Vec<String> = allowed.iter().map(|o| format!("{o:?}")).collect();
            return self.bad(
                &join_path(path, "op"),
                format!(
                    "{:?} does not apply to a {kind:?} field; use one of {}",
                    c.op,
                    names.join(", ")
                ),
            );
        }
        let arity = match c.op {
            Eq | Neq | Gt | Gte | Lt | Lte | Contains | StartsWith | EndsWith => 1..=1,
            In | NotIn => 1..=MAX_VALUES,
            Between => 2..=2,
            _ => 0..=0,
        };
        if !arity.contains(&c.values.len()) {
            return self.bad(
                &join_path(path, "values"),
                format!(
                    "{:?} takes {} value(s), got {}",
                    c.op,
                    describe(&arity),
                    c.values.len()
                ),
            );
        }
        if c.op.is_relative() != c.span.is_some() {
            let msg = if c.op.is_relative() {
                "a span such as 30d is required"
            } else {
                "a span only goes with relative operators"
            };
            return self.bad(&join_path(path, "relative"), msg);
        }
        if let Some(s) = c.span {
            self.span(s, kind == Kind::Date, &join_path(path, "relative"))?;
        }
        let mut lits = Vec::with_capacity(c.values.len());
        for (i, v) in c.values.iter().enumerate() {
            let vp = join_path(path, &format!("values[{i}]"));
            let like = matches!(c.op, Contains | StartsWith | EndsWith);
            match lit(v, kind, if like { None } else { norm }) {
                Ok(l) => lits.push(l),
                Err(e) => {
                    self.v.add(vp, e);
                }
            }
        }
        if lits.len() != c.values.len() {
            return None;
        }
        let mut lits = lits.into_iter();
        macro_rules! one {
            () => {
                lits.next().expect("arity checked")
            };
        }
        Some(match c.op {
            Eq => Test::Eq(one!()),
            Neq => Test::Neq(one!()),
            In => Test::In(lits.collect()),
            NotIn => Test::NotIn(lits.collect()),
            Contains | StartsWith | EndsWith => {
                let Lit::Text(s) = one!() else {
                    return self.bad(path, "text expected");
                };
                if s.is_empty() {
                    return self.bad(&join_path(path, "values[0]"), "must not be empty");
                }
                let how = match c.op {
                    Contains => ir::Like::Contains,
                    StartsWith => ir::Like::StartsWith,
                    _ => ir::Like::EndsWith,
                };
                Test::Like(how, s)
            }
            Gt | Gte | Lt | Lte => Test::Cmp(ir::Ord::from(c.op), one!()),
            Between => {
                let (a, b) = (one!(), one!());
                if lit_gt(&a, &b) {
                    return self.bad(
                        &join_path(path, "values"),
                        "the lower bound is above the upper bound",
                    );
                }
                Test::Between(a, b)
            }
            IsSet => Test::IsSet,
            IsNotSet => Test::IsNotSet,
            WithinLast => Test::WithinLast(c.span.expect("checked")),
            OlderThan => Test::OlderThan(c.span.expect("checked")),
            WithinNext => Test::WithinNext(c.span.expect("checked")),
            AnniversaryWithin => Test::Anniversary(c.span.expect("checked")),
        })
    }

    fn span(&mut self, s: Span, date: bool, path: &str) -> Option<()> {
        let max = match s.unit {
            Unit::Hours => 24 * 366 * 100,
            Unit::Days => 366 * 100,
            Unit::Weeks => 53 * 100,
            Unit::Months => 12 * 100,
        };
        if s.amount < 1 || s.amount > max {
            self.v.add(
                path,
                format!("the amount must be from 1 to {max} for this unit"),
            );
            return None;
        }
        if date && s.unit == Unit::Hours {
            self.v.add(path, "dates take days, weeks or months");
            return None;
        }
        Some(())
    }

    fn set(&mut self, s: &SetCond, path: &str) -> Option<Pred> {
        let target = match s.field.as_str() {
            "tags" => SetTarget::Tags,
            "labels" => SetTarget::Labels,
            other => {
                match other
                    .strip_prefix("custom.")
                    .map(|k| (k, self.cat.schema.custom.get(k)))
                {
                    Some((k, Some(CustomFieldType::StringList))) => {
                        SetTarget::CustomList(k.to_string())
                    }
                    _ => {
                        return self.bad(
                        &join_path(path, "field"),
                        format!("`{other}` is not a set; use tags, labels or a string-list custom field"),
                    );
                    }
                }
            }
        };
        if s.values.is_empty() || s.values.len() > MAX_VALUES {
            return self.bad(
                &join_path(path, "values"),
                format!("give 1 to {MAX_VALUES} values"),
            );
        }
        let mut values = Vec::new();
        for (i, v) in s.values.iter().enumerate() {
            let vp = join_path(path, &format!("values[{i}]"));
            let norm = if target == SetTarget::Labels {
                validate::identifier(v)
            } else {
                validate::text(v)
            };
            match norm {
                Ok(Some(x))
                    if target == SetTarget::Labels && !self.cat.schema.labels.contains(&x) =>
                {
                    self.v.add(vp, format!("unknown label `{x}`"));
                }
                Ok(Some(x)) => values.push(x),
                Ok(None) => self.v.add(vp, "must not be empty"),
                Err(e) => self.v.add(vp, e),
            }
        }
        (values.len() == s.values.len()).then_some(Pred::Set(target, s.matching, values))
    }

    /// Event types as the IR has them: sorted and distinct, `None` for any.
    fn event_types(&mut self, types: &EventTypes, path: &str) -> Option<Option<Vec<String>>> {
        let EventTypes::Of(list) = types else {
            return Some(None);
        };
        if list.is_empty() || list.len() > MAX_EVENT_TYPES {
            return self.bad(
                &join_path(path, "types"),
                format!("give 1 to {MAX_EVENT_TYPES} event types, or `*` for any"),
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            // One type is the tree's `type`; several are its `types`.
            let at = if list.len() == 1 {
                join_path(path, "type")
            } else {
                join_path(path, &format!("types[{i}]"))
            };
            out.push(self.identifier(t, &at));
        }
        let mut out: Vec<String> = out.into_iter().collect::<Option<_>>()?;
        out.sort();
        out.dedup();
        Some(Some(out))
    }

    fn event(&mut self, e: &EventCond, path: &str) -> Option<Pred> {
        let types = self.event_types(&e.types, path);
        let window = match &e.window {
            None => Some(None),
            Some(w) => self.window(w, &join_path(path, "window")).map(Some),
        };
        let mut filters = Vec::new();
        for (i, f) in e.filters.iter().enumerate() {
            let fp = join_path(path, &format!("filters[{i}]"));
            let (field, kind, norm): (EventField, Option<Kind>, Option<Norm>) =
                match f.field.as_str() {
                    "value" => (EventField::Value, Some(Kind::Number), None),
                    "currency" => (
                        EventField::Currency,
                        Some(Kind::Text),
                        Some(validate::currency),
                    ),
                    other => (EventField::Prop(prop_key(other).to_string()), None, None),
                };
            let kind = kind.or_else(|| literal_kind(&f.cmp));
            let Some(kind) = kind else {
                self.v.add(
                    join_path(&fp, "values"),
                    "properties compare with text, numbers or booleans, all of one type",
                );
                continue;
            };
            if let Some(t) = self.test(&f.cmp, kind, norm, &fp) {
                filters.push((field, t));
            }
        }
        let agg = self.aggregate(
            e.aggregate.as_ref(),
            &join_path(path, "aggregate"),
            |name| match name {
                "value" => Some((EventField::Value, true)),
                "currency" => Some((EventField::Currency, false)),
                other => Some((EventField::Prop(prop_key(other).to_string()), true)),
            },
        );
        let (types, window, agg) = (types?, window?, agg?);
        (filters.len() == e.filters.len()).then(|| {
            Pred::Event(Box::new(ir::EventAgg {
                types,
                window,
                filters,
                agg,
            }))
        })
    }

    fn window(&mut self, w: &Window, path: &str) -> Option<Window> {
        match w {
            Window::Last(s) | Window::OlderThan(s) => {
                self.span(*s, false, path).map(|()| w.clone())
            }
            Window::Between(a, b) if a >= b => {
                self.v.add(path, "the start must be before the end");
                None
            }
            Window::SinceLast(t) => self.identifier(t, path).map(Window::SinceLast),
            other => Some(other.clone()),
        }
    }

    fn deal(&mut self, d: &DealCond, path: &str) -> Option<Pred> {
        let mut filters = Vec::new();
        for (i, f) in d.filters.iter().enumerate() {
            let fp = join_path(path, &format!("filters[{i}]"));
            let Some((field, kind, norm)) = deal_field(&f.field) else {
                self.v.add(
                    join_path(&fp, "field"),
                    format!("unknown deal field `{}`; use status, stage, value, currency, owner, name, created_at or closed_at", f.field),
                );
                continue;
            };
            if let Some(t) = self.test(&f.cmp, kind, norm, &fp) {
                filters.push((field, t));
            }
        }
        let agg = self.aggregate(
            d.aggregate.as_ref(),
            &join_path(path, "aggregate"),
            |name| deal_field(name).map(|(f, k, _)| (f, k == Kind::Number)),
        )?;
        (filters.len() == d.filters.len())
            .then(|| Pred::Deal(Box::new(ir::DealAgg { filters, agg })))
    }

    /// Checks an aggregate; `arg` resolves a field name to (field, numeric).
    fn aggregate<F>(
        &mut self,
        a: Option<&Aggregate>,
        path: &str,
        arg: impl Fn(&str) -> Option<(F, bool)>,
    ) -> Option<ir::Agg<F>> {
        let Some(a) = a else {
            return Some(ir::Agg {
                func: AggFunc::Count,
                arg: None,
                test: Test::Cmp(ir::Ord::Gte, Lit::Num(1.0)),
            });
        };
        let needs_arg = matches!(
            a.func,
            AggFunc::Sum | AggFunc::Avg | AggFunc::Min | AggFunc::Max | AggFunc::Distinct
        );
        let resolved = match (&a.field, needs_arg) {
            (None, false) => None,
            (Some(_), false) => {
                return self.bad(
                    &join_path(path, "field"),
                    format!("{:?} takes no field", a.func),
                );
            }
            (None, true) => {
                return self.bad(
                    &join_path(path, "field"),
                    format!("{:?} needs a field", a.func),
                );
            }
            (Some(name), true) => match arg(name) {
                Some((f, numeric)) if numeric || a.func == AggFunc::Distinct => Some(f),
                Some(_) => {
                    return self.bad(
                        &join_path(path, "field"),
                        format!("`{name}` is not numeric"),
                    );
                }
                None => {
                    return self.bad(&join_path(path, "field"), format!("unknown field `{name}`"));
                }
            },
        };
        let kind = if matches!(a.func, AggFunc::First | AggFunc::Last) {
            Kind::Time
        } else {
            Kind::Number
        };
        let test = self.test(&a.cmp, kind, None, path)?;
        Some(ir::Agg {
            func: a.func,
            arg: resolved,
            test,
        })
    }

    fn identifier(&mut self, s: &str, path: &str) -> Option<String> {
        match validate::identifier(s) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                self.v.add(path, "required");
                None
            }
            Err(e) => {
                self.v.add(path, e);
                None
            }
        }
    }

    fn segment(&mut self, r: &SegmentRef, path: &str) -> Option<Pred> {
        let found = self.cat.segments.iter().find(|s| match r {
            SegmentRef::Id(id) => s.id == *id,
            SegmentRef::Name(n) => &s.name == n,
        });
        let Some(seg) = found else {
            return self.bad(path, format!("no segment {}", describe_ref(r)));
        };
        if self.stack.contains(&seg.id) {
            let mut chain: Vec<String> = self.stack.iter().map(|id| self.name_of(*id)).collect();
            chain.push(seg.name.clone());
            return self.bad(
                path,
                format!("segment references form a cycle: {}", chain.join(" → ")),
            );
        }
        self.refs.insert(seg.id);
        self.uses.insert(seg.id);
        match (seg.kind, &seg.rule) {
            (SegmentKind::Dynamic, Some(_)) if seg.stored => Some(Pred::Live(seg.id)),
            (SegmentKind::Dynamic, Some(rule)) => {
                if self.stack.len() >= MAX_REF_DEPTH {
                    return self.bad(
                        path,
                        format!("segment references nest deeper than {MAX_REF_DEPTH}"),
                    );
                }
                self.stack.push(seg.id);
                let mut inner = Checker {
                    cat: self.cat,
                    v: Violations::new(),
                    refs: BTreeSet::new(),
                    uses: BTreeSet::new(),
                    stack: self.stack.clone(),
                    nodes: self.nodes,
                };
                let pred = inner.rule(rule, "");
                self.nodes = inner.nodes;
                self.uses.extend(inner.uses);
                self.stack.pop();
                let problems = inner.v.into_vec();
                if let Some(p) = problems.first() {
                    let detail = if p.field.is_empty() {
                        p.description.clone()
                    } else {
                        format!("{}: {}", p.field, p.description)
                    };
                    return self.bad(
                        path,
                        format!("segment {:?} cannot be used: {detail}", seg.name),
                    );
                }
                pred
            }
            (SegmentKind::Dynamic, None) => {
                self.bad(path, format!("segment {:?} has no definition", seg.name))
            }
            _ => Some(Pred::Member(seg.id)),
        }
    }

    fn name_of(&self, id: i64) -> String {
        self.cat
            .segments
            .iter()
            .find(|s| s.id == id)
            .map_or_else(|| format!("#{id}"), |s| s.name.clone())
    }
}

impl From<Op> for ir::Ord {
    fn from(o: Op) -> Self {
        match o {
            Op::Gt => ir::Ord::Gt,
            Op::Gte => ir::Ord::Gte,
            Op::Lt => ir::Ord::Lt,
            _ => ir::Ord::Lte,
        }
    }
}

fn describe(r: &std::ops::RangeInclusive<usize>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{} to {}", r.start(), r.end())
    }
}

fn describe_ref(r: &SegmentRef) -> String {
    match r {
        SegmentRef::Id(id) => format!("with id {id}"),
        SegmentRef::Name(n) => format!("named {n:?}"),
    }
}

fn field_list() -> String {
    let mut names: Vec<&str> = TextField::ALL.iter().map(|f| f.name()).collect();
    names.extend([
        "id",
        "source_channel",
        "lead_score",
        "birth_date",
        "age",
        "created_at",
        "updated_at",
        "converted_at",
    ]);
    names.join(", ")
}

fn source_channel(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().to_ascii_lowercase();
    SourceChannel::parse(&t)
        .map(|c| Some(c.as_str().to_string()))
        .ok_or_else(|| {
            let all: Vec<&str> = SourceChannel::ALL.iter().map(|c| c.as_str()).collect();
            format!("`{s}` is not a source channel ({})", all.join(", "))
        })
}

fn deal_status(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().to_ascii_lowercase();
    DealStatus::parse(&t)
        .map(|d| Some(d.as_str().to_string()))
        .ok_or_else(|| format!("`{s}` is not a deal status (open, won, lost)"))
}

fn deal_field(name: &str) -> Option<(DealField, Kind, Option<Norm>)> {
    Some(match name {
        "status" => (DealField::Status, Kind::Text, Some(deal_status as Norm)),
        "stage" => (
            DealField::Stage,
            Kind::Text,
            Some(validate::identifier as Norm),
        ),
        "value" => (DealField::Value, Kind::Number, None),
        "currency" => (
            DealField::Currency,
            Kind::Text,
            Some(validate::currency as Norm),
        ),
        "owner" => (DealField::Owner, Kind::Text, Some(validate::text as Norm)),
        "name" => (DealField::Name, Kind::Text, Some(validate::text as Norm)),
        "created_at" => (DealField::CreatedAt, Kind::Time, None),
        "closed_at" => (DealField::ClosedAt, Kind::Time, None),
        _ => return None,
    })
}

/// `properties.url` and bare `url` both name the property `url`.
fn prop_key(field: &str) -> &str {
    field.strip_prefix("properties.").unwrap_or(field)
}

/// The kind a property comparison takes from its literals.
fn literal_kind(c: &Cmp) -> Option<Kind> {
    if matches!(c.op, Op::IsSet | Op::IsNotSet) {
        return Some(Kind::Text);
    }
    let mut kinds = c.values.iter().map(|v| match v {
        Value::String(_) => Some(Kind::Text),
        Value::Number(_) => Some(Kind::Number),
        Value::Bool(_) => Some(Kind::Bool),
        _ => None,
    });
    let first = kinds.next()??;
    kinds.all(|k| k == Some(first)).then_some(first)
}

fn lit(v: &Value, kind: Kind, norm: Option<Norm>) -> Result<Lit, String> {
    match (kind, v) {
        (Kind::Text, Value::String(s)) => match norm {
            Some(n) => n(s)?
                .map(Lit::Text)
                .ok_or_else(|| "must not be empty".to_string()),
            None => Ok(Lit::Text(s.clone())),
        },
        (Kind::Number, Value::Number(n)) if n.is_finite() => Ok(Lit::Num(*n)),
        (Kind::Bool, Value::Bool(b)) => Ok(Lit::Bool(*b)),
        (Kind::Date, Value::Date(d)) => Ok(Lit::Date(date_in_range(*d)?)),
        (Kind::Time, Value::Time(t)) => {
            date_in_range(t.date_naive())?;
            Ok(Lit::Time(*t))
        }
        (Kind::Time, Value::Date(d)) => Ok(Lit::Time(
            date_in_range(*d)?
                .and_time(chrono::NaiveTime::MIN)
                .and_utc(),
        )),
        (kind, _) => Err(format!(
            "expected a {} value",
            match kind {
                Kind::Text => "text",
                Kind::Number => "number",
                Kind::Bool => "boolean",
                Kind::Date => "date (YYYY-MM-DD)",
                Kind::Time => "time or date",
            }
        )),
    }
}

fn lit_gt(a: &Lit, b: &Lit) -> bool {
    match (a, b) {
        (Lit::Num(x), Lit::Num(y)) => x > y,
        (Lit::Date(x), Lit::Date(y)) => x > y,
        (Lit::Time(x), Lit::Time(y)) => x > y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::parse::parse;

    fn schema() -> Schema {
        let mut s = Schema::default();
        s.labels
            .extend(["lead".to_string(), "customer".to_string()]);
        s.custom.insert("plan".into(), CustomFieldType::String);
        s.custom.insert("pets".into(), CustomFieldType::StringList);
        s
    }

    fn run(
        src: &str,
        segs: &[SegmentInfo],
        current: Option<i64>,
    ) -> Result<Checked, Vec<Violation>> {
        let s = schema();
        check(
            &parse(src).unwrap(),
            &Catalog {
                schema: &s,
                segments: segs,
                current,
            },
        )
    }

    fn fields(r: Result<Checked, Vec<Violation>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn resolves_and_normalises() {
        let c = run(r#"country = "us" AND label:lead AND custom.plan = "pro" AND custom.pets HAS_ANY (cat)"#, &[], None).unwrap();
        let Pred::All(p) = c.pred else { panic!() };
        assert_eq!(
            p[0],
            Pred::Field(Field::Text("country"), Test::Eq(Lit::Text("US".into())))
        );
        assert_eq!(
            p[3],
            Pred::Set(
                SetTarget::CustomList("pets".into()),
                SetMatch::Any,
                vec!["cat".into()]
            )
        );
    }

    #[test]
    fn paths_name_each_problem() {
        let f = fields(run(
            r#"nope = 1 AND age > "x" AND label:leed AND event(purchase, last 0d) AND country = "XX""#,
            &[],
            None,
        ));
        assert_eq!(
            f,
            vec![
                "all.rules[0].field.field",
                "all.rules[1].field.values[0]",
                "all.rules[2].set.values[0]",
                "all.rules[3].event.window",
                "all.rules[4].field.values[0]"
            ]
        );
        let f = fields(run("birth_date WITHIN_LAST 5h", &[], None));
        assert_eq!(f, vec!["field.relative"]);
        let f = fields(run("email > 3", &[], None));
        assert_eq!(f, vec!["field.op"]);
        let f = fields(run(
            "event(purchase).sum > 3 OR deal(colour = 1)",
            &[],
            None,
        ));
        assert_eq!(
            f,
            vec![
                "any.rules[0].event.aggregate.field",
                "any.rules[1].deal.filters[0].field"
            ]
        );
        let f = fields(run("age IN (1.5)", &[], None));
        assert_eq!(f, vec!["field.values"]);
    }

    #[test]
    fn references_inline_and_cycles_are_caught() {
        let a = SegmentInfo {
            id: 1,
            name: "a".into(),
            kind: SegmentKind::Dynamic,
            rule: Some(parse("segment(2)").unwrap()),
            enabled: true,
            stored: false,
        };
        let b = SegmentInfo {
            id: 2,
            name: "b".into(),
            kind: SegmentKind::Dynamic,
            rule: Some(parse("label:lead").unwrap()),
            enabled: true,
            stored: false,
        };
        let s = SegmentInfo {
            id: 3,
            name: "s".into(),
            kind: SegmentKind::Static,
            rule: None,
            enabled: true,
            stored: false,
        };
        let segs = [a, b, s];
        let c = run(r#"segment("a") AND segment(3)"#, &segs, None).unwrap();
        assert_eq!(c.refs, vec![1, 3]);
        let Pred::All(p) = c.pred else { panic!() };
        assert_eq!(
            p[0],
            Pred::Set(SetTarget::Labels, SetMatch::Any, vec!["lead".into()])
        );
        assert_eq!(p[1], Pred::Member(3));
        // Saving b so that it refers to a (which refers to b) closes a cycle.
        let e = run(r#"segment("a")"#, &segs, Some(2)).unwrap_err();
        assert!(e[0].description.contains("cycle"), "{e:?}");
        let e = run("segment(2)", &segs, Some(2)).unwrap_err();
        assert!(e[0].description.contains("cycle"), "{e:?}");
        let e = run(r#"segment("zzz")"#, &segs, None).unwrap_err();
        assert_eq!(e[0].field, "segment");
    }
}
