//! Three `etcdguard agent`s for one cluster (real etcd 3.5, three members) and one local
//! repository elect one of themselves: about one backup per interval in the repository,
//! never two close together, and when the active agent is killed (-9) a standby takes over
//! within the lease TTL and goes on from the repository's newest backup.

mod agent_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use agent_support::{get, sample, wait_for};
use chrono::{DateTime, Utc};
use etcdguard_testkit::{free_port, EtcdCluster, EtcdVersion};
use live_support::etcdguard;

const EVERY: Duration = Duration::from_secs(4);
const TTL: Duration = Duration::from_secs(3);

/// One agent process, killed by PID when dropped.
struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(endpoints: &str, repo: &Path, work: &Path, n: usize) -> Agent {
        let port = free_port();
        let log = work.join(format!("agent{n}.log"));
        let child = etcdguard()
            .arg("agent")
            .arg("--repo")
            .arg(repo)
            .args([
                "--endpoints",
                endpoints,
                "--every",
                "4s",
                "--elect-ttl",
                "3s",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, port, log }
    }

    fn metrics(&self) -> String {
        get(self.port, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    fn role(&self) -> Option<&'static str> {
        let m = self.metrics();
        match (
            sample(&m, "etcdguard_agent_role{role=\"active\"}"),
            sample(&m, "etcdguard_agent_role{role=\"standby\"}"),
        ) {
            (Some(a), Some(s)) if a == 1.0 && s == 0.0 => Some("active"),
            (Some(a), Some(s)) if a == 0.0 && s == 1.0 => Some("standby"),
            _ => None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Creation times of the backups in the repository, oldest first (none before it exists).
fn created_times(repo: &Path) -> Vec<DateTime<Utc>> {
    if !repo.exists() {
        return Vec::new();
    }
    let out = etcdguard()
        .args(["backup", "list", "--repo"])
        .arg(repo)
        .args(["-w", "json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new(); // created by the first backup: may be half made while polled
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut times: Vec<DateTime<Utc>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            DateTime::parse_from_rfc3339(b["created"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc)
        })
        .collect();
    times.sort();
    times
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

#[test]
fn three_agents_elect_one_and_a_standby_takes_over_when_it_dies() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5, 3);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let endpoints = cluster.endpoints_arg();
    let mut agents: Vec<Option<Agent>> =
        (0..3).map(|n| Some(Agent::start(&endpoints, &repo, work.path(), n))).collect();
    let logs = |agents: &[Option<Agent>]| {
        agents
            .iter()
            .flatten()
            .map(|a| format!("--- {}\n{}", a.log.display(), a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // One of them is elected and takes the first backup; the other two stand by.
    let mut active = None;
    wait_for("an elected agent and a first backup", Duration::from_secs(60), || {
        active = agents.iter().position(|a| a.as_ref().is_some_and(|a| a.role() == Some("active")));
        active.is_some() && !created_times(&repo).is_empty()
    });
    let first_active = active.unwrap();
    let roles: Vec<_> = agents.iter().flatten().map(|a| a.role()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == Some("active")).count(),
        1,
        "{roles:?}\n{}",
        logs(&agents)
    );
    assert_eq!(
        roles.iter().filter(|r| **r == Some("standby")).count(),
        2,
        "{roles:?}\n{}",
        logs(&agents)
    );

    // Let it work for a few intervals, then kill -9 it (its lease is not revoked).
    std::thread::sleep(Duration::from_secs(16));
    let killed = agents[first_active].take().unwrap();
    let killed_log = killed.log();
    let killed_at = Utc::now();
    drop(killed);

    std::thread::sleep(Duration::from_secs(18));
    // The survivors: one active (it took over), one standby, both healthy (the standby from
    // the repository's state).
    let survivors: Vec<&Agent> = agents.iter().flatten().collect();
    let roles: Vec<_> = survivors.iter().map(|a| a.role()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == Some("active")).count(),
        1,
        "{roles:?}\n{}",
        logs(&agents)
    );
    assert_eq!(
        roles.iter().filter(|r| **r == Some("standby")).count(),
        1,
        "{roles:?}\n{}",
        logs(&agents)
    );
    for a in &survivors {
        let (status, body) = get(a.port, "/healthz").unwrap();
        assert_eq!(status, 200, "{body}\n{}", logs(&agents));
        if a.role() == Some("standby") {
            assert!(body.contains("standby"), "{body}");
        }
    }
    let new_active = survivors.iter().find(|a| a.role() == Some("active")).unwrap();
    assert!(new_active.log().contains("elected"), "{}", new_active.log());
    let ended_at = Utc::now();
    agents.clear();

    let times = created_times(&repo);
    assert!(!times.is_empty(), "backup list failed or found nothing");
    let every = EVERY.as_secs_f64();
    let span = secs(ended_at - times[0]);
    let expected = (span / every).floor() as usize + 1;
    let gaps: Vec<f64> = times.windows(2).map(|w| secs(w[1] - w[0])).collect();
    let report = format!("{} backups over {span:.1}s (expected about {expected}), gaps {gaps:?}\nkilled agent:\n{killed_log}", times.len());
    assert!(times.len() + 1 >= expected && times.len() <= expected + 1, "{report}");
    assert!(
        gaps.iter().all(|g| *g >= every / 2.0),
        "two backups closer than half an interval: {report}"
    );
    // Across the kill: the gap from the last backup before it to the first after it.
    let before =
        times.iter().rfind(|t| **t <= killed_at).copied().expect("a backup before the kill");
    let after = times.iter().find(|t| **t > killed_at).copied().expect("a backup after the kill");
    let failover_gap = secs(after - before);
    assert!(
        failover_gap <= every + TTL.as_secs_f64() + 4.0,
        "failover gap {failover_gap:.1}s: {report}"
    );
    assert!(
        times.iter().filter(|t| **t > killed_at).count() >= 3,
        "the new leader keeps the schedule: {report}"
    );
}
