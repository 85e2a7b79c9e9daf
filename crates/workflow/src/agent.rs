//! The agent: `backup create` on a schedule, retention after each backup, and an HTTP
//! endpoint with `/healthz` and Prometheus `/metrics`. Each run is the same code as the
//! one-shot commands ([`crate::backup::create`], [`crate::backup::prune`]), so a backup the
//! agent takes is the one `backup create` would take.
//!
//! Stopping: SIGTERM or SIGINT raise a [`Stop`]. An idle agent returns at once. A running
//! step sees the stop at its next safe point (the snapshot stream stops at once, the upload
//! at its next read, a create between its steps) and is abandoned: nothing is added to the
//! list of backups, the spool goes, the repository lock is released. A step that has not
//! given up within [`STOP_GRACE`] (a prune is not interruptible) is left to die with the
//! process after its spool and locks are removed: the repository is crash-safe, so that
//! leaves exactly what a kill would, minus the leftovers. Either way `run` returns `Ok`
//! well within [`STOP_BOUND`].
//!
//! Several agents for one cluster (one per control-plane node) elect one of themselves with
//! etcd's election API ([`Election`]), under a name derived from the repository (and
//! `--cluster`), so only the leader takes backups. Before each run the agent checks that it
//! still leads; a standby waits, serves `/healthz` from the repository's newest backup, and
//! once elected plans its next run from that backup's time (no extra backup when the last
//! one is recent, none skipped when one is due). A leader that loses its lease during a run
//! lets the run finish: the repository is crash-safe and locked, so a second backup taken
//! meanwhile by the new leader is harmless, while stopping midway would only waste the work.
//!
//! ## How it works
//!
//! The agent is a module here, not a crate of its own: it is a loop over `backup::create` and
//! `backup::prune` plus a small HTTP server, and keeping it beside them means the agent cannot
//! drift from the one-shot commands. `agent::run` runs each backup on a worker thread; SIGTERM
//! and SIGINT (`stop_on_signals`) stop an idle agent at once and a busy one within `STOP_BOUND`
//! (10 s): the snapshot stream and the upload give up at once, a step that does not (a prune)
//! is abandoned after `STOP_GRACE` with its spool and this process's repository locks removed,
//! which leaves what a kill would (the repository is crash-safe). Retention failures count in
//! `/healthz` after `--prune-failures-unhealthy` (3) in a row. `schedule` says when runs start:
//! `--every` (first run at start; an overrun starts the next at once) or `--schedule CRON`
//! (croner, UTC, first run at the first match), each start delayed by a random part of
//! `--jitter`; the next start follows from the previous *planned* one, so jitter does not
//! accumulate. `/metrics` is rendered by `prometheus-client` (OpenMetrics text) from the state
//! at each scrape. The agent logs through `tracing`; the CLI installs the subscriber
//! (`--log-format text|json`).
//!
//! Leader election (on unless `--no-elect` or `--from-file`): `agent::run` starts a
//! `client::election::Election` named after the repository (`ElectionSettings::for_repository`:
//! `/etcdguard/agent/` + 16 hex digits of sha256 of the URL and `--cluster`; value host/PID;
//! lease `--elect-ttl`). At each scheduled time the loop asks `is_leader()` (true only while
//! the lease is known alive, see the client section); when it does not lead it becomes standby
//! (`wait_as_standby`): role `standby` in `/metrics` (`etcdguard_agent_role` has both labels,
//! 0/1), `/healthz` judged from the repository's newest backup (re-read every quarter period, 1
//! s–60 s) instead of its own runs. On winning the election it re-reads the newest backup and
//! plans from it with `Schedule::next(newest, Some(newest))`: a due backup runs at once, a
//! recent one is not repeated. Leadership lost during a run does not stop the run: the
//! repository's lock and crash safety make an overlapping backup harmless, and aborting would
//! only waste it. `tests/agent_election.rs` runs three agents on a three-member etcd 3.5 and
//! kills the leader.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcdguard_client::election::{Election, ElectionOptions, Role};
use etcdguard_client::ConnectConfig;
use etcdguard_repo::retention::Policy;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::backup::{create_stoppable, prune, CreateOptions};
use crate::capture::{CaptureState, FollowOptions};
use crate::error::{Error, Result};
use crate::repo::{count_backups, RepoSpec};
use crate::schedule::{with_jitter, Schedule};
use crate::stop::Stop;
use crate::text::created_line;

/// How long a running step gets to give up after a stop before it is abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(8);
/// The documented bound: a stop returns from [`run`] within this.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// What the agent does.
pub struct AgentOptions {
    pub create: CreateOptions,
    /// Retention after each successful backup; `None` for none.
    pub policy: Option<Policy>,
    /// When backups start.
    pub schedule: Schedule,
    /// Each start is delayed by a random part of this.
    pub jitter: Duration,
    /// Address of the HTTP endpoint, or `off`.
    pub listen: String,
    /// Stop after this many runs.
    pub runs: Option<u64>,
    /// Unhealthy after this many retention runs failed in a row (at least 1).
    pub prune_failures_unhealthy: u32,
    /// Leader election among the agents of one cluster; `None` runs every schedule alone.
    pub election: Option<ElectionSettings>,
    /// Scrub, restore drill and certificate expiry ([`crate::checks`]).
    pub checks: crate::checks::ChecksOptions,
    /// Continuous capture instead of scheduled backups: the leader follows every change.
    pub continuous: Option<ContinuousSettings>,
    /// `--copy-to`: after each backup (and, with continuous capture, every ten segment
    /// intervals, 5 s to 1 min), copy what the second repository lacks ([`crate::copy`]).
    pub copy_to: Option<RepoSpec>,
}

