//! The one renderer: a [`Plan`] and a [`Query`] become SQL and parameters.
//!
//! Every statement segd runs for a definition comes from here: member ids
//! and contacts for streams and previews, counts, snapshots, breakdowns,
//! membership checks and overlaps. Plan parameters keep their numbers (`$1`
//! is the workspace); parameters a query adds (a resume point, a sample,
//! ids, a limit) follow them. The same plan renders with parameters bound,
//! read from transaction-local settings (for `COPY`, which takes no bind
//! parameters), or, for the benchmarks only, as literals.

use std::fmt::Write;

use tokio_postgres::types::{ToSql, Type};

use super::lower::{Param, typed};
use super::plan::{Columns, Conjunct, Grouped, Hole, Plan, Source, hole, pieces};

/// How parameters reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `$n`, bound.
    Bind,
    /// Numbers, booleans, dates and times as literals (typed values printed
    /// by Rust's formatters: they cannot carry SQL, and the planner sees
    /// them); text and arrays read once from `segd.p<n>` settings, which a
    /// separate statement sets from bound parameters.
    Settings,
    /// Every value as a literal, quoted. For benchmark yardsticks only
    /// (`psql COPY` of the very same SQL); never with caller input in
    /// production.
    Literals,
}

/// A deterministic sample or split, hashed on the contact id with a salt.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// About this fraction of members, in (0, 1].
    Fraction(f64, String),
    /// Bucket `index` of `count`.
    Bucket {
        /// Which bucket.
        index: i32,
        /// How many buckets.
        count: i32,
        /// Salt of the hash.
        salt: String,
    },
}

/// Resolution of the fraction hash.
const SAMPLE_SCALE: i64 = 1_000_000;

/// A breakdown key.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupKey {
    /// A column of `c` (from a fixed list, never caller text).
    Column(&'static str),
    /// An expression over `c` (from a fixed list, never caller text).
    Expr(&'static str),
    /// A text array column of `c`, one group per element.
    Set(&'static str),
    /// A custom field's value as text.
    Custom(String),
    /// A string-list custom field, one group per element.
    CustomList(String),
}

/// Order of member rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Any order.
    Any,
    /// By contact id (streams, resuming).
    Id,
    /// By a hash of the id (a stable pseudo-random sample).
    Hash,
}

/// What a statement does with the members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Select<'a> {
    /// Member ids (`c.id`).
    Ids,
    /// Member rows: these columns of `contacts c` (a fixed list).
    Contacts(&'a str),
    /// The number of members.
    Count,
    /// Inserts the members into segment `id`'s member list.
    Snapshot(i64),
    /// Member counts by keys: the `top` largest groups and the rest
    /// together. Rows: the keys, `total`, `other`, `groups`.
    Breakdown(&'a [GroupKey], i64),
    /// Differences between segment `id`'s stored membership and the
    /// members. One row: missing and extra counts, then up to 100 ids of
    /// each.
    Drift(i64),
    /// Brings a live segment's stored membership in line with the members
    /// (of the `only` contacts, or all), logging each entry and exit to the
    /// change feed. One row: the ids that entered, those that exited, and
    /// the members (of the `only` contacts, or all).
    Refresh(&'a Refresh),
    /// What a diff of segment `id`'s stored membership against the members
    /// (of the `only` contacts, or all) needs, read only, so PostgreSQL may
    /// evaluate the definition in parallel (a statement that writes never
    /// is). One row: the members' ids and the stored ids, each ascending
    /// and at most `cap + 1` long (longer than `cap`: too many to carry),
    /// or two NULLs when they are equal; then the number of members.
    Diff { segment: i64, cap: i64 },
    /// Counts for segment metrics: see [`Metrics`]. Rows, by group
    /// ascending: the group, members, openers, clickers, openers who
    /// clicked, opens, clicks, purchasers, orders, repeat purchasers,
    /// revenue.
    Metrics(&'a Metrics),
}

/// What [`Select::Metrics`] counts: the members (by bucket of a split, or
/// all as group 0) and their events of the given types in a window, read
/// once by an outer join from the members.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// The window's start, included.
    pub from: chrono::DateTime<chrono::Utc>,
    /// The window's end, excluded.
    pub to: chrono::DateTime<chrono::Utc>,
    /// Which event types are opens, clicks, purchases and revenue.
    pub types: crate::model::metrics::EventTypes,
    /// Group members by bucket of `count` with this salt, as
    /// [`Sample::Bucket`] does.
    pub split: Option<(i32, String)>,
}

/// The bucket, 0 to `n - 1`, of the contact id `id` in an `n`-way split
/// salted with `salt` (SQL expressions; the salt ends with `:`).
pub fn bucket_of(id: &str, salt: &str, n: &str) -> String {
    format!("mod(mod(hashtextextended({salt} || {id}::text, 0), {n}) + {n}, {n})")
}

/// A live segment's refresh: see [`Select::Refresh`].
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    /// The live segment.
    pub segment: i64,
    /// The feed offset before this refresh; its changes follow it.
    pub base: i64,
    /// What caused the changes, for the feed.
    pub cause: String,
    /// When, for the feed.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A statement to render.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// What it selects.
    pub select: Select<'a>,
    /// Only members after this id.
    pub after: Option<i64>,
    /// Only a sample of members.
    pub sample: Option<&'a Sample>,
    /// Only these contacts.
    pub only: Option<&'a [i64]>,
    /// Row order.
    pub order: Order,
    /// At most this many rows.
    pub limit: Option<i64>,
}

impl<'a> Query<'a> {
    /// Selects `select` of every member, in any order.
    pub fn of(select: Select<'a>) -> Self {
        Self {
            select,
            after: None,
            sample: None,
            only: None,
            order: Order::Any,
            limit: None,
        }
    }
}

/// A rendered statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The SQL.
    pub sql: String,
    /// The parameters, `$1` first.
    pub params: Vec<Param>,
}

impl Rendered {
    /// The parameters paired with their types, for `query_typed`.
    pub fn typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        typed(&self.params)
    }
}

