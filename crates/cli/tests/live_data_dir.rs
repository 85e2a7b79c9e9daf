//! A running etcd holds an exclusive lock on its db: etcdguard must say so at once instead of
//! blocking (as bbolt-based tools do) or reading a file that is changing under it.

use std::process::Command;
use std::time::{Duration, Instant};

use etcdguard_testkit::{EtcdServer, EtcdVersion};

#[test]
fn status_of_a_running_servers_db_is_refused_as_locked() {
    for version in EtcdVersion::ALL {
        let server = EtcdServer::start(version);
        server.put(b"/registry/pods/default/a", b"x");
        let db = server.data_dir().join("member/snap/db");
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_etcdguard"))
            .args(["snapshot", "status"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "status blocked on the lock");
        assert_eq!(
            out.status.code(),
            Some(11),
            "{}: {}",
            version.label(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("locked"), "{stderr}");

        // Pointing at the data dir itself names the db file.
        let out = Command::new(env!("CARGO_BIN_EXE_etcdguard"))
            .args(["snapshot", "status"])
            .arg(server.data_dir())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&out.stderr).contains("member/snap/db"));
    }
}
