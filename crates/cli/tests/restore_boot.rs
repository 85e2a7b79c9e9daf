//! `etcdguard snapshot restore` output booted by real etcd 3.4, 3.5, 3.6 and 3.7 (each on a
//! snapshot its own release wrote): the data is intact
//! (every key, value, create/mod revision and version), the member is who the flags say, a
//! 3-member restore forms a quorum and serves reads and writes, and `--bump-revision
//! --mark-compacted` moves the revision and compacts the old ones.

mod restore_support;

use etcdguard_storage::restore::membership::{cluster_id, member_id};
use etcdguard_testkit::{free_port, EtcdServer, EtcdVersion};
use restore_support::*;
use serde_json::Value;

fn member_list(server: &EtcdServer) -> Vec<Value> {
    let v = json_of(&run_ok(server.etcdctl().args(["member", "list", "-w", "json"])));
    v["members"].as_array().cloned().unwrap_or_default()
}

fn endpoint_status(server: &EtcdServer) -> Value {
    let v = json_of(&run_ok(server.etcdctl().args(["endpoint", "status", "-w", "json"])));
    v[0]["Status"].clone()
}

fn single_member_boots(version: EtcdVersion) {
    let src = make_source(version);
    let out_dir = tempfile::tempdir().unwrap();
    let data_dir = out_dir.path().join("m1.etcd");
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let cluster = format!("m1={peer}");
    restore_ok(&[
        s(&src.snapshot),
        "--data-dir",
        s(&data_dir),
        "--name",
        "m1",
        "--initial-cluster",
        &cluster,
        "--initial-cluster-token",
        "restore-test",
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert_eq!(
        listing(out_dir.path()),
        vec!["m1.etcd"],
        "no temp dir may be left next to the data dir"
    );

    let server =
        EtcdServer::builder(version).name("m1").data_dir(&data_dir).start_with_peer_port(port);
    let kvs = server.get_all();
    assert_eq!(kvs.len(), src.kvs.len());
    assert_eq!(
        kvs, src.kvs,
        "every key, value, create/mod revision, version and lease must survive"
    );
    assert_eq!(server.revision(), src.revision);

    let id = member_id(std::slice::from_ref(&peer), "restore-test");
    let members = member_list(&server);
    assert_eq!(members.len(), 1, "old members must be gone: {members:?}");
    assert_eq!(members[0]["name"], "m1");
    assert_eq!(members[0]["peerURLs"], serde_json::json!([peer]));
    assert_eq!(members[0]["ID"].as_u64(), Some(id));
    let status = endpoint_status(&server);
    assert_eq!(status["header"]["member_id"].as_u64(), Some(id));
    assert_eq!(status["header"]["cluster_id"].as_u64(), Some(cluster_id(&[id])));
    assert_eq!(status["leader"].as_u64(), Some(id));

    let rev = server.put(b"/after-restore", b"ok");
    assert_eq!(rev, src.revision + 1, "the write path works and continues the revision sequence");
}

#[test]
fn restore_boots_etcd_3_4_with_identical_data() {
    single_member_boots(EtcdVersion::V3_4);
}

#[test]
fn restore_boots_etcd_3_5_with_identical_data() {
    single_member_boots(EtcdVersion::V3_5);
}

#[test]
fn restore_boots_etcd_3_6_with_identical_data() {
    single_member_boots(EtcdVersion::V3_6);
}

#[test]
fn restore_boots_etcd_3_7_with_identical_data() {
    single_member_boots(EtcdVersion::V3_7);
}

fn three_members_form_quorum(version: EtcdVersion) {
    let src = make_source(version);
    let out = tempfile::tempdir().unwrap();
    let cluster_dir = out.path().join("restored");
    let ports = [free_port(), free_port(), free_port()];
    let names = ["m1", "m2", "m3"];
    let spec: Vec<String> =
        names.iter().zip(&ports).map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
    let spec = spec.join(",");
    let stdout = restore_ok(&[
        s(&src.snapshot),
        "--cluster-out",
        s(&cluster_dir),
        "--initial-cluster",
        &spec,
        "--initial-cluster-token",
        "tok3",
    ]);
    let text = String::from_utf8_lossy(&stdout.stdout);
    assert!(text.contains("3 members"), "{text}");
    assert_eq!(listing(&cluster_dir), names);

    let dirs: Vec<_> = names.iter().map(|n| cluster_dir.join(n)).collect();
    let members: Vec<(&str, &std::path::Path, u16)> =
        names.iter().zip(&dirs).zip(&ports).map(|((n, d), p)| (*n, d.as_path(), *p)).collect();
    let servers = EtcdServer::start_members(version, &members);

    let ids: Vec<u64> =
        ports.iter().map(|p| member_id(&[format!("http://127.0.0.1:{p}")], "tok3")).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let leaders: Vec<u64> =
        servers.iter().map(|s| endpoint_status(s)["leader"].as_u64().unwrap()).collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "members disagree on the leader: {leaders:?}"
    );
    assert!(ids.contains(&leaders[0]), "leader {} is not a restored member", leaders[0]);
    for (server, id) in servers.iter().zip(&ids) {
        let st = endpoint_status(server);
        assert_eq!(st["header"]["member_id"].as_u64(), Some(*id));
        assert_eq!(st["header"]["cluster_id"].as_u64(), Some(cluster_id(&sorted)));
        assert_eq!(member_list(server).len(), 3);
    }
    // A write through one member is read (linearizably) through another.
    let rev = servers[0].put(b"/written/after/restore", b"quorum");
    assert_eq!(rev, src.revision + 1);
    let mut expected = src.kvs.clone();
    for server in &servers {
        let kvs = server.get_all();
        let written = kvs
            .iter()
            .find(|kv| kv.key == b"/written/after/restore")
            .expect("write visible on every member");
        assert_eq!(written.value, b"quorum");
        let without: Vec<_> =
            kvs.iter().filter(|kv| kv.key != b"/written/after/restore").cloned().collect();
        assert_eq!(without, expected);
    }
    expected.clear();
}

#[test]
fn three_member_restore_forms_quorum_on_etcd_3_4() {
    three_members_form_quorum(EtcdVersion::V3_4);
}

#[test]
fn three_member_restore_forms_quorum_on_etcd_3_5() {
    three_members_form_quorum(EtcdVersion::V3_5);
}

#[test]
fn three_member_restore_forms_quorum_on_etcd_3_6() {
    three_members_form_quorum(EtcdVersion::V3_6);
}

#[test]
fn three_member_restore_forms_quorum_on_etcd_3_7() {
    three_members_form_quorum(EtcdVersion::V3_7);
}

fn bump_and_mark_compacted(version: EtcdVersion) {
    let src = make_source(version);
    let out = tempfile::tempdir().unwrap();
    let data_dir = out.path().join("d");
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let cluster = format!("b={peer}");
    restore_ok(&[
        s(&src.snapshot),
        "--data-dir",
        s(&data_dir),
        "--name",
        "b",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
        "--bump-revision",
        "1000",
        "--mark-compacted",
    ]);
    let server =
        EtcdServer::builder(version).name("b").data_dir(&data_dir).start_with_peer_port(port);
    assert_eq!(server.revision(), src.revision + 1000, "revision jumps by the bump");
    assert_eq!(server.get_all(), src.kvs, "the live data is unchanged");
    let old = server
        .etcdctl()
        .args(["get", "/registry/pods/ns0/pod-0000", "--rev", &src.revision.to_string()])
        .output()
        .unwrap();
    assert!(!old.status.success());
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(err.contains("required revision has been compacted"), "{err}");
    assert_eq!(server.put(b"/x", b"y"), src.revision + 1001);
}

#[test]
fn bump_revision_and_mark_compacted_on_etcd_3_4() {
    bump_and_mark_compacted(EtcdVersion::V3_4);
}

#[test]
fn bump_revision_and_mark_compacted_on_etcd_3_5() {
    bump_and_mark_compacted(EtcdVersion::V3_5);
}

#[test]
fn bump_revision_and_mark_compacted_on_etcd_3_6() {
    bump_and_mark_compacted(EtcdVersion::V3_6);
}

#[test]
fn bump_revision_and_mark_compacted_on_etcd_3_7() {
    bump_and_mark_compacted(EtcdVersion::V3_7);
}

/// Boots `version` on a data dir restored (by etcdguard, or by `tool` when given) from `snapshot`
/// and checks that every key, value and revision of `src` is there and the member is who the
/// flags say.
fn boot_restored(
    version: EtcdVersion,
    snapshot: &std::path::Path,
    src: &Source,
    tool: Option<EtcdVersion>,
) {
    let out_dir = tempfile::tempdir().unwrap();
    let data_dir = out_dir.path().join("x.etcd");
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let cluster = format!("x={peer}");
    let args = [
        "--data-dir",
        s(&data_dir),
        "--name",
        "x",
        "--initial-cluster",
        &cluster,
        "--initial-cluster-token",
        "cross",
        "--initial-advertise-peer-urls",
        &peer,
    ];
    match tool {
        None => {
            let mut all = vec![s(snapshot)];
            all.extend_from_slice(&args);
            restore_ok(&all);
        }
        Some(t) => {
            run_ok(
                t.binaries().snapshot_tool().args(["snapshot", "restore"]).arg(snapshot).args(args),
            );
        }
    }
    let server =
        EtcdServer::builder(version).name("x").data_dir(&data_dir).start_with_peer_port(port);
    assert_eq!(
        server.get_all(),
        src.kvs,
        "etcd {} on a restore of a {} snapshot",
        version.label(),
        src_label(src)
    );
    assert_eq!(server.revision(), src.revision);
    let members = member_list(&server);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["ID"].as_u64(), Some(member_id(std::slice::from_ref(&peer), "cross")));
    assert_eq!(server.put(b"/after", b"ok"), src.revision + 1);
}

