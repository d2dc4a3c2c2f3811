//! The compiled form of a definition: a plan, which only
//! [`render`](super::render) turns into SQL.
//!
//! Lowering decides the shape of the query: which grouped event and deal
//! sources are joined, the top-level conditions, and which source can drive a
//! body that never reads `contacts`. What it leaves open is rendered later,
//! in one place: the projection, resuming after an id, sampling, restricting
//! to a set of ids, order, limit and grouping, how parameters are passed
//! (bound, through settings, as literals), whether a source's tests are read
//! from its joined columns or evaluated in its own `HAVING`, and how "since
//! the last X" is bounded.
//!
//! SQL pieces are templates: fixed text from this module's siblings, with
//! holes the renderer fills. A hole is a control character, a kind and an
//! argument; caller values never become SQL text, so a template cannot hold
//! one by accident.

use super::lower::Param;

/// Opens and closes a hole in a template.
pub(crate) const HOLE: char = '\u{1}';

/// Template holes.
pub(crate) mod hole {
    use super::HOLE;

    /// Bound parameter `i` (0-based; `$i+1` when bound).
    pub fn param(i: usize) -> String {
        format!("{HOLE}P{i}{HOLE}")
    }

    /// Value `k` of grouped source `s`: its joined column, or the aggregate
    /// itself in the source's own `HAVING`.
    pub fn value(s: usize, k: usize) -> String {
        format!("{HOLE}V{s}.{k}{HOLE}")
    }

    /// The time of the member's last event of the type in parameter `i`: a
    /// correlated `max()`, or `c.t` from a driver that already holds it.
    pub fn last_of(i: usize) -> String {
        format!("{HOLE}L{i}{HOLE}")
    }

    /// When the query is restricted to some contacts, ` AND
    /// <alias>.contact_id = ANY(<their ids>)`; nothing otherwise. For
    /// subqueries that would otherwise read every contact's rows.
    pub fn only(alias: char) -> String {
        format!("{HOLE}O{alias}{HOLE}")
    }

    /// The member's contact id.
    pub fn id() -> String {
        format!("{HOLE}I{HOLE}")
    }
}

/// One hole, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hole {
    Param(usize),
    Value(usize, usize),
    LastOf(usize),
    Only(char),
    Id,
}

/// The pieces of a template: text, and holes.
pub(crate) fn pieces(t: &str) -> impl Iterator<Item = Result<&str, Hole>> {
    t.split(HOLE).enumerate().filter_map(|(i, part)| {
        if i % 2 == 0 {
            (!part.is_empty()).then_some(Ok(part))
        } else {
            Some(Err(parse_hole(part)))
        }
    })
}

fn parse_hole(h: &str) -> Hole {
    let num = |s: &str| s.parse::<usize>().expect("a hole's number");
    match h.split_at(1) {
        ("P", i) => Hole::Param(num(i)),
        ("L", i) => Hole::LastOf(num(i)),
        ("I", _) => Hole::Id,
        ("O", a) => Hole::Only(a.chars().next().expect("a restricted alias")),
        ("V", sk) => {
            let (s, k) = sk.split_once('.').expect("a value hole's source and index");
            Hole::Value(num(s), num(k))
        }
        _ => panic!("unknown template hole {h:?}"),
    }
}

/// A grouped event or deal source:
/// `SELECT <key>, <tenant>, <values> FROM <from> WHERE <conds> GROUP BY
/// <key>, <tenant>`.
///
/// The workspace column goes along with the key (it is constant in each
/// group) so that every join of the source to a contact also matches the
/// workspace: a join on the column a Citus cluster distributes by.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouped {
    /// `e.contact_id` or `d.contact_id`.
    pub key: &'static str,
    /// The key's workspace: `e.workspace_id` or `d.workspace_id`.
    pub tenant: &'static str,
    /// The `FROM` list (template).
    pub from: String,
    /// The `WHERE` conditions, ANDed (templates).
    pub conds: Vec<String>,
    /// The aggregates (templates), one per value hole index.
    pub values: Vec<String>,
    /// The event type, when the rows are every event of one type up to now
    /// (one type, unfiltered, no upper bound): then a driver can also yield
    /// the contact's last event of that type.
    pub last_of: Option<String>,
}

/// What a query joins to `contacts c`, under an alias.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A grouped subquery, `LEFT JOIN (...) <alias> ON <alias>.contact_id =
    /// c.id AND <alias>.workspace_id = c.workspace_id`.
    Grouped(String, Grouped),
    /// Any subquery with `contact_id` and `workspace_id` columns (a stored
    /// member list), joined as a grouped source is.
    Rows(String, String),
}

impl Source {
    /// The alias.
    pub fn alias(&self) -> &str {
        match self {
            Source::Grouped(a, _) | Source::Rows(a, _) => a,
        }
    }
}

/// A top-level condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Conjunct {
    /// The condition (template).
    pub sql: String,
    /// The grouped source this condition is a test of, when it is exactly
    /// a test of one source's values.
    pub tests: Option<usize>,
    /// Contacts without rows in that source fail the test: the source can
    /// drive an ids-only body.
    pub strict: bool,
    /// The test is "count ≥ 1": with no other test, the source's members
    /// are just its distinct keys.
    pub some: bool,
}

/// A compiled definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Parameters; the first is the workspace.
    pub params: Vec<Param>,
    /// Joined sources, in join order.
    pub sources: Vec<Source>,
    /// Top-level conditions, ANDed.
    pub conjuncts: Vec<Conjunct>,
    /// The source that drives an ids-only body: the definition reads no
    /// contact column, and contacts without rows in this source fail.
    pub driver: Option<usize>,
}

impl Plan {
    /// The top-level conditions that are tests of source `s`.
    pub fn tests_of(&self, s: usize) -> Vec<&Conjunct> {
        self.conjuncts
            .iter()
            .filter(|c| c.tests == Some(s))
            .collect()
    }
}

/// Several definitions over one scan of the workspace's contacts, each a
/// two-valued boolean column.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    /// Parameters; the first is the workspace.
    pub params: Vec<Param>,
    /// Joined sources.
    pub sources: Vec<Source>,
    /// One condition per definition (templates).
    pub conds: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_holes() {
        let t = format!(
            "a = {} AND {} > {} OR {}",
            hole::param(3),
            hole::value(1, 2),
            hole::last_of(0),
            hole::id()
        );
        let got: Vec<_> = pieces(&t).collect();
        assert_eq!(
            got,
            vec![
                Ok("a = "),
                Err(Hole::Param(3)),
                Ok(" AND "),
                Err(Hole::Value(1, 2)),
                Ok(" > "),
                Err(Hole::LastOf(0)),
                Ok(" OR "),
                Err(Hole::Id),
            ]
        );
    }
}
