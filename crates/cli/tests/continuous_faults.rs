//! `agent --continuous` under faults, against real etcd (3.5) and a real S3 server (moto):
//! - the etcd leader moves twice during capture (`etcdctl move-leader`);
//! - the member capture watches is killed (SIGKILL): capture moves to another endpoint;
//! - the S3 server is unreachable for ~10 s while writes go on: segments catch up, the RPO
//!   metric rises over the bound (/healthz 503) and falls back after.
//!
//! After each: the changes stored equal, change for change, the cluster's own history after
//! the full backup (no gap, no duplicate), and `backup restore --at` the last revision, booted
//! with real etcd, answers `endpoint hashkv` as the live cluster does.

mod backup_support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_support::{etcdguard, live_history, ok_cmd, restore_one_member, run, s3_env, Moto};
use etcdguard_testkit::{free_port, EtcdCluster, EtcdServer, EtcdVersion};
use serde_json::Value;

/// One test at a time: each runs clusters, agents and a write load whose timing (RPO) the
/// assertions measure, on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// One `agent --continuous`, killed by PID when dropped.
struct Agent {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(repo: &str, endpoints: &str, work: &Path, extra: &[&str]) -> Agent {
        let port = free_port();
        let log = work.join(format!("agent-{port}.log"));
        let child = s3_env(&mut etcdguard())
            .args([
                "agent",
                "--continuous",
                "--repo",
                repo,
                "--endpoints",
                endpoints,
                "--segment-interval",
                "300ms",
                "--full-every",
                "1h",
            ])
            .args(["--elect-ttl", "3s", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, port, log }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = get(self.port, "/metrics")?;
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn health(&self) -> Option<u16> {
        get(self.port, "/healthz").map(|(s, _)| s)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every change up to `rev` is stored.
    fn wait_durable(&self, rev: i64, timeout: Duration) {
        let start = Instant::now();
        while self.metric("etcdguard_capture_durable_revision").is_none_or(|d| (d as i64) < rev) {
            assert!(
                start.elapsed() < timeout,
                "capture did not store revision {rev} in {timeout:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, and waits for the exit.
    fn stop(mut self) -> String {
        // SAFETY: plain kill(2) of the child we started, by its PID.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(15), "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` on 127.0.0.1:`port`: (status, body), or None while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Writes until `stop` (60 s at most) to `servers` in turn (puts, overwrites, deletes).
fn write_load(servers: &[&EtcdServer], stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        let key = format!("/registry/configmaps/ns{}/cm{}", n % 3, n % 37);
        let server = servers[(n as usize) % servers.len()];
        // A write may fail while leadership moves (whether it was applied or not, the
        // comparison is with the cluster's own history).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if n % 7 == 3 {
                server.delete(key.as_bytes());
            } else {
                server.put(key.as_bytes(), format!("value {n}").as_bytes());
            }
        }));
        n += 1;
    }
    n
}

/// No gap, no duplicate: the stored changes after the (single) full backup are the live
/// history up to `last` (the agent's own election key changes after it, when it resigns).
fn assert_history_matches(repo: &str, live: &EtcdServer, last: i64) -> i64 {
    let backups: Value = serde_json::from_str(&ok_cmd(
        s3_env(&mut etcdguard()).args(["backup", "list", "--repo", repo, "-w", "json"]),
    ))
    .unwrap();
    assert_eq!(backups.as_array().unwrap().len(), 1, "one full backup: {backups}");
    let base_rev = backups[0]["revision"].as_i64().unwrap();
    let log: Value = serde_json::from_str(&ok_cmd(
        s3_env(&mut etcdguard()).args(["backup", "log", "--repo", repo, "-w", "json"]),
    ))
    .unwrap();
    let stored: Vec<(i64, bool, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["revision"].as_i64().unwrap(),
                e["op"] == "put",
                e["key"].as_str().unwrap().to_string(),
            )
        })
        .filter(|c| c.0 <= last)
        .collect();
    let history = live_history(live, base_rev, last);
    assert!(history.len() > 20, "too little history after revision {base_rev}: {}", history.len());
    if let Some(i) = (0..stored.len().max(history.len())).find(|&i| stored.get(i) != history.get(i))
    {
        panic!(
            "stored changes differ from the cluster's history after revision {base_rev} at change {i}: stored {:?}, live {:?} ({} stored, {} live)",
            &stored[i.saturating_sub(2)..(i + 3).min(stored.len())],
            &history[i.saturating_sub(2)..(i + 3).min(history.len())],
            stored.len(),
            history.len()
        );
    }
    assert!(stored == history, "stored changes differ from the cluster's history");
    base_rev
}

/// `backup restore --at rev`, booted with real etcd: same revision, same hashkv as `live`.
fn assert_restore_matches(repo: &str, live: &EtcdServer, rev: i64, dir: &Path) {
    let data_dir = dir.join(format!("restored-{rev}"));
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let at = rev.to_string();
    restore_one_member(s3_env(&mut etcdguard()), &["--repo", repo, "--at", &at], &data_dir, &peer);
    let restored = EtcdServer::builder(live.version())
        .name("m1")
        .data_dir(&data_dir)
        .start_with_peer_port(port);
    assert_eq!(restored.revision(), rev);
    assert_eq!(restored.hashkv(rev), live.hashkv(rev), "hashkv at revision {rev}");
}

/// The index of the leader and every member's id (in member order), from `endpoint status`.
fn leader_index(cluster: &EtcdCluster) -> (usize, Vec<u64>) {
    let out = run(cluster.member(0).etcdctl().args([
        "--endpoints",
        &cluster.endpoints_arg(),
        "endpoint",
        "status",
        "-w",
        "json",
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let endpoints = cluster.endpoints();
    let mut ids = vec![0u64; endpoints.len()];
    for r in rows {
        let i = endpoints
            .iter()
            .position(|e| r["Endpoint"].as_str() == Some(e.as_str()))
            .unwrap_or_else(|| panic!("unknown endpoint in {r}"));
        ids[i] = r["Status"]["header"]["member_id"].as_u64().unwrap();
    }
    let leader = rows[0]["Status"]["leader"].as_u64().unwrap();
    (ids.iter().position(|id| *id == leader).unwrap(), ids)
}

#[test]
fn leader_change_during_capture_loses_nothing() {
    let _serial = serial();
    let cluster = EtcdCluster::start(EtcdVersion::V3_5, 3);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    for i in 0..30 {
        cluster.member(0).put(format!("/registry/configmaps/ns0/before{i}").as_bytes(), b"before");
    }
    let agent = Agent::start(repo, &cluster.endpoints_arg(), dir.path(), &[]);
    let stop = AtomicBool::new(false);
    let servers: Vec<&EtcdServer> = (0..3).map(|i| cluster.member(i)).collect();
    let mut moves = 0;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_load(&servers, &stop));
        std::thread::sleep(Duration::from_secs(3));
        for _ in 0..2 {
            let (leader, ids) = leader_index(&cluster);
            let target = (leader + 1) % 3;
            let out = run(cluster
                .member(leader)
                .etcdctl()
                .args(["move-leader", &format!("{:x}", ids[target])]));
            assert!(out.status.success(), "move-leader: {}", String::from_utf8_lossy(&out.stderr));
            let start = Instant::now();
            while leader_index(&cluster).0 != target {
                assert!(start.elapsed() < Duration::from_secs(10), "leadership did not move");
                std::thread::sleep(Duration::from_millis(100));
            }
            moves += 1;
            std::thread::sleep(Duration::from_secs(3));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 30);
    });
    assert_eq!(moves, 2);
    let last = cluster.member(0).revision();
    agent.wait_durable(last, Duration::from_secs(30));
    assert_eq!(agent.metric("etcdguard_capture_gaps_total"), Some(0.0));
    assert_eq!(agent.health(), Some(200));
    agent.stop();
    assert_history_matches(repo, cluster.member(1), last);
    assert_restore_matches(repo, cluster.member(1), last, dir.path());
}

#[test]
fn killed_watched_member_capture_moves_to_another_endpoint() {
    let _serial = serial();
    let mut cluster = EtcdCluster::start(EtcdVersion::V3_5, 3);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    for i in 0..30 {
        cluster.member(1).put(format!("/registry/configmaps/ns0/before{i}").as_bytes(), b"before");
    }
    // Capture watches the first endpoint: member 0.
    let agent = Agent::start(repo, &cluster.endpoints_arg(), dir.path(), &[]);
    let start = Instant::now();
    while agent.metric("etcdguard_capture_durable_revision").is_none_or(|d| d < 1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "capture did not start\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let survivors: Vec<&EtcdServer> = vec![cluster.member(1), cluster.member(2)];
        let stop = &stop;
        let writer = scope.spawn(move || write_load(&survivors, stop));
        std::thread::sleep(Duration::from_secs(2));
        let pid = cluster.member(0).pid().unwrap();
        // SAFETY: plain kill(2) of the etcd member the test started, by its PID.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 30);
    });
    cluster.stop(0);
    let last = cluster.member(1).revision();
    agent.wait_durable(last, Duration::from_secs(30));
    let log = agent.log();
    assert!(log.contains("trying the next endpoint"), "capture did not move on:\n{log}");
    assert_eq!(agent.metric("etcdguard_capture_gaps_total"), Some(0.0));
    agent.stop();
    assert_history_matches(repo, cluster.member(1), last);
    assert_restore_matches(repo, cluster.member(1), last, dir.path());
}

