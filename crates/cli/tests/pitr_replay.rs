//! Point-in-time databases are equal to the live cluster at that revision: a real etcd takes
//! puts, overwrites, deletes, multi-key transactions, a range delete and leased keys after a
//! snapshot (with a compaction before it); every change is read back with etcdguard's own
//! watch (`Session::follow`), replayed offline into the snapshot up to sampled revisions,
//! restored with `etcdguard snapshot restore`, and booted with real etcd. Each restored
//! member must answer `endpoint hashkv --rev REV` and `get "" --prefix` exactly as the
//! source cluster answers them at REV — on etcd 3.4, 3.5, 3.6 and 3.7.

mod restore_support;

use std::ops::ControlFlow;
use std::time::Duration;

use etcdguard_client::{ConnectConfig, ConnectFlags, Session, WatchUpdate};
use etcdguard_storage::replay::{replay_snapshot, Event, EventKind, LeaseGrant};
use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
use restore_support::*;
use serde_json::Value;

/// `get "" --prefix` at `rev` (0: current), keys and values with their revisions.
fn dump(server: &EtcdServer, rev: i64) -> Vec<Value> {
    let mut cmd = server.etcdctl();
    cmd.args(["get", "", "--prefix", "-w", "json"]);
    if rev > 0 {
        cmd.args(["--rev", &rev.to_string()]);
    }
    let v = json_of(&run_ok(&mut cmd));
    v["kvs"].as_array().cloned().unwrap_or_default()
}

