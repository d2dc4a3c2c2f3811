//! How well segments perform: which events count, the counts one statement
//! gathers per segment or bucket, and the rates, confidence intervals and
//! two-proportion tests derived from them.

use crate::error::Violation;

use super::validate::identifier;

/// Most event types in one role.
pub const MAX_TYPES: usize = 20;

/// z for a two-sided 95% interval: the 0.975 quantile of the standard
/// normal distribution.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Which event types count as what, per workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes {
    /// An email open.
    pub open: Vec<String>,
    /// A click.
    pub click: Vec<String>,
    /// A purchase (an order).
    pub purchase: Vec<String>,
    /// Revenue: the sum of these events' values.
    pub revenue: Vec<String>,
}

impl Default for EventTypes {
    /// The built-in types.
    fn default() -> Self {
        let one = |t: &str| vec![t.to_string()];
        Self {
            open: one("email_open"),
            click: one("email_click"),
            purchase: one("purchase"),
            revenue: one("purchase"),
        }
    }
}

impl EventTypes {
    /// Every type in any role, once each, sorted.
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = [&self.open, &self.click, &self.purchase, &self.revenue]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Normalises one role's event types: identifiers, 1 to [`MAX_TYPES`],
/// duplicates dropped.
///
/// # Errors
/// A violation per bad entry, or of `field` when empty or too long.
pub fn event_types(field: &str, types: &[String]) -> Result<Vec<String>, Vec<Violation>> {
    if types.is_empty() || types.len() > MAX_TYPES {
        return Err(vec![Violation::new(
            field,
            format!("give 1 to {MAX_TYPES} event types"),
        )]);
    }
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, t) in types.iter().enumerate() {
        match identifier(t) {
            Ok(Some(t)) => {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            Ok(None) => bad.push(Violation::new(format!("{field}[{i}]"), "must not be empty")),
            Err(e) => bad.push(Violation::new(format!("{field}[{i}]"), e)),
        }
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// What one statement counts for one segment or bucket over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Members.
    pub members: i64,
    /// Members with an open.
    pub openers: i64,
    /// Members with a click.
    pub clickers: i64,
    /// Members with both an open and a click.
    pub clicked_openers: i64,
    /// Opens.
    pub opens: i64,
    /// Clicks.
    pub clicks: i64,
    /// Members with a purchase.
    pub purchasers: i64,
    /// Purchases.
    pub orders: i64,
    /// Members with two purchases or more.
    pub repeat_purchasers: i64,
    /// The sum of revenue events' values.
    pub revenue: f64,
    /// Where history exists: members at the window's start, and those of
    /// them still members at its end.
    pub retention: Option<(i64, i64)>,
}

/// A proportion with its Wilson score interval at 95%.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Successes.
    pub successes: i64,
    /// Trials, above zero.
    pub trials: i64,
    /// successes / trials.
    pub value: f64,
    /// Lower bound of the 95% interval.
    pub lower: f64,
    /// Upper bound of the 95% interval.
    pub upper: f64,
}

impl Rate {
    /// `x` of `n`, `None` when `n` is zero. The Wilson score interval stays
    /// inside [0, 1] and keeps its coverage for small counts and rates near
    /// 0 or 1, where the textbook normal interval does not.
    pub fn of(x: i64, n: i64) -> Option<Self> {
        if n <= 0 {
            return None;
        }
        let (xf, nf) = (x as f64, n as f64);
        let p = xf / nf;
        let z2 = Z95 * Z95;
        let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
        let half = Z95 / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
        Some(Self {
            successes: x,
            trials: n,
            value: p,
            lower: (centre - half).max(0.0),
            upper: (centre + half).min(1.0),
        })
    }
}

/// A two-sided two-proportion z-test (pooled variance) of `b` against `a`:
/// the difference `b - a` and its p-value. Identical all-or-nothing
/// samples (no variance) differ by nothing, with p = 1.
pub fn two_proportion(a: &Rate, b: &Rate) -> (f64, f64) {
    let diff = b.value - a.value;
    let (na, nb) = (a.trials as f64, b.trials as f64);
    let pooled = (a.successes + b.successes) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return (diff, 1.0);
    }
    let z = diff / se;
    (
        diff,
        libm::erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0),
    )
}

crate::model::str_enum! {
    /// A rate that segment metrics report and compare.
    Metric {
        /// Members with an open, of members.
        OpenRate => "open_rate",
        /// Members with a click, of members.
        ClickRate => "click_rate",
        /// Openers who clicked, of openers.
        ClickToOpenRate => "click_to_open_rate",
        /// Purchasers, of members.
        ConversionRate => "conversion_rate",
        /// Purchasers with two purchases or more, of purchasers.
        RepeatPurchaseRate => "repeat_purchase_rate",
        /// Members at the start still members at the end, of those at the
        /// start.
        Retention => "retention",
    }
}

