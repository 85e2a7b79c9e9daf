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

use std::fmt::Write as _;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcdguard_repo::retention::Policy;

use crate::backup::{create_stoppable, prune, CreateOptions};
use crate::error::{Error, Result};
use crate::repo::{count_backups, RepoSpec};
use crate::stop::Stop;
use crate::text::created_line;

/// How long a running step gets to give up after a stop before it is abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(8);
/// The documented bound: a stop returns from [`run`] within this.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// Where the agent's log lines go (the command line adds time stamps, or JSON).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// What the agent does.
pub struct AgentOptions {
    pub create: CreateOptions,
    /// Retention after each successful backup; `None` for none.
    pub policy: Option<Policy>,
    /// Time from the start of one backup to the start of the next.
    pub every: Duration,
    /// Address of the HTTP endpoint, or `off`.
    pub listen: String,
    /// Stop after this many runs.
    pub runs: Option<u64>,
    /// Unhealthy after this many retention runs failed in a row (at least 1).
    pub prune_failures_unhealthy: u32,
}

/// What the agent has done, for /healthz and /metrics.
struct State {
    every: Duration,
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
    last_result: Option<Result<(), String>>,
    last_finished: Option<DateTime<Utc>>,
    last_success: Option<(DateTime<Utc>, String)>,
    last_duration: f64,
    last_snapshot_bytes: u64,
    last_added_bytes: u64,
    last_revision: i64,
    backups_in_repository: Option<usize>,
}

impl State {
    /// Healthy while the last run succeeded (or none has finished yet), the last success is
    /// not older than two periods, and retention has not failed too often in a row.
    fn health(&self, now: DateTime<Utc>) -> (bool, String) {
        let stale_after = chrono::Duration::from_std(self.every * 2).unwrap_or(chrono::Duration::MAX);
        if self.prunes_failed_in_a_row >= self.prune_failures_unhealthy {
            if let Some((at, e)) = &self.last_prune_error {
                return (false, format!("retention (prune) failed {} times in a row, last at {}: {e}", self.prunes_failed_in_a_row, fmt_time(Some(*at))));
            }
        }
        match (&self.last_result, &self.last_success) {
            (Some(Err(e)), _) => (false, format!("the last backup failed at {}: {e}", fmt_time(self.last_finished))),
            (_, Some((at, id))) if now.signed_duration_since(*at) > stale_after => {
                (false, format!("stale: the last successful backup ({id}) was at {}, over twice --every ago", fmt_time(Some(*at))))
            }
            (_, Some((at, id))) => (true, format!("ok: last backup {id} at {}", fmt_time(Some(*at)))),
            (_, None) if now.signed_duration_since(self.started) > stale_after => (false, "no backup has succeeded since the agent started".into()),
            (_, None) => (true, "ok: no backup finished yet".into()),
        }
    }

