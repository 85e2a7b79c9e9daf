//! `etcdguard backup copy` between real stores: a local directory, S3 (moto) and Azure
//! (Azurite), each started here on a free loopback port and stopped by PID. Ids and times
//! kept, content re-encrypted under the destination's key, end-to-end checks, resumption
//! after a cut, dedup against the destination, and a damaged source blob.

mod backup_support;

use std::path::Path;
use std::process::Command;

use backup_support::*;

/// etcdguard with S3 credentials for moto, the Azure emulator when given, and no passphrase
/// or destination from the caller's environment.
fn cmd(azurite: Option<&Azurite>) -> Command {
    let mut c = etcdguard();
    s3_env(&mut c)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("ETCDGUARD_TO_REPO")
        .env_remove("ETCDGUARD_TO_PASSPHRASE")
        .env_remove("ETCDGUARD_TO_PASSPHRASE_FILE");
    if let Some(a) = azurite {
        azure_env(&mut c, a);
    }
    c
}

fn list(c: Command, repo: &str) -> Vec<serde_json::Value> {
    let mut c = c;
    let out = ok_with(&mut c, &["backup", "list", "--repo", repo, "-w", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

fn ids_of(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn copies_go_local_to_s3_to_azure_with_their_ids_and_under_each_destination_key() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("etcd-dr");
    let azurite = Azurite::start();
    azurite.create_container("far");
    let work = scratch("copy-chain");
    let (pki, _, _) = control_plane(&work);
    let local = work.join("repo").to_str().unwrap().to_string();
    let s3 = format!("s3://etcd-dr/etcd?endpoint={}", moto.endpoint);
    let az = "az://far/etcd";

    let first = create_from_file(&local, &snaps.first, &["--pki-dir", pki.to_str().unwrap()]);
    let second = create_from_file(&local, &snaps.second, &[]);

    // Local (plain) to S3, created encrypted with the destination's passphrase.
    let out = ok_with(
        cmd(None).env("ETCDGUARD_TO_PASSPHRASE", "s3 site pass"),
        &["backup", "copy", "--from", &local, "--to", &s3],
    );
    assert!(
        out.contains(&format!("backup {first} copied"))
            && out.contains(&format!("backup {second} copied")),
        "{out}"
    );
    let source_rows = list_json(&local);
    let s3_rows = list(cmd(None), &s3);
    assert_eq!(ids_of(&s3_rows), vec![first.clone(), second.clone()]);
    for (a, b) in source_rows.iter().zip(&s3_rows) {
        assert_eq!(
            (&a["created"], &a["revision"], &a["hostname"]),
            (&b["created"], &b["revision"], &b["hostname"])
        );
    }
    // The second copy stored only what the first did not (dedup at the destination).
    let added: Vec<u64> = s3_rows.iter().map(|r| r["added"].as_u64().unwrap()).collect();
    assert!(added[1] * 10 < added[0], "{added:?}");
    // Sealed there: without the passphrase the content does not open.
    let restored = work.join("from-s3.db");
    let err = fails_with(&mut cmd(None), &restore_args(&first, &s3, &restored, &[]), 16);
    assert!(err.contains("encrypted"), "{err}");
    ok_with(
        cmd(None).env("ETCDGUARD_PASSPHRASE", "s3 site pass"),
        &restore_args(
            &first,
            &s3,
            &restored,
            &["--files-to", work.join("files").to_str().unwrap()],
        ),
    );
    assert!(same_file(&restored, &snaps.first), "snapshot restored from the copy differs");
    assert!(same_file(&work.join("files/pki/ca.key"), &pki.join("ca.key")));

    // Run again: nothing to do.
    let out = ok_with(
        cmd(None).env("ETCDGUARD_TO_PASSPHRASE", "s3 site pass"),
        &["backup", "copy", "--from", &local, "--to", &s3],
    );
    assert_eq!(out.matches("already in the destination").count(), 2, "{out}");

    // S3 (encrypted) to Azure: only `latest`, under a third passphrase; the source's is ETCDGUARD_PASSPHRASE.
    let pass_file = work.join("az-pass");
    std::fs::write(&pass_file, "azure site pass\n").unwrap();
    std::fs::set_permissions(&pass_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    // Without a destination passphrase an encrypted source is not copied into a plain repository.
    let err = fails_with(
        cmd(Some(&azurite)).env("ETCDGUARD_PASSPHRASE", "s3 site pass"),
        &["backup", "copy", "--from", &s3, "--to", az],
        2,
    );
    assert!(err.contains("in clear"), "{err}");
    let out = ok_with(
        cmd(Some(&azurite)).env("ETCDGUARD_PASSPHRASE", "s3 site pass"),
        &[
            "backup",
            "copy",
            "--from",
            &s3,
            "--to",
            az,
            "--to-passphrase-file",
            pass_file.to_str().unwrap(),
            "latest",
            "-w",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["backups"][0]["id"], second.as_str());
    assert_eq!(v["backups"][0]["status"], "copied");
    assert_eq!(ids_of(&list(cmd(Some(&azurite)), az)), vec![second.clone()]);
    let restored = work.join("from-az.db");
    ok_with(
        cmd(Some(&azurite)).env("ETCDGUARD_PASSPHRASE", "azure site pass"),
        &restore_args("latest", az, &restored, &[]),
    );
    assert!(same_file(&restored, &snaps.second));
    // The S3 site's passphrase does not open the Azure copy.
    let out = run(cmd(Some(&azurite))
        .env("ETCDGUARD_PASSPHRASE", "s3 site pass")
        .args(["backup", "verify", "latest", "--repo", az]));
    assert_eq!(out.status.code(), Some(16), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_cut_copy_is_finished_by_the_next_run_and_lists_nothing_half_done() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("etcd-dr");
    let work = scratch("copy-cut");
    let local = work.join("repo").to_str().unwrap().to_string();
    let direct = format!("s3://etcd-dr/etcd?endpoint={}", moto.endpoint);
    let id = create_from_file(&local, &snaps.first, &["--pki-dir", big_dir().to_str().unwrap()]);
    // The destination "dies" 600 KB into the copy.
    let proxy = CuttingProxy::start(moto.port, 600 * 1024);
    let through = format!("s3://etcd-dr/etcd?endpoint=http://127.0.0.1:{}&retries=1", proxy.port);
    let out = run(cmd(None).args(["backup", "copy", "--from", &local, "--to", &through]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(12) | Some(1)),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    assert!(stderr.contains("Error:"), "{stderr}");
    drop(proxy);
    assert!(
        list(cmd(None), &direct).is_empty(),
        "a backup was listed before its copy was complete"
    );
    // Run again: complete, and the same backup.
    let out = ok_with(&mut cmd(None), &["backup", "copy", "--from", &local, "--to", &direct]);
    assert!(out.contains(&format!("backup {id} copied")), "{out}");
    let restored = work.join("r.db");
    ok_with(
        &mut cmd(None),
        &restore_args(&id, &direct, &restored, &["--files-to", work.join("f").to_str().unwrap()]),
    );
    assert!(same_file(&restored, &snaps.first));
    ok_with(
        &mut cmd(None),
        &[
            "backup",
            "verify",
            &id,
            "--repo",
            &direct,
            "--packs",
            "--scratch-dir",
            work.to_str().unwrap(),
        ],
    );
}

#[test]
fn a_damaged_source_blob_fails_only_the_backups_that_use_it() {
    let snaps = snapshots();
    let work = scratch("copy-damaged");
    let local = work.join("repo");
    let dest = work.join("dest").to_str().unwrap().to_string();
    let repo = local.to_str().unwrap();
    let first = create_from_file(repo, &snaps.first, &[]);
    let before = pack_files(&local);
    let second = create_from_file(repo, &snaps.second, &[]);
    let new_pack = pack_files(&local)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("the second backup added a pack");
    // The third backup before the damage: a create reads back the packs it reuses and stores
    // fresh copies of damaged chunks, which would heal the second backup here.
    let third = create_from_file(repo, &snaps.third, &[]);
    // A pack the second backup added holds chunks only it uses: damage one byte in its middle.
    flip_byte(&new_pack, |n| n / 3, 0x40);

    let err = fails(&["backup", "copy", "--from", repo, "--to", &dest], 10);
    let pack_name = new_pack.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!(
            "not copied: repository damaged: backup {second}: snapshot: pack {pack_name}"
        )),
        "{err}"
    );
    let copied = ids_of(&list_json(&dest));
    assert!(copied.contains(&first) && !copied.contains(&second), "{copied:?}");
    // The third backup may share some of the damaged chunks (etcd rewrote few pages between
    // the two): then it fails too, else it is copied.
    let failed = if copied.contains(&third) { 1 } else { 2 };
    assert!(err.contains(&format!("Error: {failed} of 3 backups were not copied; the first: repository damaged: backup {second}")), "{err}");
    for (id, file) in [(&first, &snaps.first), (&third, &snaps.third)] {
        if copied.contains(id) {
            let restored = work.join(format!("{id}.db"));
            ok(&restore_args(id, &dest, &restored, &[]));
            assert!(same_file(&restored, file));
        }
    }
    // Run again (the source still damaged): the copies made are kept, the damaged one still fails.
    let err = fails(&["backup", "copy", "--from", repo, "--to", &dest, &second], 10);
    assert!(err.contains(pack_name), "{err}");
    assert_eq!(ids_of(&list_json(&dest)), copied);
}

#[test]
fn another_backup_under_the_same_id_at_the_destination_is_refused() {
    let snaps = snapshots();
    let work = scratch("copy-same-id");
    let src = work.join("src").to_str().unwrap().to_string();
    let dest = work.join("dest");
    let id = create_from_file(&src, &snaps.first, &[]);
    ok(&["backup", "copy", "--from", &src, "--to", dest.to_str().unwrap(), &id[..6]]);
    // Someone edits the copy: it is no longer the same backup, and is not overwritten.
    let manifest = dest.join(format!("backups/{id}.json"));
    let edited = std::fs::read_to_string(&manifest).unwrap().replacen(
        "\"labels\": {}",
        "\"labels\": {\"env\": \"other\"}",
        1,
    );
    assert!(edited.contains("other"), "the test's edit did not apply");
    std::fs::write(&manifest, &edited).unwrap();
    let err = fails(&["backup", "copy", "--from", &src, "--to", dest.to_str().unwrap()], 14);
    assert!(err.contains("different backup") && err.contains(&id), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), edited);
    // Unknown backups are named.
    let err =
        fails(&["backup", "copy", "--from", &src, "--to", dest.to_str().unwrap(), "ffffffff"], 3);
    assert!(err.contains("ffffffff"), "{err}");
}

/// 2 MiB of incompressible files, so a copy's upload is large enough to be cut midway.
fn big_dir() -> std::path::PathBuf {
    use rand::RngCore;
    let dir = scratch("copy-big-files");
    let mut data = vec![0u8; 2 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(dir.join("blob.bin"), &data).unwrap();
    dir
}

#[test]
fn the_agent_copies_each_backup_to_a_second_repository_in_s3() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("etcd-dr");
    let work = scratch("copy-agent");
    let local = work.join("repo").to_str().unwrap().to_string();
    let s3 = format!("s3://etcd-dr/agent?endpoint={}", moto.endpoint);
    let pass_file = work.join("dr-pass");
    std::fs::write(&pass_file, "dr pass\n").unwrap();
    std::fs::set_permissions(&pass_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    // A backup the agent did not take, older than anything at the destination: the agent
    // copies from the destination's newest on, so it comes along only while the destination is empty.
    let earlier = create_from_file(&local, &snaps.first, &[]);
    let out = run(cmd(None).args([
        "agent",
        "--repo",
        &local,
        "--from-file",
        snaps.second.to_str().unwrap(),
        "--runs",
        "2",
        "--every",
        "1s",
        "--listen",
        "off",
        "--copy-to",
        &s3,
        "--copy-to-passphrase-file",
        pass_file.to_str().unwrap(),
    ]));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let source = ids_of(&list_json(&local));
    assert_eq!(source.len(), 3, "{log}");
    assert_eq!(source[0], earlier);
    assert_eq!(ids_of(&list(cmd(None), &s3)), source, "{log}");
    assert!(!log.contains("copy failed"), "{log}");
    let restored = work.join("r.db");
    ok_with(
        cmd(None).env("ETCDGUARD_TO_PASSPHRASE", "ignored").env("ETCDGUARD_PASSPHRASE", "dr pass"),
        &restore_args("latest", &s3, &restored, &[]),
    );
    assert!(same_file(&restored, &snaps.second));
}

#[test]
fn continuous_capture_changes_follow_their_backup_and_restore_at_a_revision_at_the_destination() {
    use etcdguard_testkit::{EtcdServer, EtcdVersion};
    let server = EtcdServer::start(EtcdVersion::V3_5);
    for i in 0..20 {
        server.put(format!("/registry/configmaps/default/cm{i}").as_bytes(), b"before");
    }
    let work = scratch("copy-changes");
    let src = work.join("src").to_str().unwrap().to_string();
    let dest = work.join("dest").to_str().unwrap().to_string();
    let follow = |until: i64| {
        ok(&[
            "backup",
            "follow",
            "--repo",
            &src,
            "--endpoints",
            server.endpoint(),
            "--segment-interval",
            "300ms",
            "--until-revision",
            &until.to_string(),
        ]);
    };
    follow(server.revision());
    let mut middle = 0;
    for i in 0..30 {
        let rev = server.put(
            format!("/registry/configmaps/default/cm{}", i % 7).as_bytes(),
            format!("change {i}").as_bytes(),
        );
        if i == 14 {
            middle = rev;
        }
    }
    follow(server.revision());
    let out = ok_with(
        cmd(None).env("ETCDGUARD_TO_PASSPHRASE", "dest pass"),
        &["backup", "copy", "--from", &src, "--to", &dest],
    );
    assert!(out.contains("change segment(s)"), "{out}");
    // More changes captured at the source: the next copy brings only them.
    for i in 0..5 {
        server.put(format!("/registry/configmaps/default/late{i}").as_bytes(), b"late");
    }
    let last = server.revision();
    follow(last);
    let out = ok_with(
        cmd(None).env("ETCDGUARD_TO_PASSPHRASE", "dest pass"),
        &["backup", "copy", "--from", &src, "--to", &dest],
    );
    assert!(
        out.contains("already in the destination") && out.contains("change segment(s)"),
        "{out}"
    );
    let log = |repo: &str, pass: Option<&str>| {
        let mut c = cmd(None);
        if let Some(p) = pass {
            c.env("ETCDGUARD_PASSPHRASE", p);
        }
        ok_with(&mut c, &["backup", "log", "--repo", repo, "-w", "json"])
    };
    assert_eq!(log(&src, None), log(&dest, Some("dest pass")));
    for at in [middle, last] {
        let (a, b) = (work.join(format!("src-{at}.db")), work.join(format!("dest-{at}.db")));
        ok(&[
            "backup",
            "restore",
            "--repo",
            &src,
            "--at",
            &at.to_string(),
            "--to-file",
            a.to_str().unwrap(),
        ]);
        ok_with(
            cmd(None).env("ETCDGUARD_PASSPHRASE", "dest pass"),
            &[
                "backup",
                "restore",
                "--repo",
                &dest,
                "--at",
                &at.to_string(),
                "--to-file",
                b.to_str().unwrap(),
            ],
        );
        assert!(same_file(&a, &b), "restore --at {at} differs between the two sites");
    }
}

#[test]
fn the_continuous_agent_copies_the_changes_as_it_captures_them() {
    use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
    use std::time::{Duration, Instant};
    let server = EtcdServer::start(EtcdVersion::V3_5);
    server.put(b"/registry/configmaps/default/first", b"one");
    let work = scratch("copy-continuous-agent");
    let src = work.join("src").to_str().unwrap().to_string();
    let dest = work.join("dest").to_str().unwrap().to_string();
    let port = free_port();
    let log_path = work.join("agent.log");
    let mut child = cmd(None)
        .args([
            "agent",
            "--continuous",
            "--no-elect",
            "--repo",
            &src,
            "--endpoints",
            server.endpoint(),
            "--segment-interval",
            "300ms",
        ])
        .args(["--full-every", "1h", "--listen", &format!("127.0.0.1:{port}"), "--copy-to", &dest])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Changes after the full backup reach the destination within a few copy rounds (every 5 s here).
    let start = Instant::now();
    while !std::path::Path::new(&src)
        .join("backups")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no full backup:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut last = 0;
    for i in 0..10 {
        last = server.put(format!("/registry/configmaps/default/k{i}").as_bytes(), b"v");
    }
    let start = Instant::now();
    let covered = |repo: &str| -> i64 {
        let out = run(cmd(None).args(["backup", "log", "--repo", repo, "-w", "json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map_or(0, |a| a.iter().filter_map(|c| c["revision"].as_i64()).max().unwrap_or(0))
    };
    while covered(&dest) < last {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "revision {last} not copied within 60 s (source has {}):\n{}",
                covered(&src),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids_of(&list_json(&src)), ids_of(&list_json(&dest)), "{}", log());
    assert!(!log().contains("copy failed"), "{}", log());
}
