//! `etcdguard agent`: `backup create` on a schedule, retention after each backup, and an HTTP
//! endpoint with `/healthz` and Prometheus `/metrics`. Each run is the same code path as the
//! one-shot commands, so a backup the agent takes is the one `backup create` would take.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use etcdguard_repo::retention::parse_duration;

use crate::cmd::backup::{create_backup, created_line, prune_repo, CreateArgs, KeepArgs};
use crate::exit::{Code, Failure};

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Time from the start of one backup to the start of the next (e.g. 30m, 1h, 6h). The
    /// first backup is taken at start; a backup that overruns starts the next one at once.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub every: Duration,
    /// Address of the HTTP endpoint (/healthz, /metrics), or `off`.
    #[arg(long, value_name = "ADDR", env = "ETCDGUARD_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Stop after this many runs (default: run until stopped). `--runs 0` checks the
    /// arguments and the listen address, then exits.
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
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
    /// Healthy while the last run succeeded (or none has finished yet) and the last success
    /// is not older than two periods.
    fn health(&self, now: DateTime<Utc>) -> (bool, String) {
        let stale_after = chrono::Duration::from_std(self.every * 2).unwrap_or(chrono::Duration::MAX);
        match (&self.last_result, &self.last_success) {
            (Some(Err(e)), _) => (false, format!("the last backup failed at {}: {e}", fmt_time(self.last_finished))),
            (_, Some((at, id))) if now - *at > stale_after => {
                (false, format!("stale: the last successful backup ({id}) was at {}, over twice --every ago", fmt_time(Some(*at))))
            }
            (_, Some((at, id))) => (true, format!("ok: last backup {id} at {}", fmt_time(Some(*at)))),
            (_, None) if now - self.started > stale_after => (false, "no backup has succeeded since the agent started".into()),
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

fn log(message: impl AsRef<str>) {
    eprintln!("{} {}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ"), message.as_ref());
}

pub fn run(args: AgentArgs) -> Result<()> {
    if args.every < Duration::from_secs(1) {
        return Err(Failure::new(Code::Usage, "--every must be at least 1s").into());
    }
    let now = Utc::now();
    let state = Arc::new(Mutex::new(State {
        every: args.every,
        started: now,
        running_since: None,
        next_run: now,
        backups_ok: 0,
        backups_failed: 0,
        prunes_ok: 0,
        prunes_failed: 0,
        last_result: None,
        last_finished: None,
        last_success: None,
        last_duration: 0.0,
        last_snapshot_bytes: 0,
        last_added_bytes: 0,
        last_revision: 0,
        backups_in_repository: None,
    }));
    if args.listen != "off" {
        let server = tiny_http::Server::http(&args.listen)
            .map_err(|e| Failure::new(Code::Usage, format!("--listen {}: {e}", args.listen)))?;
        log(format!("serving /healthz and /metrics on http://{}", server.server_addr()));
        let state = state.clone();
        std::thread::spawn(move || serve(server, state));
    }
    let policy = args.keep.policy();
    log(format!(
        "backing up to {} every {}{}",
        args.create.repo.repo,
        humantime::format_duration(args.every),
        if policy.is_some() { ", applying retention after each backup" } else { "" }
    ));
    let mut next = Instant::now();
    let mut runs = 0u64;
    while args.runs.is_none_or(|n| runs < n) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let started = Instant::now();
        next = started + args.every;
        state.lock().unwrap().running_since = Some(Utc::now());
        let result = create_backup(&args.create);
        let finished = Utc::now();
        {
            let mut s = state.lock().unwrap();
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
                Err(e) => {
                    s.backups_failed += 1;
                    s.last_result = Some(Err(format!("{e:#}")));
                }
            }
        }
        match &result {
            Ok(m) => log(created_line(m)),
            Err(e) => log(format!("backup failed: {e:#}")),
        }
        if result.is_ok() {
            if let Some(policy) = &policy {
                let pruned = prune_repo(&args.create.repo, Some(policy), false);
                let mut s = state.lock().unwrap();
                match pruned {
                    Ok(r) => {
                        s.prunes_ok += 1;
                        log(format!("retention: {} backup(s) removed, {} pack(s) deleted", r.manifests_removed, r.packs_deleted));
                    }
                    Err(e) => {
                        s.prunes_failed += 1;
                        log(format!("retention failed: {e}"));
                    }
                }
            }
        }
        let count = crate::cmd::backup::count_backups(&args.create.repo);
        state.lock().unwrap().backups_in_repository = count;
        runs += 1;
    }
    Ok(())
}

fn serve(server: tiny_http::Server, state: Arc<Mutex<State>>) {
    for request in server.incoming_requests() {
        let now = Utc::now();
        let (status, body, content_type) = {
            let s = state.lock().unwrap();
            match request.url() {
                "/healthz" | "/readyz" => {
                    let (ok, text) = s.health(now);
                    (if ok { 200 } else { 503 }, text + "\n", "text/plain; charset=utf-8")
                }
                "/metrics" => (200, s.metrics(now), "text/plain; version=0.0.4; charset=utf-8"),
                _ => (404, "not found: try /healthz or /metrics\n".into(), "text/plain; charset=utf-8"),
            }
        };
        let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status).with_header(header));
    }
}
