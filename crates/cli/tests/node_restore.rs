//! `etcdguard node restore` on a control-plane node laid out as kubeadm lays it out (a
//! kubernetes dir with static pod manifests, etcd's data on a hostPath volume), with real etcd
//! 3.5.1. There is no kubelet here, so the test runs a stand-in for the one kubelet behaviour
//! the runbook relies on: while `manifests/etcd.yaml` exists, the etcd it describes runs (its
//! command line, with the pod's hostPath mounts applied); when the file goes, that etcd is
//! stopped. Everything else — the etcd, etcdctl, the data on disk — is real.

mod live_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcdguard_testkit::{free_port, EtcdVersion};
use live_support::*;

/// The kubelet stand-in: polls the manifests dir and starts/stops etcd by PID.
struct Kubelet {
    stop: Arc<AtomicBool>,
    starts: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(manifests: PathBuf, log_dir: PathBuf) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(Mutex::new(0));
        let (stop2, starts2) = (stop.clone(), starts.clone());
        let thread = std::thread::spawn(move || {
            let mut child: Option<Child> = None;
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let manifest = manifests.join("etcd.yaml");
                match (&mut child, manifest.exists()) {
                    (None, true) => {
                        let mut n = starts2.lock().unwrap();
                        *n += 1;
                        child = Some(run_pod(&manifest, &log_dir.join(format!("etcd-{n}.log"))));
                    }
                    (Some(c), false) => {
                        terminate(c);
                        child = None;
                    }
                    _ => {}
                }
                if child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some()) {
                    child = None; // exited: started again on the next round, as the kubelet does
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(c) = &mut child {
                terminate(c);
            }
        });
        Kubelet { stop, starts, thread: Some(thread) }
    }

    fn starts(&self) -> u32 {
        *self.starts.lock().unwrap()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn terminate(c: &mut Child) {
    // SAFETY: kill(2) with SIGTERM on the child we started, by its PID.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = c.wait();
}

/// Runs the etcd container of a static pod manifest as the kubelet would: its command line,
/// with container paths under a hostPath mount turned into host paths.
fn run_pod(manifest: &Path, log: &Path) -> Child {
    let pod: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let c = &pod["spec"]["containers"][0];
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let vol = pod["spec"]["volumes"].as_sequence().unwrap().iter().find(|v| v["name"].as_str() == Some(name)).unwrap();
            (m["mountPath"].as_str().unwrap().to_string(), vol["hostPath"]["path"].as_str().unwrap().to_string())
        })
        .collect();
    let argv: Vec<String> = c["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap().to_string();
            match a.split_once('=') {
                Some((flag, path)) => match mounts.iter().find(|(m, _)| path.starts_with(m.as_str())) {
                    Some((m, host)) => format!("{flag}={host}{}", &path[m.len()..]),
                    None => a,
                },
                None => a,
            }
        })
        .collect();
    assert_eq!(argv[0], "etcd");
    let log = std::fs::File::create(log).unwrap();
    Command::new(EtcdVersion::V3_5.binaries().etcd)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubernetes: PathBuf,
    data: PathBuf,
    endpoint: String,
    apiserver_port: u16,
}

/// A kubeadm-shaped node: /etc/kubernetes/manifests with etcd.yaml (etcd's data on a
/// hostPath), kube-apiserver.yaml and kube-scheduler.yaml (nothing runs those two here, so
/// their ports are simply closed).
fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let kubernetes = root.join("etc/kubernetes");
    std::fs::create_dir_all(kubernetes.join("manifests")).unwrap();
    let data = root.join("var/lib/etcd");
    let (client, peer, apiserver_port) = (free_port(), free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let etcd_yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls={endpoint}
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=http://127.0.0.1:{peer}
    - --initial-cluster=cp1=http://127.0.0.1:{peer}
    - --listen-client-urls={endpoint}
    - --listen-peer-urls=http://127.0.0.1:{peer}
    - --name=cp1
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:3.5.1-0
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
  hostNetwork: true
  volumes:
  - hostPath:
      path: {}
      type: DirectoryOrCreate
    name: etcd-data
"#,
        data.display()
    );
    std::fs::write(kubernetes.join("manifests/etcd.yaml"), etcd_yaml).unwrap();
    std::fs::write(
        kubernetes.join("manifests/kube-apiserver.yaml"),
        format!("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --etcd-servers={endpoint}\n    - --secure-port={apiserver_port}\n    name: kube-apiserver\n"),
    )
    .unwrap();
    std::fs::write(kubernetes.join("manifests/kube-scheduler.yaml"), "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [kube-scheduler]\n    name: kube-scheduler\n").unwrap();
    Node { _dir: dir, root, kubernetes, data, endpoint, apiserver_port }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    EtcdVersion::V3_5.binaries().etcdctl().args(["--endpoints", endpoint, "--command-timeout", "5s"]).args(args).output().unwrap()
}

