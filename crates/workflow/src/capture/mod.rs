//! Continuous capture: every change between full backups, stored as segments.
//!
//! `follow` finds the newest full backup of the repository (taking one when there is none),
//! resumes after the last revision its segments hold, and watches the whole keyspace from
//! there. A watch thread hands the changes to this thread, which writes a segment every
//! `segment_interval` (or sooner at `segment_max_bytes`), so a slow or failing store never
//! stalls the watch: the changes wait in memory and the segments catch up when it answers.
//!
//! Why nothing is lost or doubled:
//! - the full's revision R is what its snapshot's own `key` bucket says (the manifest's
//!   `etcd.revision`, computed from the file), and the watch starts at exactly R+1, or at
//!   one past the last revision stored when resuming;
//! - a segment is written only for whole revisions, complete or not at all;
//! - revisions are contiguous (every revision has a change), so any hole is visible by
//!   arithmetic: on resume, in [`etcdguard_repo::segment::chain`], and in every reader;
//! - when the server has compacted past the resume point (`ErrCompacted`) the changes are
//!   gone: a new full backup is taken and the gap is recorded (`gaps/…`) and reported.
//!
//! What it does not carry: auth (users, roles) and membership changes between fulls — they
//! are not in the watch stream; the next full backup has them.
//!
//! ## How it works
//!
//! `capture` is continuous capture and point-in-time restore. `follow` finds the newest full
//! backup (taking one if there is none), resumes one past the last revision its segments hold
//! (`repo::segment::chain` proves the coverage) and watches the whole keyspace from there with
//! `Session::follow` on a thread of its own; this thread buffers the changes and writes a
//! segment every `segment_interval` (whole revisions only, with the lease set from
//! `Session::leases`), retrying a failing store while the watch goes on, so the RPO metric
//! shows an outage and the segments catch up. `ErrCompacted` means the changes are gone: a new
//! full backup is taken and the lost range recorded under `gaps/`. `full_every` switches to a
//! new full backup, the old one's segments closed at the new one's revision. `plan_at` (in
//! `point_in_time`, below both `backup` and this module) picks the newest full backup at or
//! before a revision or time (times come from the segments' per-revision receive times) and the
//! segment chain up to it; `materialize` fetches the full backup's snapshot and feeds the
//! segments' changes, one segment at a time, to `storage::replay`; `backup::restore` and
//! `node::restore_node` use it for `--at`. `log` lists the stored changes with the object's
//! kind and name (`crates/kube`). Every segment is written by one `SegmentWriter` (lease set,
//! retry with backoff until the store answers or a stop comes); the RPO it reports counts from
//! the oldest change not stored yet (`pending_since`), or, with nothing waiting, from the last
//! moment capture knew it had everything (a progress answer, the newest stored change), so it
//! keeps growing while the store or every endpoint is down. Two writers may overlap (a leader
//! that lost its lease finishing a segment while its successor starts): `chain` accepts
//! overlaps and the readers (replay, `log`) take each revision once.
//!
//! `agent --continuous` runs `capture::follow` on a worker thread while the agent leads, with a
//! `Stop` of its own raised when leadership is lost (or on SIGTERM); a failed capture is
//! restarted with backoff. A new leader's `follow` resumes from the repository (newest full,
//! its segments' chain), and its RPO starts from the newest stored change's time, so a failover
//! shows in the metric. `/healthz` of the active agent is the capture's: RPO under
//! `--rpo-bound`, no gap since the last scheduled full.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcdguard_client::{ClientError, WatchUpdate};
use etcdguard_repo::manifest::Manifest;
use etcdguard_repo::segment::{chain, Change, Segment, SegmentInfo};
use etcdguard_repo::Repository;

use crate::backup::{connect, create_stoppable, CreateOptions};
use crate::error::{client_error, Error, Kind, Result};
use crate::point_in_time::millis;
use crate::stop::Stop;

mod log;
pub use log::*;
// Point-in-time restore lives below both this module and `backup`; its entry points keep
// their paths here.
pub use crate::point_in_time::{materialize, plan, plan_at, At, AtPlan};

