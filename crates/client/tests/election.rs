//! Leader election against real etcd 3.4 and 3.5.1: one leader at a time, hand-over on a
//! killed leader within TTL + a bound, immediate hand-over on resign, step-down when etcd
//! stops answering.
//!
//! A "dead process" leader runs in a child process (this test binary re-executed with
//! `ELECTION_CHILD` set, running only `child_campaigner`) and is SIGKILLed, so nothing of
//! ours resigns or revokes on its behalf.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcdguard_client::election::{Election, ElectionOptions, Role};
use etcdguard_client::{ConnectConfig, ConnectFlags};
use etcdguard_testkit::{EtcdServer, EtcdVersion};

const TTL: Duration = Duration::from_secs(3);
/// How long after the lease's TTL a standby may take to notice and take over: etcd's lessor
/// checks expiry every 500 ms, then the revoke commits and the watch fires.
const HANDOVER_BOUND: Duration = Duration::from_millis(2500);

fn config(endpoint: &str) -> ConnectConfig {
    let flags = ConnectFlags {
        endpoints: Some(vec![endpoint.to_string()]),
        dial_timeout: Some("1s".into()),
        command_timeout: Some("2s".into()),
        ..Default::default()
    };
    ConnectConfig::resolve_with(flags, |_| None).unwrap().0
}

fn campaigner(endpoint: &str, name: &str, who: &str, ttl: Duration) -> Election {
    let mut opts = ElectionOptions::new(name, who);
    opts.ttl = ttl;
    Election::start(config(endpoint), opts).unwrap()
}

fn leaders(all: &[&Election]) -> Vec<usize> {
    all.iter().enumerate().filter(|(_, e)| e.is_leader()).map(|(i, _)| i).collect()
}

