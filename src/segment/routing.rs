//! Whether compiled SQL routes to one shard when every table is distributed
//! by `workspace_id` (Citus), checked on the statement as `sqlparser`
//! parses it. Tests only: the unit tests run it over every golden statement
//! and every `Select` of generated trees, and the differential test (which
//! includes this file) over every statement it compiles.
//!
//! Two rules, over every SELECT of the statement: CTEs, derived tables,
//! `EXISTS`, scalar and `ARRAY(...)` subqueries, `INSERT ... SELECT`,
//! `DELETE`, `UPDATE`:
//!
//! 1. **Each tenant table is pinned to the workspace.** Every reference to a
//!    table with a `workspace_id` column has `<alias>.workspace_id = <the
//!    workspace>` among the AND-conjuncts of its own scope: the ON of the
//!    join that brings it in, or the WHERE of its SELECT (or DELETE/UPDATE)
//!    unless an outer join makes it nullable there. An INSERT into such a
//!    table writes the workspace into its `workspace_id`.
//! 2. **Joins of tenant rows match the workspace.** A relation is a tenant
//!    relation when it is a tenant table, or a derived table or CTE that
//!    reads one. Every join of a tenant relation to another (its ON, or the
//!    WHERE for a comma join) has `x.workspace_id = y.workspace_id` for the
//!    two among its conjuncts; every subquery that refers to an outer
//!    tenant relation (a correlation) has it between one of its own tenant
//!    relations and that one; and `x IN (SELECT ...)` of tenant rows, a
//!    semi-join that has no place for it, is refused.
//!
//! "The workspace" is the expression the caller names: `$1` when bound,
//! `7::bigint` when rendered as a literal. Unqualified columns are taken to
//! be the scope's own (compiled SQL qualifies every outer reference). Only
//! SQL the segment compiler writes is in scope; the hand-written statements
//! in `db/` are not checked here.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, InTarget, Insert, JoinConstraint, JoinOperator, Query,
    SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The tables with a `workspace_id`, from segd's migrations.
pub fn tenants() -> &'static BTreeSet<String> {
    static T: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/db/migrations");
        let files: Vec<String> = std::fs::read_dir(dir)
            .expect("the migrations")
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        tenant_tables(&files.iter().map(String::as_str).collect::<Vec<_>>())
    })
}

/// The tables with a `workspace_id` column, from the migrations' `CREATE
/// TABLE` statements.
pub fn tenant_tables(migrations: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sql in migrations {
        for part in sql.split("CREATE TABLE ").skip(1) {
            let Some((name, body)) = part.split_once('(') else {
                continue;
            };
            let body = body.split(";").next().unwrap_or_default();
            if body.contains("workspace_id") {
                out.insert(name.trim().to_lowercase());
            }
        }
    }
    out
}

/// The routing rules' violations in `sql` (empty when it complies), the
/// workspace written as `workspace`, tenant tables `tenants`.
///
/// # Errors
///
/// When `sql` or `workspace` does not parse.
pub fn violations(
    sql: &str,
    workspace: &str,
    tenants: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let dialect = PostgreSqlDialect {};
    // sqlparser 0.64 knows `x = ANY(...)` but not `x @> ANY(...)`; which
    // operator compares has no bearing on the rules.
    let sql = sql.replace(" @> ANY(", " = ANY(");
    let statements = Parser::parse_sql(&dialect, &sql).map_err(|e| format!("{e}: {sql}"))?;
    let ws = Parser::new(&dialect)
        .try_with_sql(workspace)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("{e}: {workspace}"))?
        .to_string();
    let mut c = Checker {
        ws,
        tenants,
        found: Vec::new(),
    };
    for s in &statements {
        c.statement(s, &Ctes::default(), None);
    }
    Ok(c.found)
}

/// A relation in a FROM list.
#[derive(Debug, Clone)]
struct Rel {
    /// The name the scope knows it by.
    name: String,
    /// A tenant relation (see rule 2).
    tenant: bool,
    /// A tenant table itself (rule 1 applies).
    table: bool,
}