/// Watch responses held between the watch and the segment writer, at most.
const WATCH_BACKLOG: usize = 64;

/// What `backup follow` (and `agent --continuous`) does.
#[derive(Clone)]
pub struct FollowOptions {
    /// Where fulls go and how they are taken (connection flags, files, labels …).
    pub create: CreateOptions,
    pub segment_interval: Duration,
    pub segment_max_bytes: usize,
    /// Take a new full backup this long after the last one.
    pub full_every: Option<Duration>,
    /// … or once the segments since it hold this many bytes.
    pub full_after_bytes: u64,
    /// Stop once everything up to this revision is stored (scripts and tests).
    pub until_revision: Option<i64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl FollowOptions {
    pub fn new(create: CreateOptions) -> FollowOptions {
        FollowOptions {
            create,
            segment_interval: Duration::from_secs(5),
            segment_max_bytes: 8 << 20,
            full_every: None,
            full_after_bytes: 1 << 30,
            until_revision: None,
            duration: None,
        }
    }
}

/// What capture has done, for metrics and health (shared with the agent).
#[derive(Debug, Clone, Default)]
pub struct CaptureState {
    pub base: Option<String>,
    pub base_revision: i64,
    /// Every revision up to this one is stored.
    pub durable_revision: i64,
    /// When the store was last known to hold everything the server had.
    pub durable_at: Option<DateTime<Utc>>,
    /// When the oldest change not stored yet was seen (None: nothing waits).
    pub pending_since: Option<DateTime<Utc>>,
    /// The server's revision last heard of.
    pub server_revision: i64,
    pub segments_written: u64,
    pub segment_bytes: u64,
    pub fulls_taken: u64,
    pub gaps: u64,
    /// A gap was recorded (or found on resume) and no full backup was taken on schedule since.
    pub gap_open: bool,
    pub store_failures: u64,
    pub last_error: Option<String>,
}

impl CaptureState {
    /// Seconds of changes that a disaster now would lose: since the oldest change not stored
    /// yet, or, when none waits, since the store was last known to hold everything (so it
    /// keeps growing while the watch is down). None before capture knew either.
    pub fn rpo_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        self.pending_since
            .or(self.durable_at)
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    }
    pub fn lag_revisions(&self) -> i64 {
        (self.server_revision - self.durable_revision).max(0)
    }
}

/// What a finished `follow` did.
#[derive(Debug, Clone)]
pub struct FollowReport {
    pub state: CaptureState,
}

enum Message {
    Changes { changes: Vec<etcdguard_client::Change>, header_revision: i64, seen: DateTime<Utc> },
    Progress { header_revision: i64, seen: DateTime<Utc> },
    Tick,
    Failed(ClientError),
}

/// A change as the watch reports it, as a segment stores it (the two crates do not share
/// types: the client knows etcd, the repository does not).
fn stored(c: etcdguard_client::Change) -> Change {
    Change {
        put: c.put,
        key: c.key,
        value: c.value,
        create_revision: c.create_revision,
        mod_revision: c.mod_revision,
        version: c.version,
        lease: c.lease,
    }
}

/// The newest full backup of the repository (of `cluster` when given).
pub fn newest_full(repo: &Repository, cluster: Option<&str>) -> Result<Option<Manifest>> {
    let (mut list, _) = repo.list_backups()?;
    list.retain(|m| cluster.is_none_or(|c| m.cluster.as_deref() == Some(c)));
    list.sort_by_key(|m| (m.created, m.etcd.revision));
    Ok(list.pop())
}

