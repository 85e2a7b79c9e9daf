//! What the agent checks besides taking backups: the scrub (`--verify-every`, [`crate::scrub`]),
//! the restore drill (`--drill-every`, [`crate::drill`]) and certificate expiry (`--pki-dir`,
//! else the newest backup's manifest; [`crate::certs`]).
//!
//! Scrub and drill run on a thread of their own, one after the other, so a long drill never
//! delays a backup; they run only while this agent is the active one (with leader election,
//! the leader): every agent would read the same repository, multiplying its egress and load
//! for no new information. A failure never stops the agent: it turns `/healthz` red (with the
//! reason) until the next good scrub or drill, and counts in the metrics. Certificates are
//! watched by every agent, standbys included: in a DaemonSet each agent sees its own node's
//! PKI directory. A certificate close to expiry is a warning in the `/healthz` body, never a
//! 503: `/healthz` is the liveness probe, and restarting the agent cannot renew a certificate.
//!
//! ## How it works
//!
//! What the agent checks besides backing up is `checks` (started by `agent::run`, stopped when
//! it returns; its results are a `CheckState` inside the agent's state, folded into `/healthz`
//! and `/metrics`). Scrub and drill run one after the other on one thread of their own, so a
//! long drill never delays a backup, and only while the agent's role is `active`: the leader
//! alone reads the repository for them (every agent would read the same objects). A failure is
//! logged, counted and makes `/healthz` 503 with its reason until the next good run; it never
//! ends the agent. `scrub` (`--verify-every`, `--verify-budget`) runs `backup verify`'s checks
//! (`backup::check_stored`, shared with `verify`) on the newest backup, then older ones in
//! rotation (a `Cursor` between scrubs) until the budget is spent, and reads every pack those
//! backups use whole (`Repository::packs_of`, `check_pack` in `repo/src/repository/scrub.rs`),
//! each once per round of the rotation. It takes no lock, so a failure is re-checked against a
//! prune that ran meanwhile (backup gone: skipped; index rewritten: reloaded, checked once
//! more). `drill` (`--drill-every`, `--drill-etcd`) fetches the newest backup into a spool,
//! checks its status against the manifest, restores it with `restore::snapshot_restore`, checks
//! the restored revision, and with an etcd binary boots it on 127.0.0.1 (free ports, `ETCD_*`
//! variables removed, `PR_SET_PDEATHSIG` so it dies with the agent, killed by PID) and reads
//! the first key with `Session::first_key` (`client/src/kv.rs`), which must match the snapshot
//! at that revision. `certs` turns `node::pki`'s scan into the manifest's `CertificateRecord`s
//! (`backup create --pki-dir`) and words expiry warnings; a second thread re-reads `--pki-dir`
//! every minute (else the newest backup's manifest every ten) on every agent, standbys
//! included, for `etcdguard_certificate_expiry_seconds` and the `/healthz` warning lines (a
//! warning never turns `/healthz` red: it is the liveness probe, and a restart renews nothing).
//! `tests/agent_checks.rs` flips a bit in a pack, boots etcd 3.5.1 in a drill and checks
//! certificate expiry; the agent tests share `tests/agent_support`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcdguard_repo::manifest::CertificateRecord;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::backup::CreateOptions;
use crate::drill::{drill, DrillOptions};
use crate::repo::RepoSpec;
use crate::scrub::{scrub, Cursor, ScrubOptions};
use crate::stop::Stop;

/// How often the certificates of `--pki-dir` are read again.
pub const PKI_DIR_REFRESH: Duration = Duration::from_secs(60);
/// How often the newest backup's manifest is read again for its certificates (it lists
/// every manifest of the repository, so not every minute).
pub const MANIFEST_REFRESH: Duration = Duration::from_secs(600);

/// A scrub or drill that found no backup looks again after this (or its period, if shorter).
const NOTHING_YET_RETRY: Duration = Duration::from_secs(10);

/// The agent's checks; all off by default.
#[derive(Clone, Debug)]
pub struct ChecksOptions {
    /// Scrub this often (the first at start).
    pub verify_every: Option<Duration>,
    /// A scrub starts no new backup after this long.
    pub verify_budget: Duration,
    /// Drill this often (the first at start, after a due scrub).
    pub drill_every: Option<Duration>,
    /// Boot this etcd binary on the drill's data dir.
    pub drill_etcd: Option<PathBuf>,
    /// Watch certificate expiry (of `--pki-dir`, else of the newest backup's manifest).
    pub certificates: bool,
    /// Warn in `/healthz` when a certificate expires within this.
    pub cert_warn: Duration,
}