fn get(endpoint: &str, key: &str) -> Option<String> {
    let out = etcdctl(endpoint, &["get", key, "--print-value-only"]);
    assert!(out.status.success(), "etcdctl get: {}", text(&out.stderr));
    let v = text(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

fn revision(endpoint: &str) -> i64 {
    let out = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

fn wait_serving(endpoint: &str) {
    let start = Instant::now();
    while !etcdctl(endpoint, &["endpoint", "health"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(60), "etcd did not come up at {endpoint}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn aside_dirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).collect()
}

#[test]
fn node_restore_brings_the_static_pod_etcd_back_at_the_snapshot() {
    let n = node();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);

    // The state to come back to, then the "disaster": a key deleted, another written.
    assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/keep", "v1"]).status.success());
    let snap = n.root.join("snapshot.db");
    assert!(etcdctl(&n.endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    let snap_revision = revision(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["del", "/registry/configmaps/default/keep"]).status.success());
    assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/after", "x"]).status.success());
    let kdir = n.kubernetes.to_str().unwrap();

    // --dry-run: the plan names the data dir, the member and the cluster; nothing changes.
    let out = etcdguard().args(["node", "restore", snap.to_str().unwrap(), "--kubernetes-dir", kdir, "--dry-run"]).output().unwrap();
    expect_code(&out, 0, "node restore --dry-run");
    let plan = text(&out.stdout);
    assert!(plan.contains(&n.data.display().to_string()) && plan.contains("\"cp1\"") && plan.contains("cp1=http://127.0.0.1:"), "{plan}");
    assert!(plan.contains("kube-apiserver.yaml") && plan.contains(&format!("127.0.0.1:{}", n.apiserver_port)), "{plan}");
    assert!(plan.contains("Dry run: nothing was changed."), "{plan}");
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists());
    assert_eq!(get(&n.endpoint, "/registry/configmaps/default/after").as_deref(), Some("x"), "the dry run touched etcd");
    assert_eq!(kubelet.starts(), 1);

    // A damaged snapshot is refused before anything is stopped.
    let bad = n.root.join("bad.db");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let out = etcdguard().args(["node", "restore", bad.to_str().unwrap(), "--kubernetes-dir", kdir]).output().unwrap();
    expect_code(&out, 9, "node restore of a bit-flipped snapshot");
    assert_eq!(kubelet.starts(), 1, "the control plane was stopped for a bad snapshot");
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists());

    // The real thing.
    let out = etcdguard().args(["node", "restore", snap.to_str().unwrap(), "--kubernetes-dir", kdir, "--wait-timeout", "60s"]).output().unwrap();
    expect_code(&out, 0, "node restore");
    assert!(text(&out.stdout).contains("serving again"), "{}", text(&out.stdout));
    assert_eq!(kubelet.starts(), 2, "etcd was stopped and started once");
    wait_serving(&n.endpoint);
    assert_eq!(get(&n.endpoint, "/registry/configmaps/default/keep").as_deref(), Some("v1"));
    assert_eq!(get(&n.endpoint, "/registry/configmaps/default/after"), None);
    assert_eq!(revision(&n.endpoint), snap_revision, "the restored etcd is at the snapshot's revision");
    for m in ["etcd.yaml", "kube-apiserver.yaml", "kube-scheduler.yaml"] {
        assert!(n.kubernetes.join("manifests").join(m).exists(), "{m} was not put back");
    }
    assert!(aside_dirs(&n.kubernetes, "manifests.etcdguard-").is_empty(), "the parked manifests dir is left over");
    let old = aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-");
    assert_eq!(old.len(), 1, "the old data dir is kept beside the new one");
    assert!(old[0].join("member/snap/db").exists());
    drop(kubelet);
}

#[test]
fn node_restore_gives_the_node_back_when_a_pod_does_not_stop() {
    let n = node();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    let snap = n.root.join("snapshot.db");
    assert!(etcdctl(&n.endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    assert!(etcdctl(&n.endpoint, &["put", "/registry/pods/default/later", "y"]).status.success());
    // Something keeps the API server's port open (as a container the kubelet failed to stop).
    let _stuck = std::net::TcpListener::bind(("127.0.0.1", n.apiserver_port)).unwrap();
    let out = etcdguard()
        .args(["node", "restore", snap.to_str().unwrap(), "--kubernetes-dir", n.kubernetes.to_str().unwrap(), "--wait-timeout", "3s"])
        .output()
        .unwrap();
    expect_code(&out, 11, "node restore with a pod that does not stop");
    assert!(text(&out.stderr).contains("kube-apiserver") && text(&out.stderr).contains("put back"), "{}", text(&out.stderr));
    // Everything is as it was: manifests back, etcd started again on the untouched data.
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists() && n.kubernetes.join("manifests/kube-apiserver.yaml").exists());
    assert!(aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-").is_empty(), "the data dir was moved");
    wait_serving(&n.endpoint);
    assert_eq!(get(&n.endpoint, "/registry/pods/default/later").as_deref(), Some("y"));
    drop(kubelet);
}

#[test]
fn node_restore_from_a_backup_puts_the_pki_back() {
    use std::os::unix::fs::PermissionsExt;
    let n = node();
    let pki = n.kubernetes.join("pki");
    std::fs::create_dir_all(pki.join("etcd")).unwrap();
    std::fs::write(pki.join("ca.crt"), "the cluster CA\n").unwrap();
    std::fs::write(pki.join("etcd/ca.key"), "etcd CA key\n").unwrap();
    std::fs::set_permissions(pki.join("etcd/ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["put", "/registry/secrets/kube-system/bootstrap", "s1"]).status.success());
    let repo = n.root.join("backups");
    let repo_s = repo.to_str().unwrap();
    let out = etcdguard()
        .args(["backup", "create", "--repo", repo_s, "--endpoints", &n.endpoint, "--pki-dir", pki.to_str().unwrap()])
        .env_remove("ETCDGUARD_REPO")
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create");
    let backed_up_revision = revision(&n.endpoint);
    // The node loses its data and its PKI is replaced by something else.
    assert!(etcdctl(&n.endpoint, &["del", "/registry/secrets/kube-system/bootstrap"]).status.success());
    std::fs::write(pki.join("ca.crt"), "a wrong CA\n").unwrap();
    std::fs::remove_file(pki.join("etcd/ca.key")).unwrap();

    let kdir = n.kubernetes.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut c = etcdguard();
        c.env_remove("ETCDGUARD_REPO").args(["node", "restore", "--backup", "latest", "--repo", repo_s, "--kubernetes-dir", kdir, "--wait-timeout", "60s"]).args(extra);
        c.output().unwrap()
    };
    let out = restore(&["--restore-pki", "--dry-run"]);
    expect_code(&out, 0, "node restore --backup --restore-pki --dry-run");
    assert!(text(&out.stdout).contains("put the backup's PKI files in place"), "{}", text(&out.stdout));
    assert_eq!(std::fs::read_to_string(pki.join("ca.crt")).unwrap(), "a wrong CA\n", "the dry run changed the PKI");
    assert!(aside_dirs(&n.kubernetes, ".etcdguard-restore-").is_empty(), "the dry run left its download behind");

    let out = restore(&["--restore-pki"]);
    expect_code(&out, 0, "node restore --backup --restore-pki");
    wait_serving(&n.endpoint);
    assert_eq!(get(&n.endpoint, "/registry/secrets/kube-system/bootstrap").as_deref(), Some("s1"));
    assert_eq!(revision(&n.endpoint), backed_up_revision);
    assert_eq!(std::fs::read_to_string(pki.join("ca.crt")).unwrap(), "the cluster CA\n");
    assert_eq!(std::fs::read_to_string(pki.join("etcd/ca.key")).unwrap(), "etcd CA key\n");
    assert_eq!(std::fs::metadata(pki.join("etcd/ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let old_pki = aside_dirs(&n.kubernetes, "pki.etcdguard-");
    assert_eq!(old_pki.len(), 1);
    assert_eq!(std::fs::read_to_string(old_pki[0].join("ca.crt")).unwrap(), "a wrong CA\n", "the replaced PKI is kept");
    assert!(aside_dirs(&n.kubernetes, ".etcdguard-restore-").is_empty(), "the downloaded backup (with CA keys) was left behind");

    // --restore-pki needs a backup.
    let out = etcdguard().args(["node", "restore", "x.db", "--kubernetes-dir", kdir, "--restore-pki"]).output().unwrap();
    expect_code(&out, 2, "--restore-pki without --backup");
    drop(kubelet);
}