/// Samples every 10 ms for `how_long`, asserting at most one leader each time; returns the
/// first moment (from `since`) at which one of them leads, if any.
fn watch_at_most_one(
    all: &[&Election],
    how_long: Duration,
    stop_when_leader: bool,
) -> Option<(usize, Instant)> {
    let end = Instant::now() + how_long;
    let mut first = None;
    while Instant::now() < end {
        let l = leaders(all);
        assert!(l.len() <= 1, "two campaigners believe they lead: {l:?}");
        if let Some(&i) = l.first() {
            first.get_or_insert((i, Instant::now()));
            if stop_when_leader {
                return first;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    first
}

/// Not a test on its own: the body of a campaigner child process (see the module docs).
#[test]
fn child_campaigner() {
    let Ok(spec) = std::env::var("ELECTION_CHILD") else { return };
    let parts: Vec<&str> = spec.splitn(4, '|').collect();
    let e =
        campaigner(parts[0], parts[1], parts[2], Duration::from_secs(parts[3].parse().unwrap()));
    let mut was = false;
    loop {
        let now = e.is_leader();
        if now != was {
            println!("ROLE {}", if now { "leader" } else { "standby" });
            was = now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct ChildCampaigner {
    child: Child,
    roles: mpsc::Receiver<String>,
}

impl ChildCampaigner {
    fn spawn(endpoint: &str, name: &str, who: &str, ttl: Duration) -> ChildCampaigner {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_campaigner", "--nocapture", "--test-threads=1"])
            .env("ELECTION_CHILD", format!("{endpoint}|{name}|{who}|{}", ttl.as_secs()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, roles) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // The harness prints "test child_campaigner ... " on the same line first.
                if let Some(at) = line.find("ROLE ") {
                    let _ = tx.send(line[at + 5..].trim().to_string());
                }
            }
        });
        ChildCampaigner { child, roles }
    }

    fn wait_role(&self, role: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.roles.recv_timeout(left) {
                Ok(r) if r == role => return,
                Ok(_) => continue,
                Err(_) => panic!("child campaigner did not report {role} within {limit:?}"),
            }
        }
    }

    /// SIGKILL: the process dies without resigning or revoking its lease.
    fn kill(&mut self) -> Instant {
        let _ = self.child.kill();
        let at = Instant::now();
        let _ = self.child.wait();
        at
    }
}

impl Drop for ChildCampaigner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn killed_leader_hands_over(version: EtcdVersion) {
    let etcd = EtcdServer::start(version);
    let name = "/etcdguard/agent/test-kill";
    let mut first = ChildCampaigner::spawn(etcd.endpoint(), name, "agent-a", TTL);
    first.wait_role("leader", Duration::from_secs(20));
    let b = campaigner(etcd.endpoint(), name, "agent-b", TTL);
    let c = campaigner(etcd.endpoint(), name, "agent-c", TTL);
    // Both standbys campaign and neither leads while the child does.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        assert!(leaders(&[&b, &c]).is_empty(), "a standby leads while agent-a holds the lease");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(b.status().role, Role::Standby, "{:?}", b.status());
    assert_eq!(b.status().leader.as_deref(), Some("agent-a"), "{:?}", b.status());

    let killed = first.kill();
    let (who, at) =
        watch_at_most_one(&[&b, &c], TTL + HANDOVER_BOUND + Duration::from_secs(5), true)
            .unwrap_or_else(|| {
                panic!(
                    "nobody took over within {:?}",
                    TTL + HANDOVER_BOUND + Duration::from_secs(5)
                )
            });
    let took = at - killed;
    eprintln!(
        "etcd {}: hand-over after SIGKILL of the leader took {took:?} (TTL {TTL:?})",
        version.label()
    );
    assert!(
        took <= TTL + HANDOVER_BOUND,
        "hand-over took {took:?}, more than TTL {TTL:?} + {HANDOVER_BOUND:?}"
    );
    // Keepalives go every TTL/3, so the dead lease lived at least 2/3 of the TTL after the kill:
    // a faster hand-over would mean the standby did not wait for the lease.
    assert!(
        took >= TTL * 2 / 3 - Duration::from_millis(300),
        "hand-over after {took:?}: sooner than the lease allows"
    );
    let other = if who == 0 { &c } else { &b };
    // The new leader keeps its term (keepalives work) and the other stays standby.
    watch_at_most_one(&[&b, &c], TTL * 2, false);
    assert!(
        [&b, &c][who].is_leader(),
        "the new leader lost its lease: {:?}",
        [&b, &c][who].status()
    );
    assert!(!other.is_leader());
    assert_eq!(
        other.status().leader.as_deref(),
        Some(["agent-b", "agent-c"][who]),
        "{:?}",
        other.status()
    );
}

#[test]
fn killed_leader_hands_over_v35() {
    killed_leader_hands_over(EtcdVersion::V3_5);
}

#[test]
fn killed_leader_hands_over_v34() {
    killed_leader_hands_over(EtcdVersion::V3_4);
}

fn resign_hands_over_at_once(version: EtcdVersion) {
    let etcd = EtcdServer::start(version);
    let name = "/etcdguard/agent/test-resign";
    // A long TTL: a hand-over well within it can only come from the resignation.
    let ttl = Duration::from_secs(30);
    let a = campaigner(etcd.endpoint(), name, "agent-a", ttl);
    assert!(a.wait_for_leadership(Duration::from_secs(10)), "{:?}", a.status());
    let b = campaigner(etcd.endpoint(), name, "agent-b", ttl);
    let c = campaigner(etcd.endpoint(), name, "agent-c", ttl);
    watch_at_most_one(&[&a, &b, &c], Duration::from_secs(1), false);
    assert!(a.is_leader());

    let started = Instant::now();
    a.resign();
    assert!(!a.is_leader(), "resign() must step down before returning");
    let (who, at) = watch_at_most_one(&[&a, &b, &c], Duration::from_secs(5), true)
        .expect("nobody took over after resign");
    let took = at - started;
    eprintln!("etcd {}: hand-over after resign took {took:?}", version.label());
    assert!(took < Duration::from_secs(2), "hand-over after resign took {took:?}");
    assert_ne!(who, 0, "the resigned campaigner must go to the back of the line");
    // a campaigns again as standby: dropping the leader (resign on drop) passes to a.
    let (leader, next) = if who == 1 { (b, c) } else { (c, b) };
    let next = &next;
    let started = Instant::now();
    drop(leader);
    let (who2, _) = watch_at_most_one(&[&a, next], Duration::from_secs(5), true)
        .expect("nobody took over after drop");
    eprintln!("etcd {}: hand-over after drop took {:?}", version.label(), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        who2,
        1,
        "the older campaign ({}) should win, not the re-campaign of agent-a",
        next.options().value
    );
    // a re-campaigns after its resignation (a new lease, possibly still being granted).
    let end = Instant::now() + Duration::from_secs(5);
    while a.status().role != Role::Standby && Instant::now() < end {
        a.wait_for_change(Duration::from_millis(100));
    }
    assert!(a.status().terms == 1 && a.status().role == Role::Standby, "{:?}", a.status());
}

#[test]
fn resign_hands_over_at_once_v35() {
    resign_hands_over_at_once(EtcdVersion::V3_5);
}

#[test]
fn resign_hands_over_at_once_v34() {
    resign_hands_over_at_once(EtcdVersion::V3_4);
}

fn stopped_etcd_makes_the_leader_step_down(version: EtcdVersion) {
    let etcd = EtcdServer::start(version);
    let name = "/etcdguard/agent/test-stop";
    let a = campaigner(etcd.endpoint(), name, "agent-a", TTL);
    assert!(a.wait_for_leadership(Duration::from_secs(10)), "{:?}", a.status());
    let b = campaigner(etcd.endpoint(), name, "agent-b", TTL);
    watch_at_most_one(&[&a, &b], Duration::from_millis(500), false);
    assert!(a.is_leader());

    // SIGSTOP: the process holds its sockets but answers nothing, like a hung or partitioned etcd.
    let pid = etcd.pid().unwrap() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = Instant::now();
    let end = stopped + TTL * 3;
    let mut stepped_down = None;
    while Instant::now() < end {
        assert!(leaders(&[&a, &b]).len() <= 1);
        if stepped_down.is_none() && !a.is_leader() {
            stepped_down = Some(stopped.elapsed());
        }
        assert!(!b.is_leader(), "the standby cannot be elected while etcd is stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = Instant::now();
    let took = stepped_down.expect("the leader never stepped down while etcd was stopped");
    eprintln!(
        "etcd {}: leader stepped down {took:?} after etcd stopped (TTL {TTL:?})",
        version.label()
    );
    assert!(
        took <= TTL,
        "leader believed it led {took:?} after etcd stopped, past the TTL {TTL:?}"
    );
    assert!(!(a.status().role == Role::Leader));
    assert!(a.status().last_error.is_some() || a.status().role != Role::Leader, "{:?}", a.status());

    // etcd back: the old lease expires (or was revoked), somebody leads again, only one.
    let (_, at) = watch_at_most_one(&[&a, &b], TTL * 4 + Duration::from_secs(10), true)
        .expect("nobody leads after etcd came back");
    eprintln!("etcd {}: a leader again {:?} after SIGCONT", version.label(), at - resumed);
    watch_at_most_one(&[&a, &b], TTL, false);
    assert_eq!(leaders(&[&a, &b]).len(), 1);
}

#[test]
fn stopped_etcd_makes_the_leader_step_down_v35() {
    stopped_etcd_makes_the_leader_step_down(EtcdVersion::V3_5);
}

#[test]
fn stopped_etcd_makes_the_leader_step_down_v34() {
    stopped_etcd_makes_the_leader_step_down(EtcdVersion::V3_4);
}

#[test]
fn bad_options_are_refused() {
    let mut opts = ElectionOptions::new("", "me");
    assert!(Election::start(config("http://127.0.0.1:1"), opts.clone()).is_err());
    opts.name = "/x".into();
    opts.ttl = Duration::from_millis(1500);
    let e = Election::start(config("http://127.0.0.1:1"), opts).err().unwrap();
    assert!(e.to_string().contains("TTL"), "{e}");
}

#[test]
fn unreachable_etcd_never_leads() {
    let port = etcdguard_testkit::free_port();
    let e = campaigner(&format!("http://127.0.0.1:{port}"), "/x", "me", TTL);
    assert!(!e.wait_for_leadership(Duration::from_secs(2)));
    let st = e.status();
    assert_eq!(st.role, Role::Connecting, "{st:?}");
    assert!(st.last_error.as_deref().unwrap_or("").contains("refused"), "{st:?}");
}