fn src_label(src: &Source) -> String {
    src.snapshot.display().to_string()
}

/// A snapshot taken by `etcdguard snapshot save` from a live `version` server, restored by
/// that release's own etcdutl, boots that release with all data (their restore of ours);
/// the other direction (ours of theirs) is every test above.
fn etcdutl_restores_our_snapshot(version: EtcdVersion) {
    let src = make_source_with(version, |server, dir| {
        let file = dir.join("ours.db");
        run_ok(
            etcdguard()
                .args(["snapshot", "save"])
                .arg(&file)
                .args(["--endpoints", server.endpoint()]),
        );
        file
    });
    boot_restored(version, &src.snapshot, &src, Some(version));
}

#[test]
fn etcdutl_3_6_restores_an_etcdguard_snapshot() {
    etcdutl_restores_our_snapshot(EtcdVersion::V3_6);
}

#[test]
fn etcdutl_3_7_restores_an_etcdguard_snapshot() {
    etcdutl_restores_our_snapshot(EtcdVersion::V3_7);
}

/// The upgrade path etcd supports, one minor at a time: a snapshot of the older release,
/// restored by etcdguard, boots the next release with every key and revision.
#[test]
fn restore_of_an_older_snapshot_boots_the_next_release() {
    for (writer, runner) in
        [(EtcdVersion::V3_5, EtcdVersion::V3_6), (EtcdVersion::V3_6, EtcdVersion::V3_7)]
    {
        let src = make_source(writer);
        boot_restored(runner, &src.snapshot, &src, None);
    }
}

