//! `segd bench sql`: the compiled SQL of each example segment against the
//! fastest SQL we could write by hand for it, timed by `EXPLAIN ANALYZE` on
//! the same generated data, alternating, and compared as a ratio.
//!
//! Both sides count members (`SELECT count(*)`), so neither pays for
//! shipping rows. The compiled side runs exactly as the service does: bind
//! parameters, one statement. The hand-written side inlines its values, so
//! the planner sees them; it may start from the events or deals instead of
//! the contacts, and use whatever join shape is fastest.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use super::{BenchEnv, data};
use crate::config::SqlBench;
use crate::model::WorkspaceId;
use crate::model::segment::Definition;
use crate::segment::lower::Param;
use crate::segment::parse::parse;
use crate::segment::plan::Plan;
use crate::segment::render::{Query, Rendered, Select};
use crate::service::segments::{Changes, Target, compile, create};

const WS: &str = "bench";

/// Values the hand-written SQL needs: the workspace and the same clock.
struct Ctx {
    ws: i64,
    now: DateTime<Utc>,
}

impl Ctx {
    /// Fills a hand-written query: `{ws}` is the workspace id, `{ago N}` a
    /// timestamptz N days before now, `{born N}` the latest birth date of
    /// someone N years old today.
    fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            let value = close.and_then(|c| self.value(&rest[open + 1..c]));
            match (close, value) {
                (Some(c), Some(v)) => {
                    out.push_str(&rest[..open]);
                    out.push_str(&v);
                    rest = &rest[c + 1..];
                }
                // Not a placeholder (a literal such as '{lead}'): as is.
                _ => {
                    out.push_str(&rest[..=open]);
                    rest = &rest[open + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The value of placeholder `name`, if it is one.
    fn value(&self, name: &str) -> Option<String> {
        let mut words = name.split(' ');
        match (words.next()?, words.next(), words.next()) {
            ("ws", None, _) => Some(self.ws.to_string()),
            ("ago", Some(days), None) => {
                let t = self.now - Duration::days(days.parse().ok()?);
                Some(format!(
                    "'{}'::timestamptz",
                    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                ))
            }
            ("born", Some(years), None) => {
                let born =
                    crate::segment::time::years_before(self.now.date_naive(), years.parse().ok()?);
                Some(format!("'{born}'"))
            }
            _ => None,
        }
    }
}

/// One example: its definition, and the hand-written count (a template for
/// [`Ctx::fill`]).
struct Case {
    name: &'static str,
    rule: &'static str,
    hand: &'static str,
}

/// The examples of the segment-definitions issue, in its words.
const CASES: &[Case] = &[
    Case {
        name: "issue example (labels, country, age, tags, purchases, segment)",
        rule: r#"label:lead AND country IN ("US","CA") AND age >= 25 AND tags:vip AND NOT label:customer AND event(purchase, last 90d).count >= 2 AND segment("newsletter-engaged")"#,
        hand: "SELECT count(*) FROM contacts c
               JOIN (SELECT e.contact_id FROM events e
                     WHERE e.workspace_id = {ws} AND e.type = 'purchase' AND e.occurred_at >= {ago 90}
                     GROUP BY e.contact_id HAVING count(*) >= 2) p ON p.contact_id = c.id
               WHERE c.workspace_id = {ws} AND c.labels @> '{lead}' AND NOT c.labels @> '{customer}'
                 AND c.country IN ('US', 'CA') AND c.birth_date <= {born 25} AND c.tags @> '{vip}'
                 AND EXISTS (SELECT 1 FROM events o WHERE o.workspace_id = {ws} AND o.contact_id = c.id
                             AND o.type = 'email_open' AND o.occurred_at >= {ago 30})",
    },
    Case {
        name: "last purchase more than 60 days ago",
        rule: "event(purchase).last OLDER_THAN 60d",
        hand: "SELECT count(*) FROM (SELECT e.contact_id FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'purchase'
               GROUP BY e.contact_id HAVING max(e.occurred_at) < {ago 60}) m",
    },
    Case {
        name: "bought at least twice in the last 90 days",
        rule: "event(purchase, last 90d).count >= 2",
        hand: "SELECT count(*) FROM (SELECT e.contact_id FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'purchase' AND e.occurred_at >= {ago 90}
               GROUP BY e.contact_id HAVING count(*) >= 2) m",
    },
    Case {
        name: "abandoned a cart in the last 7 days, no purchase since",
        rule: "event(cart_abandoned, last 7d) AND NOT event(purchase, since cart_abandoned)",
        hand: "SELECT count(*) FROM (SELECT e.contact_id, max(e.occurred_at) AS t FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'cart_abandoned' AND e.occurred_at >= {ago 7}
               GROUP BY e.contact_id) a
               WHERE NOT EXISTS (SELECT 1 FROM events p WHERE p.workspace_id = {ws}
                 AND p.contact_id = a.contact_id AND p.type = 'purchase' AND p.occurred_at > a.t)",
    },
    Case {
        name: "never purchased (contacts with no events included)",
        rule: "NOT event(purchase)",
        hand: "SELECT count(*) FROM contacts c WHERE c.workspace_id = {ws}
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = {ws}
                 AND e.contact_id = c.id AND e.type = 'purchase')",
    },
    Case {
        name: "viewed /pricing in the last 30 days",
        rule: r#"event(page_view, last 30d, url STARTS_WITH "/pricing")"#,
        hand: "SELECT count(DISTINCT e.contact_id) FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'page_view' AND e.occurred_at >= {ago 30}
                 AND e.properties ->> 'url' ILIKE '/pricing%'",
    },
    Case {
        name: "bought product p1, p2 or p3",
        rule: r#"event(purchase, properties.product_id IN ("p1", "p2", "p3"))"#,
        hand: "SELECT count(DISTINCT e.contact_id) FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'purchase'
                 AND e.properties ->> 'product_id' IN ('p1', 'p2', 'p3')",
    },
    Case {
        name: "open deal in stage negotiation worth more than 10k",
        rule: "deal(status = open, stage = negotiation, value > 10000)",
        hand: "SELECT count(DISTINCT d.contact_id) FROM deals d
               WHERE d.workspace_id = {ws} AND d.status = 'open' AND d.stage = 'negotiation'
                 AND d.value > 10000",
    },
    Case {
        name: "no activity in 90 days (any event type)",
        rule: "NOT event(*, last 90d)",
        hand: "SELECT count(*) FROM contacts c WHERE c.workspace_id = {ws}
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = {ws}
                 AND e.contact_id = c.id AND e.occurred_at >= {ago 90})",
    },
    Case {
        name: "opened or clicked an email in 30 days (type list)",
        rule: "event(email_open|email_click, last 30d)",
        hand: "SELECT count(DISTINCT e.contact_id) FROM events e
               WHERE e.workspace_id = {ws} AND e.type IN ('email_open', 'email_click')
                 AND e.occurred_at >= {ago 30}",
    },
    Case {
        name: "engaged by email, not a recent buyer (segment AND NOT segment)",
        rule: r#"segment("newsletter-engaged") AND NOT segment("recent-buyers")"#,
        hand: "SELECT count(*) FROM (SELECT DISTINCT e.contact_id FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'email_open' AND e.occurred_at >= {ago 30}) a
               WHERE NOT EXISTS (SELECT 1 FROM events p WHERE p.workspace_id = {ws}
                 AND p.contact_id = a.contact_id AND p.type = 'purchase' AND p.occurred_at >= {ago 30})",
    },
    Case {
        name: "two aggregates of purchases in 30 days (count and sum)",
        rule: "event(purchase, last 30d).count >= 2 AND event(purchase, last 30d).sum(value) > 300",
        hand: "SELECT count(*) FROM (SELECT e.contact_id FROM events e
               WHERE e.workspace_id = {ws} AND e.type = 'purchase' AND e.occurred_at >= {ago 30}
               GROUP BY e.contact_id HAVING count(*) >= 2 AND sum(e.value) > 300) m",
    },
    Case {
        name: "opened 2+ emails and clicked one in 30 days",
        rule: "event(email_open, last 30d).count >= 2 AND event(email_click, last 30d)",
        hand: "SELECT count(*) FROM (SELECT e.contact_id FROM events e
               WHERE e.workspace_id = {ws} AND e.type IN ('email_open', 'email_click') AND e.occurred_at >= {ago 30}
               GROUP BY e.contact_id
               HAVING count(*) FILTER (WHERE e.type = 'email_open') >= 2
                  AND count(*) FILTER (WHERE e.type = 'email_click') >= 1) m",
    },
    Case {
        name: "2 or more won deals",
        rule: "deal(status = won).count >= 2",
        hand: "SELECT count(*) FROM (SELECT d.contact_id FROM deals d
               WHERE d.workspace_id = {ws} AND d.status = 'won'
               GROUP BY d.contact_id HAVING count(*) >= 2) m",
    },
];