/// The relations of one SELECT, and the scopes around it.
struct Scope<'a> {
    rels: Vec<Rel>,
    outer: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    /// The relation a qualifier names, innermost first.
    fn resolve(&self, name: &str) -> Option<&Rel> {
        self.rels
            .iter()
            .rev()
            .find(|r| r.name == name)
            .or_else(|| self.outer.and_then(|o| o.resolve(name)))
    }
}

/// CTE names in scope, and whether each is a tenant relation.
#[derive(Debug, Clone, Default)]
struct Ctes(Vec<(String, bool)>);

impl Ctes {
    fn get(&self, name: &str) -> Option<bool> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }
}

struct Checker<'t> {
    ws: String,
    tenants: &'t BTreeSet<String>,
    found: Vec<String>,
}

/// The AND-conjuncts of `e`, parentheses removed.
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(left);
            v.extend(conjuncts(right));
            v
        }
        Expr::Nested(inner) => conjuncts(inner),
        e => vec![e],
    }
}

/// `q.col` as (`q`, `col`).
fn qualified(e: &Expr) -> Option<(String, String)> {
    match e {
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
            Some((ids[0].value.to_lowercase(), ids[1].value.to_lowercase()))
        }
        Expr::Nested(inner) => qualified(inner),
        _ => None,
    }
}

/// The two sides of an equality conjunct.
fn equality(e: &Expr) -> Option<(&Expr, &Expr)> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => Some((left, right)),
        _ => None,
    }
}

/// Whether some conjunct is `a.workspace_id = b.workspace_id` (either way).
fn matches_workspace(conds: &[&Expr], a: &str, b: &str) -> bool {
    conds.iter().any(|c| {
        equality(c).is_some_and(|(l, r)| {
            let (l, r) = (qualified(l), qualified(r));
            let side = |s: &Option<(String, String)>, n: &str| {
                s.as_ref()
                    .is_some_and(|(q, col)| q == n && col == "workspace_id")
            };
            (side(&l, a) && side(&r, b)) || (side(&l, b) && side(&r, a))
        })
    })
}

/// What one expression holds at its own level: its subqueries, the
/// qualifiers of its column references, and its `IN (SELECT ...)` tests
/// (left side and subquery). Nested subqueries' contents are theirs.
#[derive(Default)]
struct Parts {
    depth: usize,
    subqueries: Vec<Query>,
    qualifiers: Vec<String>,
    in_subqueries: Vec<(Expr, Query)>,
}

impl Visitor for Parts {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.subqueries.push(q.clone());
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        match e {
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
                self.qualifiers.push(ids[0].value.to_lowercase());
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(q),
                ..
            } => self.in_subqueries.push(((**expr).clone(), (**q).clone())),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn parts<V: Visit + ?Sized>(node: &V) -> Parts {
    let mut p = Parts::default();
    let _ = node.visit(&mut p);
    p
}

impl Checker<'_> {
    fn fail(&mut self, msg: String) {
        self.found.push(msg);
    }

