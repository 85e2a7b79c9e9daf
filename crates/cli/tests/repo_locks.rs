//! Repository locks are judged by the storage's clock: a lock planted with a far-future
//! expiry, or written by a host whose clock runs ahead, blocks the repository only until it
//! has gone unrefreshed for 5 minutes by the store's own timestamps; `backup unlock` removes
//! stale (or, asked to, all) locks and the leftovers of killed writers.

mod backup_support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use backup_support::*;

/// A lock as another host would write it, claiming to be valid until 2099.
fn plant_lock(repo: &Path, name: &str, exclusive: bool) -> std::path::PathBuf {
    let path = repo.join("locks").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let far = "2099-01-01T00:00:00Z";
    let lock = serde_json::json!({"exclusive": exclusive, "purpose": "backup prune", "hostname": "far-away", "pid": 1,
        "created": far, "refreshed": far, "expires": far});
    std::fs::write(&path, serde_json::to_vec(&lock).unwrap()).unwrap();
    path
}

/// Back-dates a file's last-modified time, as if the storage had stamped it `ago`.
fn written_ago(path: &Path, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn a_planted_future_lock_blocks_only_until_stale_by_store_time() {
    let snaps = snapshots();
    let work = scratch("locks-planted");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let first = snaps.first.to_str().unwrap();
    ok(&["backup", "create", "--repo", repo_s, "--from-file", first]);

    let planted = plant_lock(&repo, "planted.json", true);
    // Fresh: the repository is busy, and the message says until when.
    let err = fails(&["backup", "create", "--repo", repo_s, "--from-file", first], 15);
    assert!(err.contains("is stale in") && err.contains("backup unlock"), "{err}");
    let err = fails(&["backup", "prune", "--repo", repo_s], 15);
    assert!(err.contains("is stale in"), "{err}");
    // `unlock` keeps a live lock.
    let out = ok(&["backup", "unlock", "--repo", repo_s]);
    assert!(out.contains("kept live lock locks/planted.json"), "{out}");
    assert!(planted.exists());

    // Unrefreshed for 6 minutes by the storage's clock: stale, whatever it claims.
    written_ago(&planted, Duration::from_secs(6 * 60));
    ok(&["backup", "create", "--repo", repo_s, "--from-file", first]);
    let out = ok(&["backup", "prune", "--repo", repo_s]);
    assert!(out.contains("freed"), "{out}");
    assert!(!planted.exists(), "prune left the stale lock");
}

#[test]
fn unlock_removes_stale_and_unreadable_locks_and_temporaries_and_all_only_when_asked() {
    let snaps = snapshots();
    let work = scratch("locks-unlock");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    ok(&["backup", "create", "--repo", repo_s, "--from-file", snaps.first.to_str().unwrap()]);

    let stale = plant_lock(&repo, "stale.json", false);
    written_ago(&stale, Duration::from_secs(10 * 60));
    let garbage = repo.join("locks/garbage.json");
    std::fs::write(&garbage, b"\x00\x01 not a lock").unwrap();
    written_ago(&garbage, Duration::from_secs(10 * 60));
    let tmp = repo.join("locks/.tmp-0123456789abcdef.json-00000000deadbeef");
    std::fs::write(&tmp, b"{").unwrap();
    written_ago(&tmp, Duration::from_secs(2 * 3600));
    let live = plant_lock(&repo, "live.json", false);

    let out = ok(&["backup", "unlock", "--repo", repo_s]);
    assert!(out.contains("removed stale lock locks/stale.json"), "{out}");
    assert!(out.contains("removed stale lock locks/garbage.json"), "{out}");
    assert!(
        out.contains("2 lock(s) removed, 1 live lock(s) kept, 1 temporary file(s) removed"),
        "{out}"
    );
    assert!(!stale.exists() && !garbage.exists() && !tmp.exists());
    assert!(live.exists());

    let out = run(etcdguard().args(["backup", "unlock", "--repo", repo_s, "--remove-all"]));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: removed live lock locks/live.json"), "{stderr}");
    assert!(!live.exists());
    assert_eq!(std::fs::read_dir(repo.join("locks")).unwrap().count(), 0);
}