impl Default for ChecksOptions {
    fn default() -> ChecksOptions {
        ChecksOptions {
            verify_every: None,
            verify_budget: Duration::from_secs(600),
            drill_every: None,
            drill_etcd: None,
            certificates: false,
            cert_warn: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Results so far, for `/healthz` and `/metrics`.
#[derive(Default)]
pub(crate) struct CheckState {
    scrub_enabled: bool,
    scrubs_ok: u64,
    scrubs_failed: u64,
    scrub_last_success: Option<DateTime<Utc>>,
    scrub_last_run: Option<DateTime<Utc>>,
    /// Set by a failed scrub, cleared by the next good one.
    scrub_error: Option<(DateTime<Utc>, String)>,
    /// A backup succeeded after a failed scrub: scrub again now rather than a period later
    /// (the backup stored fresh copies of what the scrub found damaged).
    rescrub: bool,
    backups_checked_ok: u64,
    backups_checked_damaged: u64,
    packs_checked: u64,
    drill_enabled: bool,
    drills_ok: u64,
    drills_failed: u64,
    drill_last_success: Option<DateTime<Utc>>,
    drill_last_duration: f64,
    drill_error: Option<(DateTime<Utc>, String)>,
    cert_warn: Duration,
    /// Where the certificates come from (`--pki-dir /x`, `backup <id>`); `None`: not watched.
    cert_source: Option<String>,
    certificates: Vec<CertificateRecord>,
    cert_error: Option<String>,
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl CheckState {
    /// Called when a backup succeeded.
    pub(crate) fn backup_succeeded(&mut self) {
        if self.scrub_error.is_some() {
            self.rescrub = true;
        }
    }

    /// Drops the failures found while leading (see `check_loop`).
    fn forget_findings(&mut self) {
        self.scrub_error = None;
        self.drill_error = None;
    }

    /// Folds the checks into the backup health (`ok`, `text`): a failed scrub or drill makes
    /// it red with its reason first; certificate warnings are added as lines.
    pub(crate) fn judge(&self, ok: bool, text: String, now: DateTime<Utc>) -> (bool, String) {
        let mut red = Vec::new();
        if let Some((at, e)) = &self.scrub_error {
            red.push(format!("the last scrub failed at {}: {e}", fmt_time(*at)));
        }
        if let Some((at, e)) = &self.drill_error {
            red.push(format!("the last restore drill failed at {}: {e}", fmt_time(*at)));
        }
        let mut lines = red.clone();
        lines.push(text);
        for c in &self.certificates {
            if let Some(w) = crate::certs::expiry_warning(c, now, self.cert_warn) {
                lines.push(format!("warning: {w}"));
            }
        }
        if let Some(e) = &self.cert_error {
            lines.push(format!("warning: certificates not watched: {e}"));
        }
        (ok && red.is_empty(), lines.join("\n"))
    }

    pub(crate) fn register(&self, registry: &mut Registry, now: DateTime<Utc>) {
        let gauge = |v: f64| {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(v);
            g
        };
        let by_result = |ok: u64, failed: u64| {
            let family = Family::<Vec<(String, String)>, Counter>::default();
            family.get_or_create(&vec![("result".to_string(), "success".to_string())]).inc_by(ok);
            family
                .get_or_create(&vec![("result".to_string(), "failure".to_string())])
                .inc_by(failed);
            family
        };
        let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        if self.scrub_enabled {
            registry.register(
                "etcdguard_scrub_runs",
                "Scrubs (re-reading stored backups), by result",
                by_result(self.scrubs_ok, self.scrubs_failed),
            );
            let failures = Counter::<u64>::default();
            failures.inc_by(self.scrubs_failed);
            registry.register(
                "etcdguard_scrub_failures",
                "Scrubs that found damage or could not read the repository",
                failures,
            );
            registry.register(
                "etcdguard_scrub_backups_checked",
                "Backups a scrub checked, by result (failure: damaged or unreadable)",
                by_result(self.backups_checked_ok, self.backups_checked_damaged),
            );
            let packs = Counter::<u64>::default();
            packs.inc_by(self.packs_checked);
            registry.register("etcdguard_scrub_packs_checked", "Packs a scrub read whole", packs);
            registry.register(
                "etcdguard_scrub_last_success_timestamp_seconds",
                "When the last good scrub finished (0: none yet)",
                gauge(ts(self.scrub_last_success)),
            );
            registry.register(
                "etcdguard_scrub_last_run_timestamp_seconds",
                "When the last scrub finished, whatever its result",
                gauge(ts(self.scrub_last_run)),
            );
        }
        if self.drill_enabled {
            registry.register(
                "etcdguard_drill_runs",
                "Restore drills, by result",
                by_result(self.drills_ok, self.drills_failed),
            );
            let failures = Counter::<u64>::default();
            failures.inc_by(self.drills_failed);
            registry.register("etcdguard_drill_failures", "Restore drills that failed", failures);
            registry.register(
                "etcdguard_drill_last_success_timestamp_seconds",
                "When the last good restore drill finished (0: none yet)",
                gauge(ts(self.drill_last_success)),
            );
            registry.register(
                "etcdguard_drill_last_duration_seconds",
                "How long the last good restore drill took",
                gauge(self.drill_last_duration),
            );
        }
        if self.cert_source.is_some() {
            let family = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
            for c in &self.certificates {
                let left =
                    c.not_after.signed_duration_since(now).num_milliseconds() as f64 / 1000.0;
                family
                    .get_or_create(&vec![
                        ("path".to_string(), c.path.clone()),
                        ("subject".to_string(), c.subject.clone()),
                    ])
                    .set(left);
            }
            registry.register(
                "etcdguard_certificate_expiry_seconds",
                "Seconds until the certificate's notAfter (negative once expired)",
                family,
            );
        }
    }
}

/// The checks thread (and the certificate thread); dropping it stops them.
pub(crate) struct Checks {
    stop: Stop,
    threads: Vec<JoinHandle<()>>,
}

impl Checks {
    /// Starts what `opts` asks for. `leading` says whether this agent is the active one.
    pub(crate) fn start(
        opts: &ChecksOptions,
        create: &CreateOptions,
        state: Arc<Mutex<CheckState>>,
        leading: Arc<dyn Fn() -> bool + Send + Sync>,
        stop: Stop,
    ) -> Checks {
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut s = lock();
            s.scrub_enabled = opts.verify_every.is_some();
            s.drill_enabled = opts.drill_every.is_some();
            s.cert_warn = opts.cert_warn;
        }
        let mut threads = Vec::new();
        if opts.verify_every.is_some() || opts.drill_every.is_some() {
            let scrub_opts = ScrubOptions {
                repo: create.repo.clone(),
                scratch_dir: create.scratch_dir.clone(),
                budget: opts.verify_budget,
                record: true,
            };
            let drill_opts = DrillOptions {
                repo: create.repo.clone(),
                scratch_dir: create.scratch_dir.clone(),
                etcd: opts.drill_etcd.clone(),
            };
            let (opts, state, stop) = (opts.clone(), state.clone(), stop.clone());
            let spawned =
                std::thread::Builder::new().name("etcdguard-checks".into()).spawn(move || {
                    check_loop(&opts, &scrub_opts, &drill_opts, &state, leading.as_ref(), &stop)
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => warn!("cannot start the scrub and drill thread: {e}"),
            }
        }
        if opts.certificates {
            let (repo, pki_dir, state, stop) =
                (create.repo.clone(), create.pki_dir.clone(), state.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("etcdguard-certs".into())
                .spawn(move || cert_loop(&repo, pki_dir, &state, &stop));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => warn!("cannot start the certificate thread: {e}"),
            }
        }
        Checks { stop, threads }
    }
}

/// How long a check under way gets to give up when the agent returns (the agent's own stop
/// bound has already been spent on its backup run).
const CHECKS_GRACE: Duration = Duration::from_secs(1);

impl Drop for Checks {
    /// The agent is returning: a check under way gets [`CHECKS_GRACE`] to give up, else its
    /// spool is removed and it dies with the process (a drill's etcd with it: it was started
    /// with a parent-death signal).
    fn drop(&mut self) {
        self.stop.raise();
        let deadline = Instant::now() + CHECKS_GRACE;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.threads.iter().any(|t| !t.is_finished()) {
            crate::spool::remove_live();
        }
    }
}

/// Sleeps up to `d`, waking for a stop; true when stopped.
fn nap(d: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.is_raised() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
    stop.is_raised()
}

fn check_loop(
    opts: &ChecksOptions,
    scrub_opts: &ScrubOptions,
    drill_opts: &DrillOptions,
    state: &Mutex<CheckState>,
    leading: &(dyn Fn() -> bool + Send + Sync),
    stop: &Stop,
) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let mut cursor = Cursor::default();
    let start = Instant::now();
    let (mut next_scrub, mut next_drill) =
        (opts.verify_every.map(|_| start), opts.drill_every.map(|_| start));
    let mut was_leading = false;
    loop {
        if nap(Duration::from_millis(200), stop) {
            return;
        }
        if !leading() {
            if std::mem::take(&mut was_leading) {
                // Only the leader checks; its findings, not this agent's old ones, speak for
                // the repository now (else a standby stays red after the damage is mended).
                lock().forget_findings();
                info!("no longer leading: scrub and drill results are the new leader's to report");
            }
            continue;
        }
        was_leading = true;
        // With nothing to check yet (no backup), look again soon rather than a period later.
        if std::mem::take(&mut lock().rescrub) && next_scrub.is_some() {
            info!("scrub: a backup succeeded since the last scrub found damage; scrubbing again from the newest backup");
            cursor = Cursor::default();
            next_scrub = Some(Instant::now());
        }
        if let (Some(due), Some(every)) = (next_scrub, opts.verify_every) {
            if Instant::now() >= due {
                let checked = run_scrub(scrub_opts, &mut cursor, &lock, stop);
                next_scrub = Some(if checked {
                    (due + every).max(Instant::now())
                } else {
                    Instant::now() + NOTHING_YET_RETRY.min(every)
                });
            }
        }
        if stop.is_raised() {
            return;
        }
        if let (Some(due), Some(every)) = (next_drill, opts.drill_every) {
            if Instant::now() >= due && leading() {
                let drilled = run_drill(drill_opts, &lock, stop);
                next_drill = Some(if drilled {
                    (due + every).max(Instant::now())
                } else {
                    Instant::now() + NOTHING_YET_RETRY.min(every)
                });
            }
        }
    }
}

/// One scrub, its result recorded; false when there was nothing to check (no backup yet).
fn run_scrub<'s>(
    opts: &ScrubOptions,
    cursor: &mut Cursor,
    lock: &dyn Fn() -> std::sync::MutexGuard<'s, CheckState>,
    stop: &Stop,
) -> bool {
    let result = scrub(opts, cursor, stop, &mut |line| info!("scrub: {line}"));
    let now = Utc::now();
    if stop.is_raised() {
        return true;
    }
    if let Ok(r) = &result {
        if r.checked.is_empty() && r.backups == 0 {
            info!("scrub: the repository has no backup yet");
            return false;
        }
    }
    let mut s = lock();
    s.scrub_last_run = Some(now);
    match result {
        Ok(report) => {
            let damaged: Vec<String> = report
                .failures()
                .map(|c| {
                    format!(
                        "backup {}: {}",
                        c.id,
                        c.result.as_ref().err().map_or("", |e| e.as_str())
                    )
                })
                .collect();
            let ok = report.checked.len() - damaged.len();
            s.backups_checked_ok += ok as u64;
            s.backups_checked_damaged += damaged.len() as u64;
            s.packs_checked += report.packs_checked as u64;
            if damaged.is_empty() {
                s.scrubs_ok += 1;
                s.scrub_last_success = Some(now);
                s.scrub_error = None;
                info!(
                    checked = report.checked.len(),
                    packs = report.packs_checked,
                    backups = report.backups,
                    seconds = report.elapsed.as_secs_f64(),
                    "scrub: {} of {} backup(s) checked, no damage",
                    report.checked.len(),
                    report.backups
                );
            } else {
                s.scrubs_failed += 1;
                let first = damaged[0].clone();
                let more = if damaged.len() > 1 {
                    format!(
                        " (and {} more damaged backup(s); see the agent log)",
                        damaged.len() - 1
                    )
                } else {
                    String::new()
                };
                s.scrub_error = Some((now, format!("{first}{more}")));
                for d in &damaged {
                    warn!("scrub: damage found: {d}");
                }
            }
        }
        Err(e) => {
            s.scrubs_failed += 1;
            s.scrub_error = Some((now, format!("cannot read the repository: {e}")));
            warn!(kind = ?e.kind, "scrub failed: {e}");
        }
    }
    true
}

/// One drill, its result recorded; false when there was nothing to restore (no backup yet).
fn run_drill<'s>(
    opts: &DrillOptions,
    lock: &dyn Fn() -> std::sync::MutexGuard<'s, CheckState>,
    stop: &Stop,
) -> bool {
    let result = drill(opts, stop, &mut |line| info!("{line}"));
    let now = Utc::now();
    if stop.is_raised() {
        return true;
    }
    let mut s = lock();
    match result {
        Ok(Some(d)) => {
            s.drills_ok += 1;
            s.drill_last_success = Some(now);
            s.drill_last_duration = d.elapsed.as_secs_f64();
            s.drill_error = None;
            info!(
                backup = %d.backup,
                revision = d.revision,
                booted = d.booted,
                key = d.key_read.as_deref().unwrap_or("-"),
                seconds = d.elapsed.as_secs_f64(),
                "drill: backup {} restored and checked{}",
                d.backup,
                if d.booted { ", etcd booted on it and answered" } else { "" }
            );
        }
        Ok(None) => {
            info!("drill: the repository has no backup yet");
            return false;
        }
        Err(e) => {
            s.drills_failed += 1;
            s.drill_error = Some((now, e.to_string()));
            warn!(kind = ?e.kind, "drill failed: {e}");
        }
    }
    true
}

/// Re-reads the watched certificates now and then.
fn cert_loop(repo: &RepoSpec, pki_dir: Option<PathBuf>, state: &Mutex<CheckState>, stop: &Stop) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (source, found) = match &pki_dir {
            Some(dir) => (
                format!("--pki-dir {}", dir.display()),
                etcdguard_node::pki::scan_dir(dir)
                    .map(|s| s.certificates.iter().map(crate::certs::record).collect())
                    .map_err(|e| e.to_string()),
            ),
            None => newest_certificates(repo),
        };
        {
            let mut s = lock();
            s.cert_source = Some(source);
            match found {
                Ok(certs) => {
                    s.certificates = certs;
                    s.cert_error = None;
                }
                // Keep the last list: a passing read error does not hide an expiring certificate.
                // A repository that cannot be read is reported by the backups themselves.
                Err(e) if pki_dir.is_some() => s.cert_error = Some(e),
                Err(_) => {}
            }
        }
        if nap(if pki_dir.is_some() { PKI_DIR_REFRESH } else { MANIFEST_REFRESH }, stop) {
            return;
        }
    }
}