/// A statement rendered in the settings style: `set` stores every
/// parameter in a transaction-local setting (run it first, bound), and
/// `query` reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct WithSettings {
    /// `SELECT set_config('segd.p1', $1::…::text, true), …`, bound.
    pub set: Rendered,
    /// The statement, with no bind parameters.
    pub query: String,
}

impl Plan {
    /// Renders `q` with parameters bound.
    pub fn render(&self, q: &Query<'_>) -> Rendered {
        let w = Writer::new(&self.params, &self.sources, Style::Bind);
        w.statement(self, q)
    }

    /// Renders `q` for `COPY`: see [`Style::Settings`].
    pub fn render_with_settings(&self, q: &Query<'_>) -> WithSettings {
        let r = Writer::new(&self.params, &self.sources, Style::Settings).statement(self, q);
        WithSettings {
            set: settings(&r.params),
            query: r.sql,
        }
    }

    /// Renders `q` with every value a literal. Benchmarks only.
    pub fn render_literals(&self, q: &Query<'_>) -> String {
        Writer::new(&self.params, &self.sources, Style::Literals)
            .statement(self, q)
            .sql
    }

    /// Every statement the renderer writes for this plan in workspace `ws`:
    /// each `Select`, plain and restricted, in each parameter style, with
    /// the way each writes the workspace (`$1`, or a literal). For checks
    /// over all of them (the routing tests).
    #[doc(hidden)]
    pub fn every_statement(
        &self,
        ws: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(String, String)> {
        let keys = [
            GroupKey::Column("country"),
            GroupKey::Set("tags"),
            GroupKey::Custom("plan".into()),
            GroupKey::CustomList("pets".into()),
        ];
        let metrics = |split| Metrics {
            from: now - chrono::Duration::days(30),
            to: now,
            types: crate::model::metrics::EventTypes::default(),
            split,
        };
        let (whole, split) = (metrics(None), metrics(Some((3, "s".into()))));
        let refresh = Refresh {
            segment: 40,
            base: 10,
            cause: "event".into(),
            at: now,
        };
        let selects = [
            Select::Ids,
            Select::Contacts("c.id, c.email"),
            Select::Count,
            Select::Snapshot(42),
            Select::Breakdown(&keys, 5),
            Select::Refresh(&refresh),
            Select::Drift(40),
            Select::Diff {
                segment: 40,
                cap: 100,
            },
            Select::Metrics(&whole),
            Select::Metrics(&split),
        ];
        let sample = Sample::Fraction(0.5, "s".into());
        let ids = [3_i64, 4];
        let literal = format!("{ws}::bigint");
        let mut out = Vec::new();
        for select in selects {
            let plain = Query::of(select);
            let restricted = Query {
                after: Some(2),
                sample: Some(&sample),
                only: Some(&ids),
                order: Order::Id,
                limit: Some(10),
                ..plain
            };
            for q in [plain, restricted] {
                out.push((self.render(&q).sql, "$1".to_string()));
                out.push((self.render_with_settings(&q).query, literal.clone()));
                out.push((self.render_literals(&q), literal.clone()));
            }
        }
        out
    }

    /// The member query's canonical text and parameters, for fingerprints
    /// and explanations: ids, any order, no restriction.
    pub fn canonical(&self) -> Rendered {
        self.render(&Query::of(Select::Ids))
    }
}

impl Columns {
    /// One row for contact `id`: one boolean column per definition.
    pub fn render_for(&self, id: i64) -> Rendered {
        let mut w = Writer::new(&self.params, &self.sources, Style::Bind);
        let id = w.bind(Param::Int8(id));
        w.out.push_str("SELECT ");
        for (i, c) in self.conds.iter().enumerate() {
            if i > 0 {
                w.out.push_str(", ");
            }
            w.template(c, &Ctx::default());
        }
        w.out.push_str(" FROM contacts c");
        w.joins(None);
        w.out.push_str(" WHERE c.workspace_id = ");
        w.param(0);
        w.out.push_str(" AND c.id = ");
        w.param(id);
        w.finish()
    }

    /// Counts of contacts by the exact combination of definitions they meet
    /// (bit `i`: definition `i`), over the workspace.
    pub fn render_combinations(&self) -> Rendered {
        let mut w = Writer::new(&self.params, &self.sources, Style::Bind);
        w.out.push_str("SELECT m, count(*) FROM (SELECT (");
        for (i, c) in self.conds.iter().enumerate() {
            if i > 0 {
                w.out.push_str(" + ");
            }
            w.out.push_str("(CASE WHEN ");
            w.template(c, &Ctx::default());
            let _ = write!(w.out, " THEN {} ELSE 0 END)", 1u32 << i);
        }
        w.out.push_str(") AS m FROM contacts c");
        w.joins(None);
        w.out.push_str(" WHERE c.workspace_id = ");
        w.param(0);
        w.out.push_str(") x WHERE m > 0 GROUP BY m");
        w.finish()
    }
}

/// How holes render in one part of a statement.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx<'a> {
    /// This source's value holes render as its aggregates (its own HAVING).
    having: Option<usize>,
    /// The driver yields `c.t`, the last event of this type.
    last_of: Option<&'a str>,
    /// The member id's column, `c.id` when unset.
    id: Option<&'static str>,
}

