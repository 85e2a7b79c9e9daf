//! `etcdguard node restore` on a control-plane node laid out as kubeadm lays it out (a
//! kubernetes dir with static pod manifests, etcd's data on a hostPath volume), with real etcd
//! 3.5.1 (and 3.6/3.7 where the manifest's image names them). There is no kubelet here, so the test runs a stand-in for the one kubelet behaviour
//! the runbook relies on: while `manifests/etcd.yaml` exists, the etcd it describes runs (its
//! command line, with the pod's hostPath mounts applied); when the file goes, that etcd is
//! stopped. Everything else — the etcd, etcdctl, the data on disk — is real.

mod kubelet_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcdguard_testkit::{free_port, EtcdVersion};
use kubelet_support::*;
use live_support::*;

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
    node_with_image("registry.k8s.io/etcd:3.5.1-0")
}

/// [`node`] with another etcd image in the manifest (the kubelet stand-in runs that release).
fn node_with_image(image: &str) -> Node {
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
    image: {image}
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
    EtcdVersion::V3_5
        .binaries()
        .etcdctl()
        .args(["--endpoints", endpoint, "--command-timeout", "5s"])
        .args(args)
        .output()
        .unwrap()
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
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[test]
fn node_restore_brings_the_static_pod_etcd_back_at_the_snapshot() {
    let n = node();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);

    // The state to come back to, then the "disaster": a key deleted, another written.
    assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/keep", "v1"])
        .status
        .success());
    let snap = n.root.join("snapshot.db");
    assert!(etcdctl(&n.endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    let snap_revision = revision(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["del", "/registry/configmaps/default/keep"]).status.success());
    assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/after", "x"])
        .status
        .success());
    let kdir = n.kubernetes.to_str().unwrap();

    // --dry-run: the plan names the data dir, the member and the cluster; nothing changes.
    let out = etcdguard()
        .args(["node", "restore", snap.to_str().unwrap(), "--kubernetes-dir", kdir, "--dry-run"])
        .output()
        .unwrap();
    expect_code(&out, 0, "node restore --dry-run");
    let plan = text(&out.stdout);
    assert!(
        plan.contains(&n.data.display().to_string())
            && plan.contains("\"cp1\"")
            && plan.contains("cp1=http://127.0.0.1:"),
        "{plan}"
    );
    assert!(
        plan.contains("kube-apiserver.yaml")
            && plan.contains(&format!("127.0.0.1:{}", n.apiserver_port)),
        "{plan}"
    );
    assert!(plan.contains("Dry run: nothing was changed."), "{plan}");
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists());
    assert_eq!(
        get(&n.endpoint, "/registry/configmaps/default/after").as_deref(),
        Some("x"),
        "the dry run touched etcd"
    );
    assert_eq!(kubelet.starts(), 1);

    // A damaged snapshot is refused before anything is stopped.
    let bad = n.root.join("bad.db");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let out = etcdguard()
        .args(["node", "restore", bad.to_str().unwrap(), "--kubernetes-dir", kdir])
        .output()
        .unwrap();
    expect_code(&out, 9, "node restore of a bit-flipped snapshot");
    assert_eq!(kubelet.starts(), 1, "the control plane was stopped for a bad snapshot");
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists());

    // The real thing.
    let out = etcdguard()
        .args([
            "node",
            "restore",
            snap.to_str().unwrap(),
            "--kubernetes-dir",
            kdir,
            "--wait-timeout",
            "60s",
        ])
        .output()
        .unwrap();
    expect_code(&out, 0, "node restore");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("serving again"), "{stdout}");
    // It waited for the API server stand-in's /readyz to say 200, and reports each wait.
    assert!(
        kubelet.apiserver.ready.load(Ordering::SeqCst) >= 1,
        "nobody asked the API server for /readyz\n{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "API server: /readyz on 127.0.0.1:{} answered 200",
            n.apiserver_port
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("etcd serving ")
            && stdout.contains("API server ready ")
            && stdout.contains("control plane stopped "),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("etcd serving after "), "{}", text(&out.stderr));
    assert_eq!(kubelet.starts(), 2, "etcd was stopped and started once");
    wait_serving(&n.endpoint);
    assert_eq!(get(&n.endpoint, "/registry/configmaps/default/keep").as_deref(), Some("v1"));
    assert_eq!(get(&n.endpoint, "/registry/configmaps/default/after"), None);
    assert_eq!(
        revision(&n.endpoint),
        snap_revision,
        "the restored etcd is at the snapshot's revision"
    );
    for m in ["etcd.yaml", "kube-apiserver.yaml", "kube-scheduler.yaml"] {
        assert!(n.kubernetes.join("manifests").join(m).exists(), "{m} was not put back");
    }
    assert!(
        aside_dirs(&n.kubernetes, "manifests.etcdguard-").is_empty(),
        "the parked manifests dir is left over"
    );
    let old = aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-");
    assert_eq!(old.len(), 1, "the old data dir is kept beside the new one");
    assert!(old[0].join("member/snap/db").exists());
    drop(kubelet);
}

