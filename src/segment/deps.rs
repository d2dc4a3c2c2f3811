//! What a checked definition reads, as dependency keys (see `model::deps`):
//! a live segment is re-evaluated for the contacts a write touched only if
//! the write changed something it reads.

use std::collections::BTreeSet;

use super::ast::{Span, Window};
use super::ir::{Field, Pred, SetTarget, Test};
use crate::model::deps::{self, ANY_EVENT};

/// The dependency keys of `p`.
pub fn of(p: &Pred) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(p, &mut out);
    out
}

fn walk(p: &Pred, out: &mut BTreeSet<String>) {
    match p {
        Pred::All(ps) | Pred::Any(ps) => ps.iter().for_each(|p| walk(p, out)),
        Pred::Not(p) => walk(p, out),
        Pred::Field(f, _) => {
            let key = match f {
                Field::Id => return,
                Field::Text(name) | Field::Time(name) => deps::column(name),
                Field::LeadScore => deps::column("lead_score"),
                Field::BirthDate | Field::Age => deps::column("birth_date"),
                Field::Custom(k, _) => deps::attr(k),
            };
            out.insert(key);
        }
        Pred::Set(t, _, _) => {
            out.insert(match t {
                SetTarget::Tags => deps::TAGS.to_string(),
                SetTarget::Labels => deps::LABELS.to_string(),
                SetTarget::CustomList(k) => deps::attr(k),
            });
        }
        Pred::Subscription(ch, _) => {
            out.insert(deps::subscription(ch.as_str()));
        }
        Pred::Event(e) => {
            match &e.types {
                None => {
                    out.insert(ANY_EVENT.to_string());
                }
                Some(ts) => out.extend(ts.iter().map(|t| deps::event(t))),
            }
            if let Some(Window::SinceLast(t)) = &e.window {
                out.insert(deps::event(t));
            }
        }
        Pred::Deal(_) => {
            out.insert(deps::DEAL.to_string());
        }
        Pred::Member(id) | Pred::Live(id) => {
            out.insert(deps::members(*id));
        }
    }
}

/// Whether the passing of time alone can change `p`'s members: a window
/// relative to now, a relative date test, an anniversary or an age.
pub fn timed(p: &Pred) -> bool {
    match p {
        Pred::All(ps) | Pred::Any(ps) => ps.iter().any(timed),
        Pred::Not(p) => timed(p),
        Pred::Field(Field::Age, _) => true,
        Pred::Field(_, t) => relative(t),
        Pred::Event(e) => {
            matches!(e.window, Some(Window::Last(_) | Window::OlderThan(_)))
                || e.filters.iter().any(|(_, t)| relative(t))
                || relative(&e.agg.test)
        }
        Pred::Deal(d) => d.filters.iter().any(|(_, t)| relative(t)) || relative(&d.agg.test),
        Pred::Set(..) | Pred::Subscription(..) | Pred::Member(_) | Pred::Live(_) => false,
    }
}

/// A boundary that time moves across: the contacts with events of `types`
/// (`None`: any type) that occurred `span` before one tick and `span` before
/// the next are the only ones whose membership time alone may have changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The event types whose times cross it; `None` for every type.
    pub types: Option<Vec<String>>,
    /// How far behind now it lies.
    pub span: Span,
}

/// Where time alone moves `p`'s members, as event boundaries; `None` when a
/// relative test has no such boundary an index can find (a relative date
/// on a contact field or a property, an anniversary, an age, a deal), so a
/// tick must re-evaluate every contact.
pub fn edges(p: &Pred) -> Option<Vec<Edge>> {
    let mut out = Vec::new();
    edges_into(p, &mut out).then_some(out)
}

fn edges_into(p: &Pred, out: &mut Vec<Edge>) -> bool {
    match p {
        Pred::All(ps) | Pred::Any(ps) => ps.iter().all(|p| edges_into(p, out)),
        Pred::Not(p) => edges_into(p, out),
        Pred::Field(..) | Pred::Deal(_) => !timed(p),
        Pred::Event(e) => {
            if e.filters.iter().any(|(_, t)| relative(t)) {
                return false;
            }
            let mut spans = Vec::new();
            if let Some(Window::Last(s) | Window::OlderThan(s)) = &e.window {
                spans.push(*s);
            }
            // A first or last time tested against now: it is one of the
            // events' times, so it crosses where one of them does.
            match &e.agg.test {
                // `BETWEEN now - span AND now`: a future time enters at now.
                Test::WithinLast(s) => spans.extend([*s, Span { amount: 0, ..*s }]),
                Test::OlderThan(s) => spans.push(*s),
                t if relative(t) => return false,
                _ => {}
            }
            out.extend(spans.into_iter().map(|span| Edge {
                types: e.types.clone(),
                span,
            }));
            true
        }
        Pred::Set(..) | Pred::Subscription(..) | Pred::Member(_) | Pred::Live(_) => true,
    }
}

fn relative(t: &Test) -> bool {
    matches!(
        t,
        Test::WithinLast(_) | Test::OlderThan(_) | Test::WithinNext(_) | Test::Anniversary(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::golden::checked;

    #[test]
    fn keys_name_what_a_definition_reads() {
        let p = checked(
            r#"country = "DE" AND tags:vip AND custom.plan = "pro" AND subscription(email, subscribed)
               AND event(purchase, since email_open) AND NOT event(*, last 30d) AND deal().count > 0
               AND age > 30 AND segment(41)"#,
        );
        let keys: Vec<String> = of(&p).into_iter().collect();
        assert_eq!(
            keys,
            [
                "attr:plan",
                "col:birth_date",
                "col:country",
                "deal",
                "ev:*",
                "ev:email_open",
                "ev:purchase",
                "seg:41",
                "sub:email",
                "tag"
            ]
        );
    }

    #[test]
    fn only_relative_times_make_a_definition_timed() {
        for (src, timed_) in [
            ("event(purchase, last 30d)", true),
            ("NOT event(*, last 90d)", true),
            ("event(purchase).last OLDER_THAN 60d", true),
            ("age > 30", true),
            ("created_at WITHIN_LAST 7d", true),
            ("event(purchase, since email_open)", false),
            ("event(purchase).count >= 2 AND tags:vip", false),
            ("segment(41)", false),
        ] {
            assert_eq!(timed(&checked(src)), timed_, "{src}");
        }
    }
}
