//! `etcdguard backup …` against Azurite (Azure Blob Storage emulator from npm), started here on
//! a free loopback port and stopped by PID: round trip, dedup, presigned (SAS) URLs.

mod backup_support;

use backup_support::*;

#[test]
fn azure_round_trip_and_sas_urls() {
    let snaps = snapshots();
    let azurite = Azurite::start();
    azurite.create_container("etcd");
    let work = scratch("azure");
    let repo = "az://etcd/prod";
    let az = |args: &[&str]| {
        let out = run(azure_env(&mut etcdguard(), &azurite).args(args));
        assert!(
            out.status.success(),
            "etcdguard {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = created_id(&az(&[
        "backup",
        "create",
        "--repo",
        repo,
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]));
    let second = created_id(&az(&[
        "backup",
        "create",
        "--repo",
        repo,
        "--from-file",
        snaps.second.to_str().unwrap(),
    ]));
    let list: serde_json::Value =
        serde_json::from_str(&az(&["backup", "list", "--repo", repo, "-w", "json"])).unwrap();
    let got: Vec<&str> =
        list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![first.as_str(), second.as_str()]);
    let dest = work.join("second.db");
    az(&["backup", "restore", &second, "--repo", repo, "--to-file", dest.to_str().unwrap()]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&snaps.second).unwrap());
    az(&["backup", "verify", &first, "--repo", repo, "--scratch-dir", work.to_str().unwrap()]);
    let urls = az(&["backup", "url", &second, "--repo", repo, "--expires", "5m", "--objects"]);
    let manifest_url =
        urls.lines().find(|l| l.starts_with("backups/")).unwrap().split('\t').nth(1).unwrap();
    assert!(manifest_url.contains("sig="), "{manifest_url}");
    // The exported snapshot (block blob put in blocks) downloads byte-identical with its SAS URL.
    let url = az(&["backup", "url", &second, "--repo", repo, "--expires", "5m"]);
    assert!(url.contains("sig="), "{url}");
    assert!(
        http_get(url.trim()) == std::fs::read(&snaps.second).unwrap(),
        "exported snapshot differs"
    );
    // A missing container is a clear error.
    let out = run(azure_env(&mut etcdguard(), &azurite).args([
        "backup",
        "list",
        "--repo",
        "az://nope/x",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
