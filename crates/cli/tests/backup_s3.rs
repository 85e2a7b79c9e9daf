//! `etcdguard backup …` against a real S3-compatible server (moto, started here on a free
//! loopback port and stopped by PID): round trip, dedup, prune, presigned URLs, and faults —
//! a server that dies mid-upload, one that answers with errors, wrong credentials, a missing
//! bucket.

mod backup_support;

use backup_support::*;

fn s3(args: &[&str]) -> std::process::Output {
    run(s3_env(&mut etcdguard()).args(args))
}

fn s3_ok(args: &[&str]) -> String {
    ok_with(s3_env(&mut etcdguard()), args)
}

fn s3_fails(args: &[&str], code: i32) -> String {
    fails_with(s3_env(&mut etcdguard()), args, code)
}

fn ids(repo: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&s3_ok(&["backup", "list", "--repo", repo, "-w", "json"])).unwrap();
    v.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn s3_round_trip_dedup_prune_and_urls() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("etcd-backups");
    let work = scratch("s3-round-trip");
    let repo = format!("s3://etcd-backups/prod/eu?endpoint={}", moto.endpoint);
    let (pki, _, _) = control_plane(&work);

    let first = created_id(&s3_ok(&[
        "backup",
        "create",
        "--repo",
        &repo,
        "--from-file",
        snaps.first.to_str().unwrap(),
        "--pki-dir",
        pki.to_str().unwrap(),
    ]));
    let second = created_id(&s3_ok(&[
        "backup",
        "create",
        "--repo",
        &repo,
        "--from-file",
        snaps.second.to_str().unwrap(),
    ]));
    assert_eq!(ids(&repo), vec![first.clone(), second.clone()]);
    let list: serde_json::Value =
        serde_json::from_str(&s3_ok(&["backup", "list", "--repo", &repo, "-w", "json"])).unwrap();
    let added: Vec<u64> =
        list.as_array().unwrap().iter().map(|b| b["added"].as_u64().unwrap()).collect();
    assert!(added[1] * 10 < added[0], "{added:?}");

    for (id, file) in [(&first, &snaps.first), (&second, &snaps.second)] {
        let dest = work.join(format!("{id}.db"));
        s3_ok(&[
            "backup",
            "restore",
            id,
            "--repo",
            &repo,
            "--to-file",
            dest.to_str().unwrap(),
            "--files-to",
            work.join(format!("files-{id}")).to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(file).unwrap(),
            "backup {id} not byte-identical"
        );
    }
    assert_eq!(
        std::fs::read(work.join(format!("files-{first}/pki/ca.key"))).unwrap(),
        std::fs::read(pki.join("ca.key")).unwrap()
    );
    let out = s3_ok(&[
        "backup",
        "verify",
        &second,
        "--repo",
        &repo,
        "--packs",
        "--scratch-dir",
        work.to_str().unwrap(),
    ]);
    assert!(out.contains("OK"), "{out}");

    // Presigned URLs: fetchable without credentials, and the manifest they give is the one shown.
    let urls = s3_ok(&["backup", "url", &second, "--repo", &repo, "--expires", "10m", "--objects"]);
    let manifest_url =
        urls.lines().find(|l| l.starts_with("backups/")).unwrap().split('\t').nth(1).unwrap();
    assert!(
        manifest_url.contains("X-Amz-Signature") && manifest_url.contains("X-Amz-Expires=600"),
        "{manifest_url}"
    );
    let body = http_get(manifest_url);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["id"], second.as_str());
    assert!(urls.lines().any(|l| l.starts_with("packs/")), "{urls}");

    // The default: the snapshot reassembled as one object (multipart), byte-identical
    // through its URL, as a restore flow that only takes a URL needs it.
    let out = s3_ok(&["backup", "url", &first, "--repo", &repo, "--expires", "10m", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["object"], format!("exports/{first}/snapshot.db"));
    let url = v["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
    assert!(http_get(url) == std::fs::read(&snaps.first).unwrap(), "exported snapshot differs");
    let again = s3_ok(&["backup", "url", &first, "--repo", &repo]);
    assert!(
        again.trim().starts_with("http://")
            && again.contains(&format!("exports/{first}/snapshot.db")),
        "{again}"
    );

    // Prune keeps the newest; what it needs still restores.
    s3_ok(&["backup", "prune", "--repo", &repo, "--keep-last", "1"]);
    assert_eq!(ids(&repo), vec![second.clone()]);
    let dest = work.join("after-prune.db");
    s3_ok(&["backup", "restore", "latest", "--repo", &repo, "--to-file", dest.to_str().unwrap()]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&snaps.second).unwrap());
}