/// Runs continuous capture until `stop`, `until_revision` or `duration`.
pub fn follow(
    opts: &FollowOptions,
    state: &Arc<Mutex<CaptureState>>,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<FollowReport> {
    let started = Instant::now();
    if opts.create.from_file.is_some() {
        return Err(Error::usage("continuous capture watches the live cluster: drop --from-file (its full backups are taken live)"));
    }
    let mut repo = match opts.create.repo.open_unlocked() {
        Ok(r) => r,
        // No repository yet: the first full backup creates it.
        Err(e) if e.kind == Kind::NotFound => {
            create_stoppable(&opts.create, note, stop)?;
            opts.create.repo.open_unlocked()?
        }
        Err(e) => return Err(e),
    };
    if repo.is_encrypted() {
        opts.create.repo.unlock(&mut repo)?;
    }
    let session = connect(&opts.create.conn, note)?;
    let endpoints = session.config().endpoints.clone();
    let set =
        |f: &dyn Fn(&mut CaptureState)| f(&mut state.lock().unwrap_or_else(|p| p.into_inner()));

    let mut base = match newest_full(&repo, opts.create.cluster.as_deref())? {
        Some(m) => m,
        None => {
            note("no full backup yet: taking one");
            take_full(opts, &mut repo, note, stop, state)?
        }
    };
    let mut covered = resume_point(&repo, &base, note, state)?;
    let mut endpoint_at = 0usize;
    let mut writer = SegmentWriter { session: &session, leases_known: HashMap::new(), state, stop };
    let mut base_at = Instant::now();
    let mut bytes_since_full = 0u64;
    set(&|s| {
        s.base = Some(base.id.clone());
        s.base_revision = base.etcd.revision;
        s.durable_revision = covered;
    });
    note(&format!(
        "following changes after revision {covered} (full backup {} at revision {})",
        base.id, base.etcd.revision
    ));

    'watch: loop {
        if stop.is_raised() {
            break;
        }
        let endpoint = endpoints[endpoint_at % endpoints.len()].clone();
        // Bounded: while a segment's store is retried (an object store outage) the watch
        // waits instead of piling changes up in memory; etcd keeps them in its history,
        // and a compaction meanwhile is a gap the reader reports, as for any watch loss.
        let (tx, rx) = mpsc::sync_channel::<Message>(WATCH_BACKLOG);
        let watcher = {
            let (session_flags, stop, endpoint) =
                (opts.create.conn.clone(), stop.clone(), endpoint.clone());
            let tick = opts.segment_interval.min(Duration::from_secs(1));
            let from = covered + 1;
            std::thread::spawn(move || {
                let session = match connect(&session_flags, &mut |_| {}) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Message::Failed(ClientError::Config(e.to_string())));
                        return;
                    }
                };
                let result = session.follow(&endpoint, from, tick, &mut |u| {
                    let seen = Utc::now();
                    let m = match u {
                        WatchUpdate::Changes { changes, header_revision } => {
                            Message::Changes { changes, header_revision, seen }
                        }
                        WatchUpdate::Progress { header_revision } => {
                            Message::Progress { header_revision, seen }
                        }
                        WatchUpdate::Tick => Message::Tick,
                    };
                    if tx.send(m).is_err() || stop.is_raised() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                if let Err(e) = result {
                    let _ = tx.send(Message::Failed(e));
                }
            })
        };
        let mut pending: Vec<Change> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut times: Vec<(i64, i64)> = Vec::new();
        let mut last_flush = Instant::now();
        let mut caught_up_at: Option<(i64, DateTime<Utc>)> = None;
        let mut failure: Option<ClientError> = None;
        loop {
            let message = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    failure.get_or_insert(ClientError::Config("the watch ended".into()));
                    None
                }
            };
            match message {
                Some(Message::Changes { changes, header_revision, seen }) => {
                    let waiting_before = !pending.is_empty();
                    for c in changes {
                        // Already stored (a watch never repeats, but a resumed one must not either).
                        if c.mod_revision <= covered {
                            continue;
                        }
                        if times.last().is_none_or(|t| t.0 != c.mod_revision) {
                            times.push((c.mod_revision, seen.timestamp_millis()));
                        }
                        pending_bytes += c.key.len() + c.value.len() + 32;
                        pending.push(stored(c));
                    }
                    set(&|s| s.server_revision = s.server_revision.max(header_revision));
                    if !waiting_before && !pending.is_empty() {
                        // The oldest change not stored yet: what a disaster now would lose starts here.
                        set(&|s| s.pending_since = s.pending_since.or(Some(seen)));
                    }
                    let last = pending.last().map_or(covered, |c| c.mod_revision);
                    if header_revision <= last {
                        caught_up_at = Some((last, seen));
                    }
                }
                Some(Message::Progress { header_revision, seen }) => {
                    set(&|s| s.server_revision = s.server_revision.max(header_revision));
                    let last = pending.last().map_or(covered, |c| c.mod_revision);
                    if header_revision <= last {
                        caught_up_at = Some((last, seen));
                    }
                    if header_revision <= covered {
                        // Everything the server has is stored.
                        set(&|s| s.durable_at = s.durable_at.max(Some(seen)));
                    }
                }
                Some(Message::Tick) | None => {}
                Some(Message::Failed(e)) => failure = Some(e),
            }
            let due = last_flush.elapsed() >= opts.segment_interval
                || pending_bytes >= opts.segment_max_bytes;
            let ending = failure.is_some()
                || stop.is_raised()
                || opts.duration.is_some_and(|d| started.elapsed() >= d)
                || opts
                    .until_revision
                    .is_some_and(|u| pending.last().map_or(covered, |c| c.mod_revision) >= u);
            if (due || ending) && !pending.is_empty() {
                let changes = std::mem::take(&mut pending);
                let info = writer.store(
                    &repo,
                    &base,
                    covered,
                    changes,
                    std::mem::take(&mut times),
                    &endpoint,
                    note,
                )?;
                covered = info.last;
                pending_bytes = 0;
                bytes_since_full += info.size;
                last_flush = Instant::now();
                let durable_at = caught_up_at.filter(|(rev, _)| *rev <= covered).map(|(_, t)| t);
                if let Some(t) = durable_at {
                    set(&|s| s.durable_at = s.durable_at.max(Some(t)));
                }
            } else if due && pending.is_empty() {
                last_flush = Instant::now();
                // Nothing to store: caught up as of the last progress answer.
                if let Some((rev, t)) = caught_up_at {
                    if rev <= covered {
                        set(&|s| s.durable_at = s.durable_at.max(Some(t)));
                    }
                }
            }
            if ending && pending.is_empty() {
                break;
            }
            let full_due = opts.full_every.is_some_and(|d| base_at.elapsed() >= d)
                || bytes_since_full >= opts.full_after_bytes;
            if full_due && pending.is_empty() && failure.is_none() {
                // A new full; changes up to its revision stay with the old one, the rest
                // follow the new one. The watch keeps running meanwhile.
                let new_base = take_full(opts, &mut repo, note, stop, state)?;
                let rev = new_base.etcd.revision;
                note(&format!(
                    "full backup {} at revision {rev}; changes after it follow it",
                    new_base.id
                ));
                // Store the old full's changes up to the new revision before switching.
                covered = store_old_full_tail(
                    &rx,
                    &repo,
                    &base,
                    covered,
                    rev,
                    &mut writer,
                    &endpoint,
                    note,
                    stop,
                )?;
                base = new_base;
                covered = covered.max(rev);
                base_at = Instant::now();
                bytes_since_full = 0;
                set(&|s| {
                    s.base = Some(base.id.clone());
                    s.base_revision = rev;
                    s.durable_revision = covered;
                    // A scheduled full after a gap: the history is whole again from here.
                    s.gap_open = false;
                });
                drop(rx);
                let _ = watcher.join();
                continue 'watch;
            }
        }
        drop(rx);
        let _ = watcher.join();
        match failure {
            None => break,
            Some(ClientError::Compacted { compact_revision, .. }) => {
                let lost_from = covered + 1;
                note(&format!("the server compacted past revision {covered} (oldest kept {compact_revision}): changes from {lost_from} on are gone; taking a new full backup"));
                let new_base = take_full(opts, &mut repo, note, stop, state)?;
                record_gap(&repo, &base, lost_from, &new_base, "compacted")?;
                set(&|s| {
                    s.gaps += 1;
                    s.gap_open = true;
                });
                covered = new_base.etcd.revision;
                base = new_base;
                base_at = Instant::now();
                bytes_since_full = 0;
                set(&|s| {
                    s.base = Some(base.id.clone());
                    s.base_revision = base.etcd.revision;
                    s.durable_revision = covered;
                });
            }
            Some(e) if stop.is_raised() => {
                let _ = e;
                break;
            }
            Some(e) => {
                let why = e.to_string();
                set(&|s| s.last_error = Some(why.clone()));
                note(&format!("watch on {endpoint} failed: {why}; trying the next endpoint"));
                endpoint_at += 1;
                if opts.duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let state = state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(FollowReport { state })
}

/// Before capture switches to a new full backup at revision `until`: the changes up to it
/// that the watch delivered, or still delivers, go to `base`'s segments (the old full keeps
/// its own tail). Returns the revision stored up to.
#[allow(clippy::too_many_arguments)]
fn store_old_full_tail(
    rx: &mpsc::Receiver<Message>,
    repo: &Repository,
    base: &Manifest,
    covered: i64,
    until: i64,
    writer: &mut SegmentWriter<'_>,
    endpoint: &str,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<i64> {
    let mut changes: Vec<Change> = Vec::new();
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while changes.last().map_or(covered, |c: &Change| c.mod_revision) < until {
        if stop.is_raised() || Instant::now() > deadline {
            return Err(Error::failure(format!("the watch did not deliver revisions up to {until} in time; restart follow (it resumes without a gap)")));
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Message::Changes { changes: cs, seen, .. }) => {
                for c in
                    cs.into_iter().filter(|c| c.mod_revision > covered && c.mod_revision <= until)
                {
                    if times.last().is_none_or(|t: &(i64, i64)| t.0 != c.mod_revision) {
                        times.push((c.mod_revision, seen.timestamp_millis()));
                    }
                    changes.push(stored(c));
                }
            }
            Ok(Message::Failed(e)) => return Err(client_error(e)),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::failure(
                    "the watch ended before the switch to the new full backup",
                ))
            }
        }
    }
    if changes.is_empty() {
        return Ok(covered);
    }
    let info = writer.store(repo, base, covered, changes, times, endpoint, note)?;
    note(&format!("segment {}..{} closes full backup {}", info.first, info.last, base.id));
    Ok(info.last)
}

