//! Calendar arithmetic for relative conditions. Cutoffs are computed here,
//! once, and bound as parameters, so SQL and the reference evaluator agree
//! to the microsecond whatever the database's time zone.

use chrono::{DateTime, Datelike, Days, Duration, Months, NaiveDate, Utc};

use super::ast::{Span, Unit};

/// `t` moved back by `span` (months clamp to the month's last day).
/// Saturates at the minimum representable time.
pub fn back(t: DateTime<Utc>, span: Span) -> DateTime<Utc> {
    shift(t, span, false).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `t` moved forward by `span`. Saturates at the maximum representable time.
pub fn forward(t: DateTime<Utc>, span: Span) -> DateTime<Utc> {
    shift(t, span, true).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn shift(t: DateTime<Utc>, span: Span, fwd: bool) -> Option<DateTime<Utc>> {
    let n = span.amount;
    let d = match span.unit {
        Unit::Hours => Duration::try_hours(n)?,
        Unit::Days => Duration::try_days(n)?,
        Unit::Weeks => Duration::try_weeks(n)?,
        Unit::Months => {
            let m = Months::new(u32::try_from(n).ok()?);
            return if fwd {
                t.checked_add_months(m)
            } else {
                t.checked_sub_months(m)
            };
        }
    };
    if fwd {
        t.checked_add_signed(d)
    } else {
        t.checked_sub_signed(d)
    }
}

/// `d` moved back by a day-granular span (hours are not allowed on dates).
pub fn back_date(d: NaiveDate, span: Span) -> NaiveDate {
    shift_date(d, span, false).unwrap_or(NaiveDate::MIN)
}

/// `d` moved forward by a day-granular span.
pub fn forward_date(d: NaiveDate, span: Span) -> NaiveDate {
    shift_date(d, span, true).unwrap_or(NaiveDate::MAX)
}

fn shift_date(d: NaiveDate, span: Span, fwd: bool) -> Option<NaiveDate> {
    let n = u64::try_from(span.amount).ok()?;
    match span.unit {
        Unit::Hours => Some(d),
        Unit::Days | Unit::Weeks => {
            let days = Days::new(if span.unit == Unit::Weeks {
                n.checked_mul(7)?
            } else {
                n
            });
            if fwd {
                d.checked_add_days(days)
            } else {
                d.checked_sub_days(days)
            }
        }
        Unit::Months => {
            let m = Months::new(u32::try_from(n).ok()?);
            if fwd {
                d.checked_add_months(m)
            } else {
                d.checked_sub_months(m)
            }
        }
    }
}

/// The latest birth date of someone at least `years` old on `today`:
/// `age >= years` exactly when `birth_date <= years_before(today, years)`.
/// 29 February clamps to the 28th.
pub fn years_before(today: NaiveDate, years: u32) -> NaiveDate {
    years
        .checked_mul(12)
        .and_then(|m| today.checked_sub_months(Months::new(m)))
        .unwrap_or(NaiveDate::MIN)
}

/// Age in whole years on `today`, by the same rule as [`years_before`].
pub fn age(birth: NaiveDate, today: NaiveDate) -> i64 {
    if birth > today {
        return -1;
    }
    let mut years = i64::from(today.year() - birth.year());
    while years > 0 && years_before(today, years as u32) < birth {
        years -= 1;
    }
    years
}

/// Month-and-day codes (`month * 100 + day`) of the days from `today` to
/// `today + span` inclusive. In a year without 29 February, a window that
/// holds 28 February also holds 229, so leap-day anniversaries are kept.
pub fn anniversary_codes(today: NaiveDate, span: Span) -> Vec<i32> {
    let end = forward_date(today, span);
    let mut out = Vec::new();
    let mut d = today;
    while d <= end && out.len() < 400 {
        let code = d.month() as i32 * 100 + d.day() as i32;
        out.push(code);
        if code == 228 && NaiveDate::from_ymd_opt(d.year(), 2, 29).is_none() {
            out.push(229);
        }
        match d.succ_opt() {
            Some(n) => d = n,
            None => break,
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The month-and-day code of a date.
pub fn md_code(d: NaiveDate) -> i32 {
    d.month() as i32 * 100 + d.day() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn ages_clamp_on_leap_days() {
        assert_eq!(years_before(date(2024, 2, 29), 1), date(2023, 2, 28));
        assert_eq!(age(date(2000, 2, 29), date(2025, 2, 28)), 24);
        assert_eq!(age(date(2000, 2, 28), date(2025, 2, 28)), 25);
        assert_eq!(age(date(1990, 6, 15), date(2024, 6, 14)), 33);
        assert_eq!(age(date(1990, 6, 15), date(2024, 6, 15)), 34);
        for (b, t) in [
            (date(1980, 3, 1), date(2024, 2, 29)),
            (date(2004, 2, 29), date(2024, 2, 29)),
        ] {
            let a = age(b, t);
            assert!(b <= years_before(t, a as u32) && b > years_before(t, a as u32 + 1));
        }
    }

    #[test]
    fn anniversaries_wrap_and_keep_leap_day() {
        let codes = anniversary_codes(
            date(2023, 12, 30),
            Span {
                amount: 3,
                unit: Unit::Days,
            },
        );
        assert_eq!(codes, vec![101, 102, 1230, 1231]);
        let codes = anniversary_codes(
            date(2023, 2, 27),
            Span {
                amount: 1,
                unit: Unit::Days,
            },
        );
        assert_eq!(codes, vec![227, 228, 229]);
        let codes = anniversary_codes(
            date(2024, 2, 27),
            Span {
                amount: 1,
                unit: Unit::Days,
            },
        );
        assert_eq!(codes, vec![227, 228]);
    }

    #[test]
    fn months_clamp_and_huge_spans_saturate() {
        let t = date(2024, 3, 31).and_hms_opt(12, 0, 0).unwrap().and_utc();
        assert_eq!(
            back(
                t,
                Span {
                    amount: 1,
                    unit: Unit::Months
                }
            )
            .date_naive(),
            date(2024, 2, 29)
        );
        assert_eq!(
            back(
                t,
                Span {
                    amount: i64::MAX,
                    unit: Unit::Days
                }
            ),
            DateTime::<Utc>::MIN_UTC
        );
        assert_eq!(
            forward(
                t,
                Span {
                    amount: i64::MAX,
                    unit: Unit::Hours
                }
            ),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
