//! SegmentMetrics and the metrics settings: requests checked, reports
//! converted. The QueryService delegates here.

use chrono::{DateTime, Utc};

use super::convert::{from_ts, ts};
use super::query::target;
use crate::error::Violation;
use crate::model::metrics::{self as m, EventTypes, Metric, Rate, ratio};
use crate::proto as pb;
use crate::service::metrics::{Ask, Group, Report};

/// Most segments measured in one call.
pub const MAX_SEGMENTS: usize = 10;
/// Most buckets of a split measured in one call.
pub const MAX_BUCKETS: i32 = 100;

/// The request checked, with the window's end defaulting to `now`.
///
/// # Errors
/// Every bad field.
pub fn ask(r: &pb::SegmentMetricsRequest, now: DateTime<Utc>) -> Result<Ask, Vec<Violation>> {
    let mut bad = Vec::new();
    if r.selectors.is_empty() || r.selectors.len() > MAX_SEGMENTS {
        bad.push(Violation::new(
            "selectors",
            format!("give 1 to {MAX_SEGMENTS} segments"),
        ));
    }
    let mut targets = Vec::new();
    for (i, s) in r.selectors.iter().enumerate() {
        match target(Some(s), &format!("selectors[{i}]")) {
            Ok(t) => targets.push(t),
            Err(v) => bad.extend(v),
        }
    }
    let mut time = |field: &str,
                    t: Option<&prost_types::Timestamp>,
                    default: Option<DateTime<Utc>>| match t.map(from_ts) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            bad.push(Violation::new(field, e));
            None
        }
        None if default.is_some() => default,
        None => {
            bad.push(Violation::new(field, "required"));
            None
        }
    };
    let from = time("start_time", r.start_time.as_ref(), None);
    let to = time("end_time", r.end_time.as_ref(), Some(now));
    if let (Some(a), Some(b)) = (from, to)
        && b <= a
    {
        bad.push(Violation::new("end_time", "must be after start_time"));
    }
    let split = r.split.as_ref().map(|s| (s.count, s.salt.clone()));
    if let Some((n, _)) = &split {
        if !(2..=MAX_BUCKETS).contains(n) {
            bad.push(Violation::new(
                "split.count",
                format!("must be 2 to {MAX_BUCKETS}"),
            ));
        }
        if r.selectors.len() > 1 {
            bad.push(Violation::new(
                "split",
                "a split measures exactly one segment",
            ));
        }
    }
    match (from, to, bad.is_empty()) {
        (Some(from), Some(to), true) => Ok(Ask {
            targets,
            from,
            to,
            split,
            allow_expensive: r.allow_expensive,
        }),
        _ => Err(bad),
    }
}

/// The settings after applying `r` to `current`.
///
/// # Errors
/// Every bad field.
pub fn updated(
    r: &pb::UpdateMetricsSettingsRequest,
    current: &EventTypes,
) -> Result<EventTypes, Vec<Violation>> {
    let Some(s) = &r.settings else {
        return Err(vec![Violation::new("settings", "required")]);
    };
    let paths = r
        .update_mask
        .as_ref()
        .map(|m| m.paths.clone())
        .unwrap_or_default();
    let all = [
        "open_types",
        "click_types",
        "purchase_types",
        "revenue_types",
    ];
    let mut bad = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if !all.contains(&p.as_str()) {
            bad.push(Violation::new(
                format!("update_mask.paths[{i}]"),
                format!("unknown field {p:?}; use {}", all.join(", ")),
            ));
        }
    }
    let mut out = current.clone();
    let fields = [
        ("open_types", &s.open_types, &mut out.open),
        ("click_types", &s.click_types, &mut out.click),
        ("purchase_types", &s.purchase_types, &mut out.purchase),
        ("revenue_types", &s.revenue_types, &mut out.revenue),
    ];
    for (name, given, slot) in fields {
        if paths.is_empty() || paths.iter().any(|p| p == name) {
            match m::event_types(&format!("settings.{name}"), given) {
                Ok(t) => *slot = t,
                Err(v) => bad.extend(v),
            }
        }
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// Settings as sent.
pub fn settings(t: &EventTypes) -> pb::MetricsSettings {
    pb::MetricsSettings {
        open_types: t.open.clone(),
        click_types: t.click.clone(),
        purchase_types: t.purchase.clone(),
        revenue_types: t.revenue.clone(),
    }
}

fn rate(r: Option<Rate>) -> Option<pb::Rate> {
    r.map(|r| pb::Rate {
        successes: r.successes,
        trials: r.trials,
        value: r.value,
        ci_lower: r.lower,
        ci_upper: r.upper,
    })
}

fn metric(x: Metric) -> pb::Metric {
    match x {
        Metric::OpenRate => pb::Metric::OpenRate,
        Metric::ClickRate => pb::Metric::ClickRate,
        Metric::ClickToOpenRate => pb::Metric::ClickToOpenRate,
        Metric::ConversionRate => pb::Metric::ConversionRate,
        Metric::RepeatPurchaseRate => pb::Metric::RepeatPurchaseRate,
        Metric::Retention => pb::Metric::Retention,
    }
}

fn group(g: &Group) -> pb::GroupMetrics {
    let c = &g.counts;
    let (segment_id, segment_name) = g.segment.clone().unwrap_or_default();
    pb::GroupMetrics {
        segment_id,
        segment_name,
        bucket: g.bucket,
        from_live: g.from_live,
        members: c.members,
        openers: c.openers,
        clickers: c.clickers,
        opens: c.opens,
        clicks: c.clicks,
        purchasers: c.purchasers,
        orders: c.orders,
        repeat_purchasers: c.repeat_purchasers,
        revenue: c.revenue,
        open_rate: rate(Metric::OpenRate.of(c)),
        click_rate: rate(Metric::ClickRate.of(c)),
        click_to_open_rate: rate(Metric::ClickToOpenRate.of(c)),
        conversion_rate: rate(Metric::ConversionRate.of(c)),
        repeat_purchase_rate: rate(Metric::RepeatPurchaseRate.of(c)),
        retention: rate(Metric::Retention.of(c)),
        revenue_per_member: ratio(c.revenue, c.members).unwrap_or(0.0),
        average_order_value: ratio(c.revenue, c.orders).unwrap_or(0.0),
    }
}

/// The report as sent.
pub fn response(r: &Report, ask: &Ask) -> pb::SegmentMetricsResponse {
    pb::SegmentMetricsResponse {
        groups: r.groups.iter().map(group).collect(),
        comparisons: r
            .comparisons
            .iter()
            .map(|c| pb::MetricComparison {
                metric: metric(c.metric).into(),
                group: i32::try_from(c.group).unwrap_or(i32::MAX),
                difference: c.difference,
                p_value: c.p_value,
            })
            .collect(),
        start_time: Some(ts(ask.from)),
        end_time: Some(ts(ask.to)),
        settings: Some(settings(&r.types)),
    }
}