/// `--etcd-version X.Y` names the release that will run the restore: a snapshot of a newer
/// release is refused before anything is written (exit 17), and rightly — etcd 3.6 will not
/// start on a 3.7 restore. The same release, or a newer one, is accepted.
#[test]
fn etcd_version_refuses_a_downgrade() {
    let v37 = make_source(EtcdVersion::V3_7);
    let v36 = make_source(EtcdVersion::V3_6);
    let out_dir = tempfile::tempdir().unwrap();
    for (src, target, writer) in [(&v37, "3.6", "3.7"), (&v36, "3.5", "3.6"), (&v37, "3.4", "3.7")]
    {
        let data_dir = out_dir.path().join(format!("refused-{target}"));
        let out =
            restore(&[s(&src.snapshot), "--data-dir", s(&data_dir), "--etcd-version", target]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(17), "{target}: {stderr}");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains(&format!("written by etcd {writer}")),
            "{stderr}"
        );
        assert!(stderr.contains("meta/storageVersion"), "the evidence is named: {stderr}");
        assert!(!data_dir.exists(), "nothing may be written");
    }
    for (src, target) in [(&v36, "3.6"), (&v36, "3.7.4")] {
        let data_dir = out_dir.path().join(format!("accepted-{target}"));
        restore_ok(&[s(&src.snapshot), "--data-dir", s(&data_dir), "--etcd-version", target]);
    }

    // Without the guard, etcd 3.6 refuses the 3.7 restore at start-up.
    let data_dir = out_dir.path().join("unguarded");
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    restore_ok(&[
        s(&v37.snapshot),
        "--data-dir",
        s(&data_dir),
        "--name",
        "u",
        "--initial-cluster",
        &format!("u={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    let started = EtcdServer::builder(EtcdVersion::V3_6)
        .name("u")
        .data_dir(&data_dir)
        .ports(free_port(), port)
        .try_start_once();
    match started {
        Ok(_) => panic!("etcd 3.6 started on a 3.7 data dir; the guard would be needless"),
        Err(e) => assert!(e.contains("not supported"), "{e}"),
    }
}
