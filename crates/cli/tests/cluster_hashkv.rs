//! `etcdguard cluster hashkv` against real 3-member clusters of etcd 3.4, 3.5, 3.6 and 3.7: its
//! lines equal `etcdctl endpoint hashkv --cluster` (latest revision and `--rev`), the members
//! agree, a compacted revision is refused as etcd refuses it, and a member whose db was
//! changed behind etcd's back is found.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use etcdguard_testkit::{load_kubernetes_shaped, EtcdCluster, EtcdVersion, LoadSpec};

fn etcdguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_etcdguard"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ours(cluster: &EtcdCluster, extra: &[&str]) -> Output {
    run(etcdguard()
        .args(["cluster", "hashkv", "--endpoints", cluster.member(0).endpoint()])
        .args(extra))
}

fn theirs(cluster: &EtcdCluster, extra: &[&str]) -> Output {
    run(cluster.member(0).etcdctl().args(["endpoint", "hashkv", "--cluster"]).args(extra))
}

/// Waits until every member serves revision `rev` (a linearizable read through each).
fn wait_for_revision(cluster: &EtcdCluster, rev: i64) {
    let started = Instant::now();
    for i in 0..cluster.len() {
        while cluster.member(i).revision() < rev {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "member {i} never reached revision {rev}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hashkv_matches_etcdctl(version: EtcdVersion) {
    let cluster = EtcdCluster::start(version, 3);
    let spec = LoadSpec { objects: 150, updates: 30, deletes: 15, ..LoadSpec::default() };
    let summary = load_kubernetes_shaped(cluster.member(0), &spec);
    let compacted = summary.compacted_at.expect("the load compacts");
    let rev = summary.final_revision;
    wait_for_revision(&cluster, rev);

    let middle = ((compacted + rev) / 2).to_string();
    for extra in [vec![], vec!["--rev", middle.as_str()]] {
        let (o, t) = (ours(&cluster, &extra), theirs(&cluster, &extra));
        assert!(t.status.success(), "etcdctl: {}", text(&t.stderr));
        assert!(o.status.success(), "{}: {extra:?}: {}", version.label(), text(&o.stderr));
        assert_eq!(text(&o.stdout), text(&t.stdout), "{} {extra:?}", version.label());
        assert_eq!(text(&o.stdout).lines().count(), 3, "{}", text(&o.stdout));
        assert!(text(&o.stderr).contains("all 3 endpoints agree"), "{}", text(&o.stderr));
    }

    let json: serde_json::Value =
        serde_json::from_slice(&ours(&cluster, &["-w", "json", "--rev", &middle]).stdout).unwrap();
    assert_eq!(json["agree"], true, "{json}");
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        // HashKVResponse.hash_revision is new in 3.6; 3.5 leaves it 0.
        let expected = if version >= EtcdVersion::V3_6 { middle.parse().unwrap() } else { 0 };
        assert_eq!(m["hashRevision"].as_i64(), Some(expected), "{json}");
        assert_eq!(m["compactRevision"].as_i64(), Some(compacted), "{json}");
    }

    // Below the compaction: etcd refuses, and so does etcdguard, naming the reason.
    let below = (compacted - 1).to_string();
    let t = theirs(&cluster, &["--rev", &below]);
    assert!(!t.status.success());
    let o = ours(&cluster, &["--rev", &below]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("compacted"), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("panicked"));
}

#[test]
fn hashkv_matches_etcdctl_3_4() {
    hashkv_matches_etcdctl(EtcdVersion::V3_4);
}

#[test]
fn hashkv_matches_etcdctl_3_5() {
    hashkv_matches_etcdctl(EtcdVersion::V3_5);
}

#[test]
fn hashkv_matches_etcdctl_3_6() {
    hashkv_matches_etcdctl(EtcdVersion::V3_6);
}

#[test]
fn hashkv_matches_etcdctl_3_7() {
    hashkv_matches_etcdctl(EtcdVersion::V3_7);
}

/// A member's db changed while it was stopped (one value's bytes, same length: bbolt has no
/// page checksums, so etcd serves it): its hash differs from the other two, and etcdguard
/// says so, naming it, and exits 1.
#[test]
fn hashkv_finds_the_member_whose_data_differs() {
    let mut cluster = EtcdCluster::start(EtcdVersion::V3_6, 3);
    let original = b"hashkv-probe-value-AAAAAAAAAAAAAAAAAAAAAAAA";
    for i in 0..20 {
        cluster.member(0).put(format!("/registry/configmaps/default/c{i}").as_bytes(), b"filler");
    }
    let rev = cluster.member(0).put(b"/registry/configmaps/default/probe", original);
    wait_for_revision(&cluster, rev);
    assert!(ours(&cluster, &[]).status.success());

    let db = cluster.member(2).data_dir().join("member/snap/db");
    cluster.stop(2);
    let mut bytes = std::fs::read(&db).unwrap();
    let mut changed = 0;
    while let Some(at) = bytes.windows(original.len()).position(|w| w == original) {
        bytes[at + original.len() - 1] = b'B';
        changed += 1;
    }
    assert!(changed > 0, "the value is in member 3's db");
    std::fs::write(&db, &bytes).unwrap();
    cluster.restart(2);
    wait_for_revision(&cluster, rev);

    let rev_arg = rev.to_string();
    let t = theirs(&cluster, &["--rev", &rev_arg]);
    let hashes: std::collections::BTreeSet<String> = text(&t.stdout)
        .lines()
        .map(|l| l.split(", ").nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(hashes.len(), 2, "etcdctl shows two different hashes: {}", text(&t.stdout));

    let o = ours(&cluster, &["--rev", &rev_arg]);
    assert_eq!(text(&o.stdout), text(&t.stdout));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    assert!(stderr.contains("hold different data"), "{stderr}");
    let odd = cluster.member(2).endpoint();
    let minority = stderr.rsplit("; ").next().unwrap_or_default();
    assert!(minority.contains(odd) && !minority.contains(cluster.member(0).endpoint()), "{stderr}");
}
