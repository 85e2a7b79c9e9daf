//! When the agent runs: every fixed period (`--every`, the first run at start) or on a cron
//! schedule (`--schedule`, UTC, the first run at its next match), each start delayed by a
//! random part of `--jitter` so that many agents do not hit one bucket at the same second.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use crate::error::{Error, Result};

/// The agent's schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// From the start of one run to the start of the next; a run that overruns starts the
    /// next one at once.
    Every(Duration),
    /// A five-field cron expression (minute hour day-of-month month day-of-week), in UTC; an
    /// optional sixth leading field gives seconds.
    Cron { expression: String, cron: Box<croner::Cron> },
}

impl Schedule {
    /// Parses a cron expression; an error names it and says what is expected.
    pub fn cron(expression: &str) -> Result<Schedule> {
        let parsed = croner::Cron::from_str(expression.trim()).map_err(|e| {
            Error::usage(format!("--schedule {expression:?}: {e}")).with_hint(
                "five fields, in UTC: minute hour day-of-month month day-of-week, e.g. \"0 */6 * * *\" (every 6 hours) or \"30 2 * * *\" (02:30 daily)",
            )
        })?;
        let schedule =
            Schedule::Cron { expression: expression.trim().to_string(), cron: Box::new(parsed) };
        // An expression that never matches (30 February) would make the agent wait forever.
        if schedule.next(Utc::now(), None).is_none() {
            return Err(Error::usage(format!("--schedule {expression:?}: never matches")));
        }
        Ok(schedule)
    }

    /// When the next run starts (before jitter): `last_start` is the start of the previous
    /// run (`None` before the first), `now` the current time. `None` when the schedule has no
    /// further match.
    pub fn next(
        &self,
        now: DateTime<Utc>,
        last_start: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => match last_start {
                None => Some(now),
                Some(last) => Some(
                    last.checked_add_signed(chrono::Duration::from_std(*period).ok()?)?.max(now),
                ),
            },
            Schedule::Cron { cron, .. } => {
                // Strictly after the last start, so one match never runs twice; on whole
                // seconds, as the matches are (the search keeps a fraction it is given).
                let after = last_start.map_or(now, |l| l.max(now)).trunc_subsecs(0);
                cron.find_next_occurrence(&after, false).ok()
            }
        }
    }

    /// The time between two runs (for cron, between its next two matches): a backup older
    /// than twice this is stale.
    pub fn period(&self, now: DateTime<Utc>) -> Duration {
        match self {
            Schedule::Every(period) => *period,
            Schedule::Cron { .. } => {
                let first = self.next(now, None);
                let second = first.and_then(|f| self.next(f, Some(f)));
                match (first, second) {
                    (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::MAX),
                    _ => Duration::MAX,
                }
            }
        }
    }

    /// How the log names it.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(period) => format!("every {}", humantime::format_duration(*period)),
            Schedule::Cron { expression, .. } => format!("on schedule \"{expression}\" (UTC)"),
        }
    }
}

/// `at` delayed by a part of `jitter` chosen by `random` (uniform over the jitter's
/// milliseconds).
pub fn with_jitter(at: DateTime<Utc>, jitter: Duration, random: u64) -> DateTime<Utc> {
    let ms = jitter.as_millis().min(u64::MAX as u128) as u64;
    if ms == 0 {
        return at;
    }
    at + chrono::Duration::milliseconds((random % ms) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    #[test]
    fn every_runs_at_start_then_each_period_and_at_once_after_an_overrun() {
        let s = Schedule::Every(Duration::from_secs(3600));
        assert_eq!(s.next(t(10, 0, 0), None), Some(t(10, 0, 0)));
        assert_eq!(s.next(t(10, 5, 0), Some(t(10, 0, 0))), Some(t(11, 0, 0)));
        // The run took longer than the period: the next starts now.
        assert_eq!(s.next(t(11, 20, 0), Some(t(10, 0, 0))), Some(t(11, 20, 0)));
        assert_eq!(s.period(t(0, 0, 0)), Duration::from_secs(3600));
    }

    #[test]
    fn cron_waits_for_its_next_match_in_utc() {
        let s = Schedule::cron("0 */6 * * *").unwrap();
        assert_eq!(s.next(t(10, 0, 0), None), Some(t(12, 0, 0)));
        assert_eq!(s.next(t(12, 0, 5), Some(t(12, 0, 0))), Some(t(18, 0, 0)));
        // Exactly at a match that already ran: the next one, not the same again.
        assert_eq!(s.next(t(12, 0, 0), Some(t(12, 0, 0))), Some(t(18, 0, 0)));
        assert_eq!(s.period(t(10, 0, 0)), Duration::from_secs(6 * 3600));
        let daily = Schedule::cron("30 2 * * *").unwrap();
        assert_eq!(
            daily.next(t(10, 0, 0), None),
            Some(Utc.with_ymd_and_hms(2026, 3, 11, 2, 30, 0).unwrap())
        );
        assert_eq!(daily.period(t(10, 0, 0)), Duration::from_secs(86400));
    }

    #[test]
    fn cron_with_seconds_and_bad_expressions() {
        let s = Schedule::cron("*/5 * * * * *").unwrap();
        assert_eq!(s.next(t(10, 0, 1), None), Some(t(10, 0, 5)));
        // A fraction of a second is not carried into the match.
        assert_eq!(
            s.next(t(10, 0, 1) + chrono::Duration::milliseconds(904), None),
            Some(t(10, 0, 5))
        );
        assert_eq!(
            s.next(t(10, 0, 5) + chrono::Duration::milliseconds(1), Some(t(10, 0, 5))),
            Some(t(10, 0, 10))
        );
        for bad in ["", "* * *", "61 * * * *", "not a cron", "0 0 30 2 *"] {
            let e = Schedule::cron(bad).unwrap_err();
            assert_eq!(e.kind, crate::Kind::Usage, "{bad:?}");
            assert!(e.to_string().contains("--schedule"), "{e}");
        }
    }

    #[test]
    fn jitter_delays_within_its_bound() {
        let at = t(10, 0, 0);
        assert_eq!(with_jitter(at, Duration::ZERO, 12345), at);
        for r in [0u64, 1, 999, 59_999, 60_000, u64::MAX] {
            let j = with_jitter(at, Duration::from_secs(60), r);
            assert!(j >= at && j < at + chrono::Duration::seconds(60), "{r}: {j}");
        }
        assert_ne!(
            with_jitter(at, Duration::from_secs(60), 1),
            with_jitter(at, Duration::from_secs(60), 30_000)
        );
    }
}
