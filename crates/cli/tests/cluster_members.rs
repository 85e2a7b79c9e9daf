//! `etcdguard cluster health|members` against real single-member 3.4/3.5 servers and a
//! real three-member 3.5 cluster, where `snapshot save` must pick a follower by default.

mod live_support;

use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
use live_support::*;
use serde_json::Value;

fn single_member(version: EtcdVersion) {
    let server = EtcdServer::start(version);
    server.put(b"/registry/pods/default/a", b"x");
    let rev = server.revision();

    let out = etcdguard()
        .args(["cluster", "members", "--endpoints", server.endpoint()])
        .output()
        .unwrap();
    expect_code(&out, 0, "cluster members");
    let stdout = text(&out.stdout);
    assert!(stdout.lines().next().unwrap().starts_with("ID"), "{stdout}");
    assert!(stdout.contains("leader") && stdout.contains("1 members, 1 answering"), "{stdout}");

    let out = etcdguard()
        .args(["cluster", "members", "-w", "json", "--endpoints", server.endpoint()])
        .output()
        .unwrap();
    expect_code(&out, 0, "cluster members -w json");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v[0];
    assert_eq!(m["name"], server.name());
    assert_eq!(m["isLeader"], true);
    assert_eq!(m["status"]["revision"], rev);
    assert!(m["status"]["dbSize"].as_i64().unwrap() > 0);
    assert!(m["status"]["raftIndex"].as_u64().unwrap() > 0);
    assert!(m["status"]["version"].as_str().unwrap().starts_with(version.label()), "{m}");

    let out =
        etcdguard().args(["cluster", "health", "--endpoints", server.endpoint()]).output().unwrap();
    expect_code(&out, 0, "cluster health");
    assert!(text(&out.stdout).contains(&format!("{} is healthy", server.endpoint())));

    // One good endpoint and one dead one: the dead one is named and the exit is 12.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = etcdguard()
        .args(["cluster", "health", "--endpoints", &format!("{},{dead}", server.endpoint())])
        .output()
        .unwrap();
    expect_code(&out, 12, "health with a dead endpoint");
    assert!(text(&out.stdout).contains(&format!("{dead} is unhealthy")), "{}", text(&out.stdout));
}

#[test]
fn single_member_3_4() {
    single_member(EtcdVersion::V3_4);
}

#[test]
fn single_member_3_5() {
    single_member(EtcdVersion::V3_5);
}

#[test]
fn three_members_snapshot_from_a_follower() {
    let names = ["m1", "m2", "m3"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let initial: Vec<String> =
        names.iter().zip(&ports).map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
    let initial = initial.join(",");
    let servers: Vec<EtcdServer> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&ports)
            .map(|(n, p)| {
                let initial = initial.clone();
                s.spawn(move || {
                    EtcdServer::builder(EtcdVersion::V3_5)
                        .name(n)
                        .arg("--initial-cluster")
                        .arg(initial)
                        .start_with_peer_port(*p)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("member start")).collect()
    });
    servers[0].put(b"/registry/pods/default/a", b"x");
    let endpoints: Vec<&str> = servers.iter().map(|s| s.endpoint()).collect();
    let endpoints = endpoints.join(",");

    let out = etcdguard()
        .args(["cluster", "members", "-w", "json", "--endpoints", &endpoints])
        .output()
        .unwrap();
    expect_code(&out, 0, "members of a 3-member cluster");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v.as_array().unwrap().iter().filter(|m| m["isLeader"] == true).count(), 1, "{v}");

    let out = etcdguard()
        .args(["cluster", "health", "--cluster", "--endpoints", servers[0].endpoint()])
        .output()
        .unwrap();
    expect_code(&out, 0, "health --cluster");
    assert_eq!(text(&out.stdout).matches("is healthy").count(), 3, "{}", text(&out.stdout));

    let dir = tempfile::tempdir().unwrap();
    let follower_file = dir.path().join("f.db");
    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(&follower_file)
        .args(["--endpoints", &endpoints])
        .output()
        .unwrap();
    expect_code(&out, 0, "save from a follower");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(", follower,") && stderr.contains("sparing the leader"), "{stderr}");

    let leader_file = dir.path().join("l.db");
    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(&leader_file)
        .args(["--endpoints", &endpoints, "--snapshot-from", "leader"])
        .output()
        .unwrap();
    expect_code(&out, 0, "save from the leader");
    assert!(text(&out.stderr).contains(", leader,"), "{}", text(&out.stderr));

    // Same data from both members: same revision and key count in the status line.
    let status_of =
        |o: &std::process::Output| text(&o.stdout).lines().nth(1).unwrap_or_default().to_string();
    let f = etcdguard().args(["snapshot", "status"]).arg(&follower_file).output().unwrap();
    let l = etcdguard().args(["snapshot", "status"]).arg(&leader_file).output().unwrap();
    let fields = |s: String| s.split(", ").skip(1).take(2).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(fields(text(&f.stdout)), fields(text(&l.stdout)));
    let _ = status_of;
}
