//! Which backups a retention policy keeps: pure functions over (id, time, verified), with the
//! reasons, so `backup prune --dry-run` can say what goes and why.
//!
//! The rules follow restic's `forget`: backups are considered newest first; `keep-last N`
//! keeps the N newest; `keep-hourly N` keeps the newest backup of each of the N most recent
//! hours that have one (likewise daily, weekly (ISO weeks), monthly, yearly); `keep-within D`
//! keeps every backup taken within D of the newest one (not of now, so a repository whose
//! backups stopped a month ago is not emptied by a policy measured from today). Periods are
//! calendar periods in UTC. A backup kept by any rule is kept. On top of the policy, the
//! newest backup whose snapshot was verified is never removed.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};

/// How many to keep of each kind; `None`/0 means the rule is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    pub keep_yearly: usize,
    pub keep_within: Option<Duration>,
}

impl Policy {
    /// True when no rule is set: such a policy would remove everything, so callers refuse it.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none()
    }
}

/// What the policy looks at.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    pub verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (empty when it goes).
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn key(self, t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
        match self {
            Period::Hour => (t.year(), t.month(), t.day(), t.hour()),
            Period::Day => (t.year(), t.month(), t.day(), 0),
            Period::Week => {
                let w = t.iso_week();
                (w.year(), w.week(), 0, 0)
            }
            Period::Month => (t.year(), t.month(), 0, 0),
            Period::Year => (t.year(), 0, 0, 0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// Applies `policy` to `backups` (any order). Returns one decision per backup, newest first.
pub fn apply(policy: &Policy, backups: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    // Newest first; ties broken by id so the result does not depend on input order.
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let newest = sorted.first().map(|c| c.time);
    let newest_verified = sorted.iter().find(|c| c.verified).map(|c| c.id.clone());

    type PeriodKey = (i32, u32, u32, u32);
    let mut buckets: Vec<(Period, usize, Option<PeriodKey>)> = [
        (Period::Hour, policy.keep_hourly),
        (Period::Day, policy.keep_daily),
        (Period::Week, policy.keep_weekly),
        (Period::Month, policy.keep_monthly),
        (Period::Year, policy.keep_yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(p, n)| (p, n, None))
    .collect();

    let mut out = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i < policy.keep_last {
            reasons.push(format!("last {}", policy.keep_last));
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest) {
            let age = (newest - c.time).to_std().unwrap_or(Duration::ZERO);
            if age <= within {
                reasons
                    .push(format!("within {} of the newest", humantime::format_duration(within)));
            }
        }
        for (period, left, last) in buckets.iter_mut() {
            if *left == 0 {
                continue;
            }
            let key = period.key(&c.time);
            if *last != Some(key) {
                *last = Some(key);
                *left -= 1;
                reasons.push(format!("{} snapshot", period.name()));
            }
        }
        if newest_verified.as_deref() == Some(c.id.as_str()) && reasons.is_empty() {
            reasons.push("newest verified backup (never removed)".into());
        }
        out.push(Decision { id: c.id.clone(), time: c.time, keep: !reasons.is_empty(), reasons });
    }
    out
}

/// The longest duration a flag takes: 100 years. Anything longer is a typo, and would
/// overflow date arithmetic (the agent's next run, a retention window, a deadline).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses durations such as `36h`, `7d`, `2w`, `1y6M` (humantime's units; `d` days,
/// `w` weeks, `M` months of 30.44 days, `y` years of 365.25 days), at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e} (examples: 36h, 7d, 2w, 6months, 1y)"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?}: longer than 100 years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn cands(times: &[DateTime<Utc>]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate { id: format!("b{i:03}"), time: *t, verified: false })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect()
    }

    /// Every 30 minutes over three days.
    fn half_hourly() -> Vec<Candidate> {
        let start = at(2026, 1, 30, 0, 0);
        cands(&(0..144).map(|i| start + chrono::Duration::minutes(30 * i)).collect::<Vec<_>>())
    }

    #[test]
    fn keep_last() {
        let b = half_hourly();
        let d = apply(&Policy { keep_last: 3, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143", "b142", "b141"]);
        assert_eq!(d.len(), 144);
        assert!(d.windows(2).all(|w| w[0].time >= w[1].time), "newest first");
        assert_eq!(d[0].reasons, vec!["last 3"]);
    }

    #[test]
    fn keep_hourly_takes_newest_of_each_hour() {
        let b = half_hourly();
        let d = apply(&Policy { keep_hourly: 4, ..Default::default() }, &b);
        // The newest backup is at 23:30 on day 3; one per hour for the last four hours.
        assert_eq!(kept(&d), vec!["b143", "b141", "b139", "b137"]);
        assert!(d.iter().filter(|d| d.keep).all(|d| d.reasons == vec!["hourly snapshot"]));
    }

    #[test]
    fn keep_daily_weekly_monthly_yearly() {
        let b = half_hourly();
        let d = apply(&Policy { keep_daily: 2, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143", "b095"], "23:30 on Feb 1 and on Jan 31");
        // Jan 30 2026 is a Friday: ISO week 5 runs to Sunday Feb 1, so all are in one week.
        let d = apply(&Policy { keep_weekly: 3, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143"]);
        let d = apply(&Policy { keep_monthly: 3, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143", "b095"], "newest of February and of January");
        let d = apply(&Policy { keep_yearly: 5, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143"]);
    }

    #[test]
    fn rules_combine_and_reasons_accumulate() {
        let b = half_hourly();
        let d = apply(
            &Policy { keep_last: 1, keep_daily: 3, keep_hourly: 1, ..Default::default() },
            &b,
        );
        assert_eq!(d[0].reasons, vec!["last 1", "hourly snapshot", "daily snapshot"]);
        assert_eq!(kept(&d), vec!["b143", "b095", "b047"]);
    }

    #[test]
    fn keep_within_is_measured_from_the_newest_backup() {
        let b = half_hourly();
        let d = apply(
            &Policy { keep_within: Some(Duration::from_secs(3600)), ..Default::default() },
            &b,
        );
        assert_eq!(kept(&d), vec!["b143", "b142", "b141"]);
        let old: Vec<Candidate> = b
            .iter()
            .map(|c| Candidate { time: c.time - chrono::Duration::days(400), ..c.clone() })
            .collect();
        assert_eq!(
            kept(&apply(
                &Policy { keep_within: Some(Duration::from_secs(3600)), ..Default::default() },
                &old
            ))
            .len(),
            3
        );
    }

    #[test]
    fn newest_verified_is_never_removed() {
        let mut b = half_hourly();
        b[10].verified = true;
        b[5].verified = true;
        let d = apply(&Policy { keep_last: 2, ..Default::default() }, &b);
        assert_eq!(kept(&d), vec!["b143", "b142", "b010"]);
        let v = d.iter().find(|d| d.id == "b010").unwrap();
        assert_eq!(v.reasons, vec!["newest verified backup (never removed)"]);
    }

    #[test]
    fn input_order_does_not_matter_and_empty_is_fine() {
        let b = half_hourly();
        let mut r = b.clone();
        r.reverse();
        let p = Policy { keep_hourly: 5, keep_daily: 2, ..Default::default() };
        assert_eq!(apply(&p, &b), apply(&p, &r));
        assert!(apply(&p, &[]).is_empty());
        assert!(Policy::default().is_empty());
        assert!(!p.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("36h").unwrap(), Duration::from_secs(36 * 3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("2w").unwrap(), Duration::from_secs(14 * 86400));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("100y").unwrap(), MAX_DURATION);
        for too_long in ["101y", "99999999999h", "18446744073709551615s"] {
            assert!(
                parse_duration(too_long).unwrap_err().contains("longer than 100 years"),
                "{too_long}"
            );
        }
        assert!(parse_duration("99999999999999999999999h").is_err());
    }
}
