//! The library side of restore on real snapshots (crates/bolt/tests/data, taken with etcdctl
//! from etcd 3.4.23 and 3.5.1): the committed db is structurally sound, holds exactly the new
//! members, the consistent index and term, keeps every revision, and the bump marker sorts
//! last. No etcd binary is needed here; crates/cli/tests/restore_*.rs boot the results.

use std::path::{Path, PathBuf};

use etcdguard_bolt::{Db, MappedFile};
use etcdguard_storage::restore::db::{revision_key, walk_facts};
use etcdguard_storage::restore::{restore, Cluster, Destination, Options, RestoreError};
use etcdguard_storage::SnapshotFile;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bolt/tests/data").join(name)
}

fn facts(path: &Path) -> etcdguard_storage::restore::db::Facts {
    let map = MappedFile::open(path).unwrap();
    let db = Db::open(map.bytes()).unwrap();
    let (facts, report) = walk_facts(&db, None);
    assert!(report.is_ok(), "{:?}", report.problems);
    facts
}

const CLUSTER: &str = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380";

#[test]
fn three_members_and_a_bump_on_both_fixtures() {
    for name in ["etcd-3.4.23-tiny.db", "etcd-3.5.1-k8s-small.db"] {
        let snap = SnapshotFile::open(&fixture(name)).unwrap();
        let before = facts(&fixture(name));
        let cluster = Cluster::new(CLUSTER, "tok").unwrap();
        let out = tempfile::tempdir().unwrap();
        let opts = Options { bump_revision: 500, mark_compacted: true, ..Options::default() };
        let dest = Destination::Cluster { dir: out.path().join("c") };
        let report = restore(&snap, &cluster, &dest, &opts).unwrap();
        assert_eq!(report.members.len(), 3);
        assert_eq!(report.source_revision, before.revision);
        assert_eq!(report.revision, before.revision + 500);
        for m in &report.members {
            let after = facts(&m.data_dir.join("member/snap/db"));
            assert_eq!(after.meta_u64(b"consistent_index"), Some(3), "{name}");
            assert_eq!(after.meta_u64(b"term"), Some(1));
            assert_eq!(
                after.meta.get(&b"scheduledCompactRev"[..]),
                Some(&revision_key(before.revision + 500, 0))
            );
            assert_eq!(after.revision_keys, before.revision_keys + 1, "only the marker is added");
            assert_eq!(after.revision, before.revision + 500);
            assert_eq!(after.members.len(), 3);
            assert_eq!(after.members_removed, 0);
            for cm in &cluster.members {
                assert_eq!(
                    after.members.get(cm.hex_id().as_bytes()),
                    Some(&cm.json().into_bytes())
                );
            }
            // every bucket of the source is still there (plus any created)
            for b in &before.buckets {
                assert!(after.buckets.contains(b), "{name}: lost bucket {b}");
            }
        }
    }
}

#[test]
fn member_destination_checks_name_and_refuses_non_empty_dir() {
    let snap = SnapshotFile::open(&fixture("etcd-3.5.1-k8s-small.db")).unwrap();
    let cluster = Cluster::new(CLUSTER, "tok").unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest =
        Destination::Member { name: "zz".into(), data_dir: out.path().join("d"), wal_dir: None };
    assert!(matches!(
        restore(&snap, &cluster, &dest, &Options::default()),
        Err(RestoreError::Config(_))
    ));
    std::fs::create_dir(out.path().join("d")).unwrap();
    std::fs::write(out.path().join("d/x"), b"x").unwrap();
    let dest =
        Destination::Member { name: "a".into(), data_dir: out.path().join("d"), wal_dir: None };
    assert!(matches!(
        restore(&snap, &cluster, &dest, &Options::default()),
        Err(RestoreError::DestinationExists(_))
    ));
    let bad = Options { bump_revision: 5, ..Options::default() };
    let dest =
        Destination::Member { name: "a".into(), data_dir: out.path().join("e"), wal_dir: None };
    assert!(matches!(restore(&snap, &cluster, &dest, &bad), Err(RestoreError::Config(_))));
    let report = restore(&snap, &cluster, &dest, &Options::default()).unwrap();
    assert_eq!(report.members[0].member.name, "a");
}
