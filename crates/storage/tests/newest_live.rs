//! `keys::newest_live` and `keys::map_in_file_order` on real snapshots (etcdctl 3.4.23 and
//! 3.5.1, crates/bolt/tests/data): the same live keys, revisions and values as a replay of
//! every revision, and values read with positioned reads equal to the map's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use etcdguard_storage::keys::{for_each_revision, map_in_file_order, map_newest_live, newest_live};
use etcdguard_storage::SnapshotFile;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bolt/tests/data").join(name)
}

#[test]
fn newest_live_agrees_with_a_replay_of_every_revision() {
    for name in ["etcd-3.4.23-tiny.db", "etcd-3.5.1-k8s-small.db"] {
        let file = SnapshotFile::open(&fixture(name)).unwrap();
        let db = file.db().unwrap();
        let mut replay: BTreeMap<Vec<u8>, (i64, i64, i64, Vec<u8>)> = BTreeMap::new();
        let mut tombstones = 0;
        for_each_revision(&db, None, &mut |r| {
            if r.tombstone {
                tombstones += 1;
                replay.remove(r.kv.key);
            } else {
                replay.insert(
                    r.kv.key.to_vec(),
                    (r.kv.create_revision, r.kv.mod_revision, r.kv.version, r.kv.value.to_vec()),
                );
            }
        })
        .unwrap();
        assert!(!replay.is_empty(), "{name}");

        let live = newest_live(&db, None, &|_| true).unwrap();
        let got: BTreeMap<Vec<u8>, (i64, i64, i64, Vec<u8>)> = live
            .iter()
            .map(|n| {
                (n.key.to_vec(), (n.create_revision, n.mod_revision, n.version, n.value.to_vec()))
            })
            .collect();
        assert_eq!(got, replay, "{name}");
        assert!(live.windows(2).all(|w| w[0].key < w[1].key), "{name}: sorted by key");

        // A filter keeps only what it accepts.
        let first = replay.keys().next().unwrap().clone();
        let one = newest_live(&db, None, &|k| k == first.as_slice()).unwrap();
        assert_eq!(one.iter().map(|n| n.key.to_vec()).collect::<Vec<_>>(), vec![first]);

        // Every item once, in the items' order, with the bytes the map holds.
        let mapped = map_in_file_order(&file, &live, &|n, value| (n.key.clone(), value.to_vec()));
        assert_eq!(mapped.len(), live.len());
        for (n, (key, value)) in live.iter().zip(&mapped) {
            assert_eq!((&n.key, value.as_slice()), (key, n.value), "{name}");
        }

        // Both at once (part of the work done during the walk): the same pairs.
        let both =
            map_newest_live(&file, &db, &|_| true, &|n, value| (n.mod_revision, value.to_vec()))
                .unwrap();
        assert_eq!(both.len(), live.len(), "{name}");
        for ((n, (rev, value)), expected) in both.iter().zip(&live) {
            assert_eq!(
                (&n.key, n.mod_revision, *rev, value.as_slice()),
                (&expected.key, expected.mod_revision, expected.mod_revision, expected.value),
                "{name}"
            );
        }
    }
}

#[test]
fn copy_out_refuses_bytes_from_elsewhere() {
    let file = SnapshotFile::open(&fixture("etcd-3.4.23-tiny.db")).unwrap();
    let mut buf = Vec::new();
    let image = file.image();
    file.copy_out(&image[4096..4100], &mut buf).unwrap();
    assert_eq!(buf, &image[4096..4100]);
    let elsewhere = vec![0u8; 16];
    assert!(file.copy_out(&elsewhere, &mut buf).is_err());
    assert!(file.copy_out(&[], &mut buf).is_err() || buf.is_empty());
}
