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
    let on_azure = || {
        let mut c = etcdguard();
        azure_env(&mut c, &azurite);
        c
    };
    let az = |args: &[&str]| ok_with(&mut on_azure(), args);
    let first = create_from_file_with(&mut on_azure(), repo, &snaps.first, &[]);
    let second = create_from_file_with(&mut on_azure(), repo, &snaps.second, &[]);
    let list: serde_json::Value =
        serde_json::from_str(&az(&["backup", "list", "--repo", repo, "-w", "json"])).unwrap();
    let got: Vec<&str> =
        list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![first.as_str(), second.as_str()]);
    let dest = work.join("second.db");
    az(&restore_args(&second, repo, &dest, &[]));
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
    let out = run(on_azure().args(["backup", "list", "--repo", "az://nope/x"]));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
