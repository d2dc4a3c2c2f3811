//! The instant segd evaluates definitions at.
//!
//! Windows (`last 30d`), relative dates and anniversaries are evaluated
//! against "now", and live segments change as now moves. Production reads
//! the system clock; a test moves this clock ahead to watch time-driven
//! membership change without waiting for it. Every evaluation, from scratch
//! or by the live-segment maintainer, reads the same clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The system clock, moved ahead by however far tests advanced it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        let ahead = chrono::Duration::milliseconds(self.ahead_ms.load(Ordering::Relaxed));
        Utc::now()
            .checked_add_signed(ahead)
            .unwrap_or_else(Utc::now)
    }

    /// Now, to the millisecond (what resume tokens keep).
    pub fn now_ms(&self) -> DateTime<Utc> {
        let now = self.now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }

    /// Moves this clock (and every clone of it) ahead by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        self.ahead_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_runs_ahead_in_every_clone() {
        let c = Clock::default();
        let other = c.clone();
        let before = Utc::now();
        c.advance(chrono::Duration::days(31));
        let now = other.now();
        assert!(now >= before + chrono::Duration::days(31));
        assert!(now < Utc::now() + chrono::Duration::days(31) + chrono::Duration::seconds(5));
        assert_eq!(c.now_ms().timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