/// `agent --continuous`: the leader runs [`crate::capture::follow`] (fulls every
/// `full_every`, segments every `segment_interval`) until it stops leading or is stopped.
#[derive(Clone, Debug)]
pub struct ContinuousSettings {
    pub segment_interval: Duration,
    pub full_every: Option<Duration>,
    /// /healthz fails when the RPO exceeds this.
    pub rpo_bound: Duration,
}

/// How the agent campaigns.
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    /// etcd key prefix shared by the agents that back up to the same repository.
    pub name: String,
    /// Who this agent is (host name and PID), shown to the others.
    pub value: String,
    /// Lease TTL: a dead leader's turn passes on within about this long.
    pub ttl: Duration,
}

impl ElectionSettings {
    /// `/etcdguard/agent/<first 16 hex digits of sha256(repository URL, cluster name)>`:
    /// agents writing to one repository (for one cluster) share it, no secret is in the key.
    pub fn for_repository(
        repo_url: &str,
        cluster: Option<&str>,
        ttl: Duration,
    ) -> ElectionSettings {
        let mut hash = Sha256::new();
        hash.update(repo_url.trim_end_matches('/').as_bytes());
        if let Some(c) = cluster {
            hash.update(b"\n");
            hash.update(c.as_bytes());
        }
        let digest = hash.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        ElectionSettings {
            name: format!("/etcdguard/agent/{hex}"),
            value: format!("{}/{}", etcdguard_repo::host::hostname(), std::process::id()),
            ttl,
        }
    }
}

/// What the agent has done, for /healthz and /metrics.
struct State {
    /// Time between runs; a last success older than twice this is stale.
    every: Duration,
    /// "active" (takes the backups) or, with leader election, "standby".
    role: &'static str,
    started: DateTime<Utc>,
    running_since: Option<DateTime<Utc>>,
    next_run: DateTime<Utc>,
    backups_ok: u64,
    backups_failed: u64,
    prunes_ok: u64,
    prunes_failed: u64,
    prune_failures_unhealthy: u32,
    prunes_failed_in_a_row: u32,
    last_prune_error: Option<(DateTime<Utc>, String)>,
    copies_ok: u64,
    copies_failed: u64,
    copies_failed_in_a_row: u32,
    last_copy_error: Option<(DateTime<Utc>, String)>,
    last_result: Option<Result<(), String>>,
    last_finished: Option<DateTime<Utc>>,
    last_success: Option<(DateTime<Utc>, String)>,
    last_duration: f64,
    last_snapshot_bytes: u64,
    last_added_bytes: u64,
    last_revision: i64,
    backups_in_repository: Option<usize>,
    /// The newest backup in the repository (time, id), read by a standby.
    repository_newest: Option<(DateTime<Utc>, String)>,
    /// While a standby cannot reach etcd to campaign: why (nobody can be elected then, so
    /// nobody backs up, and /healthz says so rather than trusting the repository's age).
    election_unreachable: Option<String>,
    /// Scrub, drill and certificate results.
    checks: Arc<Mutex<crate::checks::CheckState>>,
    /// With --continuous: what capture has done, and its health bound.
    capture: Option<CaptureView>,
}

/// The capture side of the agent's state.
struct CaptureView {
    state: Arc<Mutex<CaptureState>>,
    rpo_bound: Duration,
    /// When this agent began to capture (the RPO counts from here until capture knows better).
    since: Option<DateTime<Utc>>,
    /// Why the last capture run ended, when it failed.
    last_failure: Option<String>,
}

impl CaptureView {
    fn rpo_seconds(&self, now: DateTime<Utc>) -> f64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.rpo_seconds(now)
            .or_else(|| self.since.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0))
            .unwrap_or(0.0)
    }

    /// Unhealthy while a recorded gap waits for the next full backup, or the RPO is over the bound.
    fn health(&self, now: DateTime<Utc>) -> (bool, String) {
        let rpo = self.rpo_seconds(now);
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let error = s
            .last_error
            .clone()
            .or_else(|| self.last_failure.clone())
            .map_or(String::new(), |e| format!("; last error: {e}"));
        if s.gap_open {
            return (false, format!("continuous capture recorded a gap (changes lost, see gaps/ in the repository): healthy again after the next full backup{error}"));
        }
        if rpo > self.rpo_bound.as_secs_f64() {
            return (
                false,
                format!("RPO {rpo:.1}s is over the bound of {}: every change is stored only up to revision {} (the server is at {}){error}", humantime::format_duration(self.rpo_bound), s.durable_revision, s.server_revision),
            );
        }
        (true, format!("ok: continuous capture, every change up to revision {} stored (RPO {rpo:.1}s, full backup {})", s.durable_revision, s.base.as_deref().unwrap_or("-")))
    }
}

impl State {
    /// Counts a retention run and logs it; failures in a row turn /healthz red.
    fn record_prune(&mut self, pruned: Result<etcdguard_repo::PruneReport>) {
        match pruned {
            Ok(r) => {
                self.prunes_ok += 1;
                self.prunes_failed_in_a_row = 0;
                info!(
                    "retention: {} backup(s) removed, {} pack(s) deleted",
                    r.manifests_removed, r.packs_deleted
                );
            }
            Err(e) => {
                self.prunes_failed += 1;
                self.prunes_failed_in_a_row += 1;
                self.last_prune_error = Some((Utc::now(), e.to_string()));
                warn!(kind = ?e.kind, in_a_row = self.prunes_failed_in_a_row, "retention failed: {e}");
            }
        }
    }