/// Writes one statement.
struct Writer<'a> {
    sources: &'a [Source],
    params: Vec<Param>,
    style: Style,
    out: String,
    /// Sources whose one test is "at least one row", written as `EXISTS`
    /// where they are not the driver: a semi-join the planner may run as
    /// index probes for the few candidates, instead of grouping every
    /// contact's rows.
    semi: Vec<bool>,
    /// The parameter holding the `only` ids, once bound: grouped sources
    /// read only those contacts' rows.
    only: Option<usize>,
}

impl<'a> Writer<'a> {
    fn new(params: &[Param], sources: &'a [Source], style: Style) -> Self {
        Self {
            sources,
            params: params.to_vec(),
            style,
            out: String::new(),
            semi: vec![false; sources.len()],
            only: None,
        }
    }

    fn finish(self) -> Rendered {
        Rendered {
            sql: self.out,
            params: self.params,
        }
    }

    fn bind(&mut self, p: Param) -> usize {
        self.params.push(p);
        self.params.len() - 1
    }

    /// Parameter `i`, in the writer's style.
    fn param(&mut self, i: usize) {
        let p = &self.params[i];
        match self.style {
            Style::Bind => {
                let _ = write!(self.out, "${}", i + 1);
            }
            Style::Literals => self.out.push_str(&literal(p)),
            Style::Settings => match p {
                // Typed values through Rust's formatters: digits, signs,
                // dots, dashes, colons.
                Param::Int8(v) => {
                    let _ = write!(self.out, "{v}::bigint");
                }
                Param::Float8(v) => {
                    let _ = write!(self.out, "'{v}'::float8");
                }
                Param::Bool(v) => {
                    let _ = write!(self.out, "{v}");
                }
                Param::Date(v) => {
                    let _ = write!(self.out, "'{v}'::date");
                }
                // Truncated to microseconds, as binding it would.
                Param::Time(v) => {
                    let _ = write!(
                        self.out,
                        "'{}'::timestamptz",
                        v.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                    );
                }
                // Read once through an InitPlan; the outer cast keeps
                // `= ANY(...)` an array comparison.
                _ => {
                    let ty = sql_type(p);
                    let _ = write!(
                        self.out,
                        "(SELECT current_setting('segd.p{}')::{ty})::{ty}",
                        i + 1
                    );
                }
            },
        }
    }

    /// A template, its holes filled for `ctx`.
    fn template(&mut self, t: &str, ctx: &Ctx<'_>) {
        for piece in pieces(t) {
            match piece {
                Ok(text) => self.out.push_str(text),
                Err(Hole::Param(i)) => self.param(i),
                Err(Hole::Id) => self.out.push_str(ctx.id.unwrap_or("c.id")),
                Err(Hole::Only(alias)) => self.only_cond(alias),
                Err(Hole::Value(s, k)) => match &self.sources[s] {
                    Source::Grouped(_, g) if ctx.having == Some(s) => {
                        let v = g.values[k].clone();
                        self.template(&v, ctx);
                    }
                    Source::Grouped(alias, g) if g.values.len() == 1 => {
                        let _ = write!(self.out, "{alias}.v");
                    }
                    source => {
                        let _ = write!(self.out, "{}.v{}", source.alias(), k + 1);
                    }
                },
                Err(Hole::LastOf(i)) => {
                    let by_driver = matches!(&self.params[i], Param::Text(t) if Some(t.as_str()) == ctx.last_of);
                    if by_driver {
                        self.out.push_str("c.t");
                    } else {
                        self.out.push_str(
                            "coalesce((SELECT max(s.occurred_at) FROM events s WHERE s.workspace_id = ",
                        );
                        self.param(0);
                        self.out.push_str(
                            " AND s.contact_id = c.id AND s.workspace_id = c.workspace_id AND s.type = ",
                        );
                        self.param(i);
                        self.out.push_str("), '-infinity')");
                    }
                }
            }
        }
    }