#[test]
fn node_restore_gives_the_node_back_when_a_pod_does_not_stop() {
    let n = node();
    let kubelet = Kubelet::start_with(n.kubernetes.join("manifests"), n.root.clone(), false);
    wait_serving(&n.endpoint);
    let snap = n.root.join("snapshot.db");
    assert!(etcdctl(&n.endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    assert!(etcdctl(&n.endpoint, &["put", "/registry/pods/default/later", "y"]).status.success());

    // Something keeps the API server's port open (as a container the kubelet failed to stop).
    let _stuck = std::net::TcpListener::bind(("127.0.0.1", n.apiserver_port)).unwrap();
    let out = etcdguard()
        .args([
            "node",
            "restore",
            snap.to_str().unwrap(),
            "--kubernetes-dir",
            n.kubernetes.to_str().unwrap(),
            "--wait-timeout",
            "3s",
        ])
        .output()
        .unwrap();
    expect_code(&out, 11, "node restore with a pod that does not stop");
    assert!(
        text(&out.stderr).contains("kube-apiserver") && text(&out.stderr).contains("put back"),
        "{}",
        text(&out.stderr)
    );
    // Everything is as it was: manifests back, etcd started again on the untouched data.
    assert!(
        n.kubernetes.join("manifests/etcd.yaml").exists()
            && n.kubernetes.join("manifests/kube-apiserver.yaml").exists()
    );
    assert!(
        aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-").is_empty(),
        "the data dir was moved"
    );
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
    std::fs::set_permissions(pki.join("etcd/ca.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["put", "/registry/secrets/kube-system/bootstrap", "s1"])
        .status
        .success());
    let repo = n.root.join("backups");
    let repo_s = repo.to_str().unwrap();
    let out = etcdguard()
        .args([
            "backup",
            "create",
            "--repo",
            repo_s,
            "--endpoints",
            &n.endpoint,
            "--pki-dir",
            pki.to_str().unwrap(),
        ])
        .env_remove("ETCDGUARD_REPO")
        .output()
        .unwrap();
    expect_code(&out, 0, "backup create");
    let backed_up_revision = revision(&n.endpoint);
    // The node loses its data and its PKI is replaced by something else.
    assert!(etcdctl(&n.endpoint, &["del", "/registry/secrets/kube-system/bootstrap"])
        .status
        .success());
    std::fs::write(pki.join("ca.crt"), "a wrong CA\n").unwrap();
    std::fs::remove_file(pki.join("etcd/ca.key")).unwrap();

    let kdir = n.kubernetes.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut c = etcdguard();
        c.env_remove("ETCDGUARD_REPO")
            .args([
                "node",
                "restore",
                "--backup",
                "latest",
                "--repo",
                repo_s,
                "--kubernetes-dir",
                kdir,
                "--wait-timeout",
                "60s",
            ])
            .args(extra);
        c.output().unwrap()
    };
    let out = restore(&["--restore-pki", "--dry-run"]);
    expect_code(&out, 0, "node restore --backup --restore-pki --dry-run");
    assert!(
        text(&out.stdout).contains("put the backup's PKI files in place"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        "a wrong CA\n",
        "the dry run changed the PKI"
    );
    assert!(
        aside_dirs(&n.kubernetes, ".etcdguard-restore-").is_empty(),
        "the dry run left its download behind"
    );

    let out = restore(&["--restore-pki"]);
    expect_code(&out, 0, "node restore --backup --restore-pki");
    wait_serving(&n.endpoint);
    assert_eq!(get(&n.endpoint, "/registry/secrets/kube-system/bootstrap").as_deref(), Some("s1"));
    assert_eq!(revision(&n.endpoint), backed_up_revision);
    assert_eq!(std::fs::read_to_string(pki.join("ca.crt")).unwrap(), "the cluster CA\n");
    assert_eq!(std::fs::read_to_string(pki.join("etcd/ca.key")).unwrap(), "etcd CA key\n");
    assert_eq!(
        std::fs::metadata(pki.join("etcd/ca.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let old_pki = aside_dirs(&n.kubernetes, "pki.etcdguard-");
    assert_eq!(old_pki.len(), 1);
    assert_eq!(
        std::fs::read_to_string(old_pki[0].join("ca.crt")).unwrap(),
        "a wrong CA\n",
        "the replaced PKI is kept"
    );
    assert!(
        aside_dirs(&n.kubernetes, ".etcdguard-restore-").is_empty(),
        "the downloaded backup (with CA keys) was left behind"
    );

    // --restore-pki needs a backup.
    let out = etcdguard()
        .args(["node", "restore", "x.db", "--kubernetes-dir", kdir, "--restore-pki"])
        .output()
        .unwrap();
    expect_code(&out, 2, "--restore-pki without --backup");
    drop(kubelet);
}

/// An OpenShift-shaped node: etcd-pod.yaml whose etcd container is a `/bin/sh -c` script
/// ending in `exec nice … ionice … etcd \` (the member name a variable from the pod's env,
/// the data dir from ETCD_DATA_DIR on a hostPath mounted at another path), a release image
/// by digest, static-pod-resources volumes, an etcdctl sidecar; and kube-apiserver-pod.yaml
/// running `hyperkube kube-apiserver` behind a wrapper in a `bash -ec` script.
struct OpenShiftNode {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubernetes: PathBuf,
    manifests: PathBuf,
    data: PathBuf,
    endpoint: String,
    peer: u16,
    apiserver_port: u16,
}

fn openshift_node() -> OpenShiftNode {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let kubernetes = root.join("etc/kubernetes");
    let manifests = kubernetes.join("manifests");
    let resources = kubernetes.join("static-pod-resources");
    for d in
        [manifests.clone(), resources.join("etcd-pod-3/configmaps"), resources.join("etcd-certs")]
    {
        std::fs::create_dir_all(d).unwrap();
    }
    let data = root.join("var/lib/etcd");
    let (client, peer, apiserver_port) = (free_port(), free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let image = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:5c1f6c6d0e1b1f0e1a3f0f2b4c1d7e9a8b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
    let etcd_pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: openshift-etcd
  labels: {{app: etcd, etcd: "true"}}
spec:
  containers:
  - name: etcdctl
    image: {image}
    command: [/bin/bash, -c, "trap TERM INT; sleep infinity & wait"]
  - name: etcd
    image: {image}
    command:
    - /bin/sh
    - -c
    - |
      #!/bin/sh
      set -eu
      # the operator's revisioned resources must be in place
      [ -d /etc/kubernetes/static-pod-resources/configmaps ] || exit 3
      exec nice -n -5 ionice -c2 -n0 etcd \
        --logger=zap --log-level="warn" \
        --initial-advertise-peer-urls=http://127.0.0.1:{peer} \
        --listen-client-urls={endpoint} \
        --advertise-client-urls='{endpoint}' \
        --listen-peer-urls=http://127.0.0.1:{peer} \
        --name "${{NODE_ETCD_NAME}}" \
        --initial-cluster="${{NODE_ETCD_NAME}}=http://127.0.0.1:{peer}"
    env:
    - name: ETCD_DATA_DIR
      value: /var/lib/etcd-data
    - name: NODE_ETCD_NAME
      value: cp1
    - name: NODE_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    volumeMounts:
    - {{mountPath: /etc/kubernetes/static-pod-resources, name: resource-dir}}
    - {{mountPath: /etc/kubernetes/static-pod-certs, name: cert-dir}}
    - {{mountPath: /var/lib/etcd-data/, name: data-dir}}
  hostNetwork: true
  priorityClassName: system-node-critical
  volumes:
  - {{hostPath: {{path: {res}/etcd-pod-3}}, name: resource-dir}}
  - {{hostPath: {{path: {res}/etcd-certs}}, name: cert-dir}}
  - {{hostPath: {{path: {data}}}, name: data-dir}}
"#,
        res = resources.display(),
        data = data.display()
    );
    std::fs::write(manifests.join("etcd-pod.yaml"), etcd_pod).unwrap();
    let apiserver_pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: kube-apiserver, namespace: openshift-kube-apiserver}}
spec:
  containers:
  - name: kube-apiserver
    image: {image}
    command: ["/bin/bash", "-ec"]
    args:
    - |
      echo "waiting for port 6443 to be released"
      exec watch-termination --termination-touch-file=/var/log/kube-apiserver/.terminating -- hyperkube kube-apiserver --openshift-config=/etc/kubernetes/static-pod-resources/configmaps/config/config.yaml --etcd-servers={endpoint} --secure-port={apiserver_port}
    volumeMounts:
    - {{mountPath: /etc/kubernetes/static-pod-resources, name: resource-dir}}
  volumes:
  - {{hostPath: {{path: {res}/kube-apiserver-pod-4}}, name: resource-dir}}
"#,
        res = resources.display()
    );
    // Its flags in the --openshift-config file; no encryption configured.
    let config = resources.join("kube-apiserver-pod-4/configmaps/config/config.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "apiVersion: kubecontrolplane.config.openshift.io/v1\nkind: KubeAPIServerConfig\napiServerArguments:\n  storage-backend: [etcd3]\n").unwrap();
    std::fs::write(manifests.join("kube-apiserver-pod.yaml"), apiserver_pod).unwrap();
    std::fs::write(manifests.join("kube-scheduler-pod.yaml"), "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [hyperkube, kube-scheduler]\n    name: kube-scheduler\n").unwrap();
    OpenShiftNode { _dir: dir, root, kubernetes, manifests, data, endpoint, peer, apiserver_port }
}

#[test]
fn openshift_layout_park_restore_unpark() {
    let n = openshift_node();
    let kubelet = Kubelet::start(n.manifests.clone(), n.root.clone());
    wait_serving(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["put", "/kubernetes.io/configmaps/openshift-etcd/keep", "v1"])
        .status
        .success());
    let snap = n.root.join("snapshot.db");
    assert!(etcdctl(&n.endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    let snap_revision = revision(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["del", "/kubernetes.io/configmaps/openshift-etcd/keep"])
        .status
        .success());
    let mdir = n.manifests.to_str().unwrap();
    let park = |extra: &[&str]| {
        etcdguard()
            .args(["node", "park", "--manifests-dir", mdir, "--timeout", "60s"])
            .args(extra)
            .output()
            .unwrap()
    };

    // Park: etcd and the API server stop; the scheduler's manifest stays.
    let out = park(&["--dry-run"]);
    expect_code(&out, 0, "node park --dry-run");
    assert!(
        text(&out.stdout).contains("etcd-pod.yaml and kube-apiserver-pod.yaml"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        n.manifests.join("etcd-pod.yaml").exists()
            && etcdctl(&n.endpoint, &["endpoint", "health"]).status.success()
    );
    let out = park(&[]);
    expect_code(&out, 0, "node park");
    assert!(text(&out.stdout).contains("Parked"), "{}", text(&out.stdout));
    assert!(
        !etcdguard_testkit_port_open(&n.endpoint)
            && !etcdguard_testkit_port_open(&format!("https://127.0.0.1:{}", n.apiserver_port))
    );
    assert!(
        !n.manifests.join("etcd-pod.yaml").exists()
            && !n.manifests.join("kube-apiserver-pod.yaml").exists()
    );
    assert!(n.manifests.join("kube-scheduler-pod.yaml").exists());
    let out = park(&[]);
    expect_code(&out, 0, "node park, again");
    assert!(text(&out.stdout).contains("already parked"), "{}", text(&out.stdout));
    assert_eq!(aside_dirs(&n.kubernetes, "manifests.etcdguard-").len(), 1);

    // Restore on the parked node: the member name and --initial-cluster are shell variables,
    // filled in from the container's env.
    let kdir = n.kubernetes.to_str().unwrap();
    let restore = |extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--kubernetes-dir",
                kdir,
                "--wait-timeout",
                "60s",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = restore(&["--dry-run"]);
    expect_code(&out, 0, "node restore --dry-run, the name a variable of the env");
    let cluster = format!("cp1=http://127.0.0.1:{}", n.peer);
    assert!(
        text(&out.stdout).contains(&format!("as member \"cp1\" of --initial-cluster {cluster} ")),
        "{}",
        text(&out.stdout)
    );
    let out = restore(&[]);
    expect_code(&out, 0, "node restore on an OpenShift-shaped, parked node");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("warning: cannot tell which etcd the image"),
        "a digest image gives a warning\n{stderr}"
    );
    assert!(
        stdout.contains("already parked") && stdout.contains(&n.data.display().to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains("/readyz on 127.0.0.1:")
            && kubelet.apiserver.ready.load(Ordering::SeqCst) >= 1,
        "{stdout}"
    );
    wait_serving(&n.endpoint);
    assert_eq!(
        get(&n.endpoint, "/kubernetes.io/configmaps/openshift-etcd/keep").as_deref(),
        Some("v1")
    );
    assert_eq!(revision(&n.endpoint), snap_revision);
    assert!(
        n.manifests.join("etcd-pod.yaml").exists()
            && n.manifests.join("kube-apiserver-pod.yaml").exists()
    );
    assert!(aside_dirs(&n.kubernetes, "manifests.etcdguard-").is_empty());
    assert_eq!(
        aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-").len(),
        1,
        "the old data dir is kept"
    );

    // Nothing parked any more.
    let out = etcdguard().args(["node", "unpark", "--manifests-dir", mdir]).output().unwrap();
    expect_code(&out, 0, "node unpark with nothing parked");
    assert!(text(&out.stdout).contains("Nothing is parked"), "{}", text(&out.stdout));
    drop(kubelet);
}

#[test]
fn park_then_unpark_brings_etcd_and_the_apiserver_back() {
    let n = node();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    assert!(etcdctl(&n.endpoint, &["put", "/registry/pods/default/p", "1"]).status.success());
    let mdir = n.kubernetes.join("manifests");
    let out = etcdguard()
        .args(["node", "park", "--manifests-dir", mdir.to_str().unwrap(), "--timeout", "60s"])
        .output()
        .unwrap();
    expect_code(&out, 0, "node park");
    assert!(!etcdguard_testkit_port_open(&n.endpoint));
    let before = kubelet.apiserver.ready.load(Ordering::SeqCst);
    let out = etcdguard()
        .args(["node", "unpark", "--manifests-dir", mdir.to_str().unwrap(), "--timeout", "60s"])
        .output()
        .unwrap();
    expect_code(&out, 0, "node unpark");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Unparked") && stdout.contains("API server: /readyz"), "{stdout}");
    assert!(kubelet.apiserver.ready.load(Ordering::SeqCst) > before);
    assert_eq!(
        get(&n.endpoint, "/registry/pods/default/p").as_deref(),
        Some("1"),
        "the data dir was not touched"
    );
    assert_eq!(kubelet.starts(), 2);
    drop(kubelet);
}

fn etcdguard_testkit_port_open(url: &str) -> bool {
    let addr = url.split_once("://").map_or(url, |(_, r)| r);
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)).is_ok()
}

/// GKE on-prem's shape: etcd runs as uid 2001 (the pod's runAsUser), the flags in `args:`
/// with `--flag value` spelling, a `v`-prefixed image tag.
#[test]
fn node_restore_keeps_a_uid_2001_data_dir_owned_by_2001() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let have_user =
        Command::new("getent").args(["passwd", "2001"]).output().is_ok_and(|o| o.status.success())
            || Command::new("useradd")
                .args(["-u", "2001", "-M", "-N", "-s", "/usr/sbin/nologin", "etcdguard-test-2001"])
                .status()
                .is_ok_and(|s| s.success());
    if !have_user {
        eprintln!("SKIPPED: uid 2001 does not exist and `useradd -u 2001` failed (not root?)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap(); // uid 2001 must reach its data dir
    let kubernetes = root.join("etc/kubernetes");
    let manifests = kubernetes.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let data = root.join("opt/data/var/lib/etcd");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(2001), Some(2001)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let manifest = |image: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: etcd, namespace: kube-system}}
spec:
  securityContext: {{runAsUser: 2001, runAsGroup: 2001, fsGroup: 2001}}
  containers:
  - name: etcd
    image: {image}
    command: [/usr/local/bin/etcd]
    args:
    - --name
    - admin-cp-1
    - --data-dir
    - /var/lib/etcd
    - --listen-client-urls
    - {endpoint}
    - --advertise-client-urls
    - {endpoint}
    - --listen-peer-urls
    - http://127.0.0.1:{peer}
    - --initial-advertise-peer-urls
    - http://127.0.0.1:{peer}
    - --initial-cluster
    - admin-cp-1=http://127.0.0.1:{peer}
    volumeMounts:
    - {{mountPath: /var/lib/etcd, name: data}}
  hostNetwork: true
  volumes:
  - {{hostPath: {{path: {}, type: DirectoryOrCreate}}, name: data}}
"#,
            data.display()
        )
    };
    std::fs::write(
        manifests.join("etcd.yaml"),
        manifest("gcr.io/gke-on-prem-release/etcd:v3.4.13-1-gke.3"),
    )
    .unwrap();
    let kubelet = Kubelet::start(manifests.clone(), root.clone());
    wait_serving(&endpoint);
    assert_eq!(
        std::fs::metadata(data.join("member/snap/db")).unwrap().uid(),
        2001,
        "the stand-in runs etcd as 2001"
    );
    assert!(etcdctl(&endpoint, &["put", "/registry/secrets/kube-system/k", "v"]).status.success());
    let snap = root.join("snapshot.db");
    assert!(etcdctl(&endpoint, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    let kdir = kubernetes.to_str().unwrap();
    let restore = |extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--kubernetes-dir",
                kdir,
                "--wait-timeout",
                "60s",
            ])
            .args(extra)
            .output()
            .unwrap()
    };

    // The manifest says etcd 3.4; the snapshot comes from 3.5: refused before anything moves.
    let out = restore(&[]);
    expect_code(&out, 2, "node restore of a 3.5 snapshot onto a 3.4 image");
    assert!(
        text(&out.stderr).contains("cluster version 3.5") && text(&out.stderr).contains("etcd 3.4"),
        "{}",
        text(&out.stderr)
    );
    assert!(manifests.join("etcd.yaml").exists() && kubelet.starts() == 1);

    std::fs::write(
        manifests.join("etcd.yaml"),
        manifest("gcr.io/gke-on-prem-release/etcd:v3.5.1-0-gke.0"),
    )
    .unwrap();
    let out = restore(&["--dry-run"]);
    expect_code(&out, 0, "node restore --dry-run");
    assert!(text(&out.stdout).contains("owner 2001:2001, mode 0700"), "{}", text(&out.stdout));
    let out = restore(&[]);
    expect_code(&out, 0, "node restore of a uid-2001 data dir");
    wait_serving(&endpoint);
    assert_eq!(get(&endpoint, "/registry/secrets/kube-system/k").as_deref(), Some("v"));
    let m = std::fs::metadata(&data).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (2001, 2001, 0o700));
    let mut stack = vec![data.clone()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (2001, 2001), "{}", p.display());
        seen += 1;
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen >= 5, "the restored tree has its dirs, db, WAL and snap files");
    assert_eq!(kubelet.starts(), 2);
    drop(kubelet);
}

