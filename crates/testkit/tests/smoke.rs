use etcdguard_testkit::{load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec};

#[test]
fn starts_loads_and_snapshots_every_version() {
    for version in EtcdVersion::ALL {
        let server = EtcdServer::start(version);
        let spec = LoadSpec { objects: 50, updates: 10, deletes: 5, ..LoadSpec::default() };
        let summary = load_kubernetes_shaped(&server, &spec);
        let kvs = server.get_all();
        assert_eq!(kvs.len(), 50 - summary.deletes, "{}", version.label());
        assert!(summary.final_revision > 50);
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("s.db");
        server.snapshot_save(&snap);
        let len = std::fs::metadata(&snap).unwrap().len();
        assert_eq!(len % 512, 32, "snapshot has a sha256 trailer");
    }
}

/// A 3-member cluster on 127.0.0.11–.13: a stopped member comes back on its ports and data.
#[test]
fn cluster_members_stop_and_restart() {
    let mut cluster = etcdguard_testkit::EtcdCluster::start(EtcdVersion::V3_5, 3);
    assert_eq!(cluster.endpoints().len(), 3);
    assert!(cluster.endpoints()[2].starts_with("http://127.0.0.13:"), "{:?}", cluster.endpoints());
    cluster.member(0).put(b"/a", b"1");
    cluster.stop(2);
    assert!(!cluster.is_running(2));
    cluster.member(1).put(b"/b", b"2");
    cluster.restart(2);
    let started = std::time::Instant::now();
    loop {
        // Reads through the restarted member see the write it missed once it caught up.
        if cluster.member(2).get_all().len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "restarted member never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Each line's binaries are what they claim: `etcd --version`, `etcdctl version` and (3.5+)
/// `etcdutl version` name the release line, and a server of the line reports it on `/version`.
#[test]
fn binaries_report_their_release_line() {
    for version in EtcdVersion::ALL {
        let bins = version.binaries();
        let out =
            etcdguard_testkit::run_checked(std::process::Command::new(&bins.etcd).arg("--version"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let reported = text
            .lines()
            .find_map(|l| l.strip_prefix("etcd Version: "))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(EtcdVersion::from_label(reported), Some(version), "etcd --version: {text}");
        let ctl = etcdguard_testkit::run_checked(bins.etcdctl().arg("version"));
        assert!(String::from_utf8_lossy(&ctl.stdout)
            .contains(&format!("etcdctl version: {}.", version.label())));
        assert_eq!(bins.etcdutl.is_some(), version >= EtcdVersion::V3_5, "{}", version.label());
        if let Some(etcdutl) = &bins.etcdutl {
            let utl =
                etcdguard_testkit::run_checked(std::process::Command::new(etcdutl).arg("version"));
            assert!(String::from_utf8_lossy(&utl.stdout)
                .contains(&format!("etcdutl version: {}.", version.label())));
        }
    }
    assert_eq!(EtcdVersion::from_label("3.6.17"), Some(EtcdVersion::V3_6));
    assert_eq!(EtcdVersion::from_label("3.8"), None);
    assert!(EtcdVersion::V3_5.has_v2_store() && !EtcdVersion::V3_6.has_v2_store());
}