    /// Templates joined by `sep`.
    fn list(&mut self, items: &[String], sep: &str, ctx: &Ctx<'_>) {
        for (i, t) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(sep);
            }
            self.template(t, ctx);
        }
    }

    /// A grouped source's `FROM` list. With `only`, the ids come first, so
    /// its rows are read by one index probe per contact (key, type, time),
    /// however many rows its window holds.
    fn source_from(&mut self, g: &Grouped) {
        if let Some(p) = self.only {
            self.out.push_str("unnest(");
            self.param(p);
            self.out.push_str("::bigint[]) oi(id), ");
        }
        self.template(&g.from, &Ctx::default());
    }

    /// A grouped source's conditions, and with `only`, its key joined to
    /// the ids (see [`Self::source_from`]).
    fn source_conds(&mut self, g: &Grouped) {
        self.list(&g.conds, " AND ", &Ctx::default());
        if self.only.is_some() {
            let _ = write!(self.out, " AND {} = oi.id", g.key);
        }
    }

    /// `LEFT JOIN` of every source but `skip` and the semi-joined ones.
    fn joins(&mut self, skip: Option<usize>) {
        for (i, s) in self.sources.iter().enumerate() {
            if Some(i) == skip || self.semi[i] {
                continue;
            }
            match s {
                Source::Grouped(alias, g) => {
                    let _ = write!(self.out, " LEFT JOIN (SELECT {}, {}, ", g.key, g.tenant);
                    let single = g.values.len() == 1;
                    for (k, v) in g.values.iter().enumerate() {
                        if k > 0 {
                            self.out.push_str(", ");
                        }
                        self.template(v, &Ctx::default());
                        if single {
                            self.out.push_str(" AS v");
                        } else {
                            let _ = write!(self.out, " AS v{}", k + 1);
                        }
                    }
                    self.out.push_str(" FROM ");
                    self.source_from(g);
                    self.out.push_str(" WHERE ");
                    self.source_conds(g);
                    let _ = write!(
                        self.out,
                        " GROUP BY {}, {}) {alias} ON {alias}.contact_id = c.id AND {alias}.workspace_id = c.workspace_id",
                        g.key, g.tenant
                    );
                }
                Source::Rows(alias, sub) => {
                    self.out.push_str(" LEFT JOIN (");
                    self.template(sub, &Ctx::default());
                    let _ = write!(
                        self.out,
                        ") {alias} ON {alias}.contact_id = c.id AND {alias}.workspace_id = c.workspace_id"
                    );
                }
            }
        }
    }

    /// ` AND <restriction>` for each of the query's restrictions, on the
    /// member id as `ctx` names it.
    fn restrictions(&mut self, q: &Query<'_>, ctx: &Ctx<'_>) {
        if let Some(after) = q.after {
            let p = self.bind(Param::Int8(after));
            self.out.push_str(" AND ");
            self.template(&format!("{} > {}", hole::id(), hole::param(p)), ctx);
        }
        if let Some(s) = q.sample {
            let (salt, n, keep) = match s {
                Sample::Fraction(f, salt) => {
                    (salt, SAMPLE_SCALE, (f * SAMPLE_SCALE as f64).round() as i64)
                }
                Sample::Bucket { index, count, salt } => {
                    (salt, i64::from(*count), i64::from(*index))
                }
            };
            let salt = hole::param(self.bind(Param::Text(format!("{salt}:"))));
            let n = hole::param(self.bind(Param::Int8(n)));
            let k = hole::param(self.bind(Param::Int8(keep)));
            let bucket = bucket_of(&hole::id(), &salt, &n);
            let test = match s {
                Sample::Fraction(..) => format!(" AND {bucket} < {k}"),
                Sample::Bucket { .. } => format!(" AND {bucket} = {k}"),
            };
            self.template(&test, ctx);
        }
        if let Some(p) = self.only {
            self.out.push_str(" AND ");
            self.template(&format!("{} = ANY({})", hole::id(), hole::param(p)), ctx);
        }
    }

    /// `FROM contacts c … WHERE …`: every member, reading contacts.
    fn full_body(&mut self, plan: &Plan, q: &Query<'_>) {
        self.out.push_str("FROM contacts c");
        self.joins(None);
        self.out.push_str(" WHERE c.workspace_id = ");
        self.param(0);
        self.out.push_str(" AND (");
        self.conjuncts(plan.conjuncts.iter(), &Ctx::default());
        self.out.push(')');
        self.restrictions(q, &Ctx::default());
    }

    fn conjuncts<'c>(&mut self, items: impl ExactSizeIterator<Item = &'c Conjunct>, ctx: &Ctx<'_>) {
        let wrap = items.len() > 1;
        for (i, c) in items.enumerate() {
            if i > 0 {
                self.out.push_str(" AND ");
            }
            if wrap {
                self.out.push('(');
            }
            self.conjunct(c, ctx);
            if wrap {
                self.out.push(')');
            }
        }
    }

    /// One top-level condition: its template, or for a semi-joined source,
    /// `EXISTS` over the source's rows of the member.
    fn conjunct(&mut self, c: &Conjunct, ctx: &Ctx<'_>) {
        match c.tests {
            Some(s) if self.semi[s] && ctx.having != Some(s) => {
                let Source::Grouped(_, g) = &self.sources[s] else {
                    unreachable!("only grouped sources are semi-joined")
                };
                self.out.push_str("EXISTS (SELECT 1 FROM ");
                self.template(&g.from, &Ctx::default());
                self.out.push_str(" WHERE ");
                self.list(&g.conds, " AND ", &Ctx::default());
                let _ = write!(
                    self.out,
                    " AND {} = c.id AND {} = c.workspace_id)",
                    g.key, g.tenant
                );
            }
            _ => self.template(&c.sql, ctx),
        }
    }

    /// Marks the sources that can be semi-joined, all but `driver`.
    fn semi_joins(&mut self, plan: &Plan, driver: Option<usize>) {
        for (s, source) in self.sources.iter().enumerate() {
            let tests = plan.tests_of(s);
            self.semi[s] = Some(s) != driver
                && tests.len() == 1
                && tests[0].some
                && matches!(source, Source::Grouped(_, g) if !g.from.contains(" JOIN "));
        }
    }

    /// The driver's members as a subquery of `id` (and `t`, the last event
    /// of its type, when `with_last`).
    fn driver(&mut self, plan: &Plan, d: usize, g: &Grouped, with_last: bool) {
        let own: Vec<&Conjunct> = plan
            .conjuncts
            .iter()
            .filter(|c| c.tests == Some(d))
            .collect();
        let some = !with_last && own.len() == 1 && own[0].some;
        if some {
            let _ = write!(
                self.out,
                "(SELECT DISTINCT {} AS id, {} FROM ",
                g.key, g.tenant
            );
        } else {
            let _ = write!(self.out, "(SELECT {} AS id, {}", g.key, g.tenant);
            if with_last {
                self.out.push_str(", max(e.occurred_at) AS t");
            }
            self.out.push_str(" FROM ");
        }
        self.source_from(g);
        self.out.push_str(" WHERE ");
        self.source_conds(g);
        if !some {
            let _ = write!(self.out, " GROUP BY {}, {} HAVING ", g.key, g.tenant);
            let having = Ctx {
                having: Some(d),
                ..Ctx::default()
            };
            self.conjuncts(own.into_iter(), &having);
        }
        self.out.push(')');
    }

    /// `FROM <driver> c … WHERE …`: every member, without reading contacts.
    fn ids_body(&mut self, plan: &Plan, d: usize, q: &Query<'_>) {
        let Source::Grouped(_, g) = &self.sources[d] else {
            unreachable!("a driver is a grouped source")
        };
        let rest: Vec<&Conjunct> = plan
            .conjuncts
            .iter()
            .filter(|c| c.tests != Some(d))
            .collect();
        // "Since the last X", with the driver's rows being every X event up
        // to now: the driver already knows when that was.
        let last_of = g.last_of.as_deref().filter(|ty| {
            rest.iter().any(|c| {
                pieces(&c.sql).any(|p| matches!(p, Err(Hole::LastOf(i)) if matches!(&plan.params[i], Param::Text(t) if t == ty)))
            })
        });
        self.out.push_str("FROM ");
        self.driver(plan, d, g, last_of.is_some());
        self.out.push_str(" c");
        self.joins(Some(d));
        self.out.push_str(" WHERE ");
        let ctx = Ctx {
            last_of,
            ..Ctx::default()
        };
        if rest.is_empty() {
            self.out.push_str("TRUE");
        } else {
            for (i, c) in rest.iter().enumerate() {
                if i > 0 {
                    self.out.push_str(" AND ");
                }
                self.out.push('(');
                self.conjunct(c, &ctx);
                self.out.push(')');
            }
        }
        self.restrictions(q, &Ctx::default());
    }

    /// The members' `FROM … WHERE …`, without reading contacts when the
    /// plan allows.
    fn ids_from(&mut self, plan: &Plan, q: &Query<'_>) {
        match plan.driver {
            Some(d) => self.ids_body(plan, d, q),
            None => self.full_body(plan, q),
        }
    }

    fn order_and_limit(&mut self, q: &Query<'_>) {
        match q.order {
            Order::Any => {}
            Order::Id => self.out.push_str(" ORDER BY c.id"),
            Order::Hash => self
                .out
                .push_str(" ORDER BY hashtextextended(c.id::text, 0), c.id"),
        }
        if let Some(n) = q.limit {
            let p = self.bind(Param::Int8(n));
            self.out.push_str(" LIMIT ");
            self.param(p);
        }
    }

    fn statement(mut self, plan: &Plan, q: &Query<'_>) -> Rendered {
        // Bodies that read contacts have no driver; the ids-only body has.
        let reads_contacts = matches!(q.select, Select::Contacts(_) | Select::Breakdown(..));
        if let Some(ids) = q.only {
            self.only = Some(self.bind(Param::Int8Array(ids.to_vec())));
        }
        self.semi_joins(plan, if reads_contacts { None } else { plan.driver });
        match q.select {
            Select::Ids => {
                self.out.push_str("SELECT c.id ");
                self.ids_from(plan, q);
                self.order_and_limit(q);
            }
            Select::Contacts(cols) => {
                let _ = write!(self.out, "SELECT {cols} ");
                self.full_body(plan, q);
                self.order_and_limit(q);
            }
            Select::Count => self.count(plan, q),
            Select::Snapshot(segment) => {
                let p = self.bind(Param::Int8(segment));
                self.out.push_str(
                    "INSERT INTO segment_members (workspace_id, segment_id, contact_id) SELECT ",
                );
                self.param(0);
                self.out.push_str(", ");
                self.param(p);
                self.out.push_str(", c.id ");
                self.ids_from(plan, q);
            }
            Select::Breakdown(keys, top) => self.breakdown(plan, q, keys, top),
            Select::Refresh(r) => self.refresh(plan, q, r),
            Select::Drift(segment) => self.drift(plan, q, segment),
            Select::Diff { segment, cap } => self.diff(plan, q, segment, cap),
            Select::Metrics(m) => self.metrics(plan, q, m),
        }
        self.finish()
    }

    /// Counts for segment metrics: see [`Select::Metrics`].
    fn metrics(&mut self, plan: &Plan, q: &Query<'_>, m: &Metrics) {
        let t = &m.types;
        let mut text = |v: &[String]| hole::param(self.bind(Param::TextArray(v.to_vec())));
        let (open, click, purchase, revenue) = (
            text(&t.open),
            text(&t.click),
            text(&t.purchase),
            text(&t.revenue),
        );
        let all = text(&t.all());
        let from = hole::param(self.bind(Param::Time(m.from)));
        let to = hole::param(self.bind(Param::Time(m.to)));
        let group = match &m.split {
            Some((n, salt)) => {
                let salt = hole::param(self.bind(Param::Text(format!("{salt}:"))));
                let n = hole::param(self.bind(Param::Int8(i64::from(*n))));
                format!("{}::int", bucket_of("c.id", &salt, &n))
            }
            None => "0".into(),
        };
        self.out
            .push_str("WITH m AS MATERIALIZED (SELECT c.id, c.workspace_id, ");
        self.template(&group, &Ctx::default());
        self.out.push_str(" AS g ");
        self.ids_from(plan, q);
        // Each member's events of the window, once: the members left-joined
        // to them (matching the workspace), one row per member with its
        // counts. Not a semi-join of the events on the members: that would
        // match `m.workspace_id` to the events' `workspace_id = $1`, and
        // the planner, with no statistics on `m`, would take that as 0.5%
        // of the members and probe the events once per member.
        self.out
            .push_str("), pm AS (SELECT m.g, count(*) FILTER (WHERE e.type = ANY(");
        self.template(&open, &Ctx::default());
        self.out
            .push_str(")) AS opens, count(*) FILTER (WHERE e.type = ANY(");
        self.template(&click, &Ctx::default());
        self.out
            .push_str(")) AS clicks, count(*) FILTER (WHERE e.type = ANY(");
        self.template(&purchase, &Ctx::default());
        self.out
            .push_str(")) AS orders, sum(e.value) FILTER (WHERE e.type = ANY(");
        self.template(&revenue, &Ctx::default());
        self.out.push_str(
            ")) AS revenue FROM m LEFT JOIN events e ON e.contact_id = m.id AND e.workspace_id = m.workspace_id \
             AND e.workspace_id = ",
        );
        self.param(0);
        self.out.push_str(" AND e.type = ANY(");
        self.template(&all, &Ctx::default());
        self.out.push_str(") AND e.occurred_at >= ");
        self.template(&from, &Ctx::default());
        self.out.push_str(" AND e.occurred_at < ");
        self.template(&to, &Ctx::default());
        self.out.push_str(
            " GROUP BY m.id, m.workspace_id, m.g) \
             SELECT pm.g, count(*), count(*) FILTER (WHERE pm.opens > 0), count(*) FILTER (WHERE pm.clicks > 0), \
             count(*) FILTER (WHERE pm.opens > 0 AND pm.clicks > 0), sum(pm.opens)::bigint, \
             sum(pm.clicks)::bigint, count(*) FILTER (WHERE pm.orders > 0), \
             sum(pm.orders)::bigint, count(*) FILTER (WHERE pm.orders > 1), \
             coalesce(sum(pm.revenue), 0)::float8 \
             FROM pm GROUP BY pm.g ORDER BY pm.g",
        );
    }

    /// Stored membership against the members: counts and samples.
    fn drift(&mut self, plan: &Plan, q: &Query<'_>, segment: i64) {
        let seg = self.bind(Param::Int8(segment));
        self.out.push_str("WITH new AS MATERIALIZED (SELECT c.id ");
        self.ids_from(plan, q);
        self.out.push_str("), old AS MATERIALIZED (");
        self.stored(seg, "");
        self.out.push_str(
            "), missing AS (SELECT id FROM new EXCEPT SELECT id FROM old), \
             extra AS (SELECT id FROM old EXCEPT SELECT id FROM new) \
             SELECT (SELECT count(*) FROM missing), (SELECT count(*) FROM extra), \
             ARRAY(SELECT id FROM missing ORDER BY id LIMIT 100), ARRAY(SELECT id FROM extra ORDER BY id LIMIT 100)",
        );
    }

    /// Segment parameter `seg`'s stored members (of the `only` contacts),
    /// as `id` and `more` columns.
    fn stored(&mut self, seg: usize, more: &str) {
        let _ = write!(
            self.out,
            "SELECT m.contact_id AS id{more} FROM live_members m WHERE m.workspace_id = "
        );
        self.param(0);
        self.out.push_str(" AND m.segment_id = ");
        self.param(seg);
        self.only_cond('m');
    }

    /// With `only`, ` AND <alias>.contact_id = ANY(<the ids>)`.
    fn only_cond(&mut self, alias: char) {
        if let Some(p) = self.only {
            let _ = write!(self.out, " AND {alias}.contact_id = ANY(");
            self.param(p);
            self.out.push(')');
        }
    }

    /// Both sides of a diff, read only: see [`Select::Diff`]. Arrays, not
    /// a join: a merge join of the two ran 2-3x a bare count (its nodes'
    /// per-row costs and a materialised stored side), two sorted arrays
    /// 1.3-1.5x, merged by the caller in linear time.
    fn diff(&mut self, plan: &Plan, q: &Query<'_>, segment: i64, cap: i64) {
        let seg = self.bind(Param::Int8(segment));
        let more = self.bind(Param::Int8(cap.saturating_add(1)));
        // Equal sides (nothing changed, the usual outcome of a rebuild or
        // a clock pass) are compared in place, a memcmp-like pass, and not
        // sent: at 100k members each side costs ~5 ms to send.
        self.out.push_str(
            "SELECT CASE WHEN x.n <> x.o THEN x.n END, CASE WHEN x.n <> x.o THEN x.o END, cardinality(x.n)::bigint \
             FROM (SELECT coalesce((",
        );
        // Sorted and deduplicated inside the aggregate, as a bare count
        // does: a DISTINCT step and then a sort cost twice that. (No limit
        // inside an aggregate: the caller checks the length.)
        if !self.bare(plan, q, |k| format!("array_agg(DISTINCT {k} ORDER BY {k})")) {
            self.out.push_str("SELECT ARRAY(SELECT c.id ");
            self.ids_from(plan, q);
            self.out.push_str(" ORDER BY c.id LIMIT ");
            self.param(more);
            self.out.push(')');
        }
        self.out.push_str("), '{}') AS n, ARRAY(");
        self.stored(seg, "");
        // The key's order: no sort.
        self.out.push_str(" ORDER BY m.contact_id LIMIT ");
        self.param(more);
        // Evaluated once each, not once per reference.
        self.out.push_str(") AS o OFFSET 0) x");
    }

    /// Stored membership diffed against the members: entries inserted,
    /// exits deleted, both appended to the feed after offset `base`.
    /// Returns the entries, the exits and the contacts that changed.
    fn refresh(&mut self, plan: &Plan, q: &Query<'_>, r: &Refresh) {
        let seg = self.bind(Param::Int8(r.segment));
        let base = self.bind(Param::Int8(r.base));
        let cause = self.bind(Param::Text(r.cause.clone()));
        let at = self.bind(Param::Time(r.at));
        self.out
            .push_str("WITH new AS MATERIALIZED (SELECT c.id, c.workspace_id ");
        self.ids_from(plan, q);
        // The stored rows' ctids: exits are deleted by TID, a plan no
        // estimate of the membership table can turn into a scan per exit.
        self.out.push_str("), old AS MATERIALIZED (");
        self.stored(seg, ", m.workspace_id, m.ctid AS tid");
        self.out.push_str(
            "), diff AS MATERIALIZED (SELECT coalesce(n.id, o.id) AS id, o.id IS NULL AS entered, o.tid \
             FROM new n FULL JOIN old o ON o.id = n.id AND o.workspace_id = n.workspace_id \
             WHERE n.id IS NULL OR o.id IS NULL), \
             ins AS (INSERT INTO live_members (workspace_id, segment_id, contact_id) SELECT ",
        );
        self.param(0);
        self.out.push_str(", ");
        self.param(seg);
        self.out.push_str(
            ", id FROM diff WHERE entered), del AS (DELETE FROM live_members m WHERE m.workspace_id = ",
        );
        self.param(0);
        self.out.push_str(
            " AND m.ctid = ANY(ARRAY(SELECT tid FROM diff WHERE NOT entered))), \
             log AS (INSERT INTO membership_changes \
             (workspace_id, \"offset\", segment_id, contact_id, entered, cause, at) SELECT ",
        );
        self.param(0);
        self.out.push_str(", ");
        self.param(base);
        self.out
            .push_str(" + row_number() OVER (ORDER BY x.id, x.entered), ");
        self.param(seg);
        self.out.push_str(", x.id, x.entered, ");
        self.param(cause);
        self.out.push_str(", ");
        self.param(at);
        self.out.push_str(
            " FROM diff x RETURNING contact_id, entered) \
             SELECT coalesce(array_agg(contact_id) FILTER (WHERE entered), '{}'), \
             coalesce(array_agg(contact_id) FILTER (WHERE NOT entered), '{}'), \
             (SELECT count(*) FROM new) FROM log",
        );
    }

    /// The number of members. A driver that is all there is, "at least one
    /// such event", counts its distinct keys straight off the table.
    fn count(&mut self, plan: &Plan, q: &Query<'_>) {
        if !self.bare(plan, q, |k| format!("count(DISTINCT {k})")) {
            self.out.push_str("SELECT count(*) ");
            self.ids_from(plan, q);
        }
    }

    /// For a driver that is all there is, "at least one such event",
    /// `SELECT <agg(key)> FROM` its table with its conditions, `key` the
    /// contact key: an aggregate straight off the table, with no DISTINCT
    /// step before it. Returns whether it rendered.
    fn bare(&mut self, plan: &Plan, q: &Query<'_>, agg: impl Fn(&str) -> String) -> bool {
        let bare = plan.driver.and_then(|d| {
            let own: Vec<&Conjunct> = plan
                .conjuncts
                .iter()
                .filter(|c| c.tests == Some(d))
                .collect();
            let alone = own.len() == plan.conjuncts.len() && own.len() == 1 && own[0].some;
            match &self.sources[d] {
                Source::Grouped(_, g) if alone && self.sources.len() == 1 => Some(g.clone()),
                _ => None,
            }
        });
        let Some(g) = bare else { return false };
        let _ = write!(self.out, "SELECT {} FROM ", agg(g.key));
        self.template(&g.from, &Ctx::default());
        self.out.push_str(" WHERE ");
        self.list(&g.conds, " AND ", &Ctx::default());
        let ctx = Ctx {
            id: Some(g.key),
            ..Ctx::default()
        };
        self.restrictions(q, &ctx);
        true
    }

    fn breakdown(&mut self, plan: &Plan, q: &Query<'_>, keys: &[GroupKey], top: i64) {
        let mut defs = Vec::new();
        let mut unnest = String::new();
        for (i, key) in keys.iter().enumerate() {
            let n = i + 1;
            let (expr, set) = match key {
                GroupKey::Column(col) => (format!("c.{col}"), false),
                GroupKey::Expr(e) => ((*e).to_string(), false),
                GroupKey::Set(col) => (format!("c.{col}"), true),
                GroupKey::Custom(k) => {
                    let p = hole::param(self.bind(Param::Text(k.clone())));
                    (format!("(c.attrs ->> {p})"), false)
                }
                GroupKey::CustomList(k) => {
                    let p = hole::param(self.bind(Param::Text(k.clone())));
                    (
                        format!("ARRAY(SELECT jsonb_array_elements_text(c.attrs -> {p}))"),
                        true,
                    )
                }
            };
            if set {
                // A contact with an empty set still counts once, with no value.
                let _ = write!(
                    unnest,
                    " LEFT JOIN LATERAL unnest({expr}) AS u{n}(v) ON true"
                );
                defs.push(format!("u{n}.v AS k{n}"));
            } else {
                defs.push(format!("{expr} AS k{n}"));
            }
        }
        let ks: Vec<String> = (1..=keys.len()).map(|n| format!("k{n}")).collect();
        let limit = hole::param(self.bind(Param::Int8(top)));
        self.out.push_str("WITH g AS (SELECT ");
        self.template(&defs.join(", "), &Ctx::default());
        self.out.push_str(", count(*) AS n FROM contacts c");
        self.joins(None);
        self.template(&unnest, &Ctx::default());
        self.out.push_str(" WHERE c.workspace_id = ");
        self.param(0);
        self.out.push_str(" AND (");
        self.conjuncts(plan.conjuncts.iter(), &Ctx::default());
        self.out.push(')');
        self.restrictions(q, &Ctx::default());
        let order: Vec<String> = ks.iter().map(|k| format!("{k} NULLS FIRST")).collect();
        let tops: Vec<String> = ks
            .iter()
            .map(|k| format!("CASE WHEN rn <= {limit} THEN {k} END"))
            .collect();
        let positions: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
        let _ = write!(
            self.out,
            " GROUP BY {ks}), r AS (SELECT g.*, row_number() OVER (ORDER BY n DESC, {order}) AS rn FROM g) SELECT ",
            ks = ks.join(", "),
            order = order.join(", "),
        );
        self.template(&tops.join(", "), &Ctx::default());
        self.out.push_str(", sum(n)::bigint AS total, ");
        self.template(&format!("rn > {limit}"), &Ctx::default());
        let _ = write!(
            self.out,
            " AS other, count(*) AS groups FROM r GROUP BY {}, other ORDER BY other, total DESC",
            positions.join(", ")
        );
    }
}