/// A snapshot whose Secret is encrypted with key `gcm-key` (PyPI `cryptography`, via
/// make_vectors.py) is refused while the node's API server configuration lacks that key, before
/// the control plane is touched; with the key configured (or --force) the plan goes on.
#[test]
fn node_restore_refuses_a_snapshot_whose_encryption_keys_the_node_lacks() {
    use base64::Engine;
    let n = node();
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    let kube_tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/tests");
    let vectors = n.root.join("vectors");
    let made = Command::new("python3")
        .arg(kube_tests.join("encryption_vectors/make_vectors.py"))
        .arg(kube_tests.join("fixtures"))
        .arg(&vectors)
        .output()
        .unwrap();
    assert!(made.status.success(), "make_vectors.py: {}", text(&made.stderr));
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(vectors.join("vectors.json")).unwrap()).unwrap();
    let c = cases.iter().find(|c| c["name"] == "aesgcm gcm-key secret").unwrap();
    let other = etcdguard_testkit::EtcdServer::start(EtcdVersion::V3_5);
    other.put(
        c["etcdKey"].as_str().unwrap().as_bytes(),
        &base64::engine::general_purpose::STANDARD.decode(c["value"].as_str().unwrap()).unwrap(),
    );
    let snap = n.root.join("encrypted.db");
    other.snapshot_save(&snap);
    drop(other);
    let kdir = n.kubernetes.to_str().unwrap();
    let restore = |extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--kubernetes-dir",
                kdir,
                "--wait-timeout",
                "60s",
            ])
            .args(extra)
            .output()
            .unwrap()
    };

    // The API server manifest sets no --encryption-provider-config: refused, nothing touched.
    let out = restore(&[]);
    expect_code(&out, 17, "node restore without the encryption key");
    let err = text(&out.stderr);
    assert!(
        err.contains("refused by safety check")
            && err.contains("aesgcm:gcm-key")
            && err.contains("kube-apiserver.yaml"),
        "{err}"
    );
    assert_eq!(kubelet.starts(), 1, "the control plane was stopped");
    assert!(n.kubernetes.join("manifests/etcd.yaml").exists());
    assert!(
        aside_dirs(&n.root.join("var/lib"), "etcd.etcdguard-").is_empty(),
        "the data dir was moved"
    );

    // The API server's configuration (through its hostPath volume) holds the key: the check passes.
    let apiserver =
        std::fs::read_to_string(n.kubernetes.join("manifests/kube-apiserver.yaml")).unwrap();
    let with_config = apiserver.replace("    name: kube-apiserver\n", "    - --encryption-provider-config=/etc/kubernetes/enc/config.yaml\n    name: kube-apiserver\n    volumeMounts:\n    - {name: enc, mountPath: /etc/kubernetes/enc}\n")
        + &format!("  volumes:\n  - name: enc\n    hostPath: {{path: {}}}\n", vectors.display());
    std::fs::write(n.kubernetes.join("manifests/kube-apiserver.yaml"), with_config).unwrap();
    let out = restore(&["--dry-run"]);
    expect_code(&out, 0, "node restore --dry-run with the key configured");
    assert!(
        text(&out.stderr).contains("encryption keys checked: aesgcm:gcm-key"),
        "{}",
        text(&out.stderr)
    );
    // --encryption-config names another file, without the key: refused; --force goes on.
    let missing = n.root.join("missing.yaml");
    std::fs::write(&missing, "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n").unwrap();
    let out = restore(&["--dry-run", "--encryption-config", missing.to_str().unwrap()]);
    expect_code(&out, 17, "node restore --encryption-config without the key");
    let out = restore(&["--dry-run", "--encryption-config", missing.to_str().unwrap(), "--force"]);
    expect_code(&out, 0, "node restore --force");
    assert!(text(&out.stderr).contains("warning: --force"), "{}", text(&out.stderr));
    assert_eq!(kubelet.starts(), 1);
    drop(kubelet);
}

