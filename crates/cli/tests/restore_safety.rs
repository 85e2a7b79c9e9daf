//! What `etcdguard snapshot restore` refuses, and that a refusal or a failure leaves nothing
//! behind: no data dir, no temp dir, an existing dir untouched. Uses the real snapshots in
//! crates/bolt/tests/data (taken with etcdctl from etcd 3.4.23 and 3.5.1).

mod restore_support;

use std::path::{Path, PathBuf};

use etcdguard_testkit::EtcdVersion;
use restore_support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bolt/tests/data").join(name)
}

const SNAP35: &str = "etcd-3.5.1-k8s-small.db";
const SNAP34: &str = "etcd-3.4.23-tiny.db";

/// A private copy of a fixture in a fresh dir, optionally modified.
fn copy_fixture(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    edit(&mut bytes);
    let path = dir.path().join("snapshot.db");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Page id of the root bucket's root page, from the newer meta.
fn root_page(b: &[u8]) -> usize {
    let (t0, t1) = (u64le(b, 64), u64le(b, 4096 + 64));
    let base = if t1 > t0 { 4096 } else { 0 };
    u64le(b, base + 32) as usize
}

#[test]
fn restores_real_3_4_and_3_5_snapshots_and_status_agrees() {
    for (name, version) in [(SNAP34, EtcdVersion::V3_4), (SNAP35, EtcdVersion::V3_5)] {
        let (dir, snap) = copy_fixture(name, |_| {});
        let data = dir.path().join("data");
        restore_ok(&[s(&snap), "--data-dir", s(&data)]);
        let files: Vec<String> = tree(&data).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            files,
            [
                "member/snap/0000000000000001-0000000000000001.snap",
                "member/snap/db",
                "member/wal/0000000000000000-0000000000000000.wal"
            ]
        );
        let src = tool_status(version, &snap);
        let ours = tool_status(version, &data.join("member/snap/db"));
        assert_eq!(src["revision"], ours["revision"], "{name}");
        // etcdguard's own verify is happy with the rewritten db
        let v = etcdguard()
            .args(["snapshot", "verify"])
            .arg(data.join("member/snap/db"))
            .output()
            .unwrap();
        assert!(v.status.success(), "{name}: {}", String::from_utf8_lossy(&v.stdout));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn refuses_a_non_empty_data_dir_and_changes_nothing() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("member/snap")).unwrap();
    std::fs::write(data.join("member/snap/db"), b"precious").unwrap();
    let before = tree(dir.path());
    let out = restore(&[s(&snap), "--data-dir", s(&data)]);
    assert_eq!(code(&out), 14, "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(tree(dir.path()), before);
    assert_eq!(std::fs::read(data.join("member/snap/db")).unwrap(), b"precious");
}

#[test]
fn accepts_an_existing_empty_data_dir() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    restore_ok(&[s(&snap), "--data-dir", s(&data)]);
    assert!(data.join("member/snap/db").is_file());
    assert_eq!(listing(dir.path()), ["data", "snapshot.db"]);
}

#[test]
fn refuses_an_existing_wal_dir() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    let wal = dir.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    let out = restore(&[s(&snap), "--data-dir", s(&dir.path().join("data")), "--wal-dir", s(&wal)]);
    assert_eq!(code(&out), 14, "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["snapshot.db", "wal"]);
}

#[test]
fn separate_wal_dir_gets_the_wal() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    let (data, wal) = (dir.path().join("data"), dir.path().join("logs/wal"));
    restore_ok(&[s(&snap), "--data-dir", s(&data), "--wal-dir", s(&wal)]);
    assert_eq!(listing(&wal), ["0000000000000000-0000000000000000.wal"]);
    assert_eq!(listing(&data.join("member")), ["snap"]);
    assert_eq!(listing(dir.path()), ["data", "logs", "snapshot.db"]);
    assert_eq!(listing(&dir.path().join("logs")), ["wal"]);
}

#[test]
fn sha256_mismatch_is_refused_before_anything_is_written() {
    let (dir, snap) = copy_fixture(SNAP35, |b| {
        let at = b.len() / 2;
        b[at] ^= 0x55;
    });
    let out = restore(&[s(&snap), "--data-dir", s(&dir.path().join("data"))]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["snapshot.db"], "no data dir and no temp dir");
}