/// The SQL type name of a parameter, for casts.
fn sql_type(p: &Param) -> &'static str {
    match p {
        Param::Int8(_) => "bigint",
        Param::Float8(_) => "float8",
        Param::Text(_) => "text",
        Param::Bool(_) => "boolean",
        Param::Date(_) => "date",
        Param::Time(_) => "timestamptz",
        Param::Int8Array(_) => "bigint[]",
        Param::Int4Array(_) => "int[]",
        Param::Float8Array(_) => "float8[]",
        Param::TextArray(_) => "text[]",
        Param::DateArray(_) => "date[]",
        Param::JsonArray(_) => "jsonb[]",
    }
}

/// The statement that stores each parameter in a transaction-local setting
/// (`segd.p<n>`), every value bound.
fn settings(params: &[Param]) -> Rendered {
    let sets: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "set_config('segd.p{n}', ${n}::{}::text, true)",
                sql_type(p),
                n = i + 1
            )
        })
        .collect();
    Rendered {
        sql: format!("SELECT {}", sets.join(", ")),
        params: params.to_vec(),
    }
}

fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for ch in s.chars() {
        if ch == '\'' {
            q.push('\'');
        }
        q.push(ch);
    }
    q.push('\'');
    q
}

fn array<T>(items: &[T], f: impl Fn(&T) -> String, ty: &str) -> String {
    format!(
        "ARRAY[{}]::{ty}[]",
        items.iter().map(f).collect::<Vec<_>>().join(", ")
    )
}

