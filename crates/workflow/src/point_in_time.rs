//! Point-in-time restore: which full backup and segments reach a revision or time
//! (`plan_at`), and the database built from them (`materialize`).
//!
//! Below both [`crate::backup`] (whose restore takes `--at`) and [`crate::capture`] (which
//! writes the segments and builds on backup's connect and create): it only reads the
//! repository.

use std::path::Path;

use chrono::{DateTime, Utc};
use etcdguard_repo::manifest::Manifest;
use etcdguard_repo::segment::{chain, Change};
use etcdguard_repo::Repository;

use crate::error::{Error, Kind, Result};

/// A moment to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Revision(i64),
    /// The last revision seen at or before this time.
    Time(DateTime<Utc>),
}

impl At {
    /// `REV` (digits) or a time (RFC 3339, e.g. 2026-11-30T14:32:00Z).
    pub fn parse(s: &str) -> std::result::Result<At, String> {
        if let Ok(r) = s.parse::<i64>() {
            return if r >= 1 {
                Ok(At::Revision(r))
            } else {
                Err(format!("revision {r}: must be 1 or more"))
            };
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| At::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("{s:?}: give a revision (e.g. 120345) or an RFC 3339 time (e.g. 2026-11-30T14:32:00Z)"))
    }
}

/// Which full backup and segments build the database at a moment.
#[derive(Debug, Clone)]
pub struct AtPlan {
    pub base: Manifest,
    /// In order; the last one holds `revision`.
    pub segments: Vec<etcdguard_repo::segment::SegmentInfo>,
    pub revision: i64,
    /// When `revision` was seen (from the segments), when known.
    pub seen: Option<DateTime<Utc>>,
}

/// [`plan_at`] on a repository given by its location (unlocked when encrypted).
pub fn plan(spec: &crate::repo::RepoSpec, at: At, base: Option<&str>) -> Result<AtPlan> {
    let mut repo = spec.open_unlocked()?;
    if repo.is_encrypted() {
        spec.unlock(&mut repo)?;
    }
    plan_at(&repo, at, base)
}

/// Plans a restore at `at`: the newest full at or before it (or `base`, a backup id, prefix
/// or `latest`, which must be at or before it), then its segments up to it.
pub fn plan_at(repo: &Repository, at: At, base: Option<&str>) -> Result<AtPlan> {
    let what = match at {
        At::Revision(r) => format!("revision {r}"),
        At::Time(t) => t.to_rfc3339(),
    };
    let mut fulls = match base {
        Some(id) => {
            let m = crate::repo::resolve(repo, id)?;
            let after = match at {
                At::Revision(r) => r < m.etcd.revision,
                At::Time(t) => m.created > t,
            };
            if after {
                return Err(Error::usage(format!(
                    "{what} is before backup {} (revision {}, taken {}): a restore starts from a full backup at or before the point",
                    m.id,
                    m.etcd.revision,
                    m.created.format("%Y-%m-%d %H:%M:%S UTC")
                ))
                .with_hint("give an older backup's id, or none to have the right one found"));
            }
            vec![m]
        }
        None => repo.list_backups()?.0,
    };
    fulls.sort_by_key(|m| std::cmp::Reverse((m.etcd.revision, m.created)));
    let all = repo.list_segments(None)?;
    let mut newest_reachable: Option<(String, i64)> = None;
    for base in &fulls {
        let mine: Vec<_> = all.iter().filter(|s| s.base == base.id).cloned().collect();
        let ranges: Vec<(i64, i64)> = mine.iter().map(|s| (s.first, s.last)).collect();
        let (used, _gap) = chain(base.etcd.revision, &ranges);
        let covered = used.last().map_or(base.etcd.revision, |r| r.1);
        if newest_reachable.as_ref().is_none_or(|(_, r)| covered > *r) {
            newest_reachable = Some((base.id.clone(), covered));
        }
        let segs: Vec<_> = used
            .iter()
            .filter_map(|(f, l)| mine.iter().find(|s| s.first == *f && s.last == *l).cloned())
            .collect();
        let (revision, seen) = match at {
            At::Revision(r) => {
                if r < base.etcd.revision || r > covered {
                    continue;
                }
                (r, None)
            }
            At::Time(t) => {
                if base.created > t {
                    continue;
                }
                // The last revision seen at or before `t`, reading segments in order.
                let mut found = (base.etcd.revision, None);
                'segments: for info in &segs {
                    let s = repo.read_segment(info)?;
                    for (rev, ms) in &s.times {
                        match millis(*ms) {
                            Some(seen) if seen <= t => found = (*rev, Some(seen)),
                            _ => break 'segments,
                        }
                    }
                }
                found
            }
        };
        let segments = segs.into_iter().filter(|s| s.first <= revision).collect();
        return Ok(AtPlan { base: base.clone(), segments, revision, seen });
    }
    let reach = match newest_reachable {
        Some((id, r)) if base.is_some() => {
            format!("; full backup {id} and its segments reach revision {r}")
        }
        Some((id, r)) => {
            format!("; the repository reaches revision {r} (full backup {id} and its segments)")
        }
        None => "; the repository has no full backup".into(),
    };
    Err(Error::new(
        Kind::NotFound,
        format!("no full backup with continuous changes covers {what}{reach}"),
    )
    .with_hint("list what is there with `etcdguard backup list` and `etcdguard backup log`"))
}