#[test]
fn s3_server_dying_mid_upload_leaves_no_half_backup() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("bkt");
    let direct = format!("s3://bkt/r?endpoint={}", moto.endpoint);
    // The repository exists (a first backup), then the server "dies" 600 KB into the next upload.
    let first = created_id(&s3_ok(&[
        "backup",
        "create",
        "--repo",
        &direct,
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]));
    let proxy = CuttingProxy::start(moto.port, 600 * 1024);
    let through = format!("s3://bkt/r?endpoint=http://127.0.0.1:{}&retries=2", proxy.port);
    // The third snapshot shares most chunks with the first; the 2 MiB of incompressible files
    // make the upload big enough to be cut in the middle.
    let other = snaps.third.clone();
    let start = std::time::Instant::now();
    let out = s3(&[
        "backup",
        "create",
        "--repo",
        &through,
        "--from-file",
        other.to_str().unwrap(),
        "--pki-dir",
        big_dir().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the upload should fail: {stderr}");
    assert!(
        matches!(out.status.code(), Some(12) | Some(1)),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    assert!(stderr.contains("Error:") && stderr.len() < 4000, "{stderr}");
    assert!(start.elapsed() < std::time::Duration::from_secs(120), "gave up too slowly");
    drop(proxy);
    // Only the first backup is listed, and it is intact; prune removes what the failed one left.
    assert_eq!(ids(&direct), vec![first.clone()]);
    let out = s3_ok(&["backup", "prune", "--repo", &direct]);
    assert!(out.contains("0 backup(s) removed"), "{out}");
    let dest = scratch("s3-die-restore").join("r.db");
    s3_ok(&["backup", "restore", &first, "--repo", &direct, "--to-file", dest.to_str().unwrap()]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&snaps.first).unwrap());
    // With the server back, the same backup goes through.
    s3_ok(&[
        "backup",
        "create",
        "--repo",
        &direct,
        "--from-file",
        other.to_str().unwrap(),
        "--pki-dir",
        big_dir().to_str().unwrap(),
    ]);
    assert_eq!(ids(&direct).len(), 2);
}

#[test]
fn s3_server_errors_are_retried_then_reported() {
    let snaps = snapshots();
    let moto = Moto::start();
    moto.create_bucket("bkt");
    let direct = format!("s3://bkt/r?endpoint={}", moto.endpoint);
    // Every third request answered with 503: the retries carry the backup through, whole.
    let flaky = FlakyProxy::start(moto.port, 3, usize::MAX);
    let through = format!("s3://bkt/r?endpoint=http://127.0.0.1:{}", flaky.port);
    let id = created_id(&s3_ok(&[
        "backup",
        "create",
        "--repo",
        &through,
        "--from-file",
        snaps.first.to_str().unwrap(),
    ]));
    assert!(
        flaky.failed() >= 3,
        "only {} requests failed: the proxy did not get in the way",
        flaky.failed()
    );
    let dest = scratch("s3-flaky-restore").join("r.db");
    s3_ok(&["backup", "restore", &id, "--repo", &through, "--to-file", dest.to_str().unwrap()]);
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&snaps.first).unwrap());
    drop(flaky);
    // A server that answers every request with 503: a clear error once the retries are spent,
    // and no backup listed.
    let down = FlakyProxy::start(moto.port, 1, usize::MAX);
    let through = format!("s3://bkt/r?endpoint=http://127.0.0.1:{}&retries=2", down.port);
    let start = std::time::Instant::now();
    let err = s3_fails(
        &["backup", "create", "--repo", &through, "--from-file", snaps.second.to_str().unwrap()],
        12,
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(60), "gave up too slowly");
    assert!(err.contains("503") && err.contains("retr"), "{err}");
    assert!(down.failed() >= 3, "{} failures: no retries", down.failed());
    assert_eq!(ids(&direct), vec![id]);
}

/// A directory with 2 MiB of incompressible data, so an upload is big enough to be cut.
fn big_dir() -> std::path::PathBuf {
    let d = scratch("s3-big");
    let mut data = vec![0u8; 2 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(d.join("blob.bin"), &data).unwrap();
    d
}

#[test]
fn s3_missing_bucket_and_dead_server() {
    let snaps = snapshots();
    let mut moto = Moto::start();
    let repo = format!("s3://no-such-bucket/x?endpoint={}", moto.endpoint);
    let err = s3_fails(
        &["backup", "create", "--repo", &repo, "--from-file", snaps.first.to_str().unwrap()],
        3,
    );
    assert!(err.contains("no-such-bucket") && err.contains("create the bucket"), "{err}");
    let err = s3_fails(&["backup", "list", "--repo", &repo], 3);
    assert!(err.contains("no-such-bucket"), "{err}");
    moto.kill();
    let err = s3_fails(
        &["backup", "list", "--repo", &format!("s3://bkt/x?endpoint={}&retries=1", moto.endpoint)],
        12,
    );
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn s3_wrong_credentials() {
    let snaps = snapshots();
    // moto checks credentials against its IAM when INITIAL_NO_AUTH_ACTION_COUNT is 0.
    let moto = Moto::start_with_auth();
    let repo = format!("s3://bkt/x?endpoint={}", moto.endpoint);
    let err = s3_fails(
        &["backup", "create", "--repo", &repo, "--from-file", snaps.first.to_str().unwrap()],
        13,
    );
    assert!(err.contains("access denied") && err.contains("credentials"), "{err}");
    assert!(!err.contains("testing-secret"), "the secret must not be printed: {err}");
}
