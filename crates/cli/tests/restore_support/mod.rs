//! Shared by the `restore_*` integration tests: real source data and running etcdguard.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcdguard_testkit::{EtcdServer, EtcdVersion, KeyValue};
use serde_json::Value;

/// A snapshot taken with the real `etcdctl snapshot save` from a real server, and what that
/// server reported before it was stopped.
pub struct Source {
    pub dir: tempfile::TempDir,
    pub snapshot: PathBuf,
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// A few hundred keys with history: overwrites, deletes, a leased key, a value large enough
/// for overflow pages, and old members in the source cluster's db (named `src`).
pub fn make_source(version: EtcdVersion) -> Source {
    make_source_with(version, |server, dir| {
        let snapshot = dir.join("snapshot.db");
        server.snapshot_save(&snapshot);
        snapshot
    })
}

/// As [`make_source`], with the snapshot taken by `save` (which returns the file it wrote).
pub fn make_source_with(
    version: EtcdVersion,
    save: impl FnOnce(&EtcdServer, &Path) -> PathBuf,
) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::builder(version).name("src").start();
    for i in 0..300 {
        server.put(
            format!("/registry/pods/ns{}/pod-{i:04}", i % 7).as_bytes(),
            format!("value-{i}-{}", "x".repeat(i % 50)).as_bytes(),
        );
    }
    for i in (0..300).step_by(10) {
        server.put(format!("/registry/pods/ns{}/pod-{i:04}", i % 7).as_bytes(), b"updated");
    }
    for i in (5..300).step_by(25) {
        server.delete(format!("/registry/pods/ns{}/pod-{i:04}", i % 7).as_bytes());
    }
    let lease = server.grant_lease(3600);
    server.put_with_lease(b"/registry/leases/kube-system/leader", b"holder", lease);
    server.put(b"/registry/configmaps/big", &vec![b'B'; 30_000]);
    let snapshot = save(&server, dir.path());
    let kvs = server.get_all();
    let revision = server.revision();
    drop(server);
    Source { dir, snapshot, kvs, revision }
}

pub fn etcdguard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdguard"));
    // No test asks a cloud metadata address.
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `etcdguard snapshot restore <args>`.
pub fn restore(args: &[&str]) -> Output {
    let out = etcdguard().arg("snapshot").arg("restore").args(args).output().unwrap();
    out
}

pub fn restore_ok(args: &[&str]) -> Output {
    let out = restore(args);
    assert!(
        out.status.success(),
        "etcdguard snapshot restore {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    etcdguard_testkit::run_checked(cmd)
}

pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `snapshot status -w json` of a db, by the release's own tool (etcdutl 3.5 / etcdctl 3.4).
pub fn tool_status(version: EtcdVersion, db: &Path) -> Value {
    let out = run_ok(
        version.binaries().snapshot_tool().args(["snapshot", "status", "-w", "json"]).arg(db),
    );
    json_of(&out)
}

/// Splits a WAL file's record area into frames (stops at the zero preallocation).
pub fn wal_frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let lf = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if lf == 0 {
            break;
        }
        let n = (lf & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if lf >> 63 == 1 { ((lf >> 56) & 0x7) as usize } else { 0 };
        frames.push(&bytes[at..at + 8 + n + pad]);
        at += 8 + n + pad;
    }
    frames
}

/// Names in a directory (sorted), for "nothing was left behind" checks.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file under `dir` with its size, relative paths (sorted).
pub fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    fn rec(base: &Path, d: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                rec(base, &p, out);
            } else {
                out.push((
                    p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                ));
            }
        }
    }
    rec(dir, dir, &mut out);
    out.sort();
    out
}