#[test]
fn skip_hash_check_still_checks_the_structure() {
    let (dir, snap) = copy_fixture(SNAP35, |b| {
        let root = root_page(b);
        b[root * 4096 + 8] = 0x20; // page flags: no valid type
    });
    let data = dir.path().join("data");
    let out = restore(&[s(&snap), "--data-dir", s(&data)]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    let out = restore(&[s(&snap), "--data-dir", s(&data), "--skip-hash-check"]);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("integrity check failed"), "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["snapshot.db"]);
}

#[test]
fn plain_db_needs_skip_hash_check() {
    let (dir, snap) = copy_fixture(SNAP35, |b| {
        let n = b.len() - 32;
        b.truncate(n);
    });
    let data = dir.path().join("data");
    let out = restore(&[s(&snap), "--data-dir", s(&data)]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(stderr(&out).contains("--skip-hash-check"), "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["snapshot.db"]);
    restore_ok(&[s(&snap), "--data-dir", s(&data), "--skip-hash-check"]);
    assert!(data.join("member/snap/db").is_file());
}

#[test]
fn not_a_snapshot_and_truncated_files_are_refused() {
    let (dir, junk) = copy_fixture(SNAP35, |b| b.iter_mut().for_each(|x| *x = b'j'));
    let out = restore(&[s(&junk), "--data-dir", s(&dir.path().join("d")), "--skip-hash-check"]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let (dir2, cut) = copy_fixture(SNAP35, |b| b.truncate(4096 * 8));
    let out = restore(&[s(&cut), "--data-dir", s(&dir2.path().join("d")), "--skip-hash-check"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let (dir3, ragged) = copy_fixture(SNAP35, |b| b.truncate(10_000));
    let out = restore(&[s(&ragged), "--data-dir", s(&dir3.path().join("d"))]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    for d in [&dir, &dir2, &dir3] {
        assert_eq!(listing(d.path()), ["snapshot.db"]);
    }
}

#[test]
fn a_failure_after_writing_started_leaves_nothing_behind() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    // The WAL dir cannot be created (its parent is a file): discovered after the db was built.
    let out = restore(&[
        s(&snap),
        "--data-dir",
        s(&dir.path().join("data")),
        "--wal-dir",
        s(&dir.path().join("file/wal")),
    ]);
    assert_ne!(code(&out), 0);
    assert_eq!(listing(dir.path()), ["file", "snapshot.db"], "{}", stderr(&out));
}

#[test]
fn flag_mistakes_are_usage_errors() {
    let (dir, snap) = copy_fixture(SNAP35, |_| {});
    let d = dir.path().join("d");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--bump-revision", "10"], "--mark-compacted required"),
        (vec!["--mark-compacted"], "--mark-compacted required"),
        (
            vec!["--name", "x", "--initial-cluster", "y=http://127.0.0.1:2380"],
            "couldn't find local name \"x\"",
        ),
        (
            vec!["--initial-advertise-peer-urls", "http://127.0.0.1:1"],
            "--initial-advertise-peer-urls",
        ),
        (vec!["--initial-cluster", "default=ftp://a:1"], "URL scheme must be"),
        (
            vec![
                "--initial-cluster",
                "default=http://a:1/path",
                "--initial-advertise-peer-urls",
                "http://a:1/path",
            ],
            "path",
        ),
        (
            vec![
                "--initial-cluster",
                "a=http://h:1,default=http://h:1",
                "--initial-advertise-peer-urls",
                "http://h:1",
            ],
            "twice",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![s(&snap), "--data-dir", s(&d)];
        args.extend(extra.iter().copied());
        let out = restore(&args);
        assert_eq!(code(&out), 2, "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{extra:?}: {}", stderr(&out));
    }
    let out = restore(&[s(&snap)]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(listing(dir.path()), ["snapshot.db"]);
}

#[test]
fn help_teaches_a_three_member_restore() {
    let out = etcdguard().args(["snapshot", "restore", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--initial-cluster m1=",
        "--cluster-out",
        "--bump-revision 1000000000 --mark-compacted",
        "--skip-hash-check",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
