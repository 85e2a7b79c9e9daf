//! OpenShift's etcd-pod.yaml, as cluster-etcd-operator renders it release by release (see
//! tests/data/openshift-etcd-releases.yaml and openshift_support): etcdguard reads the
//! member name the script exports, the peer URL built from the node's env variables and the
//! data dir from ETCD_DATA_DIR, refuses a plain restore because the pod computes its initial
//! cluster when it starts, and recovers a three-node cluster that lost quorum (park all,
//! `node restore --new-cluster`, `node join` twice) and replaces a member, with real etcd
//! over TLS run by the kubelet stand-in from the rendered manifests. The encryption check
//! finds the EncryptionConfiguration through the API server's --openshift-config file.
//!
//! One full flow per distinct etcd container (4.15, 4.17, 4.19, 4.20, 4.21, 5.1); 4.16 and
//! 4.22 differ from a neighbour only in what etcdguard does not read (container ports,
//! ETCDCTL_API) and are checked by reading their renderings.

mod kubelet_support;
mod live_support;
mod openshift_support;

use std::time::{Duration, Instant};

use live_support::{etcdguard, expect_code, text};
use openshift_support::*;

fn all_out(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

fn flow(release_name: &str, subnet: u8) {
    let started = Instant::now();
    let rel = release(release_name);
    let c = OsCluster::start(&rel, subnet, 40);
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let ep0 = n0.client.clone();
    assert!(c
        .etcdctl(&ep0, &["put", "/kubernetes.io/configmaps/openshift-etcd/before-the-loss", "x"])
        .status
        .success());

    // A snapshot holding a value encrypted with a key the API server's configuration (found
    // through its --openshift-config file) does not have: refused, naming that file.
    let bad_key = "/kubernetes.io/secrets/openshift-etcd/encrypted";
    assert!(c
        .etcdctl(&ep0, &["put", bad_key, "k8s:enc:aescbc:v1:key1:0123456789abcdef0123456789abcdef"])
        .status
        .success());
    let bad_snap = c.tmp.path().join("with-foreign-key.db");
    assert!(c.etcdctl(&ep0, &["snapshot", "save", bad_snap.to_str().unwrap()]).status.success());
    assert!(c.etcdctl(&ep0, &["del", bad_key]).status.success());
    let snap = c.tmp.path().join("snapshot.db");
    assert!(c.etcdctl(&ep0, &["snapshot", "save", snap.to_str().unwrap()]).status.success());
    let want = c.dump(&ep0);
    assert_eq!(want.len(), 41);

    let restore = |n: &OsNode, s: &std::path::Path, extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                s.to_str().unwrap(),
                "--kubernetes-dir",
                n.kdir(),
                "--wait-timeout",
                "120s",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // The pod computes its initial cluster when it starts: a plain restore must be told.
    let out = restore(n0, &snap, &["--dry-run"]);
    expect_code(&out, 2, "restore without --new-cluster or --initial-cluster");
    assert!(
        text(&out.stderr).contains("$(discover-etcd-initial-cluster …)")
            && text(&out.stderr).contains("--new-cluster"),
        "{}",
        text(&out.stderr)
    );

    let park = |n: &OsNode, extra: &[&str]| {
        etcdguard()
            .args(["node", "park", "--manifests-dir", n.mdir(), "--timeout", "90s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = park(n0, &["--dry-run"]);
    expect_code(&out, 0, "park --dry-run");
    let plan = text(&out.stdout);
    assert!(
        plan.contains("etcd-pod.yaml and kube-apiserver-pod.yaml")
            && plan.contains(&format!("127.0.{subnet}.1:2379")),
        "{plan}"
    );
    assert!(plan.contains(&n0.data.join("member/snap/db").display().to_string()), "{plan}");

    // Quorum loss: the three nodes parked, then one restored as a new cluster.
    for n in &c.nodes {
        expect_code(&park(n, &[]), 0, &format!("park {}", n.spec.name));
    }
    let out = restore(n0, &bad_snap, &["--new-cluster", "--dry-run"]);
    expect_code(&out, 17, "a snapshot with a key the API server does not have");
    let why = text(&out.stderr);
    assert!(
        why.contains("key1")
            && why.contains(&n0.encryption_config.display().to_string())
            && why.contains("kube-apiserver-pod.yaml"),
        "{why}"
    );
    let out = restore(n0, &snap, &["--new-cluster"]);
    expect_code(&out, 0, "restore --new-cluster");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("restoring member \"master-0\"")
            && stdout.contains(&format!("master-0={}", n0.peer)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("master-1 peer URL {} (from the snapshot): no answer", n1.peer)),
        "{stdout}"
    );

    let join = |n: &OsNode, extra: &[&str]| {
        etcdguard()
            .args(["node", "join", "--manifests-dir", n.mdir(), "--wait-timeout", "120s"])
            .args(c.tls_args(&ep0))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = join(n1, &["--dry-run"]);
    expect_code(&out, 0, "join --dry-run");
    assert!(
        text(&out.stdout).contains("add master-1")
            && text(&out.stdout).contains("computes its initial cluster"),
        "{}",
        text(&out.stdout)
    );
    for n in [n1, n2] {
        let out = join(n, &[]);
        expect_code(&out, 0, &format!("join {}\n{}", n.spec.name, c.logs()));
        assert!(text(&out.stdout).contains("a learner, then promoted"), "{}", all_out(&out));
    }
    let names = |c: &OsCluster| c.members(&ep0).into_iter().map(|m| (m.0, m.2)).collect::<Vec<_>>();
    let three = vec![
        ("master-0".to_string(), false),
        ("master-1".to_string(), false),
        ("master-2".to_string(), false),
    ];
    assert_eq!(names(&c), three);
    for n in &c.nodes {
        assert!(c.dump(&n.client) == want, "{} serves other data than the snapshot", n.spec.name);
    }
    // The manifest was left as the operator wrote it: the pod computed its initial cluster.
    assert_eq!(
        std::fs::read_to_string(n1.manifest()).unwrap(),
        render(&rel, &specs(&c), &n1.spec, &n1.spec.ip, &n1.root)
    );

    // A join that would reuse master-2 under another name is refused, naming both.
    let out = join(n2, &["--dry-run", "--name", "master-2-new"]);
    expect_code(&out, 17, "join --name of another member with the same peer URL");
    assert!(
        text(&out.stderr).contains("master-2 (") && text(&out.stderr).contains("master-2-new"),
        "{}",
        text(&out.stderr)
    );

    // Member replacement: master-2 loses its data, is removed, joins again.
    expect_code(&park(n2, &[]), 0, "park master-2");
    std::fs::remove_dir_all(&n2.data).unwrap();
    let id = c.members(&ep0).into_iter().find(|m| m.0 == "master-2").unwrap().1;
    let out = etcdguard()
        .args(["cluster", "member", "remove", &id])
        .args(c.tls_args(&ep0))
        .output()
        .unwrap();
    expect_code(&out, 0, "member remove master-2");
    let out = join(n2, &[]);
    expect_code(&out, 0, "join master-2 again");
    assert_eq!(names(&c), three);
    wait_until(Duration::from_secs(60), "master-2 healthy", || c.healthy(&n2.client));
    assert!(c.dump(&n2.client) == want, "the replaced member serves other data");
    println!(
        "OpenShift {release_name} (etcd {}): recovery and replacement in {:.1} s",
        rel.etcd,
        started.elapsed().as_secs_f64()
    );
    drop(c);
}

fn specs(c: &OsCluster) -> Vec<NodeSpec> {
    c.nodes.iter().map(|n| n.spec.clone()).collect()
}

#[test]
fn openshift_4_15() {
    flow("4.15", 41);
}

#[test]
fn openshift_4_17() {
    flow("4.17", 42);
}

#[test]
fn openshift_4_19() {
    flow("4.19", 43);
}

#[test]
fn openshift_4_20() {
    flow("4.20", 44);
}

#[test]
fn openshift_4_21() {
    flow("4.21", 45);
}

#[test]
fn openshift_5_1() {
    flow("5.1", 46);
}

/// Every release's rendering, read without running it: what `node park --dry-run` and
/// `node restore --new-cluster --dry-run` plan, on one node, for the three members' names and
/// addresses (no etcd runs; the snapshot comes from a throwaway member).
#[test]
fn every_rendering_reads_as_the_pod_will_run() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("s.db");
    {
        let s =
            etcdguard_testkit::EtcdServer::builder(etcdguard_testkit::EtcdVersion::V3_5).start();
        s.put(b"/kubernetes.io/x", b"y");
        s.snapshot_save(&snap);
    }
    let all = releases();
    assert_eq!(all.len(), 8);
    for rel in &all {
        let nodes: Vec<NodeSpec> = (0..3)
            .map(|i| NodeSpec {
                name: format!("master-{i}.example.com"),
                ip: format!("10.0.7.{}", i + 1),
            })
            .collect();
        let root = tmp.path().join(&rel.release);
        let kubernetes = root.join("etc/kubernetes");
        std::fs::create_dir_all(kubernetes.join("manifests")).unwrap();
        std::fs::write(
            kubernetes.join("manifests/etcd-pod.yaml"),
            render(rel, &nodes, &nodes[1], "0.0.0.0", &root),
        )
        .unwrap();
        let out = etcdguard()
            .args([
                "node",
                "park",
                "--dry-run",
                "--manifests-dir",
                kubernetes.join("manifests").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        expect_code(&out, 0, &format!("{} park --dry-run", rel.release));
        assert!(
            text(&out.stdout).contains("127.0.0.1:2379"),
            "{}: {}",
            rel.release,
            text(&out.stdout)
        );
        let out = etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--new-cluster",
                "--dry-run",
                "--kubernetes-dir",
                kubernetes.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        expect_code(&out, 0, &format!("{} restore --new-cluster --dry-run", rel.release));
        let stdout = text(&out.stdout);
        let data = root.join("var/lib/etcd");
        assert!(
            stdout.contains("restoring member \"master-1.example.com\"")
                && stdout.contains("--initial-cluster master-1.example.com=https://10.0.7.2:2380 ")
                && stdout.contains(&format!("restore the snapshot into {} ", data.display())),
            "{}: {stdout}",
            rel.release
        );
    }

    // A fieldRef value (the peer URL from the node's IP) comes from --node-ip; a bad one is a
    // usage error.
    let rel = release("5.1");
    let nodes: Vec<NodeSpec> = (0..3)
        .map(|i| NodeSpec { name: format!("master-{i}"), ip: format!("10.0.8.{}", i + 1) })
        .collect();
    let root = tmp.path().join("field-ref");
    let kubernetes = root.join("etc/kubernetes");
    std::fs::create_dir_all(kubernetes.join("manifests")).unwrap();
    let manifest = render(&rel, &nodes, &nodes[0], "0.0.0.0", &root)
        .replace("--initial-advertise-peer-urls=https://${NODE_master_0_IP}:2380", "--initial-advertise-peer-urls=https://${HOST_IP}:2380")
        .replace("    - name: \"ALL_ETCD_ENDPOINTS\"", "    - name: HOST_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.hostIP\n    - name: \"ALL_ETCD_ENDPOINTS\"");
    assert!(manifest.contains("${HOST_IP}") && manifest.contains("status.hostIP"));
    std::fs::write(kubernetes.join("manifests/etcd-pod.yaml"), manifest).unwrap();
    let restore = |extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                snap.to_str().unwrap(),
                "--new-cluster",
                "--dry-run",
                "--kubernetes-dir",
                kubernetes.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = restore(&["--node-ip", "10.0.8.77"]);
    expect_code(&out, 0, "restore --dry-run --node-ip");
    assert!(
        text(&out.stdout).contains("--initial-cluster master-0=https://10.0.8.77:2380 "),
        "{}",
        text(&out.stdout)
    );
    expect_code(&restore(&["--node-ip", "not-an-ip"]), 2, "restore --node-ip not-an-ip");
}