/// The certificates recorded in the newest backup's manifest.
fn newest_certificates(repo: &RepoSpec) -> (String, Result<Vec<CertificateRecord>, String>) {
    let listed = repo.open_unlocked().and_then(|r| Ok(r.list_backups()?));
    match listed {
        Ok((backups, _)) => match backups.last() {
            Some(m) => (format!("backup {}", m.id), Ok(m.certificates.clone())),
            None => ("the newest backup".into(), Ok(Vec::new())),
        },
        Err(e) => ("the newest backup".into(), Err(format!("reading the repository: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_scrub_or_drill_is_red_until_cleared_and_certificates_only_warn() {
        let now = Utc::now();
        let mut s = CheckState {
            scrub_enabled: true,
            drill_enabled: true,
            cert_warn: Duration::from_secs(30 * 86_400),
            ..Default::default()
        };
        s.cert_source = Some("--pki-dir /pki".into());
        s.certificates = vec![
            CertificateRecord {
                path: "etcd/server.crt".into(),
                subject: "CN=soon".into(),
                not_after: now + chrono::Duration::days(5),
                not_before: None,
                serial: String::new(),
                is_ca: false,
            },
            CertificateRecord {
                path: "ca.crt".into(),
                subject: "CN=later".into(),
                not_after: now + chrono::Duration::days(365),
                not_before: None,
                serial: String::new(),
                is_ca: true,
            },
        ];
        let (ok, text) = s.judge(true, "ok: last backup x".into(), now);
        assert!(ok, "{text}");
        assert!(
            text.starts_with(
                "ok: last backup x\nwarning: certificate etcd/server.crt (CN=soon) expires in"
            ),
            "{text}"
        );
        assert!(!text.contains("ca.crt"), "{text}");
        s.scrub_error = Some((now, "backup b1: pack 00: damaged".into()));
        let (ok, text) = s.judge(true, "ok: last backup x".into(), now);
        assert!(!ok);
        assert!(text.starts_with("the last scrub failed at "), "{text}");
        s.scrub_error = None;
        s.drill_error = Some((now, "drill: boom".into()));
        assert!(!s.judge(true, "ok".into(), now).0);
        let mut registry = Registry::default();
        s.register(&mut registry, now);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let line = out
            .lines()
            .find(|l| {
                l.starts_with("etcdguard_certificate_expiry_seconds{path=\"etcd/server.crt\"")
            })
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 5.0 * 86_400.0).abs() < 2.0, "{line}");
        assert!(out.contains("etcdguard_scrub_failures_total 0"), "{out}");
        assert!(out.contains("etcdguard_drill_last_success_timestamp_seconds 0"), "{out}");
        // Losing the leadership drops this agent's findings: the new leader reports now.
        s.scrub_error = Some((now, "backup b1: pack 00: damaged".into()));
        s.forget_findings();
        assert!(s.judge(true, "ok".into(), now).0);
    }
}