    /// Counts a `--copy-to` run and logs it; failures in a row turn /healthz red as
    /// retention failures do.
    fn record_copy(&mut self, copied: Result<crate::copy::CopyReport>) {
        match copied {
            Ok(r) => {
                self.copies_ok += 1;
                self.copies_failed_in_a_row = 0;
                if !r.copied.is_empty() || r.segments > 0 {
                    info!(
                        "copy: {} backup(s) and {} change segment(s) copied",
                        r.copied.len(),
                        r.segments
                    );
                }
            }
            Err(e) => {
                self.copies_failed += 1;
                self.copies_failed_in_a_row += 1;
                self.last_copy_error = Some((Utc::now(), e.to_string()));
                warn!(kind = ?e.kind, in_a_row = self.copies_failed_in_a_row, "copy failed: {e}");
            }
        }
    }

    /// Healthy while [`State::backup_health`] is and no scrub or drill has failed since the last
    /// good one; certificate warnings are extra lines.
    fn health(&self, now: DateTime<Utc>) -> (bool, String) {
        let (ok, text) = self.backup_health(now);
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).judge(ok, text, now)
    }

    /// Healthy while the last run succeeded (or none has finished yet), the last success is
    /// not older than two periods, and retention has not failed too often in a row.
    fn backup_health(&self, now: DateTime<Utc>) -> (bool, String) {
        let stale_after = self
            .every
            .checked_mul(2)
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or(chrono::Duration::MAX);
        // A standby takes no backups: it is healthy while the leader keeps the repository fresh.
        if self.role == "standby" {
            if let Some(e) = &self.election_unreachable {
                return (false, format!("standby; cannot reach etcd to take part in the election, so no agent can back up: {e}"));
            }
            return match &self.repository_newest {
                Some((at, id)) if now.signed_duration_since(*at) > stale_after => {
                    (false, format!("standby; stale: the newest backup in the repository ({id}) was at {}, over twice the schedule's period ago", fmt_time(Some(*at))))
                }
                Some((at, id)) => (true, format!("ok: standby; newest backup in the repository {id} at {}", fmt_time(Some(*at)))),
                None if now.signed_duration_since(self.started) > stale_after => (false, "standby; the repository has no backup (or cannot be read)".into()),
                None => (true, "ok: standby; no backup in the repository yet".into()),
            };
        }
        if self.prunes_failed_in_a_row >= self.prune_failures_unhealthy {
            if let Some((at, e)) = &self.last_prune_error {
                return (
                    false,
                    format!(
                        "retention (prune) failed {} times in a row, last at {}: {e}",
                        self.prunes_failed_in_a_row,
                        fmt_time(Some(*at))
                    ),
                );
            }
        }
        if self.copies_failed_in_a_row >= self.prune_failures_unhealthy {
            if let Some((at, e)) = &self.last_copy_error {
                return (
                    false,
                    format!(
                        "copy to the second repository failed {} times in a row, last at {}: {e}",
                        self.copies_failed_in_a_row,
                        fmt_time(Some(*at))
                    ),
                );
            }
        }
        if let Some(capture) = &self.capture {
            return capture.health(now);
        }
        match (&self.last_result, &self.last_success) {
            (Some(Err(e)), _) => (false, format!("the last backup failed at {}: {e}", fmt_time(self.last_finished))),
            (_, Some((at, id))) if now.signed_duration_since(*at) > stale_after => {
                (false, format!("stale: the last successful backup ({id}) was at {}, over twice the schedule's period ago", fmt_time(Some(*at))))
            }
            (_, Some((at, id))) => (true, format!("ok: last backup {id} at {}", fmt_time(Some(*at)))),
            (_, None) if now.signed_duration_since(self.started) > stale_after => (false, "no backup has succeeded since the agent started".into()),
            (_, None) => (true, "ok: no backup finished yet".into()),
        }
    }

    /// The metrics in the OpenMetrics text format (what Prometheus scrapes), through
    /// `prometheus-client`: a registry filled from the state at each scrape.
    fn metrics(&self, now: DateTime<Utc>) -> String {
        let mut registry = Registry::default();
        let by_result = |ok: u64, failed: u64| {
            let family = Family::<Vec<(String, String)>, Counter>::default();
            family.get_or_create(&vec![("result".to_string(), "success".to_string())]).inc_by(ok);
            family
                .get_or_create(&vec![("result".to_string(), "failure".to_string())])
                .inc_by(failed);
            family
        };
        let gauge = |v: f64| {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(v);
            g
        };
        let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        // Counters are named without `_total`; the encoder adds it.
        registry.register(
            "etcdguard_backup_runs",
            "Backups the agent attempted, by result",
            by_result(self.backups_ok, self.backups_failed),
        );
        registry.register(
            "etcdguard_prune_runs",
            "Retention runs (prune) after a backup, by result",
            by_result(self.prunes_ok, self.prunes_failed),
        );
        registry.register(
            "etcdguard_prune_consecutive_failures",
            "Retention runs that failed in a row (unhealthy at --prune-failures-unhealthy)",
            gauge(self.prunes_failed_in_a_row as f64),
        );
        registry.register(
            "etcdguard_copy_runs",
            "Copies to the --copy-to repository, by result",
            by_result(self.copies_ok, self.copies_failed),
        );
        registry.register(
            "etcdguard_copy_consecutive_failures",
            "Copies to the --copy-to repository that failed in a row (unhealthy at --prune-failures-unhealthy)",
            gauge(self.copies_failed_in_a_row as f64),
        );
        registry.register(
            "etcdguard_backup_last_success_timestamp_seconds",
            "When the last successful backup finished (0: none yet)",
            gauge(ts(self.last_success.as_ref().map(|s| s.0))),
        );
        registry.register(
            "etcdguard_backup_last_run_timestamp_seconds",
            "When the last backup run finished, whatever its result",
            gauge(ts(self.last_finished)),
        );
        registry.register(
            "etcdguard_backup_last_duration_seconds",
            "How long the last backup run took",
            gauge(self.last_duration),
        );
        registry.register(
            "etcdguard_backup_last_snapshot_bytes",
            "Size of the last backed-up snapshot",
            gauge(self.last_snapshot_bytes as f64),
        );
        registry.register(
            "etcdguard_backup_last_added_bytes",
            "Bytes the last backup added to the repository (after deduplication and compression)",
            gauge(self.last_added_bytes as f64),
        );
        registry.register(
            "etcdguard_backup_last_revision",
            "etcd revision of the last backup",
            gauge(self.last_revision as f64),
        );
        if let Some(n) = self.backups_in_repository {
            registry.register(
                "etcdguard_repository_backups",
                "Backups listed in the repository after the last run",
                gauge(n as f64),
            );
        }
        registry.register(
            "etcdguard_backup_next_run_timestamp_seconds",
            "When the next backup is due",
            gauge(ts(Some(self.next_run))),
        );
        registry.register(
            "etcdguard_backup_running",
            "1 while a backup runs",
            gauge(if self.running_since.is_some() { 1.0 } else { 0.0 }),
        );
        let healthy = self.health(now).0;
        registry.register(
            "etcdguard_agent_healthy",
            "1 when /healthz answers 200",
            gauge(if healthy { 1.0 } else { 0.0 }),
        );
        // One agent takes the backups; with leader election the others will be standby.
        let role = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        for r in ["active", "standby"] {
            role.get_or_create(&vec![("role".to_string(), r.to_string())]).set(if self.role == r {
                1.0
            } else {
                0.0
            });
        }
        registry.register(
            "etcdguard_agent_role",
            "The agent's role: active takes the backups, standby waits",
            role,
        );
        if let Some(capture) = self.capture.as_ref().filter(|_| self.role == "active") {
            let c = capture.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let counter = |v: u64| {
                let c = Counter::<u64>::default();
                c.inc_by(v);
                c
            };
            registry.register(
                "etcdguard_rpo_seconds",
                "Seconds of changes a disaster now would lose: since the oldest change not yet stored by continuous capture",
                gauge(capture.rpo_seconds(now)),
            );
            registry.register(
                "etcdguard_segments",
                "Segments of changes stored by continuous capture",
                counter(c.segments_written),
            );
            registry.register(
                "etcdguard_segment_bytes",
                "Bytes of segments stored by continuous capture",
                counter(c.segment_bytes),
            );
            registry.register(
                "etcdguard_capture_lag_revisions",
                "Revisions the server has that are not stored yet",
                gauge(c.lag_revisions() as f64),
            );
            registry.register(
                "etcdguard_capture_gaps",
                "Gaps recorded by continuous capture (changes lost; a new full backup follows)",
                counter(c.gaps),
            );
            registry.register(
                "etcdguard_capture_durable_revision",
                "Every change up to this revision is stored",
                gauge(c.durable_revision as f64),
            );
            registry.register(
                "etcdguard_capture_store_failures",
                "Failed attempts to store a segment (retried)",
                counter(c.store_failures),
            );
        }
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).register(&mut registry, now);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Raises `stop` on SIGTERM and SIGINT (instead of the default of dying at once); a second
/// signal while stopping ends the process at once (exit 1), as an impatient operator wants.
pub fn stop_on_signals(stop: &Stop) -> Result<()> {
    let failed = |e: std::io::Error| Error::failure(format!("installing the signal handler: {e}"));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag only from the second signal on.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.flag()).map_err(failed)?;
        signal_hook::flag::register(sig, stop.flag()).map_err(failed)?;
    }
    Ok(())
}