/// A TCP proxy on loopback that forwards to `upstream` while up; while down it cuts every
/// open connection and refuses new ones (an unreachable S3, as the client sees it).
struct OutageProxy {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
    quit: Arc<AtomicBool>,
}

impl OutageProxy {
    fn start(upstream: u16) -> OutageProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (down, open, quit) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (down2, open2, quit2) = (down.clone(), open.clone(), quit.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !quit2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if down2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut open = open2.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        OutageProxy { port, down, open, quit }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        self.set_down(true);
    }
}

#[test]
fn s3_outage_segments_catch_up_and_rpo_shows_it() {
    let _serial = serial();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let moto = Moto::start();
    moto.create_bucket("etcd-continuous");
    let proxy = OutageProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    // No retries inside the store and a short timeout: capture's own retry is what is tested.
    let repo = format!(
        "s3://etcd-continuous/c1?endpoint=http://127.0.0.1:{}&retries=0&timeout=3s",
        proxy.port
    );
    for i in 0..30 {
        server.put(format!("/registry/configmaps/ns0/before{i}").as_bytes(), b"before");
    }
    let agent = Agent::start(&repo, server.endpoint(), dir.path(), &["--rpo-bound", "5s"]);
    agent.wait_durable(server.revision(), Duration::from_secs(30));

    // RPO samples every 200 ms while writes go on; the store is down from 4 s to 14 s.
    let samples: Mutex<Vec<(f64, f64, Option<u16>)>> = Mutex::new(Vec::new());
    let (stop, sampling) = (AtomicBool::new(false), AtomicBool::new(true));
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_load(&[&server], &stop));
        scope.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rpo) = agent.metric("etcdguard_rpo_seconds") {
                    samples.lock().unwrap().push((t0.elapsed().as_secs_f64(), rpo, agent.health()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(Duration::from_secs(4));
        proxy.set_down(true);
        std::thread::sleep(Duration::from_secs(10));
        proxy.set_down(false);
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 50);
        sampling.store(false, Ordering::Relaxed);
    });
    let samples = samples.into_inner().unwrap();
    let before: Vec<f64> = samples.iter().filter(|s| s.0 < 4.0).map(|s| s.1).collect();
    let during: Vec<f64> =
        samples.iter().filter(|s| (4.0..14.0).contains(&s.0)).map(|s| s.1).collect();
    let after: Vec<f64> = samples.iter().filter(|s| s.0 > 19.0).map(|s| s.1).collect();
    eprintln!("RPO before {before:?}\nduring {during:?}\nafter {after:?}");
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    assert!(!before.is_empty() && max(&before) < 3.0, "RPO before the outage: {before:?}");
    assert!(max(&during) >= 8.0, "the RPO did not show the outage: {during:?}");
    assert!(
        !after.is_empty() && max(&after) < 3.0,
        "the RPO did not fall after the outage: {after:?}"
    );
    // /healthz followed the bound (5 s): 503 during, 200 again after.
    assert!(
        samples.iter().any(|s| (4.0..15.0).contains(&s.0) && s.2 == Some(503)),
        "healthz never failed during the outage"
    );
    assert_eq!(samples.last().unwrap().2, Some(200), "healthz after the outage");
    assert!(
        agent.metric("etcdguard_capture_store_failures_total").is_some_and(|f| f >= 1.0),
        "no failed store was counted"
    );

    let last = server.revision();
    agent.wait_durable(last, Duration::from_secs(30));
    assert_eq!(agent.metric("etcdguard_capture_gaps_total"), Some(0.0));
    agent.stop();
    assert_history_matches(&repo, &server, last);
    assert_restore_matches(&repo, &server, last, dir.path());
}