/// On nodes whose manifest runs etcd 3.6 and 3.7, `node restore` brings etcd back at the
/// snapshot (its membership now only in the db); a 3.7 snapshot is refused on the 3.6 node
/// before anything is stopped (etcd 3.6 would not start on it).
#[test]
fn node_restore_on_etcd_3_6_and_3_7_nodes() {
    let kept = tempfile::tempdir().unwrap();
    let mut snapshots = Vec::new();
    for (version, image) in [
        (EtcdVersion::V3_6, "registry.k8s.io/etcd:3.6.17-0"),
        (EtcdVersion::V3_7, "registry.k8s.io/etcd:3.7.4-0"),
    ] {
        let n = node_with_image(image);
        let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
        wait_serving(&n.endpoint);
        let served = etcdctl(&n.endpoint, &["endpoint", "status", "-w", "json"]);
        assert!(
            text(&served.stdout).contains(&format!("\"version\":\"{}.", version.label())),
            "{}",
            text(&served.stdout)
        );
        assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/keep", "v1"])
            .status
            .success());
        let snap = n.root.join("snapshot.db");
        let out = etcdguard()
            .args(["snapshot", "save", snap.to_str().unwrap(), "--endpoints", &n.endpoint])
            .output()
            .unwrap();
        expect_code(&out, 0, "snapshot save");
        let snap_revision = revision(&n.endpoint);
        assert!(etcdctl(&n.endpoint, &["put", "/registry/configmaps/default/after", "x"])
            .status
            .success());
        let kdir = n.kubernetes.to_str().unwrap();
        let out = etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--kubernetes-dir",
                kdir,
                "--wait-timeout",
                "60s",
            ])
            .output()
            .unwrap();
        expect_code(&out, 0, &format!("node restore on a {} node", version.label()));
        wait_serving(&n.endpoint);
        assert_eq!(get(&n.endpoint, "/registry/configmaps/default/keep").as_deref(), Some("v1"));
        assert_eq!(get(&n.endpoint, "/registry/configmaps/default/after"), None);
        assert_eq!(revision(&n.endpoint), snap_revision);
        let copy = kept.path().join(format!("{}.db", version.label()));
        std::fs::copy(&snap, &copy).unwrap();
        snapshots.push((version, copy));
        drop(kubelet);
    }

    // The 3.7 snapshot on a 3.6 node: refused, the control plane left running.
    let n = node_with_image("registry.k8s.io/etcd:3.6.17-0");
    let kubelet = Kubelet::start(n.kubernetes.join("manifests"), n.root.clone());
    wait_serving(&n.endpoint);
    let newer = &snapshots.iter().find(|(v, _)| *v == EtcdVersion::V3_7).unwrap().1;
    let out = etcdguard()
        .args([
            "node",
            "restore",
            newer.to_str().unwrap(),
            "--kubernetes-dir",
            n.kubernetes.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("storage version 3.7.0") && stderr.contains("etcd 3.6"), "{stderr}");
    assert_eq!(kubelet.starts(), 1, "the control plane was stopped for a snapshot it cannot run");
    drop(kubelet);
}