/// A parameter as a SQL literal (benchmarks only).
fn literal(p: &Param) -> String {
    match p {
        Param::Int8(v) => format!("{v}::bigint"),
        Param::Float8(v) => format!("'{v}'::float8"),
        Param::Text(v) => format!("{}::text", quoted(v)),
        Param::Bool(v) => format!("{v}"),
        Param::Date(v) => format!("'{v}'::date"),
        Param::Time(v) => format!("'{}'::timestamptz", v.to_rfc3339()),
        Param::Int8Array(v) => array(v, ToString::to_string, "bigint"),
        Param::Int4Array(v) => array(v, ToString::to_string, "int"),
        Param::Float8Array(v) => array(v, |x| format!("'{x}'"), "float8"),
        Param::TextArray(v) => array(v, |x| quoted(x), "text"),
        Param::DateArray(v) => array(v, |x| format!("'{x}'"), "date"),
        Param::JsonArray(v) => array(v, |x| quoted(&x.to_string()), "jsonb"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::plan::Conjunct;

    fn plan(cond: String, params: Vec<Param>) -> Plan {
        Plan {
            params,
            sources: vec![],
            conjuncts: vec![Conjunct {
                sql: cond,
                tests: None,
                strict: false,
                some: false,
            }],
            driver: None,
        }
    }

    #[test]
    fn settings_carry_text_and_literals_carry_only_formatted_values() {
        let p = plan(
            format!(
                "c.a = {} AND c.b = {} AND c.x > {} AND c.y && {}",
                hole::param(0),
                hole::param(1),
                hole::param(2),
                hole::param(3)
            ),
            vec![
                Param::Int8(7),
                Param::Text("'; DROP TABLE contacts; --".into()),
                Param::Float8(-2.5),
                Param::TextArray(vec!["$1".into()]),
            ],
        );
        let r = p.render_with_settings(&Query::of(Select::Ids));
        assert_eq!(
            r.set.sql,
            "SELECT set_config('segd.p1', $1::bigint::text, true), set_config('segd.p2', $2::text::text, true), \
             set_config('segd.p3', $3::float8::text, true), set_config('segd.p4', $4::text[]::text, true)"
        );
        assert_eq!(
            r.query,
            "SELECT c.id FROM contacts c WHERE c.workspace_id = 7::bigint AND (c.a = 7::bigint AND c.b = (SELECT current_setting('segd.p2')::text)::text \
             AND c.x > '-2.5'::float8 AND c.y && (SELECT current_setting('segd.p4')::text[])::text[])"
        );
    }

    #[test]
    fn query_options_follow_the_plan_parameters() {
        let p = plan(
            format!("c.x > {}", hole::param(1)),
            vec![Param::Int8(7), Param::Int8(3)],
        );
        let half = Sample::Bucket {
            index: 1,
            count: 2,
            salt: "s".into(),
        };
        let r = p.render(&Query {
            after: Some(40),
            sample: Some(&half),
            only: Some(&[41, 42]),
            order: Order::Id,
            limit: Some(10),
            ..Query::of(Select::Ids)
        });
        assert_eq!(
            r.sql,
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND (c.x > $2) AND c.id > $4 \
             AND mod(mod(hashtextextended($5 || c.id::text, 0), $6) + $6, $6) = $7 AND c.id = ANY($3) \
             ORDER BY c.id LIMIT $8"
        );
        assert_eq!(
            r.params,
            vec![
                Param::Int8(7),
                Param::Int8(3),
                Param::Int8Array(vec![41, 42]),
                Param::Int8(40),
                Param::Text("s:".into()),
                Param::Int8(2),
                Param::Int8(1),
                Param::Int8(10)
            ]
        );
    }
}