/// The changes of `segments`, read one segment at a time, as replay events.
struct SegmentEvents<'r> {
    repo: &'r Repository,
    segments: std::vec::IntoIter<etcdguard_repo::segment::SegmentInfo>,
    current: std::vec::IntoIter<Change>,
    /// The last revision of the segments read before the current one: two writers (a leader
    /// that lost its lease and its successor) may store overlapping ranges, read once.
    done_through: i64,
    current_last: i64,
    failed: bool,
}

impl Iterator for SegmentEvents<'_> {
    type Item = std::result::Result<etcdguard_storage::replay::Event, String>;
    fn next(&mut self) -> Option<Self::Item> {
        use etcdguard_storage::replay::{Event, EventKind};
        loop {
            if self.failed {
                return None;
            }
            if let Some(c) = self.current.next() {
                if c.mod_revision <= self.done_through {
                    continue;
                }
                return Some(Ok(Event {
                    kind: if c.put { EventKind::Put } else { EventKind::Delete },
                    key: c.key,
                    mod_revision: c.mod_revision,
                    create_revision: c.create_revision,
                    version: c.version,
                    value: c.value,
                    lease: c.lease,
                }));
            }
            let info = self.segments.next()?;
            self.done_through = self.done_through.max(self.current_last);
            self.current_last = info.last;
            match self.repo.read_segment(&info) {
                Ok(s) => self.current = s.changes.into_iter(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e.to_string()));
                }
            }
        }
    }
}

/// Builds the snapshot file of `plan` at `out` (new): the full's snapshot fetched (every
/// chunk and the whole sha256 checked) into `scratch`, its changes replayed up to the
/// planned revision, a fresh sha256 trailer. No etcd runs; nothing is fsynced per change.
pub fn materialize(
    repo: &Repository,
    plan: &AtPlan,
    out: &Path,
    scratch: &Path,
) -> Result<etcdguard_storage::replay::Replayed> {
    let base_file = scratch.join(format!("full-{}.db", plan.base.id));
    let index = repo.load_index()?;
    repo.restore_snapshot_to_file(&index, &plan.base.snapshot, &base_file, 0o600)?;
    // The lease set at the planned revision: the one stored with the last segment (the one
    // that holds the revision); the replay needs it before it reads the segments.
    let lease_set: Option<Vec<etcdguard_storage::replay::LeaseGrant>> = match plan.segments.last() {
        Some(last) => Some(
            repo.read_segment(last)?
                .leases
                .iter()
                .map(|(id, ttl)| etcdguard_storage::replay::LeaseGrant { id: *id, ttl: *ttl })
                .collect(),
        ),
        None => None,
    };
    let mut events = SegmentEvents {
        repo,
        segments: plan.segments.clone().into_iter(),
        current: Vec::new().into_iter(),
        done_through: i64::MIN,
        current_last: i64::MIN,
        failed: false,
    };
    let result = etcdguard_storage::replay::replay_snapshot(
        &base_file,
        out,
        &mut events,
        Some(plan.revision),
        lease_set.as_deref(),
    );
    let _ = std::fs::remove_file(&base_file);
    let replayed = result.map_err(|e| match e {
        etcdguard_storage::replay::ReplayError::Gap(m) => {
            Error::new(Kind::Corrupt, format!("the continuous changes have a gap: {m}"))
        }
        etcdguard_storage::replay::ReplayError::Source(m) => {
            Error::new(Kind::Corrupt, format!("reading the continuous changes: {m}"))
        }
        etcdguard_storage::replay::ReplayError::BadEvent(m) => {
            Error::new(Kind::Corrupt, format!("a damaged change record: {m}"))
        }
        other => {
            Error::failure(format!("building the database at revision {}: {other}", plan.revision))
        }
    })?;
    if replayed.to_revision != plan.revision {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "the changes end at revision {} but revision {} was planned",
                replayed.to_revision, plan.revision
            ),
        ));
    }
    Ok(replayed)
}

/// A segment's receive time (milliseconds since the epoch) as a time.
pub(crate) fn millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}