/// Every change after `from` up to `to`, read with etcdguard's watch.
fn changes(server: &EtcdServer, from: i64, to: i64) -> Vec<Event> {
    let flags = ConnectFlags {
        endpoints: Some(vec![server.endpoint().to_string()]),
        ..ConnectFlags::default()
    };
    let (cfg, _) = ConnectConfig::resolve_with(flags, |_| None).unwrap();
    let session = Session::new(cfg).unwrap();
    let mut out: Vec<Event> = Vec::new();
    let mut idle_ticks = 0;
    session
        .follow(server.endpoint(), from + 1, Duration::from_millis(200), &mut |u| {
            match u {
                WatchUpdate::Changes { changes, .. } => {
                    for c in changes {
                        out.push(Event {
                            kind: if c.put { EventKind::Put } else { EventKind::Delete },
                            key: c.key,
                            mod_revision: c.mod_revision,
                            create_revision: c.create_revision,
                            version: c.version,
                            value: c.value,
                            lease: c.lease,
                        });
                    }
                }
                WatchUpdate::Progress { .. } | WatchUpdate::Tick => idle_ticks += 1,
            }
            if out.last().is_some_and(|e| e.mod_revision >= to) || idle_ticks > 50 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    out
}

fn point_in_time_restores_equal_the_live_cluster(version: EtcdVersion, samples: usize) {
    let server = EtcdServer::start(version);
    // History before the window, compacted half-way.
    for i in 0..60 {
        server.put(
            format!("/registry/configmaps/ns{}/cm{}", i % 3, i % 20).as_bytes(),
            format!("v{i}").as_bytes(),
        );
    }
    server.compact(server.revision() - 10);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("full.db");
    server.snapshot_save(&snap);
    let r0 = {
        let f = etcdguard_storage::SnapshotFile::open(&snap).unwrap();
        etcdguard_storage::status(&f.db().unwrap(), None).unwrap().revision
    };
    assert_eq!(r0, server.revision(), "nothing may write between the snapshot and its revision");

    // The window.
    let lease = server.grant_lease(3600);
    let mut leases = vec![LeaseGrant { id: lease, ttl: 3600 }];
    for i in 0..40 {
        let key = format!("/registry/pods/ns{}/p{}", i % 2, i % 15);
        match i % 7 {
            0 => {
                server.put_with_lease(key.as_bytes(), format!("leased {i}").as_bytes(), lease);
            }
            3 => {
                server.delete(format!("/registry/configmaps/ns0/cm{}", i % 20).as_bytes());
            }
            5 => server.txn(&format!("put /registry/t/a{i} x{i}\nput /registry/t/b{i} y{i}\ndel /registry/pods/ns1/p{}\n", i % 15)),
            _ => {
                server.put(key.as_bytes(), vec![b'v'; 10 + i * 13].as_slice());
            }
        }
        if i == 20 {
            // Several deletes in one revision.
            run_ok(server.etcdctl().args(["del", "--prefix", "/registry/configmaps/ns2/"]));
            let second = server.grant_lease(900);
            leases.push(LeaseGrant { id: second, ttl: 900 });
            server.put_with_lease(b"/registry/leases/kube-node-lease/n1", b"renew", second);
        }
    }
    let last = server.revision();
    let events = changes(&server, r0, last);
    assert_eq!(
        events.last().map(|e| e.mod_revision),
        Some(last),
        "the watch must deliver every revision"
    );

    // Sampled revisions across the window, both ends included.
    let span = (last - r0) as usize;
    let mut revs: Vec<i64> =
        (0..samples).map(|k| r0 + 1 + (k * (span - 1) / (samples - 1).max(1)) as i64).collect();
    revs.dedup();
    for rev in revs {
        let live_hash = server.hashkv(rev);
        let live = dump(&server, rev);
        let out = dir.path().join(format!("at-{rev}.db"));
        let mut feed = events.iter().cloned().map(Ok);
        let replayed = replay_snapshot(&snap, &out, &mut feed, Some(rev), Some(&leases)).unwrap();
        assert_eq!((replayed.from_revision, replayed.to_revision), (r0, rev));

        // Our own status of the result agrees, trailer included, before etcd sees it.
        let status = run_ok(etcdguard().args(["snapshot", "status", s(&out), "-w", "json"]));
        assert_eq!(json_of(&status)["revision"].as_i64(), Some(rev));

        let data_dir = dir.path().join(format!("m-{rev}"));
        let port = free_port();
        let peer = format!("http://127.0.0.1:{port}");
        restore_ok(&[
            s(&out),
            "--data-dir",
            s(&data_dir),
            "--name",
            "m1",
            "--initial-cluster",
            &format!("m1={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ]);
        let restored =
            EtcdServer::builder(version).name("m1").data_dir(&data_dir).start_with_peer_port(port);
        assert_eq!(restored.revision(), rev);
        assert_eq!(restored.hashkv(rev), live_hash, "hashkv at revision {rev} ({version:?})");
        let got = dump(&restored, 0);
        let strip = |v: &[Value]| {
            v.iter()
                .map(|kv| {
                    (
                        kv["key"].clone(),
                        kv["value"].clone(),
                        kv["mod_revision"].clone(),
                        kv["create_revision"].clone(),
                        kv["version"].clone(),
                        kv["lease"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got), strip(&live), "get \"\" --prefix at revision {rev}");
        // Leased keys keep a working lease.
        let lease_list = json_of(&run_ok(restored.etcdctl().args(["lease", "list", "-w", "json"])));
        let ids: Vec<i64> = lease_list["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["id"].as_i64())
            .collect();
        assert!(
            ids.contains(&lease),
            "lease {lease:x} missing after restore at {rev}: {lease_list}"
        );
    }
}

#[test]
fn point_in_time_restores_equal_etcd_3_5() {
    point_in_time_restores_equal_the_live_cluster(EtcdVersion::V3_5, 20);
}

#[test]
fn point_in_time_restores_equal_etcd_3_4() {
    point_in_time_restores_equal_the_live_cluster(EtcdVersion::V3_4, 20);
}

#[test]
fn point_in_time_restores_equal_etcd_3_6() {
    point_in_time_restores_equal_the_live_cluster(EtcdVersion::V3_6, 20);
}

#[test]
fn point_in_time_restores_equal_etcd_3_7() {
    point_in_time_restores_equal_the_live_cluster(EtcdVersion::V3_7, 20);
}