/// Turns waiting changes into stored segments: each gets the lease set listed at the time,
/// and a store that fails is retried with backoff (the changes wait in memory) until it
/// answers or capture is stopped.
struct SegmentWriter<'a> {
    session: &'a etcdguard_client::Session,
    /// Granted TTLs of the leases seen so far (a TTL never changes: only new leases cost a call).
    leases_known: HashMap<i64, i64>,
    state: &'a Arc<Mutex<CaptureState>>,
    stop: &'a Stop,
}

impl SegmentWriter<'_> {
    /// Stores `changes` (the revisions after `covered`, whole) as the next segment of `base`.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        repo: &Repository,
        base: &Manifest,
        covered: i64,
        changes: Vec<Change>,
        times: Vec<(i64, i64)>,
        endpoint: &str,
        note: &mut dyn FnMut(&str),
    ) -> Result<SegmentInfo> {
        let leases = self.session.leases(endpoint, &self.leases_known).unwrap_or_else(|e| {
            note(&format!(
                "warning: listing leases: {e}; the segment keeps the previous lease set"
            ));
            let mut known: Vec<(i64, i64)> =
                self.leases_known.iter().map(|(a, b)| (*a, *b)).collect();
            known.sort();
            known
        });
        self.leases_known = leases.iter().copied().collect();
        let segment = Segment {
            base: base.id.clone(),
            first: covered + 1,
            last: changes.last().map_or(covered, |c| c.mod_revision),
            times,
            leases,
            changes,
        };
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut delay = Duration::from_millis(200);
        let info = loop {
            match repo.put_segment(&segment) {
                Ok(info) => break info,
                Err(e) => {
                    {
                        let mut s = lock();
                        s.store_failures += 1;
                        s.last_error = Some(e.to_string());
                    }
                    note(&format!(
                        "storing segment {}..{} failed, retrying in {}: {e}",
                        segment.first,
                        segment.last,
                        humantime::format_duration(delay)
                    ));
                    if !sleep_unless_stopped(delay, self.stop) {
                        return Err(Error::new(
                            Kind::Interrupted,
                            format!("stopped while the store was failing; the changes after revision {covered} were not stored (the next run resumes from there)"),
                        ));
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut s = lock();
        s.durable_revision = info.last;
        s.segments_written += 1;
        s.segment_bytes += info.size;
        s.last_error = None;
        s.pending_since = None;
        // Stored up to the newest change seen: from then on only later changes are at risk.
        if let Some(seen) = segment.times.last().and_then(|t| millis(t.1)) {
            s.durable_at = s.durable_at.max(Some(seen));
        }
        Ok(info)
    }
}

/// Sleeps `total` in short steps; false when a stop came first.
fn sleep_unless_stopped(total: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + total;
    while Instant::now() < until {
        if stop.is_raised() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !stop.is_raised()
}

fn take_full(
    opts: &FollowOptions,
    repo: &mut Repository,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
    state: &Arc<Mutex<CaptureState>>,
) -> Result<Manifest> {
    let m = create_stoppable(&opts.create, note, stop)?;
    // Reopen: the create may have created the repository, or changed its index.
    *repo = opts.create.repo.open_unlocked()?;
    if repo.is_encrypted() {
        opts.create.repo.unlock(repo)?;
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).fulls_taken += 1;
    note(&format!("full backup {} at revision {}", m.id, m.etcd.revision));
    Ok(m)
}

/// The last revision stored for `base` (its own revision when no segment follows it yet).
/// A hole in its segments is recorded and capture continues after what is contiguous.
fn resume_point(
    repo: &Repository,
    base: &Manifest,
    note: &mut dyn FnMut(&str),
    state: &Arc<Mutex<CaptureState>>,
) -> Result<i64> {
    let segments = repo.list_segments(Some(&base.id))?;
    let ranges: Vec<(i64, i64)> = segments.iter().map(|s| (s.first, s.last)).collect();
    let (used, gap) = chain(base.etcd.revision, &ranges);
    let covered = used.last().map_or(base.etcd.revision, |r| r.1);
    // The RPO goes on from when the newest stored change was seen (by this or another writer).
    if let Some(info) =
        used.last().and_then(|(f, l)| segments.iter().find(|s| s.first == *f && s.last == *l))
    {
        if let Some(seen) =
            repo.read_segment(info).ok().and_then(|s| s.times.last().and_then(|t| millis(t.1)))
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.durable_at = s.durable_at.max(Some(seen));
        }
    }
    if let Some((to, next)) = gap {
        note(&format!("warning: full backup {} has segments after revision {next} but none for {}..{}; continuing from {to}", base.id, to + 1, next - 1));
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.gaps += 1;
        s.gap_open = true;
    }
    Ok(covered)
}

/// `gaps/<full>-<first lost revision>.json`: changes that could not be captured.
fn record_gap(
    repo: &Repository,
    base: &Manifest,
    lost_from: i64,
    new_base: &Manifest,
    reason: &str,
) -> Result<()> {
    let body = serde_json::json!({
        "after_full": base.id,
        "lost_from_revision": lost_from,
        "lost_to_revision": new_base.etcd.revision,
        "next_full": new_base.id,
        "reason": reason,
        "recorded": Utc::now().to_rfc3339(),
    });
    let key = format!("gaps/{}-{:016x}.json", base.id, lost_from as u64);
    repo.store()
        .put(&key, bytes_of(serde_json::to_vec_pretty(&body).unwrap_or_default()))
        .map_err(|e| crate::error::repo_error(e.into()))?;
    Ok(())
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}
