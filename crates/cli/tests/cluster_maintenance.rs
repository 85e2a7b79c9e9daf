//! `etcdguard cluster member remove|add|promote`, `defrag` and `alarm` against real
//! three-member clusters, each member on its own loopback address (127.0.0.11–.13).

mod live_support;

use std::time::{Duration, Instant};

use etcdguard_testkit::{EtcdCluster, EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

/// name -> (hex id, is learner), from the real etcdctl.
fn etcdctl_members(cluster: &EtcdCluster, endpoint: &str) -> Vec<(String, String, bool)> {
    let out = cluster
        .version()
        .binaries()
        .etcdctl()
        .args(["--endpoints", endpoint, "member", "list", "-w", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl member list: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn id_of(members: &[(String, String, bool)], name: &str) -> String {
    members
        .iter()
        .find(|m| m.0 == name)
        .unwrap_or_else(|| panic!("no member {name} in {members:?}"))
        .1
        .clone()
}

fn run(args: &[&str]) -> std::process::Output {
    etcdguard().args(args).output().unwrap()
}

fn member_replacement(version: EtcdVersion) {
    let mut cluster = EtcdCluster::start(version, 3);
    cluster.member(0).put(b"/registry/pods/default/a", b"x");
    let all = cluster.endpoints_arg();
    let before = etcdctl_members(&cluster, cluster.member(0).endpoint());
    assert_eq!(before.len(), 3);
    let (m1, m3) = (id_of(&before, "m1"), id_of(&before, "m3"));

    // Dry runs: the checks and the plan, no change.
    let out = run(&["cluster", "defrag", "--endpoints", &all, "--dry-run"]);
    expect_code(&out, 0, "defrag --dry-run");
    let plan = text(&out.stdout);
    assert_eq!(plan.lines().filter(|l| l.starts_with("  ")).count(), 3, "{plan}");
    assert!(plan.lines().last().unwrap().contains("leader"), "the leader goes last: {plan}");
    let out =
        run(&["cluster", "member", "remove", &m3, "--endpoints", &all, "--dry-run", "--force"]);
    expect_code(&out, 0, "member remove --dry-run --force");
    assert!(text(&out.stdout).starts_with("Would remove member"), "{}", text(&out.stdout));
    let out = run(&[
        "cluster",
        "member",
        "add",
        "m9",
        "--peer-urls",
        "http://127.0.0.99:2380",
        "--learner",
        "--endpoints",
        &all,
        "-n",
    ]);
    expect_code(&out, 0, "member add --dry-run");
    assert_eq!(
        etcdctl_members(&cluster, cluster.member(0).endpoint()).len(),
        3,
        "a dry run changes nothing"
    );

    // A healthy member is not removed without --force.
    let out = run(&["cluster", "member", "remove", &m3, "--endpoints", &all]);
    expect_code(&out, 17, "remove a healthy member");
    assert!(text(&out.stderr).contains("is healthy"), "{}", text(&out.stderr));

    // m3 stops: removing m1 would leave m2 alone of {m2, m3} — refused, even though m3 is down.
    cluster.stop(2);
    let live = cluster.running_endpoints().join(",");
    let out = run(&["cluster", "member", "remove", &m1, "--endpoints", &live]);
    expect_code(&out, 17, "remove that breaks quorum");
    assert!(text(&out.stderr).contains("below the quorum of 2"), "{}", text(&out.stderr));
    assert_eq!(
        etcdctl_members(&cluster, cluster.member(0).endpoint()).len(),
        3,
        "a refusal must change nothing"
    );
    // Defrag refuses too while a member is down.
    let out = run(&["cluster", "defrag", "--endpoints", &live]);
    expect_code(&out, 17, "defrag with a member down");
    assert!(text(&out.stderr).contains("does not answer"), "{}", text(&out.stderr));

    // Removing the stopped member is what a replacement does.
    let out = run(&["cluster", "member", "remove", &m3, "--endpoints", &live]);
    expect_code(&out, 0, "remove the stopped member");
    assert!(
        text(&out.stdout).contains("2 voting members left, 2 healthy, quorum 2"),
        "{}",
        text(&out.stdout)
    );
    let after = etcdctl_members(&cluster, cluster.member(0).endpoint());
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|m| m.1 != m3));

    // Add a replacement on "node 3" as a learner.
    let spec = cluster.new_member_spec("m4", 2);
    let out = run(&[
        "cluster",
        "member",
        "add",
        "m4",
        "--peer-urls",
        &spec.peer_url(),
        "--learner",
        "--endpoints",
        &live,
    ]);
    expect_code(&out, 0, "member add --learner");
    let stdout = text(&out.stdout);
    let new_id = stdout.split_whitespace().nth(1).unwrap().to_string();
    let initial = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {stdout}"))
        .trim_matches('"')
        .to_string();
    assert!(
        initial.contains(&format!("m4={}", spec.peer_url())) && initial.contains("m1="),
        "{initial}"
    );
    assert!(stdout.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{stdout}");
    let listed = etcdctl_members(&cluster, cluster.member(0).endpoint());
    assert!(
        listed.iter().any(|m| m.1 == new_id && m.2),
        "m4 must be listed as a learner: {listed:?}"
    );

    // Not started yet: promotion refused, nothing changed.
    let out = run(&["cluster", "member", "promote", &new_id, "--endpoints", &live]);
    expect_code(&out, 17, "promote an unstarted learner");
    assert!(text(&out.stderr).contains("does not answer"), "{}", text(&out.stderr));
    assert!(etcdctl_members(&cluster, cluster.member(0).endpoint())
        .iter()
        .any(|m| m.1 == new_id && m.2));

    // Start it; promote once caught up (each refusal in between must be a clean 17).
    let started = Instant::now();
    let idx = cluster.join(spec, &initial);
    let live = cluster.running_endpoints().join(",");
    loop {
        let out = run(&["cluster", "member", "promote", &new_id, "--endpoints", &live]);
        if out.status.code() == Some(0) {
            assert!(text(&out.stdout).contains("promoted"), "{}", text(&out.stdout));
            break;
        }
        expect_code(&out, 17, "promote while catching up");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "learner never caught up: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("etcd {}: learner promoted {:?} after start", version.label(), started.elapsed());
    let listed = etcdctl_members(&cluster, cluster.member(idx).endpoint());
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|m| !m.2), "no learner left: {listed:?}");

    // Promoting again: it is a voting member now.
    let out = run(&["cluster", "member", "promote", &new_id, "--endpoints", &live]);
    expect_code(&out, 17, "promote a voter");

    let out = run(&["cluster", "health", "--cluster", "--endpoints", &live]);
    expect_code(&out, 0, "health after the replacement");
    assert_eq!(text(&out.stdout).matches("is healthy").count(), 3, "{}", text(&out.stdout));
    assert_eq!(cluster.member(idx).get_all().len(), 1, "the new member serves the data");
}

#[test]
fn member_replacement_3_5() {
    member_replacement(EtcdVersion::V3_5);
}

#[test]
fn member_replacement_3_4() {
    member_replacement(EtcdVersion::V3_4);
}

#[test]
fn bad_member_arguments() {
    let out = run(&["cluster", "member", "remove", "not-hex", "--endpoints", "127.0.0.1:1"]);
    expect_code(&out, 2, "bad id");
    assert!(text(&out.stderr).contains("hex ID"), "{}", text(&out.stderr));
    let out = run(&["cluster", "member", "add", "m9", "--endpoints", "127.0.0.1:1"]);
    expect_code(&out, 2, "add without --peer-urls");
}

#[test]
fn defrag_every_member_leader_last() {
    let cluster = EtcdCluster::start(EtcdVersion::V3_5, 3);
    let m = cluster.member(0);
    let value = vec![b'v'; 4096];
    for i in 0..1500 {
        m.put(format!("/registry/configmaps/default/c{i}").as_bytes(), &value);
    }
    for i in 0..1500 {
        m.delete(format!("/registry/configmaps/default/c{i}").as_bytes());
    }
    let rev = m.revision();
    m.compact(rev);
    let all = cluster.endpoints_arg();

    let out = run(&["cluster", "defrag", "--cluster", "--endpoints", &all]);
    expect_code(&out, 0, "defrag");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Defragmented")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains(", follower)") && lines[1].contains(", follower)"), "{stdout}");
    assert!(lines[2].contains(", leader)"), "the leader goes last: {stdout}");
    assert!(stdout.contains("3 members defragmented"), "{stdout}");
    // 6 MB written and deleted, compacted: every member frees megabytes.
    for l in &lines {
        let freed = l.rsplit("freed ").next().unwrap();
        assert!(freed.contains("MiB") || freed.contains("MB"), "{l}");
    }
    let out = run(&["cluster", "health", "--cluster", "--endpoints", &all]);
    expect_code(&out, 0, "health after defrag");
    assert_eq!(m.get_all().len(), 0);
}