/// Generates the data, then times each case.
///
/// # Errors
/// Setup or a statement failed, or a hand-written query disagreed with the
/// compiled one about the members.
pub async fn run(env: &BenchEnv, o: &SqlBench) -> anyhow::Result<()> {
    let started = Instant::now();
    let ws = data::generate(env, WS, &data::Shape::sql(o.contacts)).await?;
    println!("generated in {:.1}s", started.elapsed().as_secs_f64());
    let mut scoped = crate::db::scope::Scoped::get(&env.pool, ws).await?;
    for (name, rule) in [
        ("newsletter-engaged", "event(email_open, last 30d)"),
        ("recent-buyers", "event(purchase, last 30d)"),
    ] {
        create(
            &mut scoped,
            ws,
            crate::model::segment::SegmentKind::Dynamic,
            Changes {
                name: Some(name.into()),
                rule: Some(Definition::request(parse(rule)?, "", true)),
                ..Default::default()
            },
        )
        .await?;
    }

    drop(scoped);
    let client = env.pool.get().await?;
    let now = Utc::now();
    let x = Ctx { ws: ws.0, now };
    println!(
        "\n{:<62} {:>9} {:>12} {:>9} {:>7}",
        "example", "members", "compiled_ms", "hand_ms", "ratio"
    );
    let mut worst: f64 = 0.0;
    for case in CASES {
        let c = compiled(&client, ws, case.rule, now)
            .await?
            .render(&Query::of(Select::Count));
        let compiled_sql = c.sql.clone();
        let hand_sql = x.fill(case.hand);
        let members: i64 = client.query_typed(&compiled_sql, &c.typed()).await?[0].get(0);
        let by_hand: i64 = client.query_one(&hand_sql, &[]).await?.get(0);
        anyhow::ensure!(
            members == by_hand,
            "{}: compiled SQL counts {members}, hand-written {by_hand}",
            case.name
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            let empty = Rendered {
                sql: String::new(),
                params: Vec::<Param>::new(),
            };
            if round % 2 == 0 {
                a.push(analyze(&client, &compiled_sql, &c).await?);
                b.push(analyze(&client, &hand_sql, &empty).await?);
            } else {
                b.push(analyze(&client, &hand_sql, &empty).await?);
                a.push(analyze(&client, &compiled_sql, &c).await?);
            }
        }
        let (a, b) = (median(&mut a), median(&mut b));
        let ratio = a / b;
        worst = worst.max(ratio);
        println!(
            "{:<62} {members:>9} {a:>12.1} {b:>9.1} {ratio:>7.2}",
            case.name
        );
        if o.verbose {
            println!(
                "  compiled: {compiled_sql}\n  hand:     {}",
                squash(&hand_sql)
            );
        }
    }
    println!("\ncases={} worst_ratio={worst:.2}", CASES.len());
    Ok(())
}

