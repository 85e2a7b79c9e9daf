//! `etcdguard snapshot save` against real etcd 3.4, 3.5, 3.6 and 3.7 over plain http: the file equals
//! the one the real `etcdctl snapshot save` writes (3.6+: the same content, as the real
//! `etcdutl snapshot status` reads it — those servers commit before each snapshot, so no two
//! snapshots are byte-identical), and the status printed after saving is the one the real
//! `snapshot status` prints.

mod live_support;

use std::os::unix::fs::PermissionsExt;

use etcdguard_testkit::{
    free_port, load_kubernetes_shaped, run_checked, EtcdServer, EtcdVersion, LoadSpec,
};
use live_support::*;

fn small_load() -> LoadSpec {
    LoadSpec { objects: 200, updates: 40, deletes: 20, ..LoadSpec::default() }
}

fn save_equals_etcdctl(version: EtcdVersion) {
    let server = EtcdServer::start(version);
    load_kubernetes_shaped(&server, &small_load());
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.db");
    let theirs = dir.path().join("theirs.db");

    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(&ours)
        .args(["--endpoints", server.endpoint()])
        .output()
        .unwrap();
    expect_code(&out, 0, "snapshot save");
    server.snapshot_save(&theirs);

    let a = std::fs::read(&ours).unwrap();
    let b = std::fs::read(&theirs).unwrap();
    if version.has_storage_version() {
        // 3.6+ commit the backend before every snapshot, so two snapshots of an idle server
        // differ in their meta pages and page layout; their content must not.
        let status = |f: &std::path::Path| {
            let out = run_checked(
                server.binaries().snapshot_tool().args(["snapshot", "status", "-w", "json"]).arg(f),
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (v["hash"].clone(), v["revision"].clone(), v["totalKey"].clone(), v["version"].clone())
        };
        assert_eq!(
            status(&ours),
            status(&theirs),
            "{}: etcdguard's snapshot holds other data than etcdctl's",
            version.label()
        );
    } else {
        assert_eq!(a.len(), b.len(), "{}: sizes differ", version.label());
        assert!(
            a == b,
            "{}: etcdguard's snapshot differs from etcdctl's taken right after it",
            version.label()
        );
    }
    assert_eq!(a.len() % 512, 32, "the sha256 trailer is kept");
    let mode = std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "snapshots hold secrets: mode must be 0600");
    assert!(!dir.path().join("ours.db.part").exists());

    // stdout: etcdctl's line, then the status line the real tool prints for the file.
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("Snapshot saved at {}", ours.display()).as_str()),
        "{stdout}"
    );
    let real =
        run_checked(server.binaries().snapshot_tool().args(["snapshot", "status"]).arg(&theirs));
    assert_eq!(
        lines.next().map(str::to_string),
        text(&real.stdout).lines().next().map(str::to_string),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the only endpoint given"),
        "the choice is logged with its reason: {stderr}"
    );
    assert!(stderr.contains("sha256 trailer verified"), "{stderr}");
}

#[test]
fn save_equals_etcdctl_3_4() {
    save_equals_etcdctl(EtcdVersion::V3_4);
}

#[test]
fn save_equals_etcdctl_3_5() {
    save_equals_etcdctl(EtcdVersion::V3_5);
}

#[test]
fn save_equals_etcdctl_3_6() {
    save_equals_etcdctl(EtcdVersion::V3_6);
}

#[test]
fn save_equals_etcdctl_3_7() {
    save_equals_etcdctl(EtcdVersion::V3_7);
}

#[test]
fn save_to_stdout_and_env_endpoints() {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    load_kubernetes_shaped(&server, &LoadSpec { objects: 50, ..small_load() });
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.db");
    // Endpoint from ETCDCTL_ENDPOINTS, as etcdctl reads it.
    let out = etcdguard()
        .args(["snapshot", "save", "-"])
        .env("ETCDCTL_ENDPOINTS", server.endpoint())
        .output()
        .unwrap();
    expect_code(&out, 0, "snapshot save -");
    server.snapshot_save(&theirs);
    assert!(
        out.stdout == std::fs::read(&theirs).unwrap(),
        "stdout carries exactly the snapshot bytes"
    );
    assert!(!text(&out.stderr).contains("Snapshot saved at"));
}

#[test]
fn unreachable_endpoint_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snap.db");
    let endpoint = format!("127.0.0.1:{}", free_port());
    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(&dest)
        .args(["--endpoints", &endpoint])
        .output()
        .unwrap();
    expect_code(&out, 12, "unreachable endpoint");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&endpoint) && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert_no_file(&dest);
}

#[test]
fn missing_directory_fails_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("no/such/dir/snap.db");
    let endpoint = format!("127.0.0.1:{}", free_port());
    let out = etcdguard()
        .args(["snapshot", "save"])
        .arg(&dest)
        .args(["--endpoints", &endpoint])
        .output()
        .unwrap();
    expect_code(&out, 3, "missing directory");
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
}
