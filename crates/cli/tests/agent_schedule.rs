//! `agent --schedule CRON`: the first backup waits for the schedule's first match, runs
//! follow the schedule, logs come as JSON lines with `--log-format json`, and /metrics is
//! OpenMetrics with the agent's role. Bad expressions exit 2. Real etcd 3.5 snapshot.

mod agent_support;
mod live_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::{get_raw as get, one_key_snapshot, sample};
use etcdguard_testkit::free_port;
use live_support::*;

#[test]
fn cron_schedule_runs_on_its_matches_with_json_logs() {
    let work = tempfile::tempdir().unwrap();
    let snap = one_key_snapshot(work.path());
    let repo = work.path().join("repo");
    let port = free_port();
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let child = etcdguard()
        .arg("agent")
        .arg("--repo")
        .arg(&repo)
        .arg("--from-file")
        .arg(&snap)
        .args([
            "--schedule",
            "*/4 * * * * *",
            "--runs",
            "2",
            "--log-format",
            "json",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Before the first run: the next run is the schedule's next match (a multiple of 4 s), not "now".
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some((200, body)) = get(port, "/metrics") {
            break body;
        }
        assert!(Instant::now() < deadline, "no /metrics");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(metrics.contains("application/openmetrics-text"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert_eq!(sample(&metrics, "etcdguard_agent_role{role=\"active\"}"), Some(1.0), "{metrics}");
    let next = sample(&metrics, "etcdguard_backup_next_run_timestamp_seconds").unwrap();
    if sample(&metrics, "etcdguard_backup_runs_total{result=\"success\"}") == Some(0.0) {
        assert_eq!(next % 4.0, 0.0, "next run {next} is not on the schedule");
        assert!(
            next > started - 1.0 && next <= started + 5.0,
            "next run {next}, started {started}"
        );
    }

    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()
            && l["level"].is_string()
            && l["message"].is_string()),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("on schedule \"*/4 * * * * *\"")),
        "{stderr}"
    );
    let created: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["backup"].is_string()).collect();
    assert_eq!(created.len(), 2, "{stderr}");

    let list = etcdguard()
        .args(["backup", "list", "--repo"])
        .arg(&repo)
        .args(["-w", "json"])
        .output()
        .unwrap();
    expect_code(&list, 0, "backup list");
    let backups: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 2);
    for (b, logged) in backups.iter().zip(&created) {
        assert_eq!(b["id"], logged["backup"]);
    }
    let at = |b: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(b["created"].as_str().unwrap()).unwrap()
    };
    let gap = (at(&backups[1]) - at(&backups[0])).num_milliseconds();
    assert!((2_000..=6_000).contains(&gap), "backups {gap} ms apart on a 4 s schedule");
}

#[test]
fn bad_schedules_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let repo = repo.to_str().unwrap();
    for bad in ["61 * * * *", "every hour", "0 0 30 2 *"] {
        let out = etcdguard()
            .args(["agent", "--repo", repo, "--schedule", bad, "--listen", "off", "--runs", "0"])
            .output()
            .unwrap();
        expect_code(&out, 2, bad);
        assert!(text(&out.stderr).contains("--schedule"), "{bad}: {}", text(&out.stderr));
    }
    let out = etcdguard()
        .args(["agent", "--repo", repo, "--schedule", "0 * * * *", "--every", "1h", "--runs", "0"])
        .output()
        .unwrap();
    expect_code(&out, 2, "--schedule with --every");
    let out = etcdguard()
        .args(["agent", "--repo", repo, "--jitter", "soon", "--runs", "0"])
        .output()
        .unwrap();
    expect_code(&out, 2, "--jitter soon");
    assert!(!std::path::Path::new(repo).exists());
}