async fn compiled(
    client: &tokio_postgres::Client,
    ws: WorkspaceId,
    rule: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Plan> {
    let def = Definition::request(parse(rule)?, "", true);
    let t = compile(client, ws, &Target::Inline(def), now, true).await?;
    Ok(t.compiled)
}

/// Planning plus execution time in milliseconds, from `EXPLAIN (ANALYZE,
/// TIMING OFF)` (per-node timing would tax the plan with more nodes).
async fn analyze(client: &tokio_postgres::Client, sql: &str, c: &Rendered) -> anyhow::Result<f64> {
    let rows = client
        .query_typed(
            &format!("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}"),
            &c.typed(),
        )
        .await?;
    let plan: serde_json::Value = rows[0].get(0);
    let ms = |k: &str| plan[0][k].as_f64().unwrap_or_default();
    Ok(ms("Planning Time") + ms("Execution Time"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn squash(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let x = Ctx {
            ws: 3,
            now: Utc::now(),
        };
        for case in CASES {
            let sql = x.fill(case.hand);
            for p in ["{ws}", "{ago", "{born"] {
                assert!(!sql.contains(p), "{}: {p} left in {sql}", case.name);
            }
            assert!(sql.contains("workspace_id = 3"), "{}", case.name);
        }
    }
}
