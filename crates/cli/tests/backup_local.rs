//! `etcdguard backup …` on a local-directory repository, with real snapshots from a real
//! etcd 3.5: round trip byte for byte, deduplication after churn, control-plane files with
//! their modes, verify catching damage, delete/prune with retention, locks and exit codes.

mod backup_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use backup_support::*;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            walk(&p, out);
        }
    }
}

#[test]
fn round_trip_with_control_plane_files() {
    let snaps = snapshots();
    let work = scratch("round-trip");
    let (pki, manifests, enc) = control_plane(&work);
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let flags = control_plane_flags(&pki, &manifests, Some(&enc));
    let labels = ["--label", "env=test", "--cluster", "kind-1"];
    let out = ok(&create_args(repo_s, &snaps.first, &[&flags[..], &labels].concat()));
    let id = created_id(&out);

    // Everything in the repository is private: files 0600, directories 0700.
    let mut all = Vec::new();
    walk(&repo, &mut all);
    assert!(all.len() >= 5, "{all:?}");
    for p in &all {
        let mode = std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    // The CA key is not stored in clear text... it is zstd-framed at least, and never in a manifest.
    let manifest = std::fs::read_to_string(repo.join(format!("backups/{id}.json"))).unwrap();
    assert!(!manifest.contains("PRIVATE KEY"));

    let list = list_json(repo_s);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["cluster"], "kind-1");
    assert_eq!(list[0]["labels"]["env"], "test");
    assert!(list[0]["revision"].as_i64().unwrap() > 1000);
    let table = ok(&["backup", "list", "--repo", repo_s]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&id) && table.contains("kind-1") && table.contains("env=test"),
        "{table}"
    );

    let show = ok(&["backup", "show", &id[..6], "--repo", repo_s]);
    assert!(show.contains(&format!("backup              {id}")), "{show}");
    assert!(show.contains("0600") && show.contains("pki/ca.key"), "{show}");
    assert!(show.contains("encryption-config/encryption-config.yaml"), "{show}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", "latest", "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["etcd"]["verified"], true);
    assert_eq!(shown["etcd"]["trailer"], "verified");
    assert_eq!(
        shown["snapshot"]["size"].as_u64().unwrap(),
        std::fs::metadata(&snaps.first).unwrap().len()
    );

    // Restore: byte-identical snapshot, files with their modes and the symlink.
    let restored = work.join("restored.db");
    let files = work.join("files");
    ok(&restore_with_files(&id, repo_s, &restored, &files));
    assert!(
        std::fs::read(&restored).unwrap() == std::fs::read(&snaps.first).unwrap(),
        "restored snapshot differs"
    );
    assert_eq!(std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read(files.join("pki/ca.key")).unwrap(),
        std::fs::read(pki.join("ca.key")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(files.join("pki/ca.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(files.join("pki/ca.crt")).unwrap().permissions().mode() & 0o777,
        std::fs::metadata(pki.join("ca.crt")).unwrap().permissions().mode() & 0o777
    );
    assert_eq!(std::fs::read_link(files.join("pki/ca-link.crt")).unwrap(), Path::new("ca.crt"));
    assert_eq!(std::fs::read(files.join("pki/etcd/server.key")).unwrap(), b"etcd key");
    assert_eq!(
        std::fs::read(files.join("manifests/etcd.yaml")).unwrap(),
        std::fs::read(manifests.join("etcd.yaml")).unwrap()
    );
    assert_eq!(
        std::fs::read(files.join("encryption-config/encryption-config.yaml")).unwrap(),
        std::fs::read(&enc).unwrap()
    );
    // The restored snapshot passes the real etcdutl.
    let status = run(etcdguard_testkit::EtcdVersion::V3_5
        .binaries()
        .snapshot_tool()
        .args(["snapshot", "status"])
        .arg(&restored));
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    // Nothing is overwritten.
    let err = fails(&restore_args(&id, repo_s, &restored, &[]), 14);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn churn_costs_little_and_every_backup_restores() {
    let snaps = snapshots();
    let work = scratch("churn");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let mut ids = Vec::new();
    for s in [&snaps.first, &snaps.second, &snaps.third] {
        ids.push(create_from_file(repo_s, s, &[]));
    }
    let list = list_json(repo_s);
    assert_eq!(list.iter().map(|b| b["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), ids);
    let added: Vec<u64> = list.iter().map(|b| b["added"].as_u64().unwrap()).collect();
    let size = list[0]["snapshotSize"].as_u64().unwrap();
    eprintln!("snapshot {size} bytes; stored per backup: {added:?}");
    assert!(added[0] < size, "the first backup is compressed");
    for a in &added[1..] {
        assert!(
            *a * 10 < added[0],
            "a backup after ~1% churn stores under a tenth of the first: {added:?}"
        );
    }
    for (id, s) in ids.iter().zip([&snaps.first, &snaps.second, &snaps.third]) {
        let dest = work.join(format!("{id}.db"));
        ok(&restore_args(id, repo_s, &dest, &[]));
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(s).unwrap(),
            "backup {id} did not restore byte-identical"
        );
    }
}

#[test]
fn verify_passes_then_catches_a_damaged_pack() {
    let snaps = snapshots();
    let work = scratch("verify");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let id = create_from_file(repo_s, &snaps.second, &[]);
    let out = ok(&[
        "backup",
        "verify",
        &id,
        "--repo",
        repo_s,
        "--packs",
        "--scratch-dir",
        work.to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("backup {id}: OK")), "{out}");
    assert!(ok(&["backup", "show", &id, "--repo", repo_s]).contains("backup verified"));

    // Flip one byte in the middle of the largest pack.
    let pack =
        pack_files(&repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    flip_byte(&pack, |n| n / 3, 0xff);

    let err = fails(
        &["backup", "verify", &id, "--repo", repo_s, "--scratch-dir", work.to_str().unwrap()],
        10,
    );
    assert!(
        err.contains("damaged") && err.contains(&pack.file_name().unwrap().to_string_lossy()[..16]),
        "{err}"
    );
    let dest = work.join("out.db");
    fails(&restore_args(&id, repo_s, &dest, &[]), 10);
    assert!(!dest.exists(), "a failed restore leaves no file");
    assert_no_temporaries(&work);
}

#[test]
fn damaged_snapshot_is_refused_and_nothing_is_listed() {
    let snaps = snapshots();
    let work = scratch("refuse");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let bad = work.join("bad.db");
    std::fs::copy(&snaps.first, &bad).unwrap();
    flip_byte(&bad, |n| n / 2, 0x01);
    let err = fails(&create_args(repo_s, &bad, &[]), 9);
    assert!(err.contains("not backing it up"), "{err}");
    fails(&create_args(repo_s, &work.join("missing.db"), &[]), 3);
    // The snapshot was stored while it was checked, but no backup lists it.
    assert!(list_json(repo_s).is_empty());
}

#[test]
fn delete_and_prune_with_retention() {
    let snaps = snapshots();
    let work = scratch("prune");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let mut ids = Vec::new();
    for s in [&snaps.first, &snaps.second, &snaps.third] {
        ids.push(create_from_file(repo_s, s, &[]));
    }
    let size = |dir: &Path| {
        let mut v = Vec::new();
        walk(dir, &mut v);
        v.iter().filter(|p| p.is_file()).map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>()
    };
    let before = size(&repo.join("packs"));

    // Dry run: says what and why, changes nothing.
    let plan = ok(&["backup", "prune", "--repo", repo_s, "--keep-last", "1", "--dry-run"]);
    assert!(plan.contains("would remove") && plan.contains("last 1"), "{plan}");
    assert_eq!(list_json(repo_s).len(), 3);
    assert_eq!(size(&repo.join("packs")), before);
    let plan: serde_json::Value = serde_json::from_str(&ok(&[
        "backup",
        "prune",
        "--repo",
        repo_s,
        "--keep-last",
        "1",
        "-n",
        "-w",
        "json",
    ]))
    .unwrap();
    let keep: Vec<bool> =
        plan["backups"].as_array().unwrap().iter().map(|b| b["keep"].as_bool().unwrap()).collect();
    // All three were verified at create, so the newest verified (the newest) is kept anyway.
    assert_eq!(keep, vec![true, false, false]);

    // Deleting the newest verified backup needs --force; deleting another does not.
    let err = fails(&["backup", "delete", &ids[2], "--repo", repo_s], 2);
    assert!(err.contains("--force"), "{err}");
    ok(&["backup", "delete", &ids[0], "--repo", repo_s]);
    assert_eq!(list_json(repo_s).len(), 2);
    fails(&["backup", "show", &ids[0], "--repo", repo_s], 3);

    // Prune with a policy: only the newest stays; its data is intact, the rest freed.
    let out = ok(&["backup", "prune", "--repo", repo_s, "--keep-last", "1"]);
    assert!(out.contains("removed"), "{out}");
    let left = list_json(repo_s);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], ids[2].as_str());
    let after = size(&repo.join("packs"));
    assert!(after < before, "prune freed nothing: {before} -> {after}");
    let dest = work.join("third.db");
    ok(&restore_args("latest", repo_s, &dest, &[]));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&snaps.third).unwrap());
    ok(&[
        "backup",
        "verify",
        "latest",
        "--repo",
        repo_s,
        "--packs",
        "--scratch-dir",
        work.to_str().unwrap(),
    ]);
    // Nothing left to do.
    let out = ok(&["backup", "prune", "--repo", repo_s]);
    assert!(out.contains("0 pack(s) deleted"), "{out}");
}

#[test]
fn errors_say_what_and_exit_with_their_code() {
    let snaps = snapshots();
    let work = scratch("errors");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let err = fails(&["backup", "list", "--repo", work.join("nothing").to_str().unwrap()], 3);
    assert!(err.contains("not found") || err.contains("no etcdguard repository"), "{err}");
    std::fs::create_dir_all(work.join("empty")).unwrap();
    let err = fails(&["backup", "list", "--repo", work.join("empty").to_str().unwrap()], 3);
    assert!(err.contains("no etcdguard repository"), "{err}");
    let id = create_from_file(repo_s, &snaps.first, &[]);
    let err = fails(&["backup", "show", "ffffffff", "--repo", repo_s], 3);
    assert!(err.contains("backup list"), "{err}");
    fails(&["backup", "show", &id[..2], "--repo", repo_s], 2);
    fails(&["backup", "list", "--repo", "ftp://x/y"], 2);
    fails(&["backup", "prune", "--repo", repo_s, "--keep-within", "soon"], 2);

    // A running create (its lock, from a live process on this host) makes prune fail at once.
    let lock = serde_json::json!({
        "exclusive": false, "purpose": "backup create", "hostname": hostname(), "pid": std::process::id(),
        "created": chrono_now(), "refreshed": chrono_now(),
    });
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    std::fs::write(repo.join("locks/aaaa.json"), lock.to_string()).unwrap();
    let err = fails(&["backup", "prune", "--repo", repo_s], 15);
    assert!(err.contains("in use") && err.contains("backup create"), "{err}");
    // A lock whose process is gone is ignored.
    let mut dead = lock.clone();
    dead["pid"] = serde_json::json!(dead_pid());
    std::fs::write(repo.join("locks/aaaa.json"), dead.to_string()).unwrap();
    ok(&["backup", "prune", "--repo", repo_s]);
    assert!(!repo.join("locks/aaaa.json").exists(), "the stale lock is cleaned up");
    // ETCDGUARD_REPO works in place of --repo.
    let out = run(etcdguard().args(["backup", "list", "-w", "json"]).env("ETCDGUARD_REPO", repo_s));
    assert!(out.status.success());
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

fn chrono_now() -> String {
    let out =
        std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The PID of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn restore_into_a_data_dir_boots_etcd() {
    let snaps = snapshots();
    let work = scratch("data-dir");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let id = create_from_file(repo_s, &snaps.second, &[]);
    let port = etcdguard_testkit::free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let data_dir = work.join("restored/m1.etcd");
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let select = [&id[..8], "--repo", repo_s, "--initial-cluster-token", "backup-restore"];
    restore_one_member(&mut etcdguard(), &select, &data_dir, &peer);
    // Only the data dir: the downloaded snapshot was a temporary file.
    let names: Vec<_> = std::fs::read_dir(data_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["m1.etcd"]);
    let server = etcdguard_testkit::EtcdServer::builder(etcdguard_testkit::EtcdVersion::V3_5)
        .name("m1")
        .data_dir(&data_dir)
        .start_with_peer_port(port);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", &id, "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(server.revision(), shown["etcd"]["revision"].as_i64().unwrap());
    assert!(server.get_all().len() > 1000);
    // A non-empty data dir is refused before anything is downloaded.
    let err = fails(
        &["backup", "restore", &id, "--repo", repo_s, "--data-dir", data_dir.to_str().unwrap()],
        14,
    );
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn create_from_a_live_cluster() {
    let server = etcdguard_testkit::EtcdServer::start(etcdguard_testkit::EtcdVersion::V3_5);
    for i in 0..50 {
        server.put(
            format!("/registry/secrets/default/s{i}").as_bytes(),
            format!("value {i}").as_bytes(),
        );
    }
    let work = scratch("live");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let out = ok(&[
        "backup",
        "create",
        "--repo",
        repo_s,
        "--endpoints",
        server.endpoint(),
        "--scratch-dir",
        work.to_str().unwrap(),
        "--label",
        "from=live",
    ]);
    let id = created_id(&out);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", &id, "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(shown["source"]["kind"], "cluster");
    assert_eq!(shown["etcd"]["revision"].as_i64().unwrap(), server.revision());
    assert_eq!(shown["etcd"]["trailer"], "verified");
    assert!(shown["etcd"]["memberId"].as_str().is_some_and(|m| !m.is_empty()), "{shown}");
    // The cluster id is the one etcd reports, and names the cluster in `backup list`.
    let st = run(server.etcdctl().args(["endpoint", "status", "-w", "json"]));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let cluster_id = format!(
        "{:x}",
        st[0]["Status"]["header"]["cluster_id"].as_u64().expect("etcdctl reports a cluster id")
    );
    assert_eq!(shown["etcd"]["clusterId"], cluster_id.as_str(), "{shown}");
    assert_eq!(list_json(repo_s)[0]["cluster"], cluster_id.as_str());
    // The spooled snapshot is gone; the backup restores to a file the real etcdutl reads.
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let dest = work.join("live.db");
    ok(&restore_args(&id, repo_s, &dest, &[]));
    let status = run(etcdguard_testkit::EtcdVersion::V3_5
        .binaries()
        .snapshot_tool()
        .args(["snapshot", "status", "-w", "json"])
        .arg(&dest));
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // An unreachable cluster is a clear error, and nothing is listed.
    let port = etcdguard_testkit::free_port();
    let out = run(etcdguard().args([
        "backup",
        "create",
        "--repo",
        repo_s,
        "--endpoints",
        &format!("127.0.0.1:{port}"),
        "--dial-timeout",
        "1s",
    ]));
    assert_eq!(out.status.code(), Some(12), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(list_json(repo_s).len(), 1);
}

#[test]
fn encrypted_repository_seals_ca_keys_and_needs_the_passphrase() {
    let snaps = snapshots();
    let work = scratch("encrypted");
    let (pki, manifests, _) = control_plane(&work);
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let out = run(with_passphrase("correct horse battery").args(create_args(
        repo_s,
        &snaps.first,
        &control_plane_flags(&pki, &manifests, None),
    )));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("encrypted with the passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = created_id(&String::from_utf8_lossy(&out.stdout));

    // Neither the CA key nor the snapshot's content is anywhere in the repository in clear.
    let stored = all_bytes_under(&repo);
    assert!(!contains(&stored, b"PRIVATE KEY"), "a private key is stored in clear");
    let snapshot = std::fs::read(&snaps.first).unwrap();
    let sample = &snapshot[snapshot.len() / 2..snapshot.len() / 2 + 64];
    assert!(!contains(&stored, sample), "snapshot bytes are stored in clear");

    // Metadata needs no passphrase; content does, and a wrong one is refused.
    assert_eq!(list_json(repo_s).len(), 1);
    let show = ok(&["backup", "show", &id, "--repo", repo_s]);
    assert!(show.contains("encryption xchacha20poly1305"), "{show}");
    let dest = work.join("restored.db");
    let files = work.join("files");
    let restore = restore_with_files(&id, repo_s, &dest, &files);
    let err = fails(&restore, 16);
    assert!(err.contains("ETCDGUARD_PASSPHRASE"), "{err}");
    let err = fails_with(&mut with_passphrase("wrong"), &restore, 16);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!dest.exists() && !files.exists(), "a refused restore wrote something");
    fails(&["backup", "verify", &id, "--repo", repo_s], 16);
    fails(&create_args(repo_s, &snaps.second, &[]), 16);

    // The right passphrase from a file (with the newline `echo` adds) opens everything.
    let pass_file = work.join("passphrase");
    std::fs::write(&pass_file, "correct horse battery\n").unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pf = pass_file.to_str().unwrap();
    let mut with_file: Vec<&str> = restore.to_vec();
    with_file.extend(["--passphrase-file", pf]);
    ok(&with_file);
    assert!(std::fs::read(&dest).unwrap() == snapshot, "restored snapshot differs");
    assert_eq!(
        std::fs::read(files.join("pki/ca.key")).unwrap(),
        std::fs::read(pki.join("ca.key")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(files.join("pki/ca.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    ok(&["backup", "verify", &id, "--repo", repo_s, "--passphrase-file", pf]);

    // Later backups deduplicate under the same key; prune needs the key too.
    let out = ok_with(
        &mut with_passphrase("correct horse battery"),
        &create_args(repo_s, &snaps.second, &["-w", "json"]),
    );
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (added, total) =
        (m["sizes"]["blobsAdded"].as_u64().unwrap(), m["sizes"]["blobsTotal"].as_u64().unwrap());
    assert!(added * 5 < total, "only {added} of {total} chunks should be new: {out}");
    fails(&["backup", "prune", "--repo", repo_s, "--keep-last", "1"], 16);
    ok_with(
        &mut with_passphrase("correct horse battery"),
        &["backup", "prune", "--repo", repo_s, "--keep-last", "1"],
    );
    assert_eq!(list_json(repo_s).len(), 1);

    // A passphrase given for a plain repository is refused, not silently ignored.
    let plain = work.join("plain");
    ok(&create_args(plain.to_str().unwrap(), &snaps.first, &[]));
    let err = fails_with(
        &mut with_passphrase("x"),
        &create_args(plain.to_str().unwrap(), &snaps.first, &[]),
        2,
    );
    assert!(err.contains("not encrypted"), "{err}");
    assert_eq!(list_json(plain.to_str().unwrap()).len(), 1);
}

#[test]
fn passphrases_are_added_changed_and_removed_without_locking_anyone_out() {
    let snaps = snapshots();
    let work = scratch("keys");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let as_user = |current: &str, new: Option<&str>| {
        let mut c = etcdguard();
        c.env("ETCDGUARD_PASSPHRASE", current);
        if let Some(n) = new {
            c.env("ETCDGUARD_NEW_PASSPHRASE", n);
        }
        c
    };
    let id =
        create_from_file_with(&mut as_user("alice's passphrase", None), repo_s, &snaps.first, &[]);
    let restore_as = |who: &str, code: i32| {
        let dest = work.join(format!("restored-{}.db", rand_suffix()));
        let args =
            ["backup", "restore", &id, "--repo", repo_s, "--to-file", dest.to_str().unwrap()];
        if code == 0 {
            ok_with(&mut as_user(who, None), &args);
            assert!(
                std::fs::read(&dest).unwrap() == std::fs::read(&snaps.first).unwrap(),
                "restored snapshot differs"
            );
        } else {
            fails_with(&mut as_user(who, None), &args, code);
            assert!(!dest.exists(), "a refused restore wrote {}", dest.display());
        }
    };
    let keys = |who: Option<&str>| -> Vec<serde_json::Value> {
        let mut c = match who {
            Some(w) => as_user(w, None),
            None => etcdguard(),
        };
        serde_json::from_str::<serde_json::Value>(&ok_with(
            &mut c,
            &["backup", "key", "list", "--repo", repo_s, "-w", "json"],
        ))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
    };
    // One key; listing needs no passphrase, and marks the current key only when given one.
    let first = keys(None);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["current"], false);
    assert_eq!(keys(Some("alice's passphrase"))[0]["current"], true);
    let alice_key = first[0]["id"].as_str().unwrap().to_string();

    // Bob gets a passphrase of his own; both open the repository.
    fails_with(
        &mut as_user("alice's passphrase", None),
        &["backup", "key", "add", "--repo", repo_s],
        2,
    );
    fails_with(
        &mut as_user("not alice", Some("bob's passphrase")),
        &["backup", "key", "add", "--repo", repo_s],
        16,
    );
    let out = ok_with(
        &mut as_user("alice's passphrase", Some("bob's passphrase")),
        &["backup", "key", "add", "--repo", repo_s],
    );
    assert!(out.starts_with("Added key "), "{out}");
    assert_eq!(keys(None).len(), 2);
    restore_as("alice's passphrase", 0);
    restore_as("bob's passphrase", 0);
    restore_as("carol's guess", 16);
    let bob_key =
        keys(Some("bob's passphrase")).into_iter().find(|k| k["current"] == true).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
    assert_ne!(bob_key, alice_key);

    // Nobody removes the key they came in with; Bob removes Alice's.
    let err = fails_with(
        &mut as_user("alice's passphrase", None),
        &["backup", "key", "remove", &alice_key, "--repo", repo_s],
        2,
    );
    assert!(err.contains("passphrase given opens"), "{err}");
    fails_with(
        &mut as_user("bob's passphrase", None),
        &["backup", "key", "remove", "0123456789abcdef", "--repo", repo_s],
        2,
    );
    ok_with(
        &mut as_user("bob's passphrase", None),
        &["backup", "key", "remove", &alice_key, "--repo", repo_s],
    );
    restore_as("alice's passphrase", 16);
    restore_as("bob's passphrase", 0);

    // Bob changes his passphrase: the old one stops working, the new one works, one key left,
    // and the last key cannot be removed.
    fails_with(
        &mut as_user("bob's passphrase", Some("bob's passphrase")),
        &["backup", "key", "passwd", "--repo", repo_s],
        2,
    );
    let out = ok_with(
        &mut as_user("bob's passphrase", Some("bob's new passphrase")),
        &["backup", "key", "passwd", "--repo", repo_s],
    );
    assert!(out.contains("old passphrase no longer opens"), "{out}");
    restore_as("bob's passphrase", 16);
    restore_as("bob's new passphrase", 0);
    let left = keys(Some("bob's new passphrase"));
    assert_eq!(left.len(), 1);
    let err = fails_with(
        &mut as_user("bob's new passphrase", None),
        &["backup", "key", "remove", left[0]["id"].as_str().unwrap(), "--repo", repo_s],
        2,
    );
    assert!(err.contains("passphrase given opens") || err.contains("last key"), "{err}");
    // New backups still go in, and dedupe against the old ones.
    ok_with(&mut as_user("bob's new passphrase", None), &create_args(repo_s, &snaps.second, &[]));

    // A plain repository has no keys.
    let plain = work.join("plain");
    ok(&create_args(plain.to_str().unwrap(), &snaps.first, &[]));
    let err = fails(&["backup", "key", "list", "--repo", plain.to_str().unwrap()], 2);
    assert!(err.contains("not encrypted"), "{err}");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

/// `--file /dev/zero`, a FIFO or a socket given to back up is refused (exit 2) before anything
/// is stored; one found inside a directory is skipped, and stderr says so.
#[test]
fn devices_fifos_and_sockets_are_refused_or_skipped_out_loud() {
    let snaps = snapshots();
    let work = scratch("special-files");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let first = snaps.first.to_str().unwrap();
    let fifo = work.join("a-fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let socket_dir = work.join("sock");
    std::fs::create_dir_all(&socket_dir).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(socket_dir.join("s.sock")).unwrap();
    for (flag, path) in [
        ("--file", "/dev/zero"),
        ("--file", fifo.to_str().unwrap()),
        ("--file", socket_dir.join("s.sock").to_str().unwrap()),
        ("--encryption-config", "/dev/null"),
    ] {
        let err =
            fails(&["backup", "create", "--repo", repo_s, "--from-file", first, flag, path], 2);
        assert!(
            err.contains(path) && err.contains("only files, directories and symlinks"),
            "{path}: {err}"
        );
    }
    assert!(
        !repo.join("backups").exists()
            || std::fs::read_dir(repo.join("backups")).unwrap().next().is_none(),
        "a backup was stored"
    );

    // Inside a directory: skipped, and said.
    let (pki, _, _) = control_plane(&work);
    assert!(std::process::Command::new("mkfifo")
        .arg(pki.join("etcd/pipe"))
        .status()
        .unwrap()
        .success());
    let _inner = std::os::unix::net::UnixListener::bind(pki.join("agent.sock")).unwrap();
    let out = run(etcdguard().args([
        "backup",
        "create",
        "--repo",
        repo_s,
        "--from-file",
        first,
        "--pki-dir",
        pki.to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("skipped {} (a FIFO)", pki.join("etcd/pipe").display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("skipped {} (a socket)", pki.join("agent.sock").display())),
        "{stderr}"
    );
}

/// `backup create` from a live etcd 3.6 and 3.7, then `backup restore --data-dir` booted by
/// the same release: every key, value and revision, and the storage version survive.
#[test]
fn create_from_live_3_6_and_3_7_restores_and_boots() {
    use etcdguard_testkit::{load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec};
    for version in [EtcdVersion::V3_6, EtcdVersion::V3_7] {
        let server = EtcdServer::start(version);
        load_kubernetes_shaped(
            &server,
            &LoadSpec { objects: 120, updates: 20, deletes: 10, ..LoadSpec::default() },
        );
        let (kvs, revision) = (server.get_all(), server.revision());
        let work = scratch(&format!("live-{}", version.label()));
        let repo = work.join("repo");
        let repo_s = repo.to_str().unwrap();
        let id = created_id(&ok(&[
            "backup",
            "create",
            "--repo",
            repo_s,
            "--endpoints",
            server.endpoint(),
            "--scratch-dir",
            work.to_str().unwrap(),
        ]));
        drop(server);
        let shown: serde_json::Value =
            serde_json::from_str(&ok(&["backup", "show", &id, "--repo", repo_s, "-w", "json"]))
                .unwrap();
        assert_eq!(shown["etcd"]["revision"].as_i64(), Some(revision), "{shown}");
        assert_eq!(shown["etcd"]["trailer"], "verified");

        let port = etcdguard_testkit::free_port();
        let peer = format!("http://127.0.0.1:{port}");
        let data_dir = work.join("restored/m1.etcd");
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        restore_one_member(&mut etcdguard(), &[&id, "--repo", repo_s], &data_dir, &peer);
        let db = data_dir.join("member/snap/db");
        let status = run(version
            .binaries()
            .snapshot_tool()
            .args(["snapshot", "status", "-w", "json"])
            .arg(&db));
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["version"], format!("{}.0", version.label()).as_str(), "{status}");
        let restored =
            EtcdServer::builder(version).name("m1").data_dir(&data_dir).start_with_peer_port(port);
        assert_eq!(restored.get_all(), kvs, "{}", version.label());
        assert_eq!(restored.revision(), revision);
    }
}
