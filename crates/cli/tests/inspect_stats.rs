//! `etcdguard inspect stats` on a snapshot of a real etcd 3.5 with known content: sizes,
//! revisions and deletions chosen so that every total is known in advance.

mod live_support;

use etcdguard_testkit::{EtcdServer, EtcdVersion};
use live_support::*;

#[test]
fn stats_of_known_content() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for _ in 0..4 {
        server.put(b"/registry/secrets/ns1/a", &[b'a'; 100]);
    }
    server.put(b"/registry/secrets/ns1/a", &[b'a'; 300]);
    server.put(b"/registry/configmaps/ns1/big", &[b'b'; 5000]);
    server.put(b"/registry/configmaps/ns2/c", &[b'c'; 50]);
    server.put(b"/registry/namespaces/ns1", &[b'n'; 20]);
    server.put(b"/registry/example.com/widgets/ns2/w", &[b'w'; 70]);
    server.put(b"/registry/pods/ns2/gone", &[b'p'; 10]);
    server.delete(b"/registry/pods/ns2/gone");
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.db");
    server.snapshot_save(&snap);
    let s = snap.to_str().unwrap();

    let out =
        etcdguard().args(["inspect", "stats", s, "--top", "2", "-o", "json"]).output().unwrap();
    expect_code(&out, 0, "inspect stats -o json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let usage = |group: &str, name: &str| {
        let u = &v[group][name];
        (
            u["objects"].as_u64().unwrap(),
            u["bytes"].as_u64().unwrap(),
            u["revisions"].as_u64().unwrap(),
            u["allRevisionBytes"].as_u64().unwrap(),
        )
    };
    assert_eq!(usage("byResource", "secrets"), (1, 300, 5, 700));
    assert_eq!(usage("byResource", "configmaps"), (2, 5050, 2, 5050));
    assert_eq!(usage("byResource", "namespaces"), (1, 20, 1, 20));
    assert_eq!(usage("byResource", "example.com/widgets"), (1, 70, 1, 70));
    assert_eq!(
        usage("byResource", "pods"),
        (0, 0, 2, 10),
        "a deleted key: its put and its tombstone"
    );
    assert_eq!(v["byResource"].as_object().unwrap().len(), 5, "{v:#}");
    assert_eq!(usage("byNamespace", "ns1"), (2, 5300, 6, 5700));
    assert_eq!(usage("byNamespace", "ns2"), (2, 120, 4, 130));
    assert_eq!(usage("byNamespace", ""), (1, 20, 1, 20), "cluster-scoped");
    assert_eq!(
        (
            v["total"]["objects"].as_u64(),
            v["total"]["bytes"].as_u64(),
            v["total"]["revisions"].as_u64()
        ),
        (Some(5), Some(5440), Some(11))
    );
    let keys = |list: &str| {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys("largest"), ["/registry/configmaps/ns1/big", "/registry/secrets/ns1/a"]);
    assert_eq!(keys("mostRevisions"), ["/registry/secrets/ns1/a", "/registry/pods/ns2/gone"]);
    assert_eq!(
        (v["mostRevisions"][0]["version"].as_i64(), v["mostRevisions"][0]["bytes"].as_u64()),
        (Some(5), Some(300))
    );
    assert_eq!(v["mostRevisions"][1]["live"], false);

    let out = etcdguard().args(["inspect", "stats", s]).output().unwrap();
    expect_code(&out, 0, "inspect stats");
    let table = text(&out.stdout);
    let line = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} line in {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("RESOURCE"),
        ["RESOURCE", "OBJECTS", "BYTES", "REVISIONS", "ALL-REVISION", "BYTES"]
    );
    // Sorted by bytes: configmaps first.
    assert_eq!(
        table.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(),
        ["configmaps", "2", "5050", "2", "5050"]
    );
    assert_eq!(line("ns2"), ["ns2", "2", "120", "4", "130"]);
    assert!(
        table.contains("Largest objects:") && table.contains("Most revisions in the file:"),
        "{table}"
    );
    assert!(
        text(&out.stderr).contains("5 live object(s), 5440 bytes; 11 revision(s)"),
        "{}",
        text(&out.stderr)
    );

    // Not a snapshot: the usual error and exit code.
    std::fs::write(dir.path().join("junk.db"), vec![7u8; 8192]).unwrap();
    let out =
        etcdguard().args(["inspect", "stats"]).arg(dir.path().join("junk.db")).output().unwrap();
    expect_code(&out, 7, "inspect stats on junk");
}
