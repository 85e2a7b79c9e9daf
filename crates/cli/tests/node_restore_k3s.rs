//! `etcdguard node restore --layout k3s|rke2` on a server laid out as k3s and RKE2 lay out
//! their embedded etcd: `<data-dir>/server/db/etcd` (mode 0700) with the member name in its
//! `name` file, `server/token`, `server/db/snapshots/etcd-snapshot-<node>-<unix time>`, the
//! node IP in `/etc/rancher/<distro>/config.yaml`. There is no k3s binary here (its Go module
//! is not served), so a small stand-in plays the k3s server's part that matters: at first
//! start it names the member `<host>-<8 hex>` and starts etcd as a new cluster with peer URL
//! `https://<node IP>:2380`; at later starts it removes `server/db/reset-flag`, starts etcd on
//! the existing data dir under the name of the name file, and fails unless the member list
//! holds that name with that peer URL (what k3s's datastore test requires). The etcd
//! (3.5 for k3s, 3.6 for RKE2), etcdctl and the data are real. The stand-in serves clients
//! over plain http on a free port and listens for peers on another (no certificates are made
//! here); the peer URL in etcd's member list is k3s's.

mod backup_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_support::{fails, ok, run};
use etcdguard_testkit::{free_port_on, EtcdVersion};

/// A k3s or RKE2 server node under a temp root.
struct Node {
    _dir: tempfile::TempDir,
    distro: &'static str,
    data: PathBuf,
    config: PathBuf,
    ip: String,
    version: EtcdVersion,
}

impl Node {
    fn new(distro: &'static str, version: EtcdVersion) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join(format!("var/lib/rancher/{distro}"));
        std::fs::create_dir_all(data.join("server")).unwrap();
        let config = dir.path().join(format!("etc/rancher/{distro}/config.yaml"));
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        // One loopback address per node, so 2379/2380 on it are this test's alone.
        let ip = format!("127.0.{}.{}", std::process::id() % 200 + 20, rand_byte() % 200 + 20);
        std::fs::write(&config, format!("node-ip: {ip}\nwrite-kubeconfig-mode: \"0644\"\n"))
            .unwrap();
        Node { _dir: dir, distro, data, config, ip, version }
    }

    fn etcd_dir(&self) -> PathBuf {
        self.data.join("server/db/etcd")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "node".into(),
            "restore".into(),
            "--layout".into(),
            self.distro.into(),
            "--rancher-data-dir".into(),
            self.data.display().to_string(),
            "--rancher-config".into(),
            self.config.display().to_string(),
        ]
    }

    fn restore(&self, extra: &[&str]) -> String {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs)
    }

    fn restore_fails(&self, extra: &[&str], code: i32) -> String {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs, code)
    }

    /// The stand-in for `k3s server` (see the module docs).
    fn start_server(&self) -> Server {
        let etcd_dir = self.etcd_dir();
        let reset_flag = self.data.join("server/db/reset-flag");
        // A start without --cluster-reset clears the flag a reset left.
        let _ = std::fs::remove_file(&reset_flag);
        let initialized = etcd_dir.join("member/wal").is_dir();
        let peer_url = format!("https://{}:2380", self.ip);
        let mut cmd = Command::new(self.version.binaries().etcd);
        let name = if initialized {
            std::fs::set_permissions(&etcd_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::read_to_string(etcd_dir.join("name")).unwrap()
        } else {
            // First start (cluster-init): a fresh name, kept in the name file, and the token.
            let name = format!("cp-1-{:08x}", u32::from_le_bytes(rand_bytes()));
            std::fs::create_dir_all(&etcd_dir).unwrap();
            std::fs::set_permissions(&etcd_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            write_private(&etcd_dir.join("name"), &name);
            let token = self.data.join("server/token");
            if !token.exists() {
                write_private(&token, "K10deadbeef::server:first-start-secret\n");
            }
            cmd.args(["--initial-cluster", &format!("{name}={peer_url}")])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster-state", "new"]);
            name
        };
        let client = format!("http://{}:{}", self.ip, free_port_on(&self.ip));
        let peer_listen = format!("http://{}:{}", self.ip, free_port_on(&self.ip));
        let log = etcd_dir.parent().unwrap().join(format!("etcd-{}.log", rand_byte()));
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(&etcd_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_listen])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().unwrap();
        let server =
            Server { child, client, version: self.version, log, pid_dir: etcd_dir.clone() };
        server.wait_healthy();
        // k3s's datastore test: this server must be a member under its name and peer URL.
        let members = server.ctl_json(&["member", "list"]);
        let me = members["members"].as_array().unwrap().iter().find(|m| {
            m["name"] == name.as_str()
                && m["peerURLs"].as_array().unwrap().contains(&peer_url.clone().into())
        });
        assert!(me.is_some(), "not a member as {name}={peer_url}: {members}");
        server
    }
}