impl Metric {
    /// This rate of `c`, `None` when its denominator is zero or unknown.
    pub fn of(self, c: &Counts) -> Option<Rate> {
        match self {
            Self::OpenRate => Rate::of(c.openers, c.members),
            Self::ClickRate => Rate::of(c.clickers, c.members),
            Self::ClickToOpenRate => Rate::of(c.clicked_openers, c.openers),
            Self::ConversionRate => Rate::of(c.purchasers, c.members),
            Self::RepeatPurchaseRate => Rate::of(c.repeat_purchasers, c.purchasers),
            Self::Retention => c.retention.and_then(|(start, kept)| Rate::of(kept, start)),
        }
    }
}

/// `num / den`, `None` when `den` is zero.
pub fn ratio(num: f64, den: i64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

/// One rate of one group compared with the baseline group's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The rate.
    pub metric: Metric,
    /// The group compared (an index into the groups).
    pub group: usize,
    /// The group's rate minus the baseline's.
    pub difference: f64,
    /// Two-sided p-value of a two-proportion z-test.
    pub p_value: f64,
}

/// Every rate of every group but the first compared with the first (the
/// baseline, for an A/B split the control), where both rates exist.
pub fn compare(groups: &[Counts]) -> Vec<Comparison> {
    let Some((base, rest)) = groups.split_first() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (i, g) in rest.iter().enumerate() {
        for &metric in Metric::ALL {
            if let (Some(a), Some(b)) = (metric.of(base), metric.of(g)) {
                let (difference, p_value) = two_proportion(&a, &b);
                out.push(Comparison {
                    metric,
                    group: i + 1,
                    difference,
                    p_value,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn wilson_intervals_match_published_values() {
        // Newcombe (1998), Table I: 81/263 → 0.2553 to 0.3662, and the
        // zero-event case 0/10 → 0 to 0.2775.
        let r = Rate::of(81, 263).unwrap();
        assert!(
            (r.lower - 0.2553).abs() < 5e-5 && (r.upper - 0.3662).abs() < 5e-5,
            "{r:?}"
        );
        let r = Rate::of(0, 10).unwrap();
        assert!(
            close(r.lower, 0.0) && (r.upper - 0.2775).abs() < 5e-5,
            "{r:?}"
        );
        let r = Rate::of(10, 10).unwrap();
        assert!(
            close(r.upper, 1.0) && (r.lower - 0.7225).abs() < 5e-5,
            "{r:?}"
        );
        assert_eq!(Rate::of(0, 0), None);
    }

    #[test]
    fn two_proportion_tests_match_hand_figures() {
        // 30/100 against 45/100: pooled 0.375, se = sqrt(0.375 * 0.625 *
        // 0.02) = 0.0684653, z = 2.190890, p = 0.02845974.
        let (d, p) = two_proportion(&Rate::of(30, 100).unwrap(), &Rate::of(45, 100).unwrap());
        assert!(close(d, 0.15));
        assert!((p - 0.028_459_74).abs() < 1e-8, "{p}");
        // Symmetric, and equal rates give p = 1.
        let (d2, p2) = two_proportion(&Rate::of(45, 100).unwrap(), &Rate::of(30, 100).unwrap());
        assert!(close(d2, -0.15) && close(p, p2));
        let (_, p) = two_proportion(&Rate::of(5, 50).unwrap(), &Rate::of(10, 100).unwrap());
        assert!(close(p, 1.0));
        // No variance at all.
        let (_, p) = two_proportion(&Rate::of(0, 5).unwrap(), &Rate::of(0, 7).unwrap());
        assert!(close(p, 1.0));
    }

    #[test]
    fn rates_need_a_denominator_and_comparisons_both_rates() {
        let a = Counts {
            members: 10,
            openers: 4,
            clicked_openers: 1,
            ..Counts::default()
        };
        let b = Counts {
            members: 8,
            ..Counts::default()
        };
        assert_eq!(Metric::ClickToOpenRate.of(&a).unwrap().value, 0.25);
        assert_eq!(Metric::ClickToOpenRate.of(&b), None);
        assert_eq!(Metric::Retention.of(&a), None);
        let c = compare(&[a, b]);
        let metrics: Vec<Metric> = c.iter().map(|c| c.metric).collect();
        assert_eq!(
            metrics,
            [Metric::OpenRate, Metric::ClickRate, Metric::ConversionRate]
        );
        assert!(c.iter().all(|c| c.group == 1));
    }

    #[test]
    fn event_types_are_identifiers_deduplicated() {
        let t = event_types("open_types", &["Email Open".into(), "email_open".into()]).unwrap();
        assert_eq!(t, ["email_open"]);
        let e = event_types("click_types", &["ok".into(), "1bad".into()]).unwrap_err();
        assert_eq!(e[0].field, "click_types[1]");
        assert_eq!(event_types("x", &[]).unwrap_err()[0].field, "x");
        assert_eq!(
            EventTypes::default().all(),
            ["email_click", "email_open", "purchase"]
        );
    }
}