/// Runs the agent until `opts.runs` runs are done or `stop` is raised; `Ok` either way.
/// Log lines go to `tracing` (the command line picks text or JSON).
pub fn run(opts: AgentOptions, stop: Stop) -> Result<()> {
    if let Schedule::Every(every) = &opts.schedule {
        if *every < Duration::from_secs(1) {
            return Err(Error::usage("--every must be at least 1s"));
        }
        if chrono::Duration::from_std(*every)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .is_none()
        {
            return Err(Error::usage(format!(
                "--every {}: too long",
                humantime::format_duration(*every)
            )));
        }
    }
    if chrono::Duration::from_std(opts.jitter)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .is_none()
    {
        return Err(Error::usage(format!(
            "--jitter {}: too long",
            humantime::format_duration(opts.jitter)
        )));
    }
    let now = Utc::now();
    // `planned` is the schedule's time, `next` the same with jitter: the schedule goes on
    // from the planned times, so jitter never accumulates.
    let mut planned = opts.schedule.next(now, None).ok_or_else(|| {
        Error::usage(format!("the schedule {} never runs", opts.schedule.describe()))
    })?;
    let first = with_jitter(planned, opts.jitter, crate::spool::rand_u64());
    let state = Arc::new(Mutex::new(State {
        every: opts.schedule.period(now).saturating_add(opts.jitter),
        // With an election, standby until elected.
        role: if opts.election.is_some() && opts.runs != Some(0) { "standby" } else { "active" },
        started: now,
        running_since: None,
        next_run: first,
        backups_ok: 0,
        backups_failed: 0,
        prunes_ok: 0,
        prunes_failed: 0,
        prune_failures_unhealthy: opts.prune_failures_unhealthy.max(1),
        prunes_failed_in_a_row: 0,
        last_prune_error: None,
        copies_ok: 0,
        copies_failed: 0,
        copies_failed_in_a_row: 0,
        last_copy_error: None,
        last_result: None,
        last_finished: None,
        last_success: None,
        last_duration: 0.0,
        last_snapshot_bytes: 0,
        last_added_bytes: 0,
        last_revision: 0,
        backups_in_repository: None,
        repository_newest: None,
        election_unreachable: None,
        capture: opts.continuous.as_ref().map(|c| CaptureView {
            state: Arc::new(Mutex::new(CaptureState::default())),
            rpo_bound: c.rpo_bound,
            since: None,
            last_failure: None,
        }),
        checks: Arc::default(),
    }));
    if opts.listen != "off" {
        let server = tiny_http::Server::http(&opts.listen)
            .map_err(|e| Error::usage(format!("--listen {}: {e}", opts.listen)))?;
        info!("serving /healthz and /metrics on http://{}", server.server_addr());
        let state = state.clone();
        std::thread::spawn(move || serve(server, state));
    }
    if let Some(c) = &opts.continuous {
        info!(
            "capturing every change to {} (segments every {}, a full backup every {}, /healthz fails at an RPO over {})",
            opts.create.repo.url,
            humantime::format_duration(c.segment_interval),
            c.full_every.map_or("-".into(), |d| humantime::format_duration(d).to_string()),
            humantime::format_duration(c.rpo_bound)
        );
    } else {
        info!(
            "backing up to {} {}{}{}",
            opts.create.repo.url,
            opts.schedule.describe(),
            if opts.jitter.is_zero() {
                String::new()
            } else {
                format!(
                    " (each start delayed by up to {})",
                    humantime::format_duration(opts.jitter)
                )
            },
            if opts.policy.is_some() { ", applying retention after each backup" } else { "" }
        );
    }
    let election = match &opts.election {
        Some(settings) if opts.runs != Some(0) => Some(start_election(&opts, settings)?),
        _ => None,
    };
    // Scrub, drill and certificates on threads of their own; dropped (stopped) when `run` returns.
    let _checks = (opts.runs != Some(0)).then(|| {
        let checks_state = state.lock().unwrap_or_else(|p| p.into_inner()).checks.clone();
        let role = state.clone();
        let leading =
            Arc::new(move || role.lock().unwrap_or_else(|p| p.into_inner()).role == "active");
        crate::checks::Checks::start(
            &opts.checks,
            &opts.create,
            checks_state,
            leading,
            stop.clone(),
        )
    });
    let opts = Arc::new(opts);
    if let Some(settings) = opts.continuous.clone() {
        return run_continuous(&opts, &settings, &state, &stop, election.as_ref());
    }
    let mut next = first;
    let mut runs = 0u64;
    while opts.runs.is_none_or(|n| runs < n) {
        if sleep_until(next, &stop, election.as_ref()) {
            info!("stopping on request (idle)");
            return Ok(());
        }
        if let Some(election) = &election {
            if !election.is_leader() {
                let Some(newest) = wait_as_standby(election, &opts.create.repo, &state, &stop)
                else {
                    info!("stopping on request (standby)");
                    return Ok(());
                };
                // Go on from the repository's newest backup, not from when we were elected.
                let now = Utc::now();
                // The schedule's first time after that backup; when it has passed, run now.
                planned =
                    newest.and_then(|at| opts.schedule.next(at, Some(at))).unwrap_or(now).max(now);
                next = if planned <= now {
                    now
                } else {
                    with_jitter(planned, opts.jitter, crate::spool::rand_u64())
                };
                state.lock().unwrap_or_else(|p| p.into_inner()).next_run = next;
                info!(next = %fmt_time(Some(next)), "elected: this agent takes the backups now");
                continue;
            }
        }
        let started = Instant::now();
        let started_at = Utc::now();
        let Some(following) = opts.schedule.next(started_at, Some(planned)) else {
            info!("the schedule has no further run; stopping");
            return Ok(());
        };
        planned = following;
        let following = with_jitter(following, opts.jitter, crate::spool::rand_u64());
        next = following;
        state.lock().unwrap_or_else(|p| p.into_inner()).running_since = Some(started_at);
        // The run goes on a worker thread so a stop is answered within the bound even when
        // the step does not give up.
        let (done_tx, done_rx) = mpsc::channel();
        {
            let (opts, state, stop) = (opts.clone(), state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("etcdguard-run".into())
                .spawn(move || {
                    one_run(&opts, &state, &stop, started, following);
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::failure(format!("starting a run: {e}")))?;
        }
        loop {
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if stop.is_raised() => {
                    if done_rx.recv_timeout(STOP_GRACE).is_err() {
                        warn!("stopping on request: abandoning the running step (the repository is crash-safe)");
                        abandon(&opts.create.repo);
                    }
                    info!("stopped on request");
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        runs += 1;
        if stop.is_raised() {
            info!("stopped on request");
            return Ok(());
        }
    }
    Ok(())
}

/// `agent --continuous`: while this agent leads, capture runs on a worker thread; it is
/// stopped (at its next safe point: a segment is complete or absent) when leadership is lost
/// or a stop comes, and restarted after a failure. A new leader resumes from the last revision
/// stored in the repository, so a change of leader loses nothing; an old leader still storing
/// its last segment only repeats revisions, which readers take once. Retention runs after
/// each full backup capture takes.
/// With continuous capture and `--copy-to`: the segments stored since the last copy are
/// copied every ten segment intervals, within these bounds (each copy lists both
/// repositories' backups, so not at every segment).
const CONTINUOUS_COPY_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(60));

fn run_continuous(
    opts: &Arc<AgentOptions>,
    settings: &ContinuousSettings,
    state: &Arc<Mutex<State>>,
    stop: &Stop,
    election: Option<&Election>,
) -> Result<()> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let capture_state = match &lock().capture {
        Some(c) => c.state.clone(),
        None => return Ok(()),
    };
    let follow_options = FollowOptions {
        segment_interval: settings.segment_interval,
        full_every: settings.full_every,
        ..FollowOptions::new(opts.create.clone())
    };
    let mut retry_delay = Duration::from_secs(1);
    let mut runs = 0u64;
    while opts.runs.is_none_or(|n| runs < n) {
        if stop.is_raised() {
            info!("stopping on request (idle)");
            return Ok(());
        }
        if let Some(election) = election {
            if !election.is_leader() {
                if wait_as_standby(election, &opts.create.repo, state, stop).is_none() {
                    info!("stopping on request (standby)");
                    return Ok(());
                }
                info!("elected: this agent captures every change now");
            }
        }
        lock().role = "active";
        runs += 1;
        if let Some(c) = lock().capture.as_mut() {
            c.since.get_or_insert(Utc::now());
        }
        let leading = Stop::new();
        let (done_tx, done_rx) = mpsc::channel();
        {
            let (options, capture_state, leading) =
                (follow_options.clone(), capture_state.clone(), leading.clone());
            std::thread::Builder::new()
                .name("etcdguard-capture".into())
                .spawn(move || {
                    let result = crate::capture::follow(
                        &options,
                        &capture_state,
                        &mut |line| info!("{line}"),
                        &leading,
                    );
                    let _ = done_tx.send(result);
                })
                .map_err(|e| Error::failure(format!("starting capture: {e}")))?;
        }
        let mut fulls_seen = capture_state.lock().unwrap_or_else(|p| p.into_inner()).fulls_taken;
        let mut pruning: Option<std::thread::JoinHandle<()>> = None;
        let mut copying: Option<std::thread::JoinHandle<()>> = None;
        let mut last_copy: Option<Instant> = None;
        let ended = loop {
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => break Some(result),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Some(Err(Error::failure("capture ended without a result")))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let lost = election.is_some_and(|e| !e.is_leader());
            if stop.is_raised() || lost {
                leading.raise();
                if done_rx.recv_timeout(STOP_GRACE).is_err() {
                    warn!("capture did not stop in time: abandoning it (the repository is crash-safe)");
                    abandon(&opts.create.repo);
                }
                if stop.is_raised() {
                    info!("stopped on request");
                    return Ok(());
                }
                warn!("lost leadership: capture stopped; another agent goes on from the last revision stored");
                break None;
            }
            // A full backup taken by capture counts as a backup: health, metrics, retention.
            let c = capture_state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // The copy follows new fulls and, now and then, the segments stored since.
            if let Some(to) = &opts.copy_to {
                let every = (settings.segment_interval * 10)
                    .clamp(CONTINUOUS_COPY_BOUNDS.0, CONTINUOUS_COPY_BOUNDS.1);
                let due =
                    c.fulls_taken > fulls_seen || last_copy.is_none_or(|t| t.elapsed() >= every);
                if due && c.base.is_some() && copying.as_ref().is_none_or(|h| h.is_finished()) {
                    last_copy = Some(Instant::now());
                    let (from, to, state) = (opts.create.repo.clone(), to.clone(), state.clone());
                    copying = Some(std::thread::spawn(move || {
                        let copied = copy_to(&from, &to);
                        state.lock().unwrap_or_else(|p| p.into_inner()).record_copy(copied);
                    }));
                }
            }
            if c.fulls_taken > fulls_seen {
                fulls_seen = c.fulls_taken;
                {
                    let mut s = lock();
                    s.backups_ok += 1;
                    let now = Utc::now();
                    s.last_result = Some(Ok(()));
                    s.last_finished = Some(now);
                    s.last_success = Some((now, c.base.clone().unwrap_or_default()));
                    s.last_revision = c.base_revision;
                }
                if let Some(policy) = opts.policy.clone() {
                    if pruning.as_ref().is_none_or(|p| p.is_finished()) {
                        let (repo, state) = (opts.create.repo.clone(), state.clone());
                        pruning = Some(std::thread::spawn(move || {
                            let pruned = prune(&repo, Some(&policy), false);
                            state.lock().unwrap_or_else(|p| p.into_inner()).record_prune(pruned);
                        }));
                    }
                }
            }
        };
        match ended {
            Some(Ok(_)) => {
                retry_delay = Duration::from_secs(1);
            }
            Some(Err(e)) => {
                warn!(kind = ?e.kind, "capture failed: {e}; retrying in {}", humantime::format_duration(retry_delay));
                if let Some(c) = lock().capture.as_mut() {
                    c.last_failure = Some(e.to_string());
                }
                let until = Instant::now() + retry_delay;
                while Instant::now() < until && !stop.is_raised() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                retry_delay = (retry_delay * 2).min(Duration::from_secs(30));
            }
            None => {}
        }
    }
    Ok(())
}

fn start_election(opts: &AgentOptions, settings: &ElectionSettings) -> Result<Election> {
    let (cfg, _notes) =
        ConnectConfig::resolve(opts.create.conn.clone()).map_err(crate::error::client_error)?;
    let options = ElectionOptions {
        name: settings.name.clone(),
        value: settings.value.clone(),
        ttl: settings.ttl,
    };
    let election =
        Election::start(cfg, options).map_err(|e| Error::usage(format!("leader election: {e}")))?;
    info!(election = %settings.name, ttl = %humantime::format_duration(settings.ttl), "campaigning: only the elected agent takes backups");
    Ok(election)
}

/// The newest backup the repository lists (time, id), when it can be read.
fn newest_backup(repo: &RepoSpec) -> Option<Option<(DateTime<Utc>, String)>> {
    let (backups, _) = repo.open().ok()?.list_backups().ok()?;
    Some(backups.into_iter().max_by_key(|m| m.created).map(|m| (m.created, m.id)))
}

/// Waits as a standby until elected; `None` when a stop came first, else the newest backup's
/// time in the repository (read right after the election, `None` inside when there is none).
fn wait_as_standby(
    election: &Election,
    repo: &RepoSpec,
    state: &Mutex<State>,
    stop: &Stop,
) -> Option<Option<DateTime<Utc>>> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let every = lock().every;
    let refresh_every = (every / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    lock().role = "standby";
    info!("standby: another agent takes the backups");
    let mut refreshed: Option<Instant> = None;
    loop {
        if stop.is_raised() {
            return None;
        }
        if election.wait_for_leadership(Duration::from_millis(100)) {
            break;
        }
        let status = election.status();
        lock().election_unreachable = match status.role {
            // Before the first round has failed, it is just starting.
            Role::Connecting => status.last_error,
            _ => None,
        };
        if refreshed.is_none_or(|t| t.elapsed() >= refresh_every) {
            refreshed = Some(Instant::now());
            if let Some(newest) = newest_backup(repo) {
                lock().repository_newest = newest;
            }
        }
    }
    let newest = newest_backup(repo);
    let mut s = lock();
    s.role = "active";
    s.election_unreachable = None;
    if let Some(n) = &newest {
        s.repository_newest = n.clone();
        // The active agent's health goes on from the repository's newest backup.
        if let Some((at, id)) = n {
            if s.last_success.as_ref().is_none_or(|(t, _)| t < at) {
                s.last_success = Some((*at, id.clone()));
            }
        }
    }
    Some(newest.flatten().map(|(at, _)| at))
}

/// Sleeps until `deadline` (wall clock, so a cron time is met after a suspend or a clock
/// step); true when a stop came first. With `election`, also returns (false) as soon as this
/// agent no longer leads, so it reports standby at once rather than at its next run.
fn sleep_until(deadline: DateTime<Utc>, stop: &Stop, election: Option<&Election>) -> bool {
    let mut led = election.is_some_and(|e| e.is_leader());
    loop {
        if stop.is_raised() {
            return true;
        }
        if let Some(e) = election {
            let leads = e.is_leader();
            if led && !leads {
                return false;
            }
            led = leads;
        }
        let left = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// One backup, then retention when it succeeded; the state is updated as it goes.
fn one_run(
    opts: &AgentOptions,
    state: &Mutex<State>,
    stop: &Stop,
    started: Instant,
    next: DateTime<Utc>,
) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let result = create_stoppable(&opts.create, &mut |line| info!("{line}"), stop);
    let finished = Utc::now();
    {
        let mut s = lock();
        s.running_since = None;
        s.last_finished = Some(finished);
        s.last_duration = started.elapsed().as_secs_f64();
        s.next_run = next.max(finished);
        match &result {
            Ok(m) => {
                s.backups_ok += 1;
                s.checks.lock().unwrap_or_else(|p| p.into_inner()).backup_succeeded();
                s.last_result = Some(Ok(()));
                s.last_success = Some((finished, m.id.clone()));
                s.last_snapshot_bytes = m.snapshot.size;
                s.last_added_bytes = m.sizes.added;
                s.last_revision = m.etcd.revision;
            }
            Err(_) if stop.is_raised() => {}
            Err(e) => {
                s.backups_failed += 1;
                s.last_result = Some(Err(e.to_string()));
            }
        }
    }
    match &result {
        Ok(m) => {
            info!(backup = %m.id, revision = m.etcd.revision, added_bytes = m.sizes.added, "{}", created_line(m))
        }
        Err(e) if stop.is_raised() => info!("backup abandoned: {e}"),
        Err(e) => warn!(kind = ?e.kind, "backup failed: {e}"),
    }
    if result.is_ok() && !stop.is_raised() {
        if let Some(to) = &opts.copy_to {
            let copied = copy_to(&opts.create.repo, to);
            lock().record_copy(copied);
        }
        if let Some(policy) = &opts.policy {
            let pruned = prune(&opts.create.repo, Some(policy), false);
            lock().record_prune(pruned);
        }
    }
    if !stop.is_raised() {
        let count = count_backups(&opts.create.repo);
        lock().backups_in_repository = count;
    }
}

/// `--copy-to`: what the second repository lacks, from its newest backup on.
fn copy_to(from: &RepoSpec, to: &RepoSpec) -> Result<crate::copy::CopyReport> {
    let opts = crate::copy::CopyOptions {
        from: RepoSpec { transfer: Default::default(), ..from.clone() },
        to: to.clone(),
        backups: Vec::new(),
        from_destination_newest: true,
    };
    crate::copy::copy(&opts, &mut |event| {
        if let crate::copy::CopyEvent::Failed { error, .. } = event {
            warn!("not copied: {error}");
        }
    })
}

/// What a stop leaves of a step that did not give up: its spools and this process's
/// repository locks are removed; the step itself dies with the process.
fn abandon(repo: &RepoSpec) {
    crate::spool::remove_live();
    if let Ok(r) = repo.open() {
        release_our_locks(r.store().as_ref());
    }
}

/// Deletes the lock objects this process holds (same host name and PID).
fn release_our_locks(store: &dyn etcdguard_repo::Store) {
    let Ok(objects) = store.list("locks/") else { return };
    let host = etcdguard_repo::host::hostname();
    for o in objects {
        let Ok(bytes) = store.get(&o.key) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let ours = v.get("pid").and_then(|p| p.as_u64()) == Some(std::process::id() as u64)
            && v.get("hostname").and_then(|h| h.as_str()) == Some(host.as_str());
        if ours {
            let _ = store.delete(&o.key);
        }
    }
}

/// Whether `state` can be locked within `bound` (a poisoned lock still counts: the data is
/// there, a panicking thread left it).
fn lock_within<T>(state: &Mutex<T>, bound: Duration) -> bool {
    let until = std::time::Instant::now() + bound;
    loop {
        match state.try_lock() {
            Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => return true,
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
    }
}

fn serve(server: tiny_http::Server, state: Arc<Mutex<State>>) {
    for request in server.incoming_requests() {
        let now = Utc::now();
        // Liveness: the process answers and its state is not wedged. It says nothing about
        // backups (a long storage outage must not get every agent restarted: /healthz).
        if request.url() == "/livez" {
            let (status, body) = match lock_within(&state, Duration::from_secs(2)) {
                true => (200, "alive\n"),
                false => (503, "the agent's state has been locked for over 2 s: it looks wedged\n"),
            };
            let _ =
                request.respond(tiny_http::Response::from_string(body).with_status_code(status));
            continue;
        }
        let (status, body, content_type) = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            match request.url() {
                "/healthz" | "/readyz" => {
                    let (ok, text) = s.health(now);
                    (if ok { 200 } else { 503 }, text + "\n", "text/plain; charset=utf-8")
                }
                "/metrics" => (
                    200,
                    s.metrics(now),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                _ => (
                    404,
                    "not found: try /livez, /healthz or /metrics\n".into(),
                    "text/plain; charset=utf-8",
                ),
            }
        };
        respond(request, status, body, content_type);
    }
}

/// Answers one probe or scrape (the agent's and the operator's endpoints); a client that went
/// away is not an error.
pub fn respond(request: tiny_http::Request, status: u16, body: String, content_type: &str) {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The abandon path of a stop: this process's locks go, another process's stay.
    #[test]
    fn release_our_locks_removes_only_this_process_locks() {
        let dir = tempfile::tempdir().unwrap();
        let store = etcdguard_repo::open_url(dir.path().to_str().unwrap()).unwrap();
        let ours = etcdguard_repo::lock::Lock::acquire(store.clone(), false, "backup").unwrap();
        // Another process on this host (only the fields the release looks at matter).
        let theirs = serde_json::json!({
            "exclusive": false, "purpose": "backup", "hostname": etcdguard_repo::host::hostname(),
            "pid": std::process::id().wrapping_add(1), "created": Utc::now().to_rfc3339(), "refreshed": Utc::now().to_rfc3339(),
        });
        store.put("locks/theirs.json", serde_json::to_vec(&theirs).unwrap().into()).unwrap();
        let before: Vec<String> =
            store.list("locks/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(before.len(), 2, "{before:?}");
        release_our_locks(store.as_ref());
        let after: Vec<String> = store.list("locks/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(after, vec!["locks/theirs.json".to_string()]);
        drop(ours);
    }

    #[test]
    fn continuous_health_follows_the_rpo_bound_and_gaps() {
        let now = Utc::now();
        let capture =
            Arc::new(Mutex::new(CaptureState { durable_revision: 10, ..Default::default() }));
        let view = CaptureView {
            state: capture.clone(),
            rpo_bound: Duration::from_secs(60),
            since: Some(now - chrono::Duration::seconds(5)),
            last_failure: None,
        };
        // Nothing known yet: the RPO counts from the start of capture.
        assert_eq!(view.rpo_seconds(now), 5.0);
        assert!(view.health(now).0);
        // A change waiting for 61 s: over the bound.
        capture.lock().unwrap().durable_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(view.rpo_seconds(now), 1.0);
        capture.lock().unwrap().pending_since = Some(now - chrono::Duration::seconds(61));
        let (ok, text) = view.health(now);
        assert!(!ok && text.contains("RPO 61.0s"), "{text}");
        capture.lock().unwrap().pending_since = None;
        assert!(view.health(now).0);
        capture.lock().unwrap().gap_open = true;
        let (ok, text) = view.health(now);
        assert!(!ok && text.contains("gap"), "{text}");
    }

    #[test]
    fn prune_failures_turn_health_red_at_the_threshold() {
        let now = Utc::now();
        let mut s = State {
            every: Duration::from_secs(3600),
            role: "active",
            started: now,
            running_since: None,
            next_run: now,
            backups_ok: 1,
            backups_failed: 0,
            prunes_ok: 0,
            prunes_failed: 0,
            prune_failures_unhealthy: 3,
            prunes_failed_in_a_row: 0,
            last_prune_error: None,
            copies_ok: 0,
            copies_failed: 0,
            copies_failed_in_a_row: 0,
            last_copy_error: None,
            last_result: Some(Ok(())),
            last_finished: Some(now),
            last_success: Some((now, "abc".into())),
            last_duration: 1.0,
            last_snapshot_bytes: 1,
            last_added_bytes: 1,
            last_revision: 1,
            backups_in_repository: Some(1),
            repository_newest: None,
            election_unreachable: None,
            capture: None,
            checks: Arc::default(),
        };
        for n in 1..=3 {
            s.prunes_failed += 1;
            s.prunes_failed_in_a_row = n;
            s.last_prune_error = Some((now, "the repository is in use".into()));
            let (ok, text) = s.health(now);
            assert_eq!(ok, n < 3, "{n}: {text}");
        }
        let metrics = s.metrics(now);
        assert!(metrics.contains("etcdguard_prune_runs_total{result=\"failure\"} 3"), "{metrics}");
        assert!(metrics.contains("etcdguard_agent_healthy 0"), "{metrics}");
        assert!(metrics.contains("etcdguard_agent_role{role=\"active\"} 1"), "{metrics}");
    }
}