    /// The Prometheus text exposition format.
    fn metrics(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        metric(
            "etcdguard_backup_runs_total",
            "counter",
            "Backups the agent attempted, by result.",
            &[("{result=\"success\"}", self.backups_ok as f64), ("{result=\"failure\"}", self.backups_failed as f64)],
        );
        metric(
            "etcdguard_prune_runs_total",
            "counter",
            "Retention runs (prune) after a backup, by result.",
            &[("{result=\"success\"}", self.prunes_ok as f64), ("{result=\"failure\"}", self.prunes_failed as f64)],
        );
        metric(
            "etcdguard_prune_consecutive_failures",
            "gauge",
            "Retention runs that failed in a row (unhealthy at --prune-failures-unhealthy).",
            &[("", self.prunes_failed_in_a_row as f64)],
        );
        metric(
            "etcdguard_backup_last_success_timestamp_seconds",
            "gauge",
            "When the last successful backup finished (0: none yet).",
            &[("", ts(self.last_success.as_ref().map(|s| s.0)))],
        );
        metric("etcdguard_backup_last_run_timestamp_seconds", "gauge", "When the last backup run finished, whatever its result.", &[("", ts(self.last_finished))]);
        metric("etcdguard_backup_last_duration_seconds", "gauge", "How long the last backup run took.", &[("", self.last_duration)]);
        metric("etcdguard_backup_last_snapshot_bytes", "gauge", "Size of the last backed-up snapshot.", &[("", self.last_snapshot_bytes as f64)]);
        metric(
            "etcdguard_backup_last_added_bytes",
            "gauge",
            "Bytes the last backup added to the repository (after deduplication and compression).",
            &[("", self.last_added_bytes as f64)],
        );
        metric("etcdguard_backup_last_revision", "gauge", "etcd revision of the last backup.", &[("", self.last_revision as f64)]);
        if let Some(n) = self.backups_in_repository {
            metric("etcdguard_repository_backups", "gauge", "Backups listed in the repository after the last run.", &[("", n as f64)]);
        }
        metric("etcdguard_backup_next_run_timestamp_seconds", "gauge", "When the next backup is due.", &[("", ts(Some(self.next_run)))]);
        metric("etcdguard_backup_running", "gauge", "1 while a backup runs.", &[("", if self.running_since.is_some() { 1.0 } else { 0.0 })]);
        let healthy = self.health(now).0;
        metric("etcdguard_agent_healthy", "gauge", "1 when /healthz answers 200.", &[("", if healthy { 1.0 } else { 0.0 })]);
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
pub fn run(opts: AgentOptions, log: Log, stop: Stop) -> Result<()> {
    if opts.every < Duration::from_secs(1) {
        return Err(Error::usage("--every must be at least 1s"));
    }
    if chrono::Duration::from_std(opts.every).ok().and_then(|d| Utc::now().checked_add_signed(d)).is_none() {
        return Err(Error::usage(format!("--every {}: too long", humantime::format_duration(opts.every))));
    }
    let now = Utc::now();
    let state = Arc::new(Mutex::new(State {
        every: opts.every,
        started: now,
        running_since: None,
        next_run: now,
        backups_ok: 0,
        backups_failed: 0,
        prunes_ok: 0,
        prunes_failed: 0,
        prune_failures_unhealthy: opts.prune_failures_unhealthy.max(1),
        prunes_failed_in_a_row: 0,
        last_prune_error: None,
        last_result: None,
        last_finished: None,
        last_success: None,
        last_duration: 0.0,
        last_snapshot_bytes: 0,
        last_added_bytes: 0,
        last_revision: 0,
        backups_in_repository: None,
    }));
    if opts.listen != "off" {
        let server = tiny_http::Server::http(&opts.listen).map_err(|e| Error::usage(format!("--listen {}: {e}", opts.listen)))?;
        log(&format!("serving /healthz and /metrics on http://{}", server.server_addr()));
        let state = state.clone();
        std::thread::spawn(move || serve(server, state));
    }
    log(&format!(
        "backing up to {} every {}{}",
        opts.create.repo.url,
        humantime::format_duration(opts.every),
        if opts.policy.is_some() { ", applying retention after each backup" } else { "" }
    ));
    let opts = Arc::new(opts);
    let mut next = Instant::now();
    let mut runs = 0u64;
    while opts.runs.is_none_or(|n| runs < n) {
        if sleep_until(next, &stop) {
            log("stopping on request (idle)");
            return Ok(());
        }
        let started = Instant::now();
        next = started + opts.every;
        state.lock().unwrap_or_else(|p| p.into_inner()).running_since = Some(Utc::now());
        // The run goes on a worker thread so a stop is answered within the bound even when
        // the step does not give up.
        let (done_tx, done_rx) = mpsc::channel();
        {
            let (opts, state, log, stop) = (opts.clone(), state.clone(), log.clone(), stop.clone());
            std::thread::Builder::new()
                .name("etcdguard-run".into())
                .spawn(move || {
                    one_run(&opts, &state, &log, &stop, started, next);
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::failure(format!("starting a run: {e}")))?;
        }
        loop {
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if stop.is_raised() => {
                    if done_rx.recv_timeout(STOP_GRACE).is_err() {
                        log("stopping on request: abandoning the running step (the repository is crash-safe)");
                        abandon(&opts.create.repo);
                    }
                    log("stopped on request");
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        runs += 1;
        if stop.is_raised() {
            log("stopped on request");
            return Ok(());
        }
    }
    Ok(())
}

/// Sleeps until `deadline`; true when a stop came first.
fn sleep_until(deadline: Instant, stop: &Stop) -> bool {
    loop {
        if stop.is_raised() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// One backup, then retention when it succeeded; the state is updated as it goes.
fn one_run(opts: &AgentOptions, state: &Mutex<State>, log: &Log, stop: &Stop, started: Instant, next: Instant) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let result = create_stoppable(&opts.create, &mut |line| log(line), stop);
    let finished = Utc::now();
    {
        let mut s = lock();
        s.running_since = None;
        s.last_finished = Some(finished);
        s.last_duration = started.elapsed().as_secs_f64();
        s.next_run = finished + chrono::Duration::from_std(next.saturating_duration_since(Instant::now())).unwrap_or_default();
        match &result {
            Ok(m) => {
                s.backups_ok += 1;
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
        Ok(m) => log(&created_line(m)),
        Err(e) if stop.is_raised() => log(&format!("backup abandoned: {e}")),
        Err(e) => log(&format!("backup failed: {e}")),
    }
    if result.is_ok() && !stop.is_raised() {
        if let Some(policy) = &opts.policy {
            let pruned = prune(&opts.create.repo, Some(policy), false);
            let mut s = lock();
            match pruned {
                Ok(r) => {
                    s.prunes_ok += 1;
                    s.prunes_failed_in_a_row = 0;
                    log(&format!("retention: {} backup(s) removed, {} pack(s) deleted", r.manifests_removed, r.packs_deleted));
                }
                Err(e) => {
                    s.prunes_failed += 1;
                    s.prunes_failed_in_a_row += 1;
                    s.last_prune_error = Some((Utc::now(), e.to_string()));
                    log(&format!("retention failed: {e}"));
                }
            }
        }
    }
    if !stop.is_raised() {
        let count = count_backups(&opts.create.repo);
        lock().backups_in_repository = count;
    }
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
    let host = etcdguard_repo::lock::hostname();
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

fn serve(server: tiny_http::Server, state: Arc<Mutex<State>>) {
    for request in server.incoming_requests() {
        let now = Utc::now();
        let (status, body, content_type) = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            match request.url() {
                "/healthz" | "/readyz" => {
                    let (ok, text) = s.health(now);
                    (if ok { 200 } else { 503 }, text + "\n", "text/plain; charset=utf-8")
                }
                "/metrics" => (200, s.metrics(now), "text/plain; version=0.0.4; charset=utf-8"),
                _ => (404, "not found: try /healthz or /metrics\n".into(), "text/plain; charset=utf-8"),
            }
        };
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", content_type) {
            response = response.with_header(header);
        }
        let _ = request.respond(response);
    }
}
