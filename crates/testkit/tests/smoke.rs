use etcdguard_testkit::{load_kubernetes_shaped, EtcdServer, EtcdVersion, LoadSpec};

#[test]
fn starts_loads_and_snapshots_both_versions() {
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
