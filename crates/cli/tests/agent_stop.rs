//! The agent stops on SIGTERM/SIGINT within its documented bound (10 s) and exits 0, whether
//! idle or in the middle of a live backup, leaving no spool and no repository lock behind;
//! a retention run that keeps failing turns /healthz to 503; a new create sweeps the spools
//! of killed runs and keeps live ones (judged by their flock, not a PID). Real etcd 3.5.

mod agent_support;
mod live_support;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::*;
use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
use live_support::*;

const STOP_BOUND: Duration = Duration::from_secs(10);

impl Agent {
    /// Sends `signal` and waits for the exit: (exit code, time it took).
    fn stop(&mut self, signal: libc::c_int) -> (Option<i32>, Duration) {
        let sent = Instant::now();
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return (status.code(), sent.elapsed());
            }
            if sent.elapsed() > STOP_BOUND * 3 {
                return (None, sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// [`agent_support::poll`] every 20 ms: the tests catch brief states (a backup running).
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    poll(what, timeout, Duration::from_millis(20), String::new, &mut check)
}

fn spools(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().unwrap().to_string_lossy().starts_with(".etcdguard-verify-")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn locks(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join("locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn spawn_agent(args: &[&str], extra: impl IntoIterator<Item = String>, log: &Path) -> Agent {
    let mut cmd = etcdguard();
    cmd.arg("agent")
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Agent(cmd.spawn().unwrap())
}

/// SIGTERM at two points of a live backup (streaming the snapshot; checking and uploading
/// it): exit 0 within the bound, no spool, no lock, nothing listed.
#[test]
fn sigterm_mid_backup_stops_within_bound_and_leaves_nothing() {
    let server = big_server();
    let full = {
        let dir = tempfile::tempdir().unwrap();
        server.snapshot_save(&dir.path().join("full.db"));
        std::fs::metadata(dir.path().join("full.db")).unwrap().len()
    };
    for (point, wait_for_whole_file) in
        [("while streaming", false), ("after the snapshot arrived", true)]
    {
        let work = tempfile::tempdir().unwrap();
        let repo = work.path().join("repo");
        let scratch = work.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let log = work.path().join("agent.log");
        let repo_s = repo.display().to_string();
        let scratch_s = scratch.display().to_string();
        let mut agent = spawn_agent(
            &[
                "--repo",
                &repo_s,
                "--scratch-dir",
                &scratch_s,
                "--every",
                "1h",
                "--listen",
                "off",
                "--endpoints",
                server.endpoint(),
            ],
            [],
            &log,
        );
        // The spool fills as the stream arrives (and is chunked at the same time): part of
        // it is "streaming", all of it "arrived" (checks and uploads go on after).
        wait_for(&format!("the spool {point}"), Duration::from_secs(60), || {
            spools(&scratch).iter().any(|s| {
                let len = std::fs::metadata(s.join("snapshot.db")).map(|m| m.len()).unwrap_or(0);
                if wait_for_whole_file {
                    len >= full
                } else {
                    len > 0 && len < full / 2
                }
            })
        });
        let (code, took) = agent.stop(libc::SIGTERM);
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, Some(0), "{point}: exit after SIGTERM\n{log_text}");
        assert!(took < STOP_BOUND, "{point}: SIGTERM took {took:?}\n{log_text}");
        assert!(
            spools(&scratch).is_empty(),
            "{point}: spool left: {:?}\n{log_text}",
            spools(&scratch)
        );
        assert!(locks(&repo).is_empty(), "{point}: lock left: {:?}\n{log_text}", locks(&repo));
        assert!(
            log_text.contains("backup abandoned"),
            "{point}: the signal came mid-backup: {log_text}"
        );
        eprintln!("{point}: stopped in {took:?}\n{log_text}");
        if repo.join("config").exists() {
            let out = etcdguard()
                .args(["backup", "list", "--repo"])
                .arg(&repo)
                .args(["-w", "json"])
                .output()
                .unwrap();
            expect_code(&out, 0, "backup list");
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            // Abandoned, not half-listed; a backup that beat the signal would be whole.
            for b in listed.as_array().unwrap() {
                let id = b["id"].as_str().unwrap();
                let v = etcdguard()
                    .args(["backup", "verify", id, "--repo"])
                    .arg(&repo)
                    .output()
                    .unwrap();
                expect_code(&v, 0, "verify of a listed backup");
            }
        }
    }
}

/// Idle between runs: SIGTERM and SIGINT each end the agent at once with exit 0.
#[test]
fn sigterm_and_sigint_while_idle_exit_zero() {
    let work = tempfile::tempdir().unwrap();
    let snap = one_key_snapshot(work.path());
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let repo = work.path().join(format!("repo-{signal}"));
        let port = free_port();
        let log = work.path().join(format!("agent-{signal}.log"));
        let mut agent = spawn_agent(
            &[
                "--from-file",
                snap.to_str().unwrap(),
                "--every",
                "1h",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            ["--repo".to_string(), repo.display().to_string()],
            &log,
        );
        wait_for("the first backup", Duration::from_secs(60), || {
            get(port, "/metrics").is_some_and(|(_, m)| {
                sample(&m, "etcdguard_backup_runs_total{result=\"success\"}") == Some(1.0)
            })
        });
        let (code, took) = agent.stop(signal);
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, Some(0), "signal {signal}\n{log_text}");
        assert!(took < Duration::from_secs(2), "idle stop took {took:?}");
        assert!(locks(&repo).is_empty());
    }
}

/// Retention that fails (the repository is held by another writer, so prune cannot take
/// its exclusive lock) counts in /healthz after --prune-failures-unhealthy runs in a row,
/// and health comes back once a prune succeeds.
#[test]
fn failing_retention_turns_health_red_after_n_in_a_row() {
    let work = tempfile::tempdir().unwrap();
    let snap = one_key_snapshot(work.path());
    let repo = work.path().join("repo");
    let out = etcdguard()
        .args(["backup", "create", "--repo"])
        .arg(&repo)
        .arg("--from-file")
        .arg(&snap)
        .output()
        .unwrap();
    expect_code(&out, 0, "first backup");
    // Another writer's shared lock: creates go on, prune (exclusive) must fail.
    let store = etcdguard_repo::open_url(repo.to_str().unwrap()).unwrap();
    let held = etcdguard_repo::lock::Lock::acquire(store, false, "test writer").unwrap();

    let port = free_port();
    let log = work.path().join("agent.log");
    let mut agent = spawn_agent(
        &[
            "--from-file",
            snap.to_str().unwrap(),
            "--every",
            "1s",
            "--keep-last",
            "1",
            "--prune-failures-unhealthy",
            "3",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        ["--repo".to_string(), repo.display().to_string()],
        &log,
    );
    let metrics = || get(port, "/metrics").map(|(_, m)| m).unwrap_or_default();
    wait_for("two failed prunes", Duration::from_secs(60), || {
        sample(&metrics(), "etcdguard_prune_runs_total{result=\"failure\"}").unwrap_or(0.0) >= 2.0
    });
    let m = metrics();
    if sample(&m, "etcdguard_prune_consecutive_failures") == Some(2.0) {
        let (status, body) = get(port, "/healthz").unwrap();
        assert_eq!(status, 200, "two failures in a row are under the threshold: {body}");
    }
    wait_for("three failed prunes", Duration::from_secs(60), || {
        sample(&metrics(), "etcdguard_prune_consecutive_failures").unwrap_or(0.0) >= 3.0
    });
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("retention (prune) failed 3 times in a row")
            || body.contains("retention (prune) failed 4 times in a row"),
        "{body}"
    );
    assert!(body.contains("in use"), "the cause is named: {body}");
    assert_eq!(sample(&metrics(), "etcdguard_agent_healthy"), Some(0.0));

    drop(held);
    wait_for("a prune that succeeds", Duration::from_secs(60), || {
        sample(&metrics(), "etcdguard_prune_consecutive_failures") == Some(0.0)
    });
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let (code, _) = agent.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
}

/// Spools of killed runs (their lock free) are removed by the next create; a spool whose
/// owner lives (the lock held, here by this test) is kept. New spools are private.
#[test]
fn create_sweeps_dead_spools_and_keeps_live_ones() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/a", b"1");
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let make = |name: &str| {
        let dir = scratch.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("snapshot.db.part"), vec![7u8; 4096]).unwrap();
        let lock = std::fs::File::create(dir.join(".lock")).unwrap();
        (dir, lock)
    };
    let (dead, dead_lock) = make(".etcdguard-verify-00000000000dead0");
    drop(dead_lock); // its owner is gone: the lock is free
    let (live, live_lock) = make(".etcdguard-verify-00000000000a1fe0");
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(live_lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let other = scratch.join("unrelated");
    std::fs::create_dir(&other).unwrap();

    let repo = work.path().join("repo");
    let create = || {
        etcdguard()
            .args(["backup", "create", "--repo"])
            .arg(&repo)
            .arg("--scratch-dir")
            .arg(&scratch)
            .args(["--endpoints", server.endpoint()])
            .output()
            .unwrap()
    };
    let out = create();
    expect_code(&out, 0, "backup create");
    assert!(!dead.exists(), "the dead spool is still there");
    assert!(
        text(&out.stderr).contains("removed 1 scratch dir(s) of killed runs"),
        "{}",
        text(&out.stderr)
    );
    assert!(live.join("snapshot.db.part").exists(), "the live spool was removed");
    assert!(other.exists());
    assert_eq!(spools(&scratch), vec![live.clone()], "the run's own spool is gone");
    drop(live_lock);
    // Now its owner is gone too: the next create takes it.
    let out = create();
    expect_code(&out, 0, "second backup create");
    assert!(spools(&scratch).is_empty());
}