#[test]
fn alarm_list_and_disarm() {
    let server = EtcdServer::builder(EtcdVersion::V3_5).quota_bytes(2 << 20).start();
    let ep = server.endpoint();
    let out = run(&["cluster", "alarm", "list", "--endpoints", ep]);
    expect_code(&out, 0, "alarm list");
    assert_eq!(text(&out.stdout), "", "no alarm yet");
    let out = run(&["cluster", "alarm", "disarm", "--endpoints", ep]);
    expect_code(&out, 0, "alarm disarm with none raised");
    assert!(text(&out.stderr).contains("no alarm was raised"));

    // Fill the 2 MiB quota until etcd raises NOSPACE.
    let value = "x".repeat(100_000);
    let mut raised = false;
    for i in 0..100 {
        let out = server.etcdctl().args(["put", &format!("k{i}"), &value]).output().unwrap();
        if !out.status.success() {
            assert!(text(&out.stderr).contains("space"), "{}", text(&out.stderr));
            raised = true;
            break;
        }
    }
    assert!(raised, "NOSPACE never raised");
    let out = run(&["cluster", "alarm", "list", "--endpoints", ep]);
    expect_code(&out, 0, "alarm list");
    assert!(text(&out.stdout).contains("alarm:NOSPACE"), "{}", text(&out.stdout));
    let out = run(&["cluster", "health", "--endpoints", ep]);
    assert_ne!(out.status.code(), Some(0), "health must fail while NOSPACE is raised");

    let out = run(&["cluster", "alarm", "disarm", "--endpoints", ep]);
    expect_code(&out, 0, "alarm disarm");
    assert!(text(&out.stdout).contains("alarm:NOSPACE disarmed"), "{}", text(&out.stdout));
    let out = run(&["cluster", "alarm", "list", "--endpoints", ep]);
    expect_code(&out, 0, "alarm list after disarm");
    assert_eq!(text(&out.stdout), "");
}
