//! `backup import` of other tools' layouts and `backup restore --format openshift`, with real
//! snapshots of a real etcd 3.5. The foreign layouts are made here as those tools make them:
//! cluster-backup.sh's directory (the system's `tar -cpzf`), k3s snapshots plain and zipped
//! (Python's zipfile) with their `.metadata`, druid full snapshots gzip/zlib (Python).

mod backup_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_support::*;
use etcdguard_testkit::{EtcdServer, EtcdVersion};

const CLUSTER_VERSION_KEY: &str = "/kubernetes.io/config.openshift.io/clusterversions/version";

fn set_mtime(path: &Path, unix: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(unix)).unwrap();
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn python(script: &str, args: &[&Path]) {
    sh(Command::new("python3").arg("-c").arg(script).args(args));
}

/// A snapshot of a real etcd that holds an OpenShift ClusterVersion: installed (first history
/// entry started) 2026-01-01 00:00 UTC, on 4.15.3 now.
fn openshift_snapshot(dest: &Path) {
    let server = EtcdServer::start(EtcdVersion::V3_5);
    let cv = serde_json::json!({
        "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
        "metadata": {"name": "version", "creationTimestamp": "2026-01-01T00:05:00Z"},
        "spec": {"channel": "stable-4.15"},
        "status": {"desired": {"version": "4.15.3"}, "history": [
            {"state": "Completed", "version": "4.15.3", "startedTime": "2026-02-01T00:00:00Z", "completionTime": "2026-02-01T01:00:00Z"},
            {"state": "Completed", "version": "4.15.1", "startedTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:40:00Z"}
        ]}
    });
    server.put(CLUSTER_VERSION_KEY.as_bytes(), cv.to_string().as_bytes());
    for i in 0..200 {
        server.put(
            format!("/kubernetes.io/configmaps/openshift-etcd/cm-{i:04}").as_bytes(),
            format!("{{\"data\":\"{}\"}}", "v".repeat(300)).as_bytes(),
        );
    }
    server.snapshot_save(dest);
}