/// Two agents: the active one is killed (-9) during writes; the standby is elected within the
/// lease TTL and resumes from the last revision stored: no gap, no duplicate.
#[test]
fn standby_takes_over_capture_without_gap() {
    let _serial = serial();
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    for i in 0..30 {
        server.put(format!("/registry/configmaps/ns0/before{i}").as_bytes(), b"before");
    }
    let mut agents = vec![
        Agent::start(repo, server.endpoint(), dir.path(), &[]),
        Agent::start(repo, server.endpoint(), dir.path(), &[]),
    ];
    let active = |agents: &[Agent]| {
        agents.iter().position(|a| a.metric("etcdguard_agent_role{role=\"active\"}") == Some(1.0))
    };
    let start = Instant::now();
    let first = loop {
        if let Some(i) = active(&agents) {
            if agents[i].metric("etcdguard_capture_durable_revision").is_some_and(|d| d >= 1.0) {
                break i;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no agent started capturing");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stop = AtomicBool::new(false);
    let killed_at = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_load(&[&server], &stop));
        std::thread::sleep(Duration::from_secs(3));
        let killed = agents.remove(first);
        let at = killed.metric("etcdguard_capture_durable_revision").unwrap_or(0.0) as i64;
        drop(killed); // SIGKILL
                      // The standby takes over within the TTL (3 s) and catches up.
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 30);
        at
    });
    let survivor = agents.pop().unwrap();
    let last = server.revision();
    survivor.wait_durable(last, Duration::from_secs(30));
    assert!(last > killed_at + 20, "too few changes after the kill ({killed_at}..{last})");
    assert!(
        survivor.log().contains("elected: this agent captures every change now"),
        "{}",
        survivor.log()
    );
    assert_eq!(survivor.metric("etcdguard_capture_gaps_total"), Some(0.0));
    survivor.stop();
    assert_history_matches(repo, &server, last);
    assert_restore_matches(repo, &server, last, dir.path());
}
