//! An attacker with write access to the repository but without the passphrase edits
//! manifests by hand. In an unencrypted repository `backup restore --files-to` must still
//! write nothing outside its target and keep private keys 0600; in an encrypted one every
//! edit is refused with "the manifest was modified" (exit 10).

mod backup_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use backup_support::*;

fn manifest_path(repo: &Path, id: &str) -> PathBuf {
    repo.join("backups").join(format!("{id}.json"))
}

fn read_manifest(repo: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(manifest_path(repo, id)).unwrap()).unwrap()
}

/// Writes a manifest back as an attacker would (the repository's files are 0600).
fn write_manifest(repo: &Path, id: &str, v: &serde_json::Value) {
    std::fs::write(manifest_path(repo, id), serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn unencrypted_manifest_edits_cannot_write_outside_the_target_or_expose_keys() {
    let snaps = snapshots();
    let work = scratch("tamper-plain");
    let (pki, manifests, enc) = control_plane(&work);
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let id =
        create_from_file(repo_s, &snaps.first, &control_plane_flags(&pki, &manifests, Some(&enc)));
    let original = read_manifest(&repo, &id);
    let outside = work.join("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // 1. A symlink entry pointing outside, then a file "inside" it.
    let mut evil = original.clone();
    let files = evil["files"].as_array_mut().unwrap();
    let crt =
        files.iter().find(|f| f["path"] == "pki/ca.crt").expect("pki/ca.crt in the backup").clone();
    let mut link = crt.clone();
    link["path"] = "pki/evil".into();
    link["kind"] = "symlink".into();
    link["target"] = outside.to_str().unwrap().into();
    link.as_object_mut().unwrap().remove("content");
    let mut through = crt.clone();
    through["path"] = "pki/evil/x".into();
    files.push(link);
    files.push(through);
    write_manifest(&repo, &id, &evil);
    let target = work.join("target-1");
    let err = fails(&restore_with_files(&id, repo_s, &work.join("s1.db"), &target), 10);
    assert!(err.contains("symlink"), "{err}");
    assert!(is_empty_dir(&outside), "restore wrote outside its target");

    // The same through a symlink that points at an absolute directory, with the file
    // first in the list (order must not matter).
    let mut evil2 = original.clone();
    let files = evil2["files"].as_array_mut().unwrap();
    let mut through = crt.clone();
    through["path"] = "files/escape/x".into();
    let mut link = crt.clone();
    link["path"] = "files/escape".into();
    link["kind"] = "symlink".into();
    link["target"] = outside.to_str().unwrap().into();
    link.as_object_mut().unwrap().remove("content");
    files.insert(0, through);
    files.push(link);
    write_manifest(&repo, &id, &evil2);
    let target = work.join("target-2");
    fails(&restore_with_files(&id, repo_s, &work.join("s2.db"), &target), 10);
    assert!(is_empty_dir(&outside), "restore wrote outside its target");

    // 2. The CA key's (and the encryption config's) mode changed to 0644: restored 0600
    //    anyway, and `verify` has nothing to say against it.
    let mut loose = original.clone();
    for f in loose["files"].as_array_mut().unwrap() {
        if f["kind"] == "file" || f["kind"] == "dir" {
            f["mode"] = if f["kind"] == "dir" { 0o777 } else { 0o644 }.into();
        }
    }
    write_manifest(&repo, &id, &loose);
    let target = work.join("target-3");
    ok(&restore_with_files(&id, repo_s, &work.join("s3.db"), &target));
    let mode =
        |p: &str| std::fs::symlink_metadata(target.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        std::fs::read(target.join("pki/ca.key")).unwrap(),
        std::fs::read(pki.join("ca.key")).unwrap()
    );
    assert_eq!(mode("pki/ca.key"), 0o600, "ca.key restored with the manifest's 0644");
    assert_eq!(mode("pki/etcd/server.key"), 0o600);
    let enc_restored = std::fs::read_dir(target.join("encryption-config"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::metadata(&enc_restored).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(mode("pki/ca.crt"), 0o644, "a certificate keeps its mode");
    assert_eq!(mode("pki") & 0o022, 0, "a directory holding keys is group/world-writable");
    assert_eq!(mode("pki/etcd") & 0o022, 0);
    assert!(is_empty_dir(&outside));

    // 3. A symlink already in the target directory is not followed.
    write_manifest(&repo, &id, &original);
    let target = work.join("target-4");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("pki")).unwrap();
    let out = run(etcdguard().args(restore_with_files(&id, repo_s, &work.join("s4.db"), &target)));
    assert!(!out.status.success());
    assert!(is_empty_dir(&outside), "restore followed a symlink in the target");
}

#[test]
fn encrypted_manifest_edits_are_refused() {
    let snaps = snapshots();
    let work = scratch("tamper-encrypted");
    let (pki, manifests, _) = control_plane(&work);
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let with_pass = || with_passphrase("tamper test passphrase");
    let flags = [control_plane_flags(&pki, &manifests, None), vec!["--label", "env=prod"]].concat();
    let id = create_from_file_with(&mut with_pass(), repo_s, &snaps.first, &flags);
    let original = read_manifest(&repo, &id);
    let stored = std::fs::read_to_string(manifest_path(&repo, &id)).unwrap();
    for secret in ["ca.key", "etcd.yaml", pki.to_str().unwrap(), snaps.first.to_str().unwrap()] {
        assert!(!stored.contains(secret), "{secret:?} is in the manifest in clear");
    }
    // Without the passphrase: the public part.
    let listed = list_json(repo_s);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["labels"]["env"], "prod");
    ok(&["backup", "show", &id, "--repo", repo_s]);
    // With it: everything, checked.
    ok_with(&mut with_pass(), &["backup", "verify", &id, "--repo", repo_s]);

    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("a label", Box::new(|v| v["labels"]["env"] = "dev".into())),
        ("the revision", Box::new(|v| v["etcd"]["revision"] = 1.into())),
        (
            "the seal",
            Box::new(|v| {
                let s = v["sealed"].as_str().unwrap();
                let flipped = if s.as_bytes()[80] == b'0' { '1' } else { '0' };
                v["sealed"] = format!("{}{flipped}{}", &s[..80], &s[81..]).into();
            }),
        ),
        (
            "a planted file list",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("sealed");
                v["files"] = serde_json::json!([{"path": "pki/evil", "source": "x", "kind": "symlink", "mode": 511, "target": "/tmp"}]);
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut v = original.clone();
        edit(&mut v);
        write_manifest(&repo, &id, &v);
        let target = work.join(format!("files-{}", what.replace(' ', "-")));
        for args in [
            vec!["backup", "verify", &id, "--repo", repo_s],
            vec![
                "backup",
                "restore",
                &id,
                "--repo",
                repo_s,
                "--to-file",
                "/nonexistent/never-written.db",
                "--files-to",
                target.to_str().unwrap(),
            ],
        ] {
            let err = fails_with(&mut with_pass(), &args, 10);
            assert!(err.contains("manifest was modified"), "{what}: {err}");
        }
        assert!(!target.exists(), "{what}: a refused restore wrote files");
    }
    write_manifest(&repo, &id, &original);
    ok_with(&mut with_pass(), &["backup", "verify", &id, "--repo", repo_s]);
}

/// `backup verify` (without `--packs`) checks the framing of every pack it reads: a
/// damaged trailer or header fails it (exit 10) and nothing is recorded, although each
/// blob alone would still read back.
#[test]
fn verify_fails_on_a_damaged_pack_trailer_or_header_and_records_nothing() {
    let snaps = snapshots();
    let work = scratch("tamper-framing");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let id = create_from_file(repo_s, &snaps.first, &[]);
    let packs = pack_files(&repo);
    let pack = &packs[0];
    let good = std::fs::read(pack).unwrap();
    let n = good.len();
    let header_len = u32::from_le_bytes(good[n - 12..n - 8].try_into().unwrap()) as usize;
    let header_start = n - 12 - header_len;
    let verified = repo.join("verified").join(format!("{id}.json"));
    for (what, at) in [("the magic", n - 1), ("the header's first entry", header_start + 4 + 3)] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(pack, &bad).unwrap();
        let _ = std::fs::remove_file(&verified);
        let err = fails(&["backup", "verify", &id, "--repo", repo_s], 10);
        assert!(err.contains("pack"), "{what}: {err}");
        assert!(!verified.exists(), "{what}: a verification was recorded");
    }
    std::fs::write(pack, &good).unwrap();
    ok(&["backup", "verify", &id, "--repo", repo_s]);
    assert!(verified.exists());
}

/// An attacker removes `keys/` and rewrites `config` as unencrypted, then replaces the
/// backups with plain ones of their own. A user who gives the passphrase expects sealed,
/// authenticated content: every content command refuses the repository (exit 16).
#[test]
fn an_encrypted_repository_turned_plain_is_refused_when_a_passphrase_is_given() {
    let snaps = snapshots();
    let work = scratch("tamper-downgrade");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let with_pass = || with_passphrase("downgrade test passphrase");
    ok_with(&mut with_pass(), &create_args(repo_s, &snaps.first, &[]));
    // The attacker's plain repository in its place: a new unencrypted one, moved over.
    let planted = work.join("planted");
    let id = create_from_file(planted.to_str().unwrap(), &snaps.second, &[]);
    std::fs::remove_dir_all(&repo).unwrap();
    std::fs::rename(&planted, &repo).unwrap();
    for args in [
        vec!["backup", "verify", "latest", "--repo", repo_s],
        vec![
            "backup",
            "restore",
            "latest",
            "--repo",
            repo_s,
            "--to-file",
            work.join("out.db").to_str().unwrap(),
        ],
        vec!["backup", "prune", "--repo", repo_s, "--keep-last", "1"],
    ] {
        let err = fails_with(&mut with_pass(), &args, 16);
        assert!(
            err.contains("is not encrypted, but a passphrase was given")
                && err.contains("do not trust"),
            "{args:?}: {err}"
        );
    }
    assert!(!work.join("out.db").exists());
    // Without the passphrase the user asked for nothing sealed: it works as a plain repository.
    ok(&["backup", "verify", &id, "--repo", repo_s]);
}

/// Sets a manifest's last-modified time, as the storage would have stamped it `secs_ago`.
fn stamp_manifest(repo: &Path, id: &str, secs_ago: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(manifest_path(repo, id))
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// Anyone who can write to the bucket truncates the newest manifest: `latest` must not
/// quietly become the backup before it. Every command that takes `latest` fails (exit 10),
/// naming the damaged manifest and the newest good backup.
#[test]
fn a_damaged_newest_manifest_makes_latest_fail_instead_of_rolling_back() {
    let snaps = snapshots();
    let work = scratch("tamper-latest");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let older = create_from_file(repo_s, &snaps.first, &[]);
    let newest = create_from_file(repo_s, &snaps.second, &[]);
    stamp_manifest(&repo, &older, 60);
    let bytes = std::fs::read(manifest_path(&repo, &newest)).unwrap();
    std::fs::write(manifest_path(&repo, &newest), &bytes[..bytes.len() / 2]).unwrap();

    let out_file = work.join("restored.db");
    let scratch_dir = work.join("scratch");
    std::fs::create_dir_all(&scratch_dir).unwrap();
    let kubernetes_dir = work.join("kubernetes");
    std::fs::create_dir_all(kubernetes_dir.join("manifests")).unwrap();
    for args in [
        vec![
            "node",
            "restore",
            "--backup",
            "latest",
            "--repo",
            repo_s,
            "--kubernetes-dir",
            kubernetes_dir.to_str().unwrap(),
            "--dry-run",
        ],
        vec!["inspect", "diff", &older, "latest", "--repo", repo_s],
        vec![
            "backup",
            "restore",
            "latest",
            "--repo",
            repo_s,
            "--to-file",
            out_file.to_str().unwrap(),
        ],
        vec![
            "backup",
            "verify",
            "latest",
            "--repo",
            repo_s,
            "--scratch-dir",
            scratch_dir.to_str().unwrap(),
        ],
        vec!["backup", "show", "latest", "--repo", repo_s],
        vec!["backup", "url", "latest", "--repo", repo_s],
        vec!["inspect", "extract", "--repo", repo_s, "latest", "-A"],
    ] {
        let err = fails(&args, 10);
        assert!(
            err.contains(&newest) && err.contains(&older) && err.contains("newest good backup"),
            "{args:?}: {err}"
        );
    }
    assert!(!out_file.exists(), "a restore of an older backup was written");
    // The good backup by its id still works.
    ok(&restore_args(&older, repo_s, &out_file, &[]));
    // Repaired, `latest` is the newest again.
    std::fs::write(manifest_path(&repo, &newest), &bytes).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", "latest", "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(shown["id"], newest.as_str());
}

/// The clear fields of an encrypted repository's manifests (labels, time, status) cannot be
/// authenticated without the passphrase: `list` and `show` say so; with it, a forged field
/// is flagged (exit 10).
#[test]
fn list_and_show_mark_unauthenticated_manifests_and_flag_forgeries_with_the_passphrase() {
    let snaps = snapshots();
    let work = scratch("tamper-list");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let with_pass = || with_passphrase("list test passphrase");
    let id =
        create_from_file_with(&mut with_pass(), repo_s, &snaps.first, &["--label", "env=prod"]);
    let list = |c: &mut std::process::Command| -> serde_json::Value {
        serde_json::from_str(&ok_with(c, &["backup", "list", "--repo", repo_s, "-w", "json"]))
            .unwrap()
    };
    assert_eq!(list(&mut etcdguard())[0]["authenticated"], false);
    assert_eq!(list(&mut with_pass())[0]["authenticated"], true);

    let mut forged = read_manifest(&repo, &id);
    forged["labels"]["env"] = "dev".into();
    write_manifest(&repo, &id, &forged);
    // Without the passphrase: shown as stored, marked unauthenticated.
    let rows = list(&mut etcdguard());
    assert_eq!(
        (rows[0]["labels"]["env"].as_str(), rows[0]["authenticated"].as_bool()),
        (Some("dev"), Some(false))
    );
    let out = run(etcdguard().args(["backup", "list", "--repo", repo_s]));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be authenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = ok(&["backup", "show", &id, "--repo", repo_s]);
    assert!(
        shown.contains("authenticated") && shown.contains("no: the passphrase was not given"),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", &id, "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(shown["authenticated"], false);
    // With it: the forgery is named.
    let err = fails_with(&mut with_pass(), &["backup", "list", "--repo", repo_s], 10);
    assert!(err.contains(&id) && err.contains("manifest was modified"), "{err}");
    let err = fails_with(&mut with_pass(), &["backup", "show", &id, "--repo", repo_s], 10);
    assert!(err.contains("manifest was modified"), "{err}");
}

/// Damage is exit 10, not the generic 1: a pack cut short, and key files that are not key
/// files (not a wrong passphrase, 16).
#[test]
fn a_truncated_pack_or_unreadable_key_files_are_damage() {
    let snaps = snapshots();
    let work = scratch("tamper-exit-codes");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    ok(&create_args(repo_s, &snaps.first, &[]));
    let packs = pack_files(&repo);
    for p in &packs {
        std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(100).unwrap();
    }
    let err = fails(&restore_args("latest", repo_s, &work.join("out.db"), &[]), 10);
    assert!(err.contains("truncated"), "{err}");

    let sealed = work.join("sealed");
    let sealed_s = sealed.to_str().unwrap();
    let mut with_pass = etcdguard();
    with_pass.env("ETCDGUARD_PASSPHRASE", "exit code passphrase");
    ok_with(&mut with_pass, &create_args(sealed_s, &snaps.first, &[]));
    for key in std::fs::read_dir(sealed.join("keys")).unwrap() {
        std::fs::write(key.unwrap().path(), b"{ not a key").unwrap();
    }
    let mut with_pass = etcdguard();
    with_pass.env("ETCDGUARD_PASSPHRASE", "exit code passphrase");
    let err = fails_with(&mut with_pass, &["backup", "verify", "latest", "--repo", sealed_s], 10);
    assert!(err.contains("no key file is readable"), "{err}");
}