/// `/etc/kubernetes/static-pod-resources` of a control-plane node: two kube-apiserver
/// revisions (6 and 7), one of each other component; a serving certificate and the
/// EncryptionConfiguration in the newest kube-apiserver revision.
fn static_pod_resources(root: &Path) -> PathBuf {
    let spr = root.join("static-pod-resources");
    for (dir, pod) in [
        ("kube-apiserver-pod-6", "kube-apiserver-pod.yaml"),
        ("kube-apiserver-pod-7", "kube-apiserver-pod.yaml"),
        ("kube-controller-manager-pod-4", "kube-controller-manager-pod.yaml"),
        ("kube-scheduler-pod-5", "kube-scheduler-pod.yaml"),
        ("etcd-pod-3", "etcd-pod.yaml"),
    ] {
        let d = spr.join(dir);
        std::fs::create_dir_all(d.join("configmaps/config")).unwrap();
        std::fs::write(
            d.join(pod),
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {dir}\n"),
        )
        .unwrap();
        std::fs::write(d.join("configmaps/config/config.yaml"), format!("revision: {dir}\n"))
            .unwrap();
    }
    let apiserver = spr.join("kube-apiserver-pod-7");
    let certs = apiserver.join("secrets/localhost-serving-cert-certkey");
    std::fs::create_dir_all(&certs).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(certs.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(certs.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(certs.join("tls.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let enc = apiserver.join("secrets/encryption-config");
    std::fs::create_dir_all(&enc).unwrap();
    std::fs::write(
        enc.join("encryption-config"),
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: \"1\"\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n  - identity: {}\n",
    )
    .unwrap();
    std::fs::set_permissions(enc.join("encryption-config"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    spr
}

/// What cluster-backup.sh leaves for one run at `stamp`: the snapshot, and the newest
/// revision of each component tarred relative to /etc/kubernetes.
fn cluster_backup_dir(dir: &Path, etc_kubernetes: &Path, snapshot: &Path, stamp: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tarball = dir.join(format!("static_kuberesources_{stamp}.tar.gz"));
    sh(Command::new("tar").arg("-cpzf").arg(&tarball).arg("-C").arg(etc_kubernetes).args([
        "static-pod-resources/kube-apiserver-pod-7",
        "static-pod-resources/kube-controller-manager-pod-4",
        "static-pod-resources/kube-scheduler-pod-5",
        "static-pod-resources/etcd-pod-3",
    ]));
    std::fs::set_permissions(&tarball, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::copy(snapshot, dir.join(format!("snapshot_{stamp}.db"))).unwrap();
}

fn tar_list(tarball: &Path) -> String {
    let out = Command::new("tar").arg("-tzvf").arg(tarball).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `backup restore ID --repo REPO --format openshift --files-to DIR MORE…`.
fn openshift_restore<'a>(
    id: &'a str,
    repo: &'a str,
    to: &'a Path,
    more: &[&'a str],
) -> Vec<&'a str> {
    let to = to.to_str().unwrap();
    [&["backup", "restore", id, "--repo", repo, "--format", "openshift", "--files-to", to], more]
        .concat()
}

fn shown(repo: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["backup", "show", id, "--repo", repo, "-w", "json"])).unwrap()
}

#[test]
fn openshift_cluster_backup_in_and_out() {
    let work = scratch("import-openshift");
    let snap = work.join("live.db");
    openshift_snapshot(&snap);
    let etc_kubernetes = work.join("etc-kubernetes");
    let spr = static_pod_resources(&etc_kubernetes);
    let backups = work.join("backup");
    cluster_backup_dir(&backups, &etc_kubernetes, &snap, "2026-03-01_101500");
    // Written by etcdctl a few seconds after the name's time, as on a UTC node.
    set_mtime(&backups.join("snapshot_2026-03-01_101500.db"), 1_772_360_105);
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();

    let out = ok(&["backup", "import", "--repo", repo_s, backups.to_str().unwrap()]);
    assert!(
        out.contains("imported from")
            && out.contains("(openshift, taken 2026-03-01 10:15:00 UTC by its name (UTC))"),
        "{out}"
    );
    let list = list_json(repo_s);
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["created"], "2026-03-01T10:15:00Z");
    let m = shown(repo_s, &id);
    assert_eq!(m["source"]["kind"], "file");
    assert_eq!(m["source"]["import"]["format"], "openshift");
    assert!(
        m["source"]["path"].as_str().unwrap().ends_with("backup/snapshot_2026-03-01_101500.db"),
        "{}",
        m["source"]
    );
    assert_eq!(m["etcd"]["verified"], true);
    assert_eq!(m["labels"]["openshift.version"], "4.15.3");
    let paths: Vec<&str> =
        m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"files/static-pod-resources/kube-apiserver-pod-7/kube-apiserver-pod.yaml"),
        "{paths:?}"
    );
    assert!(paths.contains(&"files/static-pod-resources/etcd-pod-3/etcd-pod.yaml"), "{paths:?}");
    assert!(paths.contains(&"encryption-config/encryption-config"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.contains("kube-apiserver-pod-6")),
        "only what the tarball holds: {paths:?}"
    );
    // Where each file came from names the tarball, not a scratch directory.
    let sources: Vec<&str> =
        m["files"].as_array().unwrap().iter().map(|f| f["source"].as_str().unwrap()).collect();
    assert!(
        sources.iter().all(|s| s.contains("static_kuberesources_2026-03-01_101500.tar.gz:")
            || s.contains("encryption-config")),
        "{sources:?}"
    );
    let certs = m["certificates"].as_array().unwrap();
    assert!(
        certs.iter().any(|c| c["path"]
            .as_str()
            .unwrap()
            .ends_with("localhost-serving-cert-certkey/tls.crt")),
        "{certs:?}"
    );

    // The same backup again: recognised and skipped.
    let again = etcdguard()
        .args(["backup", "import", "--repo", repo_s, backups.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(&format!("is already backup {id}"))
            && stderr.contains("0 backup(s) imported, 1 already"),
        "{stderr}"
    );
    assert_eq!(list_json(repo_s).len(), 1);

    // A volume with one directory per run (as backup CronJobs keep them): the known run is
    // skipped, the new one imported.
    let volume = work.join("volume");
    cluster_backup_dir(&volume.join("run-1"), &etc_kubernetes, &snap, "2026-03-01_101500");
    cluster_backup_dir(&volume.join("run-2"), &etc_kubernetes, &snap, "2026-03-02_101500");
    let out = etcdguard()
        .args(["backup", "import", "--repo", repo_s, volume.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("1 backup(s) imported, 1 already"), "{stderr}");
    let second_run = list_json(repo_s)
        .iter()
        .find(|b| b["created"] == "2026-03-02T10:15:00Z")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .unwrap();
    ok(&["backup", "delete", &second_run, "--repo", repo_s, "--force"]);

    // Out again, as cluster-backup.sh writes it, for the node's z-stream.
    let out_dir = work.join("restore-ok");
    let printed = ok(&openshift_restore(&id, repo_s, &out_dir, &["--node-version", "4.15.3"]));
    let written_snap = out_dir.join("snapshot_2026-03-01_101500.db");
    let written_tar = out_dir.join("static_kuberesources_2026-03-01_101500.tar.gz");
    assert!(
        printed.contains(written_snap.to_str().unwrap())
            && printed.contains(written_tar.to_str().unwrap()),
        "{printed}"
    );
    assert!(
        std::fs::read(&written_snap).unwrap() == std::fs::read(&snap).unwrap(),
        "the snapshot is the one imported"
    );
    assert_eq!(std::fs::metadata(&written_tar).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&written_snap).unwrap().permissions().mode() & 0o777, 0o600);
    let listing = tar_list(&written_tar);
    assert!(
        listing.contains("static-pod-resources/kube-scheduler-pod-5/kube-scheduler-pod.yaml"),
        "{listing}"
    );
    assert!(!listing.contains("kube-apiserver-pod-6"), "{listing}");
    // cluster-restore.sh: finds `*kube-apiserver-pod.yaml` in the tarball, and unpacks
    // static-pod-resources into /etc/kubernetes: the tree comes back as it was.
    let found = Command::new("tar")
        .arg("-tvf")
        .arg(&written_tar)
        .arg("--wildcards")
        .arg("*kube-apiserver-pod.yaml")
        .output()
        .unwrap();
    assert!(
        found.status.success()
            && String::from_utf8_lossy(&found.stdout)
                .contains("static-pod-resources/kube-apiserver-pod-7/kube-apiserver-pod.yaml")
    );
    let unpacked = work.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&unpacked)
        .arg("-xzf")
        .arg(&written_tar)
        .arg("static-pod-resources"));
    for dir in [
        "kube-apiserver-pod-7",
        "kube-controller-manager-pod-4",
        "kube-scheduler-pod-5",
        "etcd-pod-3",
    ] {
        sh(Command::new("diff")
            .arg("-r")
            .arg(spr.join(dir))
            .arg(unpacked.join("static-pod-resources").join(dir)));
    }
    let key = unpacked.join(
        "static-pod-resources/kube-apiserver-pod-7/secrets/localhost-serving-cert-certkey/tls.key",
    );
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // The node's version from its machine config: same z-stream passes.
    let mc = work.join("currentconfig");
    std::fs::write(&mc, r#"{"kind":"MachineConfig","metadata":{"name":"rendered-master-1","annotations":{"machineconfiguration.openshift.io/release-image-version":"4.15.3"}}}"#).unwrap();
    let out_mc = work.join("restore-mc");
    let out = etcdguard()
        .args(openshift_restore(
            "latest",
            repo_s,
            &out_mc,
            &["--machine-config", mc.to_str().unwrap()],
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is of OpenShift 4.15.3, the node's z-stream"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Written a second time to the same place: refused, nothing overwritten.
    let err =
        fails(&openshift_restore("latest", repo_s, &out_mc, &["--node-version", "4.15.3"]), 14);
    assert!(err.contains("already exists"), "{err}");

    // Another z-stream: refused (exit 17), nothing written; --force writes with a warning.
    let out_other = work.join("restore-other");
    let err = fails(&openshift_restore(&id, repo_s, &out_other, &["--node-version", "4.15.4"]), 17);
    assert!(
        err.contains("is of OpenShift 4.15.3 but this node runs 4.15.4")
            && err.contains("same z-stream"),
        "{err}"
    );
    assert!(!out_other.exists() || std::fs::read_dir(&out_other).unwrap().next().is_none());
    let out = etcdguard()
        .args(openshift_restore(&id, repo_s, &out_other, &["--node-version", "4.15.4", "--force"]))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: backup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node's version unknown (no machine config there): refused, saying so.
    let err = fails(
        &openshift_restore(
            &id,
            repo_s,
            &work.join("restore-unknown"),
            &["--machine-config", work.join("missing").to_str().unwrap()],
        ),
        17,
    );
    assert!(
        err.contains("cannot tell this node's OpenShift version") && err.contains("--node-version"),
        "{err}"
    );

    // A backup of the cluster's first day: a different time is a different backup (not
    // skipped), and restoring it warns about the certificate rotation.
    let day_one = work.join("day-one");
    cluster_backup_dir(&day_one, &etc_kubernetes, &snap, "2026-01-01_120000__POSSIBLY_DIRTY__");
    let out = ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        day_one.join("snapshot_2026-01-01_120000__POSSIBLY_DIRTY__.db").to_str().unwrap(),
    ]);
    let early = created_id(&out);
    let m = shown(repo_s, &early);
    assert_eq!(m["created"], "2026-01-01T12:00:00Z");
    assert_eq!(m["labels"]["openshift.possibly-dirty"], "true");
    assert_eq!(list_json(repo_s).len(), 2);
    // `latest` stays the newest by time, not the last imported.
    assert_eq!(shown(repo_s, "latest")["id"], id.as_str());
    let out_early = work.join("restore-early");
    let out = etcdguard()
        .args(openshift_restore(&early, repo_s, &out_early, &["--node-version", "4.15.3"]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("before the first certificate rotation"), "{stderr}");
    assert!(out_early.join("snapshot_2026-01-01_120000__POSSIBLY_DIRTY__.db").is_file());

    // A backup etcdguard took itself, with the four revisions given as --file: the same layout.
    let mut create = create_args(repo_s, &snap, &[]);
    let pods: Vec<String> = [
        "kube-apiserver-pod-7",
        "kube-controller-manager-pod-4",
        "kube-scheduler-pod-5",
        "etcd-pod-3",
    ]
    .iter()
    .map(|d| spr.join(d).display().to_string())
    .collect();
    for p in &pods {
        create.extend(["--file", p.as_str()]);
    }
    let own = created_id(&ok(&create));
    let out_own = work.join("restore-own");
    ok(&openshift_restore(&own, repo_s, &out_own, &["--node-version", "4.15.3"]));
    let own_tar = std::fs::read_dir(&out_own)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    assert!(tar_list(&own_tar).contains("static-pod-resources/etcd-pod-3/etcd-pod.yaml"));
    // A directory that holds another backup already: cluster-restore.sh could take that one.
    let err =
        fails(&openshift_restore(&early, repo_s, &out_own, &["--node-version", "4.15.3"]), 14);
    assert!(err.contains("restores the last of them by name"), "{err}");

    // A backup without static pod resources (a plain snapshot) is refused in this layout.
    let plain = work.join("plain.db");
    std::fs::copy(&snap, &plain).unwrap();
    let out = ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        "--format",
        "etcdctl",
        "--created",
        "2026-03-02T00:00:00Z",
        plain.to_str().unwrap(),
    ]);
    let bare = created_id(&out);
    let err = fails(
        &openshift_restore(
            &bare,
            repo_s,
            &work.join("restore-bare"),
            &["--node-version", "4.15.3"],
        ),
        17,
    );
    assert!(err.contains("holds no static pod resources of kube-apiserver, kube-controller-manager, kube-scheduler, etcd"), "{err}");
}

#[test]
fn k3s_druid_and_etcdctl_snapshots_come_in_with_their_times() {
    let snaps = snapshots();
    let work = scratch("import-k3s");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();

    // k3s: server/db/snapshots/<name>-<node>-<unix ts>, one zipped, metadata in ../.metadata.
    let db = work.join("var/lib/rancher/k3s/server/db");
    let dir = db.join("snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(db.join(".metadata")).unwrap();
    let plain = dir.join("etcd-snapshot-cp-1-1764000000");
    std::fs::copy(&snaps.first, &plain).unwrap();
    std::fs::write(
        db.join(".metadata/etcd-snapshot-cp-1-1764000000"),
        r#"{"team":"platform","reason":"nightly"}"#,
    )
    .unwrap();
    let zipped = dir.join("on-demand-cp-1-1764003600.zip");
    python(
        "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[2], 'on-demand-cp-1-1764003600')",
        &[&zipped, &snaps.second],
    );
    let token = work.join("token");
    std::fs::write(&token, "K10abc::server:secret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let enc = work.join("encryption-config.json");
    std::fs::write(&enc, r#"{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["secrets"],"providers":[{"identity":{}}]}]}"#).unwrap();
    let out = ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        dir.to_str().unwrap(),
        "--label",
        "env=test",
        "--file",
        token.to_str().unwrap(),
        "--encryption-config",
        enc.to_str().unwrap(),
    ]);
    assert_eq!(out.lines().filter(|l| l.contains("imported from")).count(), 2, "{out}");
    let list = list_json(repo_s);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["created"], "2025-11-24T16:00:00Z");
    assert_eq!(list[1]["created"], "2025-11-24T17:00:00Z");
    let first = shown(repo_s, list[0]["id"].as_str().unwrap());
    assert_eq!(first["source"]["import"]["format"], "k3s");
    assert_eq!(first["labels"]["k3s.node"], "cp-1");
    assert_eq!(first["labels"]["k3s.metadata.team"], "platform");
    assert_eq!(first["labels"]["k3s.compressed"], "false");
    assert_eq!(first["labels"]["env"], "test");
    assert!(
        first["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "files/token" && f["mode"] == 0o600),
        "{}",
        first["files"]
    );
    assert!(
        first["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "encryption-config/encryption-config.json"),
        "{}",
        first["files"]
    );
    let second = shown(repo_s, list[1]["id"].as_str().unwrap());
    assert_eq!(second["labels"]["k3s.compressed"], "true");
    assert_eq!(second["etcd"]["verified"], true);
    // The zipped one restores as the snapshot k3s zipped.
    let restored = work.join("second.db");
    ok(&restore_args(list[1]["id"].as_str().unwrap(), repo_s, &restored, &[]));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&snaps.second).unwrap());
    // Importing the zip again is recognised by the unzipped snapshot's sha256 and time.
    let again = etcdguard()
        .args(["backup", "import", "--repo", repo_s, zipped.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("is already backup"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // etcd-druid full snapshots: gzip (the default) and zlib; a delta is refused.
    let druid = work.join("druid/v2");
    std::fs::create_dir_all(&druid).unwrap();
    let gz = druid.join("Full-00000000-00001900-1764007200.gz");
    let zl = druid.join("Full-00000000-00001930-1764010800.zlib.final");
    python(
        "import sys, gzip, zlib\ndata = open(sys.argv[3], 'rb').read()\nopen(sys.argv[1], 'wb').write(gzip.compress(data))\nopen(sys.argv[2], 'wb').write(zlib.compress(open(sys.argv[4], 'rb').read()))",
        &[&gz, &zl, &snaps.third, &snaps.first],
    );
    let out =
        ok(&["backup", "import", "--repo", repo_s, gz.to_str().unwrap(), zl.to_str().unwrap()]);
    assert_eq!(out.lines().filter(|l| l.contains("(etcd-druid, taken")).count(), 2, "{out}");
    let list = list_json(repo_s);
    assert_eq!(list.len(), 4);
    let gz_backup = shown(repo_s, list[2]["id"].as_str().unwrap());
    assert_eq!(gz_backup["created"], "2025-11-24T18:00:00Z");
    assert_eq!(gz_backup["labels"]["druid.last-revision"], "1900");
    assert_eq!(gz_backup["labels"]["druid.compression"], "gzip");
    let zl_backup = shown(repo_s, list[3]["id"].as_str().unwrap());
    assert_eq!(zl_backup["labels"]["druid.final"], "true");
    assert_eq!(zl_backup["labels"]["druid.compression"], "zlib");
    assert_eq!(
        zl_backup["snapshot"]["sha256"],
        shown(repo_s, list[0]["id"].as_str().unwrap())["snapshot"]["sha256"],
        "the same snapshot as the plain k3s one"
    );
    let incr = druid.join("Incr-00001901-00001950-1764007220.gz");
    std::fs::write(&incr, b"not a db").unwrap();
    let err = fails(&["backup", "import", "--repo", repo_s, incr.to_str().unwrap()], 2);
    assert!(err.contains("delta snapshot"), "{err}");

    // A plain etcdctl file: its modification time, or --created.
    let etcdctl_file = work.join("snap.db");
    std::fs::copy(&snaps.third, &etcdctl_file).unwrap();
    set_mtime(&etcdctl_file, 1_700_000_000);
    let out = ok(&["backup", "import", "--repo", repo_s, etcdctl_file.to_str().unwrap()]);
    let id = created_id(&out);
    assert_eq!(shown(repo_s, &id)["created"], "2023-11-14T22:13:20Z");
    assert_eq!(shown(repo_s, &id)["source"]["import"]["format"], "etcdctl");
    let out = ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        "--created",
        "2024-05-01T08:00:00+02:00",
        etcdctl_file.to_str().unwrap(),
    ]);
    assert_eq!(shown(repo_s, &created_id(&out))["created"], "2024-05-01T06:00:00Z");

    // A damaged snapshot is refused as `backup create --from-file` refuses it; nothing stored.
    let bad = dir.join("etcd-snapshot-cp-2-1764020000");
    std::fs::copy(&snaps.first, &bad).unwrap();
    flip_byte(&bad, |n| n / 2, 0xff);
    let before = list_json(repo_s).len();
    fails(&["backup", "import", "--repo", repo_s, bad.to_str().unwrap()], 9);
    assert_eq!(list_json(repo_s).len(), before);
    // A zip whose content is not what its name says, and --created for many: clear errors.
    let not_zip = dir.join("etcd-snapshot-cp-3-1764030000.zip");
    std::fs::copy(&snaps.first, &not_zip).unwrap();
    let err = fails(&["backup", "import", "--repo", repo_s, not_zip.to_str().unwrap()], 7);
    assert!(err.contains("its name says zip but its content is not"), "{err}");
    let err = fails(
        &[
            "backup",
            "import",
            "--repo",
            repo_s,
            "--created",
            "2024-01-01T00:00:00Z",
            gz.to_str().unwrap(),
            zl.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("--created names one backup's time"), "{err}");
    let err = fails(
        &["backup", "import", "--repo", repo_s, work.join("nothing-here").to_str().unwrap()],
        3,
    );
    assert!(err.starts_with("Error: "), "{err}");
    let _ = SystemTime::now();
}

#[test]
fn an_encrypted_repository_recognises_a_second_import_with_the_passphrase() {
    let snaps = snapshots();
    let work = scratch("import-encrypted");
    let repo = work.join("repo");
    let repo_s = repo.to_str().unwrap();
    let file = snaps.first.to_str().unwrap();
    let args = [
        "backup",
        "import",
        "--repo",
        repo_s,
        "--format",
        "etcdctl",
        "--created",
        "2026-02-01T00:00:00Z",
        file,
    ];
    let out = ok_with(etcdguard().env("ETCDGUARD_PASSPHRASE", "correct horse"), &args);
    let id = created_id(&out);
    // The snapshots' sha256 are sealed: without the passphrase nothing is compared or stored.
    fails(&args, 16);
    let out = etcdguard().env("ETCDGUARD_PASSPHRASE", "correct horse").args(args).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("is already backup {id}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The import's format stays readable without the passphrase, the path does not.
    let clear: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "show", &id, "--repo", repo_s, "-w", "json"]))
            .unwrap();
    assert_eq!(clear["source"]["import"]["format"], "etcdctl");
    assert_eq!(clear["source"]["path"], "(encrypted)");
    assert_eq!(clear["created"], "2026-02-01T00:00:00Z");
}
