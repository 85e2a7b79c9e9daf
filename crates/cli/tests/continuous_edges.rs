//! Continuous capture's edges, against a real etcd: `backup restore ID --at REV` starts
//! from backup ID (or refuses it), and `backup log` shows where a lost segment leaves a gap.

mod backup_support;

use std::process::Stdio;
use std::time::Duration;

use backup_support::{etcdguard, follow_cmd, run};
use etcdguard_testkit::{EtcdServer, EtcdVersion};
use serde_json::Value;

fn ok(args: &[&str]) -> String {
    let out = run(etcdguard().args(args));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str], code: i32) -> String {
    let out = run(etcdguard().args(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    stderr
}

#[test]
fn restore_at_starts_from_the_given_backup_and_log_shows_a_lost_segment() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..10 {
        server.put(format!("/registry/configmaps/default/cm{i}").as_bytes(), b"before");
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let target = server.revision() + 30;
    let mut follow = follow_cmd(repo, server.endpoint(), &[])
        .args(["--until-revision", &target.to_string(), "--for", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Three batches apart in time: several segments.
    for batch in 0..3 {
        for i in 0..10 {
            server.put(
                format!("/registry/configmaps/default/cm{i}").as_bytes(),
                format!("batch {batch}").as_bytes(),
            );
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    assert!(follow.wait().unwrap().success());
    let backups: Value =
        serde_json::from_str(&ok(&["backup", "list", "--repo", repo, "-w", "json"])).unwrap();
    let first = backups[0]["id"].as_str().unwrap().to_string();
    let first_rev = backups[0]["revision"].as_i64().unwrap();
    // A later full backup.
    let second = ok(&["backup", "create", "--repo", repo, "--endpoints", server.endpoint()]);
    let second = second.split_whitespace().nth(1).unwrap().to_string();
    let at = (first_rev + 5).to_string();
    let out_file = dir.path().join("at.db");
    let out_s = out_file.to_str().unwrap();

    // From the first full backup: fine; the plan names it.
    let plan = ok(&[
        "backup",
        "restore",
        &first,
        "--repo",
        repo,
        "--at",
        &at,
        "--dry-run",
        "--to-file",
        out_s,
    ]);
    assert!(plan.contains(&first) && plan.contains(&format!("result: revision {at}")), "{plan}");
    ok(&["backup", "restore", &first, "--repo", repo, "--at", &at, "--to-file", out_s]);
    std::fs::remove_file(&out_file).unwrap();
    // From a full backup after the point: refused, not quietly replaced.
    let err =
        fails(&["backup", "restore", &second, "--repo", repo, "--at", &at, "--to-file", out_s], 2);
    assert!(err.contains(&second) && err.contains("is before backup"), "{err}");
    let err = fails(
        &[
            "backup",
            "restore",
            &second,
            "--repo",
            repo,
            "--at",
            &at,
            "--dry-run",
            "--to-file",
            out_s,
        ],
        2,
    );
    assert!(err.contains("is before backup"), "{err}");
    // A backup that does not exist: not found.
    fails(
        &["backup", "restore", "ffffffffffffffff", "--repo", repo, "--at", &at, "--to-file", out_s],
        3,
    );
    assert!(!out_file.exists());

    // A segment in the middle lost: `backup log` shows the gap.
    let log: Vec<Value> =
        serde_json::from_str(&ok(&["backup", "log", "--repo", repo, "-w", "json"])).unwrap();
    assert!(log.iter().all(|e| e.get("gap").is_none()), "a gap before any loss");
    let seg_dir = std::path::Path::new(repo).join("segments").join(&first);
    let mut segments: Vec<_> =
        std::fs::read_dir(&seg_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    assert!(segments.len() >= 3, "only {} segments", segments.len());
    std::fs::remove_file(&segments[1]).unwrap();
    let name = segments[1].file_name().unwrap().to_str().unwrap().to_string();
    let (a, b) = name.split_once('-').unwrap();
    let (a, b) = (i64::from_str_radix(a, 16).unwrap(), i64::from_str_radix(b, 16).unwrap());
    let log: Vec<Value> =
        serde_json::from_str(&ok(&["backup", "log", "--repo", repo, "-w", "json"])).unwrap();
    let gap = log.iter().find_map(|e| e.get("gap")).expect("no gap in the log");
    assert_eq!(
        (gap["firstRevision"].as_i64(), gap["lastRevision"].as_i64()),
        (Some(a), Some(b)),
        "{gap}"
    );
    let out = run(etcdguard().args(["backup", "log", "--repo", repo]));
    assert!(out.status.success());
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{a}..{b}")) && stdout.contains("MISSING"), "{stdout}");
    assert!(stderr.contains("changes missing"), "{stderr}");
}
