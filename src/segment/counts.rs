//! What an aggregate test says about contacts with no matching events or
//! deals, whose count, sum and distinct count are 0. The lowering uses it to
//! pick the join shape the planner can run best:
//!
//! - a test 0 fails can compare the joined aggregate directly (no
//!   `coalesce`), a strict condition that lets PostgreSQL turn the outer
//!   join into an inner one and start from the few matching rows;
//! - "count is 0" (and "not count ≥ 1") is an anti-join, `NOT EXISTS`, which
//!   PostgreSQL runs as a hash anti-join or as index probes per contact,
//!   whichever is cheaper.

use super::ir::{Lit, Ord, Test};

fn num(l: &Lit) -> Option<f64> {
    match l {
        Lit::Num(n) => Some(*n),
        _ => None,
    }
}

fn cmp(o: Ord, a: f64, b: f64) -> bool {
    match o {
        Ord::Gt => a > b,
        Ord::Gte => a >= b,
        Ord::Lt => a < b,
        Ord::Lte => a <= b,
    }
}

/// Whether `t` holds for the number `v`, when `t` is a strict comparison
/// (NULL in, NULL out) over numbers; None otherwise.
fn strict_holds(t: &Test, v: f64) -> Option<bool> {
    match t {
        Test::Eq(l) => Some(num(l)? == v),
        Test::In(ls) => {
            let ns = ls.iter().map(num).collect::<Option<Vec<f64>>>()?;
            Some(ns.contains(&v))
        }
        Test::Cmp(o, l) => Some(cmp(*o, v, num(l)?)),
        Test::Between(a, b) => Some(num(a)? <= v && v <= num(b)?),
        _ => None,
    }
}

/// True when `t` is a strict numeric comparison that 0 fails.
pub fn zero_fails(t: &Test) -> bool {
    strict_holds(t, 0.0) == Some(false)
}

/// True when, over counts, `t` holds exactly for 1 and more.
pub fn means_some(t: &Test) -> bool {
    matches!(t, Test::Cmp(Ord::Gt | Ord::Gte, _))
        && strict_holds(t, 0.0) == Some(false)
        && strict_holds(t, 1.0) == Some(true)
}

/// True when, over counts, `t` holds exactly for 0.
pub fn means_none(t: &Test) -> bool {
    match t {
        Test::Eq(l) => num(l) == Some(0.0),
        Test::Cmp(Ord::Lt | Ord::Lte, _) => {
            strict_holds(t, 0.0) == Some(true) && strict_holds(t, 1.0) == Some(false)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(o: Ord, n: f64) -> Test {
        Test::Cmp(o, Lit::Num(n))
    }

    #[test]
    fn zero_is_judged_only_for_strict_numeric_tests() {
        assert!(zero_fails(&c(Ord::Gte, 2.0)));
        assert!(zero_fails(&c(Ord::Gt, 0.0)));
        assert!(!zero_fails(&c(Ord::Gte, 0.0)));
        assert!(!zero_fails(&c(Ord::Lt, 3.0)));
        assert!(zero_fails(&Test::Eq(Lit::Num(4.0))));
        assert!(!zero_fails(&Test::Eq(Lit::Num(0.0))));
        assert!(zero_fails(&Test::Between(Lit::Num(1.0), Lit::Num(5.0))));
        assert!(!zero_fails(&Test::Between(Lit::Num(-1.0), Lit::Num(5.0))));
        assert!(zero_fails(&Test::In(vec![Lit::Num(1.0), Lit::Num(2.0)])));
        assert!(!zero_fails(&Test::In(vec![Lit::Num(0.0), Lit::Num(2.0)])));
        // NULL-tolerant tests are never rewritten.
        assert!(!zero_fails(&Test::IsNotSet));
        assert!(!zero_fails(&Test::IsSet));
        assert!(!zero_fails(&Test::Neq(Lit::Num(0.0))));
    }

    #[test]
    fn some_and_none_cover_exactly_the_counts() {
        assert!(means_some(&c(Ord::Gte, 1.0)));
        assert!(means_some(&c(Ord::Gte, 0.5)));
        assert!(means_some(&c(Ord::Gt, 0.0)));
        assert!(!means_some(&c(Ord::Gte, 2.0)));
        assert!(!means_some(&c(Ord::Gt, 1.0)));
        assert!(!means_some(&c(Ord::Gte, 0.0)));
        assert!(means_none(&Test::Eq(Lit::Num(0.0))));
        assert!(means_none(&c(Ord::Lt, 1.0)));
        assert!(means_none(&c(Ord::Lte, 0.0)));
        assert!(means_none(&c(Ord::Lte, 0.5)));
        assert!(!means_none(&c(Ord::Lte, 1.0)));
        assert!(!means_none(&c(Ord::Lt, 0.0)));
        assert!(!means_none(&Test::IsNotSet));
    }
}