fn rand_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b
}

fn rand_byte() -> u32 {
    u32::from(rand_bytes()[0])
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A running stand-in server; dropping it stops etcd by PID.
struct Server {
    child: Child,
    client: String,
    version: EtcdVersion,
    log: PathBuf,
    #[allow(dead_code)]
    pid_dir: PathBuf,
}

impl Server {
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.version.binaries().etcdctl();
        cmd.args(["--endpoints", &self.client, "--command-timeout", "10s"]).args(args);
        run(&mut cmd)
    }

    fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-w", "json"]);
        let out = self.ctl(&all);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "etcd did not become healthy: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn put(&self, key: &str, value: &str) {
        let out = self.ctl(&["put", key, value]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every key with its revisions, and the store's revision.
    fn state(&self) -> (serde_json::Value, i64) {
        let v = self.ctl_json(&["get", "", "--prefix"]);
        (v["kvs"].clone(), v["header"]["revision"].as_i64().unwrap())
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every path under `dir` with its bytes (files) or mode (dirs): "nothing changed" checks.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.push((p.clone(), format!("dir {:o}", meta.permissions().mode()).into_bytes()));
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// A k3s server with data, a snapshot where k3s keeps them, and more writes after it.
/// Returns the snapshot, the keys and revision it holds, and the member name.
fn server_with_snapshot(node: &Node) -> (PathBuf, serde_json::Value, i64, String) {
    let server = node.start_server();
    for i in 0..40 {
        server.put(
            &format!("/registry/configmaps/default/cm-{i:03}"),
            &format!("v{i}-{}", "x".repeat(200)),
        );
    }
    server.put("/registry/configmaps/default/cm-007", "rewritten");
    server.put(&format!("/{}/apiaddresses", node.distro), &format!("[\"{}:6443\"]", node.ip));
    let (kvs, revision) = server.state();
    let snapshots = node.data.join("server/db/snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let snapshot = snapshots.join("etcd-snapshot-cp-1-1764000000");
    let out = server.ctl(&["snapshot", "save", snapshot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Writes after the snapshot, which the restore must take back.
    server.put("/registry/configmaps/default/after-the-snapshot", "gone after the restore");
    server.put("/registry/configmaps/default/cm-001", "changed after the snapshot");
    server.stop();
    let name = std::fs::read_to_string(node.etcd_dir().join("name")).unwrap();
    (snapshot, kvs, revision, name)
}

fn assert_restored(node: &Node, name: &str, kvs: &serde_json::Value, revision: i64) {
    let reset_flag = node.data.join("server/db/reset-flag");
    assert!(reset_flag.is_file(), "no reset flag");
    assert_eq!(std::fs::read_to_string(node.etcd_dir().join("name")).unwrap(), name);
    let mode = std::fs::metadata(node.etcd_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let server = node.start_server();
    assert!(!reset_flag.exists(), "the start clears the reset flag");
    let members = server.ctl_json(&["member", "list"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    let (now, rev) = server.state();
    assert_eq!(&now, kvs, "every key as it was at the snapshot");
    assert_eq!(rev, revision);
    // It serves writes, on from the restored revision.
    server.put("/registry/configmaps/default/after-the-restore", "x");
    assert_eq!(server.state().1, revision + 1);
    server.stop();
}

fn old_dirs(node: &Node) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(node.data.join("server/db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("etcd-old-"))
        .collect();
    v.sort();
    v
}

#[test]
fn k3s_restores_from_the_repository_and_refuses_what_would_lose_data() {
    let node = Node::new("k3s", EtcdVersion::V3_5);
    let (snapshot, kvs, revision, name) = server_with_snapshot(&node);
    let repo = node.data.parent().unwrap().join("repo");
    let repo_s = repo.to_str().unwrap();
    let token = node.data.join("server/token");
    ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        snapshot.parent().unwrap().to_str().unwrap(),
        "--file",
        token.to_str().unwrap(),
    ]);
    let from_repo = ["--backup", "latest", "--repo", repo_s];

    // While the server runs: refused (exit 11), nothing touched.
    let running = node.start_server();
    let before = tree(&node.data.join("server/db/etcd/name"));
    let err = node.restore_fails(&from_repo, 11);
    assert!(
        err.contains("stop the k3s server first") && err.contains("systemctl stop k3s"),
        "{err}"
    );
    assert_eq!(tree(&node.data.join("server/db/etcd/name")), before);
    running.stop();
    let untouched = tree(&node.data.join("server"));

    // A node IP the member never had: refused (exit 17).
    let other_ip = format!("{}.{}", node.ip.rsplit_once('.').unwrap().0, 250);
    let err = node.restore_fails(&[&from_repo[..], &["--node-ip", &other_ip]].concat(), 17);
    assert!(err.contains("peer URL https://") && err.contains("--node-ip"), "{err}");
    assert_eq!(tree(&node.data.join("server")), untouched);

    // Another server token than the backup's: refused (exit 17), the node's kept.
    write_private(&token, "K10deadbeef::server:another-secret\n");
    let err = node.restore_fails(&from_repo, 17);
    assert!(err.contains("server token differs"), "{err}");
    write_private(&token, "K10deadbeef::server:first-start-secret\n");
    assert_eq!(tree(&node.data.join("server")), untouched);

    // No name file (not a k3s etcd dir, or a wrecked one): refused (exit 2).
    let name_file = node.etcd_dir().join("name");
    std::fs::rename(&name_file, node.data.join("name.away")).unwrap();
    let err = node.restore_fails(&from_repo, 2);
    assert!(err.contains("server/db/etcd/name is missing") && err.contains("--name"), "{err}");
    std::fs::rename(node.data.join("name.away"), &name_file).unwrap();

    // Where the old dir would go, something is already: refused (exit 14), nothing moved.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for t in now..now + 30 {
        std::fs::create_dir(node.data.join(format!("server/db/etcd-old-{t}"))).unwrap();
    }
    node.restore_fails(&from_repo, 14);
    for t in now..now + 30 {
        std::fs::remove_dir(node.data.join(format!("server/db/etcd-old-{t}"))).unwrap();
    }
    assert_eq!(tree(&node.data.join("server")), untouched);

    // A dry run says what it would do and does nothing.
    let out = node.restore(&[&from_repo[..], &["--dry-run"]].concat());
    assert!(
        out.contains(&format!("peer URL https://{}:2380", node.ip)) && out.contains("reset-flag"),
        "{out}"
    );
    assert_eq!(tree(&node.data.join("server")), untouched);

    let out = node.restore(&from_repo);
    assert!(out.contains("systemctl start k3s"), "{out}");
    assert_eq!(old_dirs(&node).len(), 1);
    assert!(old_dirs(&node)[0].join("member/snap/db").is_file(), "the old data is kept");
    assert_restored(&node, &name, &kvs, revision);
    // The backup was fetched into a private dir under the data dir, gone now.
    let left: Vec<_> = std::fs::read_dir(&node.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".etcdguard-restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn rke2_restores_a_plain_snapshot_file_and_a_backup_with_its_token() {
    let node = Node::new("rke2", EtcdVersion::V3_6);
    let (snapshot, kvs, revision, name) = server_with_snapshot(&node);
    // From the file, with the revision raised as for the other layouts.
    let out = node.restore(&[
        snapshot.to_str().unwrap(),
        "--bump-revision",
        "1000",
        "--mark-compacted",
        "-w",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["layout"], "rke2");
    assert_eq!(json["peerUrl"], format!("https://{}:2380", node.ip));
    assert_restored(&node, &name, &kvs, revision + 1000);

    // A rebuilt node without its token: the backup's is written (0600), and the restore
    // runs from the repository; the node IP comes from the current member, not the config.
    let repo = node.data.parent().unwrap().join("repo");
    let repo_s = repo.to_str().unwrap();
    let token = node.data.join("server/token");
    let secret = std::fs::read_to_string(&token).unwrap();
    ok(&[
        "backup",
        "import",
        "--repo",
        repo_s,
        snapshot.to_str().unwrap(),
        "--file",
        token.to_str().unwrap(),
    ]);
    std::fs::remove_file(&token).unwrap();
    std::fs::write(&node.config, "write-kubeconfig-mode: \"0644\"\n").unwrap();
    // The second restore must not land in the first one's etcd-old second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = node.restore(&["--backup", "latest", "--repo", repo_s]);
    assert!(out.contains("member \"") && out.contains("in the current data dir"), "{out}");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), secret);
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(old_dirs(&node).len(), 2);
    assert_restored(&node, &name, &kvs, revision);
}
