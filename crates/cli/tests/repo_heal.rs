//! Damage at rest in a repository does not spread (issue: one damaged chunk spoiled every
//! later backup), and `backup repair` mends what the data at hand allows. Real etcd 3.5
//! snapshots; bytes flipped in the stored packs as a failing disk would.

mod backup_support;

use std::path::{Path, PathBuf};

use backup_support::*;

fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

fn flip_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn stderr_of(args: &[&str]) -> (i32, String, String) {
    let out = run(etcdguard().args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The reproduction: create; flip a byte in a pack; create again; `verify latest`. The
/// second create reads back the pack it reuses, records the damage and stores that content
/// again, so the new backup verifies, and the older one reads the fresh copy.
#[test]
fn a_damaged_chunk_does_not_spread_into_the_next_backup() {
    let snaps = snapshots();
    let dir = scratch("heal-spread");
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    let first = snaps.first.to_str().unwrap();
    let id1 = created_id(&ok(&["backup", "create", "--repo", r, "--from-file", first]));
    let pack =
        packs(&repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    flip_middle(&pack);

    let (code, stdout, stderr) =
        stderr_of(&["backup", "create", "--repo", r, "--from-file", first]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&pack_name) && stderr.contains("damaged"),
        "the create says what it found: {stderr}"
    );
    assert!(
        repo.join("damaged").join(format!("{pack_name}.json")).exists(),
        "the damage is recorded"
    );
    let id2 = created_id(&stdout);
    ok(&["backup", "verify", "--repo", r, "latest"]);
    ok(&["backup", "verify", "--repo", r, &id1]);
    let out = dir.join("restored.db");
    ok(&["backup", "restore", "--repo", r, &id2, "--to-file", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&snaps.first).unwrap());

    // --trust-stored skips the read-back: with the damage recorded it still stores fresh.
    ok(&["backup", "create", "--repo", r, "--from-file", first, "--trust-stored"]);
    ok(&["backup", "verify", "--repo", r, "latest"]);
    // A repair removes the damaged pack (its sound blobs are salvaged) and its record.
    let report = ok(&["backup", "repair", "--repo", r]);
    assert!(
        report.contains("1 damaged") && report.contains("every backup is restorable"),
        "{report}"
    );
    assert!(!pack.exists() && !repo.join("damaged").join(format!("{pack_name}.json")).exists());
    ok(&["backup", "verify", "--repo", r, &id1]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Damage in chunks only an older backup holds: verify names it, prune refuses to hide it,
/// repair names the backup that stays unrestorable, and with the snapshot it was made of
/// brings it back whole.
#[test]
fn repair_names_what_stays_unrestorable_and_refills_from_the_snapshot() {
    let snaps = snapshots();
    let dir = scratch("heal-repair");
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    let id1 = created_id(&ok(&[
        "backup",
        "create",
        "--repo",
        r,
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]));
    let old_packs = packs(&repo);
    let id3 = created_id(&ok(&[
        "backup",
        "create",
        "--repo",
        r,
        "--from-file",
        snaps.third.to_str().unwrap(),
    ]));
    for p in &old_packs {
        flip_middle(p);
    }
    let err = fails(&["backup", "verify", "--repo", r, &id1], 10);
    assert!(err.contains("damaged"), "{err}");
    let err = fails(&["backup", "prune", "--repo", r], 10);
    assert!(err.contains("backup repair"), "{err}");

    // A dry run changes nothing and says there is damage (exit 10).
    let before = all_bytes_under(&repo.join("packs"));
    let (code, dry, _) = stderr_of(&["backup", "repair", "--repo", r, "--dry-run", "-w", "json"]);
    assert_eq!(code, 10, "{dry}");
    let v: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(v["dryRun"], true);
    assert_eq!(v["packsDamaged"].as_array().unwrap().len(), old_packs.len(), "{v}");
    assert_eq!(all_bytes_under(&repo.join("packs")), before, "a dry run writes nothing");

    // Without sources: the damaged packs go, the older backup is named as unrestorable.
    let (code, report, _) = stderr_of(&["backup", "repair", "--repo", r, "-w", "json"]);
    assert_eq!(code, 10, "{report}");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let named: Vec<&str> =
        v["unrestorable"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert!(named.contains(&id1.as_str()), "{v}");
    fails(&["backup", "verify", "--repo", r, &id1], 10);

    // With the snapshots they were made of, every backup comes back byte for byte.
    let report = ok(&[
        "backup",
        "repair",
        "--repo",
        r,
        "--from-file",
        snaps.third.to_str().unwrap(),
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]);
    assert!(report.contains("every backup is restorable"), "{report}");
    for (id, snap) in [(&id1, &snaps.first), (&id3, &snaps.third)] {
        ok(&["backup", "verify", "--repo", r, id]);
        let out = dir.join(format!("{id}.db"));
        ok(&["backup", "restore", "--repo", r, id, "--to-file", out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(snap).unwrap());
    }
    let clean = ok(&["backup", "repair", "--repo", r, "--dry-run"]);
    assert!(clean.contains("0 damaged"), "{clean}");
    ok(&["backup", "prune", "--repo", r]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--from-live`: chunks lost from a backup of a live cluster come back from a fresh
/// snapshot of it (pages that did not change since match).
#[test]
fn repair_refills_from_a_fresh_snapshot_of_the_live_cluster() {
    use etcdguard_testkit::{EtcdServer, EtcdVersion};
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..300 {
        server.put(
            format!("/registry/configmaps/default/cm-{i:03}").as_bytes(),
            format!("{i} {}", "v".repeat(400)).as_bytes(),
        );
    }
    let dir = scratch("heal-live");
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    let id = created_id(&ok(&["backup", "create", "--repo", r, "--endpoints", server.endpoint()]));
    let before = dir.join("before.db");
    ok(&["backup", "restore", "--repo", r, &id, "--to-file", before.to_str().unwrap()]);
    for p in packs(&repo) {
        flip_middle(&p);
    }
    fails(&["backup", "verify", "--repo", r, &id], 10);
    let report =
        ok(&["backup", "repair", "--repo", r, "--from-live", "--endpoints", server.endpoint()]);
    assert!(
        report.contains("stored again from") && report.contains("every backup is restorable"),
        "{report}"
    );
    let after = dir.join("after.db");
    ok(&["backup", "restore", "--repo", r, &id, "--to-file", after.to_str().unwrap()]);
    assert_eq!(std::fs::read(&after).unwrap(), std::fs::read(&before).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