    fn statement(&mut self, s: &Statement, ctes: &Ctes, outer: Option<&Scope<'_>>) -> bool {
        match s {
            Statement::Query(q) => self.query(q, ctes, outer),
            Statement::Insert(i) => self.insert(i, ctes, outer),
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                };
                let mut all: Vec<TableWithJoins> = from.clone();
                all.extend(d.using.clone().unwrap_or_default());
                self.scope(&all, d.selection.as_ref(), &[], ctes, outer);
                from.iter()
                    .any(|t| self.factor_is_tenant(&t.relation, ctes))
            }
            Statement::Update(u) => {
                let mut all = vec![u.table.clone()];
                if let Some(sqlparser::ast::UpdateTableFromKind::AfterSet(f))
                | Some(sqlparser::ast::UpdateTableFromKind::BeforeSet(f)) = &u.from
                {
                    all.extend(f.clone());
                }
                let sets: Vec<&Expr> = u.assignments.iter().map(|a| &a.value).collect();
                self.scope(&all, u.selection.as_ref(), &sets, ctes, outer);
                self.factor_is_tenant(&u.table.relation, ctes)
            }
            other => {
                self.fail(format!("a statement the checker does not know: {other}"));
                false
            }
        }
    }

    fn factor_is_tenant(&self, f: &TableFactor, ctes: &Ctes) -> bool {
        match f {
            TableFactor::Table { name, args, .. } if args.is_none() => {
                let n = name.to_string().to_lowercase();
                ctes.get(&n).unwrap_or_else(|| self.tenants.contains(&n))
            }
            _ => false,
        }
    }

    fn insert(&mut self, i: &Insert, ctes: &Ctes, outer: Option<&Scope<'_>>) -> bool {
        let TableObject::TableName(name) = &i.table else {
            self.fail(format!("INSERT into a function: {i}"));
            return false;
        };
        let table = name.to_string().to_lowercase();
        let tenant = self.tenants.contains(&table);
        if let Some(src) = &i.source {
            self.query(src, ctes, outer);
            if tenant {
                let col = i
                    .columns
                    .iter()
                    .position(|c| c.to_string().eq_ignore_ascii_case("workspace_id"));
                let value = col.and_then(|k| match &*src.body {
                    SetExpr::Select(s) => match s.projection.get(k) {
                        Some(
                            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. },
                        ) => Some(e.to_string()),
                        _ => None,
                    },
                    SetExpr::Values(v) => {
                        v.rows.first().and_then(|r| r.get(k)).map(Expr::to_string)
                    }
                    _ => None,
                });
                if value.as_deref() != Some(self.ws.as_str()) {
                    self.fail(format!(
                        "INSERT INTO {table} does not write {} into workspace_id",
                        self.ws
                    ));
                }
            }
        }
        tenant
    }

    /// Checks `q`; returns whether it reads a tenant relation.
    fn query(&mut self, q: &Query, ctes: &Ctes, outer: Option<&Scope<'_>>) -> bool {
        let mut ctes = ctes.clone();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let t = self.query(&cte.query, &ctes, outer);
                ctes.0.push((cte.alias.name.value.to_lowercase(), t));
            }
        }
        let t = self.set_expr(&q.body, &ctes, outer);
        if let Some(o) = &q.order_by {
            for sub in parts(o).subqueries {
                self.query(&sub, &ctes, outer);
            }
        }
        t
    }

    fn set_expr(&mut self, s: &SetExpr, ctes: &Ctes, outer: Option<&Scope<'_>>) -> bool {
        match s {
            SetExpr::Select(sel) => {
                let mut exprs: Vec<&Expr> = Vec::new();
                for item in &sel.projection {
                    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } =
                        item
                    {
                        exprs.push(e);
                    }
                }
                if let Some(h) = &sel.having {
                    exprs.push(h);
                }
                if let sqlparser::ast::GroupByExpr::Expressions(g, _) = &sel.group_by {
                    exprs.extend(g.iter());
                }
                self.scope(&sel.from, sel.selection.as_ref(), &exprs, ctes, outer)
            }
            SetExpr::Query(q) => self.query(q, ctes, outer),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left, ctes, outer);
                let r = self.set_expr(right, ctes, outer);
                l || r
            }
            SetExpr::Values(v) => {
                for sub in parts(v).subqueries {
                    self.query(&sub, ctes, outer);
                }
                false
            }
            SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) => {
                self.statement(st, ctes, outer)
            }
            other => {
                self.fail(format!("a query form the checker does not know: {other}"));
                false
            }
        }
    }

    /// One relation of a FROM list, and the checks its own parts need;
    /// `lateral` is the scope a LATERAL item may see.
    fn factor(
        &mut self,
        f: &TableFactor,
        ctes: &Ctes,
        outer: Option<&Scope<'_>>,
        lateral: &Scope<'_>,
    ) -> Vec<Rel> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let n = name.to_string().to_lowercase();
                let shown = alias
                    .as_ref()
                    .map_or(n.clone(), |a| a.name.value.to_lowercase());
                if args.is_some() {
                    return vec![Rel {
                        name: shown,
                        tenant: false,
                        table: false,
                    }];
                }
                let (tenant, table) = match ctes.get(&n) {
                    Some(t) => (t, false),
                    None => {
                        let t = self.tenants.contains(&n);
                        (t, t)
                    }
                };
                vec![Rel {
                    name: shown,
                    tenant,
                    table,
                }]
            }
            TableFactor::Derived {
                lateral: is_lateral,
                subquery,
                alias,
                ..
            } => {
                let tenant = if *is_lateral {
                    self.query(subquery, ctes, Some(lateral))
                } else {
                    self.query(subquery, ctes, outer)
                };
                let name = alias
                    .as_ref()
                    .map_or(String::new(), |a| a.name.value.to_lowercase());
                vec![Rel {
                    name,
                    tenant,
                    table: false,
                }]
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.fail(format!(
                    "a parenthesised join the checker does not know: {table_with_joins}"
                ));
                vec![]
            }
            other => {
                // Functions (`unnest(...)`), LATERAL or not: no tenant rows.
                for sub in parts(other).subqueries {
                    self.query(&sub, ctes, Some(lateral));
                }
                let name = match other {
                    TableFactor::Function { alias, .. } | TableFactor::UNNEST { alias, .. } => {
                        alias.as_ref().map(|a| a.name.value.to_lowercase())
                    }
                    _ => None,
                };
                vec![Rel {
                    name: name.unwrap_or_default(),
                    tenant: false,
                    table: false,
                }]
            }
        }
    }

    /// A SELECT's (or DELETE's, UPDATE's) FROM list, WHERE and other
    /// expressions; returns whether it reads a tenant relation.
    fn scope(
        &mut self,
        from: &[TableWithJoins],
        selection: Option<&Expr>,
        exprs: &[&Expr],
        ctes: &Ctes,
        outer: Option<&Scope<'_>>,
    ) -> bool {
        let wheres: Vec<&Expr> = selection.map(conjuncts).unwrap_or_default();
        let mut rels: Vec<Rel> = Vec::new();
        // Tables pinned in an ON, and tables only an ON may pin (nullable).
        let mut pinned_on: Vec<String> = Vec::new();
        let mut nullable: Vec<String> = Vec::new();
        let mut ons: Vec<Expr> = Vec::new();
        for (i, twj) in from.iter().enumerate() {
            let here = Scope {
                rels: rels.clone(),
                outer,
            };
            let first = self.factor(&twj.relation, ctes, outer, &here);
            // A comma join: its condition is the WHERE.
            if i > 0 {
                for r in first.iter().filter(|r| r.tenant) {
                    let before: Vec<&Rel> = rels.iter().filter(|x| x.tenant).collect();
                    if !before.is_empty()
                        && !before
                            .iter()
                            .any(|b| matches_workspace(&wheres, &r.name, &b.name))
                    {
                        self.fail(format!(
                            "{} is joined (by a comma) without matching workspace_id to {}",
                            r.name,
                            before
                                .iter()
                                .map(|b| b.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
            let mut tree: Vec<Rel> = first.clone();
            rels.extend(first);
            for j in &twj.joins {
                let here = Scope {
                    rels: rels.clone(),
                    outer,
                };
                let right = self.factor(&j.relation, ctes, outer, &here);
                let (constraint, right_nullable, left_nullable) = match &j.join_operator {
                    JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                        (Some(c), false, false)
                    }
                    JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), true, false),
                    JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Some(c), false, true),
                    JoinOperator::FullOuter(c) => (Some(c), true, true),
                    other => {
                        self.fail(format!("a join the checker does not know: {other:?}"));
                        (None, false, false)
                    }
                };
                let on: Vec<&Expr> = match constraint {
                    Some(JoinConstraint::On(e)) => conjuncts(e),
                    Some(JoinConstraint::None) | None => vec![],
                    Some(other) => {
                        self.fail(format!(
                            "a join condition the checker does not know: {other:?}"
                        ));
                        vec![]
                    }
                };
                for r in right.iter().filter(|r| r.tenant) {
                    let left: Vec<&Rel> = tree.iter().filter(|x| x.tenant).collect();
                    if !left.is_empty()
                        && !left
                            .iter()
                            .any(|l| matches_workspace(&on, &r.name, &l.name))
                    {
                        self.fail(format!(
                            "{} is joined without matching workspace_id to {}",
                            r.name,
                            left.iter()
                                .map(|l| l.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                for r in right.iter().filter(|r| r.table) {
                    if self.pins(&on, &r.name) {
                        pinned_on.push(r.name.clone());
                    } else if right_nullable {
                        nullable.push(r.name.clone());
                    }
                }
                if left_nullable {
                    nullable.extend(
                        tree.iter()
                            .filter(|r| r.table && !pinned_on.contains(&r.name))
                            .map(|r| r.name.clone()),
                    );
                }
                if let Some(JoinConstraint::On(e)) = constraint {
                    ons.push(e.clone());
                }
                tree.extend(right.iter().cloned());
                rels.extend(right);
            }
        }
        // Rule 1.
        for r in rels.iter().filter(|r| r.table) {
            if pinned_on.contains(&r.name) {
                continue;
            }
            if nullable.contains(&r.name) || !self.pins(&wheres, &r.name) {
                self.fail(format!(
                    "{} is not restricted to workspace_id = {} in its own scope",
                    r.name, self.ws
                ));
            }
        }
        let scope = Scope {
            rels: rels.clone(),
            outer,
        };
        let own_tenants: Vec<&Rel> = rels.iter().filter(|r| r.tenant).collect();
        // Rule 2 for correlations: references to outer tenant relations
        // from the WHERE or an ON.
        let mut join_exprs: Vec<&Expr> = selection.into_iter().collect();
        join_exprs.extend(ons.iter());
        let mut all_conds: Vec<&Expr> = wheres.clone();
        for e in &ons {
            all_conds.extend(conjuncts(e));
        }
        for e in &join_exprs {
            let p = parts(*e);
            let mut seen = BTreeSet::new();
            for q in p.qualifiers {
                if rels.iter().any(|r| r.name == q) || !seen.insert(q.clone()) {
                    continue;
                }
                let Some(o) = outer.and_then(|o| o.resolve(&q)) else {
                    continue;
                };
                if !o.tenant || own_tenants.is_empty() {
                    continue;
                }
                if !own_tenants
                    .iter()
                    .any(|r| matches_workspace(&all_conds, &r.name, &q))
                {
                    self.fail(format!(
                        "a subquery over {} is correlated with {q} without matching workspace_id",
                        own_tenants
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        // Subqueries anywhere in the scope's expressions, and IN (SELECT).
        let mut everything: Vec<&Expr> = join_exprs.clone();
        everything.extend(exprs.iter().copied());
        for e in everything {
            let p = parts(e);
            for (left, sub) in &p.in_subqueries {
                let reads_tenant = parts(left)
                    .qualifiers
                    .iter()
                    .any(|q| scope.resolve(q).is_some_and(|r| r.tenant));
                let mut probe = Checker {
                    ws: self.ws.clone(),
                    tenants: self.tenants,
                    found: Vec::new(),
                };
                if reads_tenant && probe.query(sub, ctes, Some(&scope)) {
                    self.fail(format!(
                        "{left} IN (SELECT ...) semi-joins tenant rows without workspace_id: use EXISTS"
                    ));
                }
            }
            for sub in p.subqueries {
                self.query(&sub, ctes, Some(&scope));
            }
        }
        !own_tenants.is_empty()
    }

    /// Whether `conds` hold `<name>.workspace_id = <the workspace>`.
    fn pins(&self, conds: &[&Expr], name: &str) -> bool {
        conds.iter().any(|c| {
            equality(c).is_some_and(|(l, r)| {
                let col =
                    |e: &Expr| qualified(e) == Some((name.to_string(), "workspace_id".into()));
                (col(l) && r.to_string() == self.ws) || (col(r) && l.to_string() == self.ws)
            })
        })
    }
}
