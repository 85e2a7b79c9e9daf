//! Recovering a 3-member control plane with real etcd 3.5.1: three simulated kubeadm nodes on
//! one machine, each a root dir with its own kubernetes/manifests, pki and data dir, its
//! own kubelet stand-in (see kubelet_support), and its etcd on its own loopback address
//! (127.0.0.11–.13). Covered: quorum loss ("restore one, grow back": park all, `node restore
//! --new-cluster` on one, `node join` on the others), the refusals that change nothing, a
//! member replacement with a crash between the learner's add and its promotion.
//!
//! The recovery's wall time is printed (`--nocapture` shows it); the size of the data is
//! `ETCDGUARD_RECOVERY_MB` MiB (default 8).

mod etcdctl_support;
mod kubelet_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use etcdctl_support::*;
use etcdguard_testkit::{free_port, free_port_on, node_host, EtcdVersion};
use kubelet_support::Kubelet;
use live_support::*;

struct SimNode {
    name: String,
    root: PathBuf,
    kubernetes: PathBuf,
    manifests: PathBuf,
    data: PathBuf,
    client: String,
    peer: String,
    kubelet: Option<Kubelet>,
}

impl SimNode {
    fn kdir(&self) -> &str {
        self.kubernetes.to_str().unwrap()
    }
    fn mdir(&self) -> &str {
        self.manifests.to_str().unwrap()
    }
}

/// Three kubeadm-shaped nodes bootstrapping one cluster; the first node's manifest has no
/// --initial-cluster-state (kubeadm's first control-plane node), the others say `new`.
fn start_nodes(root: &Path) -> Vec<SimNode> {
    start_nodes_full(root, "registry.k8s.io/etcd:3.5.1-0", false)
}

/// [`start_nodes`] with another etcd image in the manifests (the kubelet stand-in runs that release).
fn start_nodes_with_image(root: &Path, image: &str) -> Vec<SimNode> {
    start_nodes_full(root, image, false)
}

/// `env_form`: the initial cluster and its state in the container's env
/// (ETCD_INITIAL_CLUSTER, ETCD_INITIAL_CLUSTER_STATE=new) instead of flags.
fn start_nodes_with(root: &Path, env_form: bool) -> Vec<SimNode> {
    start_nodes_full(root, "registry.k8s.io/etcd:3.5.1-0", env_form)
}

fn start_nodes_full(root: &Path, image: &str, env_form: bool) -> Vec<SimNode> {
    let specs: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            let host = node_host(i);
            (
                format!("m{}", i + 1),
                format!("http://{host}:{}", free_port_on(&host)),
                format!("http://{host}:{}", free_port_on(&host)),
            )
        })
        .collect();
    let initial: Vec<String> = specs.iter().map(|(n, _, p)| format!("{n}={p}")).collect();
    let mut nodes = Vec::new();
    for (i, (name, client, peer)) in specs.into_iter().enumerate() {
        let root = root.join(format!("node{}", i + 1));
        let kubernetes = root.join("etc/kubernetes");
        let manifests = kubernetes.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(kubernetes.join("pki/etcd")).unwrap();
        let data = root.join("var/lib/etcd");
        let state = if i == 0 || env_form {
            String::new()
        } else {
            "    - --initial-cluster-state=new\n".into()
        };
        let (cluster_flag, env) = match env_form {
            false => (format!("    - --initial-cluster={}\n", initial.join(",")), String::new()),
            true => (String::new(), format!("    env:\n    - name: ETCD_INITIAL_CLUSTER\n      value: \"{}\"\n    - name: ETCD_INITIAL_CLUSTER_STATE\n      value: new\n", initial.join(","))),
        };
        let etcd_yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - etcd\n    - --advertise-client-urls={client}\n    - --data-dir=/var/lib/etcd\n    - --initial-advertise-peer-urls={peer}\n{cluster_flag}{state}    - --initial-cluster-token=old-cluster\n    - --listen-client-urls={client}\n    - --listen-peer-urls={peer}\n    - --name={name}\n    - --quota-backend-bytes=4294967296\n    image: {image}\n    name: etcd\n{env}    volumeMounts:\n    - mountPath: /var/lib/etcd\n      name: etcd-data\n  hostNetwork: true\n  volumes:\n  - hostPath:\n      path: {}\n      type: DirectoryOrCreate\n    name: etcd-data\n",
            data.display()
        );
        std::fs::write(manifests.join("etcd.yaml"), etcd_yaml).unwrap();
        std::fs::write(
            manifests.join("kube-apiserver.yaml"),
            format!("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --etcd-servers={client}\n    - --secure-port={}\n    name: kube-apiserver\n", free_port()),
        )
        .unwrap();
        std::fs::write(manifests.join("kube-scheduler.yaml"), "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [kube-scheduler]\n    name: kube-scheduler\n").unwrap();
        let kubelet = Some(Kubelet::start(manifests.clone(), root.clone()));
        nodes.push(SimNode { name, root, kubernetes, manifests, data, client, peer, kubelet });
    }
    for n in &nodes {
        wait_until(Duration::from_secs(60), &format!("{} healthy", n.name), || healthy(&n.client));
    }
    nodes
}

/// (name, hex id, is learner, peer URLs) of every member.
fn members(endpoint: &str) -> Vec<(String, String, bool, Vec<String>)> {
    let v = json(endpoint, &["member", "list"]);
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                format!("{:x}", m["ID"].as_u64().unwrap()),
                m["isLearner"].as_bool().unwrap_or(false),
                m["peerURLs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// The end state every recovery must reach: three voting members named m1–m3, one cluster
/// id, equal `endpoint hashkv`, and each member serving exactly `want`.
fn assert_recovered(nodes: &[SimNode], want: &[(String, String)]) -> u64 {
    let all: Vec<&str> = nodes.iter().map(|n| n.client.as_str()).collect();
    let mut ms = members(all[0]);
    ms.sort();
    assert_eq!(
        ms.iter().map(|m| (m.0.as_str(), m.2)).collect::<Vec<_>>(),
        vec![("m1", false), ("m2", false), ("m3", false)],
        "{ms:?}"
    );
    for n in nodes {
        assert!(healthy(&n.client), "{} is not healthy", n.name);
    }
    let ids: Vec<u64> = all.iter().map(|e| cluster_id(e)).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "cluster ids differ: {ids:x?}");
    let hk = json(&all.join(","), &["endpoint", "hashkv"]);
    let hashes: Vec<u64> =
        hk.as_array().unwrap().iter().map(|h| h["HashKV"]["hash"].as_u64().unwrap()).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "hashkv differs: {hashes:?}");
    for n in nodes {
        let got = dump(&n.client);
        assert_eq!(
            got.len(),
            want.len(),
            "{} serves {} keys, the snapshot has {}",
            n.name,
            got.len(),
            want.len()
        );
        assert!(got == want, "{} serves other keys or values than the snapshot holds", n.name);
    }
    ids[0]
}

fn park(n: &SimNode) -> Output {
    etcdguard()
        .args(["node", "park", "--manifests-dir", n.mdir(), "--timeout", "60s"])
        .output()
        .unwrap()
}

fn join(n: &SimNode, endpoint: &str, extra: &[&str]) -> std::process::Command {
    let mut c = etcdguard();
    c.args([
        "node",
        "join",
        "--endpoints",
        endpoint,
        "--manifests-dir",
        n.mdir(),
        "--wait-timeout",
        &wait_timeout(),
    ])
    .args(extra);
    c
}

fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn megabytes() -> usize {
    std::env::var("ETCDGUARD_RECOVERY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
}

#[test]
fn quorum_loss_restore_one_then_join_two() {
    quorum_loss_restore_one_then_join_two_on("registry.k8s.io/etcd:3.5.1-0");
}

/// The same recovery on etcd 3.6 (membership only in the db, no v2 store) and 3.7.
#[test]
fn quorum_loss_restore_one_then_join_two_etcd_3_6_and_3_7() {
    quorum_loss_restore_one_then_join_two_on("registry.k8s.io/etcd:3.6.17-0");
    quorum_loss_restore_one_then_join_two_on("registry.k8s.io/etcd:3.7.4-0");
}

fn quorum_loss_restore_one_then_join_two_on(image: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_nodes_with_image(tmp.path(), image);
    let served = json(&nodes[0].client, &["endpoint", "status"]);
    let tag = image.rsplit(':').next().unwrap();
    assert!(
        tag.starts_with(served[0]["Status"]["version"].as_str().unwrap()),
        "{image} runs {served}"
    );
    let (m1, m2, m3) = (&nodes[0], &nodes[1], &nodes[2]);
    let value_bytes = 4096;
    load(&m1.client, megabytes() * 1024 * 1024 / value_bytes, value_bytes);
    let snap = tmp.path().join("snapshot.db");
    // A later --command-timeout wins over etcdctl()'s 3 s: the benches save up to 1.5 GiB.
    let saved = etcdctl(
        &m1.client,
        &["--command-timeout", "600s", "snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(saved.status.success(), "snapshot save: {}", String::from_utf8_lossy(&saved.stderr));
    let want = dump(&m1.client);
    let old_id = cluster_id(&m1.client);
    assert!(etcdctl(&m1.client, &["put", "/registry/after-the-snapshot", "x"]).status.success());
    let snap_arg = snap.to_str().unwrap();

    // Refused while the old members answer: the probes name them; nothing changes.
    let restore = |extra: &[&str]| {
        etcdguard()
            .args([
                "node",
                "restore",
                snap_arg,
                "--new-cluster",
                "--kubernetes-dir",
                m1.kdir(),
                "--wait-timeout",
                &wait_timeout(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = restore(&["--dry-run"]);
    expect_code(&out, 17, "restore --new-cluster --dry-run while m2 and m3 run");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("m2 peer URL {} (from the manifest): ANSWERS", m2.peer)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("m3 peer URL {} (from the manifest): ANSWERS", m3.peer)),
        "{stdout}"
    );
    let out = restore(&[]);
    expect_code(&out, 17, "restore --new-cluster while m2 and m3 run");
    assert!(text(&out.stderr).contains("node park"), "{}", text(&out.stderr));
    assert!(
        m1.manifests.join("etcd.yaml").exists()
            && entries(&m1.root.join("var/lib"), "etcd.etcdguard-").is_empty()
    );
    assert_eq!(
        m1.kubelet.as_ref().unwrap().starts(),
        1,
        "m1's etcd was stopped by a refused restore"
    );
    assert!(
        healthy(&m1.client)
            && etcdctl(&m1.client, &["get", "/registry/after-the-snapshot"]).status.success()
    );

    // The disaster: m2's and m3's etcd gone with their data; m1 alone has no quorum.
    for n in [m2, m3] {
        expect_code(&park(n), 0, "park (the disaster)");
        std::fs::remove_dir_all(&n.data).unwrap();
    }
    assert!(!healthy(&m1.client), "m1 alone still has quorum");

    // Join against an unreachable endpoint: refused, m2 stays as it was.
    let out = join(m2, "http://127.0.0.11:1", &[]).output().unwrap();
    expect_code(&out, 12, "node join against an unreachable endpoint");
    assert!(text(&out.stderr).contains("nothing was changed"), "{}", text(&out.stderr));
    assert!(
        !m2.manifests.join("etcd.yaml").exists() && !m2.data.exists(),
        "a failed join touched m2"
    );
    assert!(entries(&m2.kubernetes, "etcdguard-manifest-copies").is_empty());

    // The recovery, timed from the first command to three healthy members.
    let started = Instant::now();
    for n in &nodes {
        expect_code(&park(n), 0, "park all");
    }
    let out = restore(&["--dry-run"]);
    expect_code(&out, 0, "restore --new-cluster --dry-run with every old member down");
    assert!(
        text(&out.stdout)
            .contains(&format!("m2 peer URL {} (from the manifest): no answer", m2.peer)),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout)
            .contains(&format!("as member \"m1\" of --initial-cluster m1={} ", m1.peer)),
        "{}",
        text(&out.stdout)
    );
    let out = restore(&[]);
    expect_code(&out, 0, "restore --new-cluster on m1");
    assert!(healthy(&m1.client), "the one-member cluster serves");
    let out = join(m2, &m1.client, &["--dry-run"]).output().unwrap();
    expect_code(&out, 0, "join --dry-run");
    assert!(
        text(&out.stdout).contains("add m2") && text(&out.stdout).contains("as a learner"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(members(&m1.client).len(), 1, "the dry run added a member");
    for n in [m2, m3] {
        let out = join(n, &m1.client, &[]).output().unwrap();
        expect_code(&out, 0, &format!("join {}", n.name));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("a learner, then promoted") && stdout.contains("healthy members"),
            "{stdout}"
        );
    }
    let took = started.elapsed();
    let id = assert_recovered(&nodes, &want);
    assert_ne!(id, old_id, "the restored cluster must have a new id (fresh token)");
    let size = std::fs::metadata(&snap).unwrap().len();
    println!(
        "RECOVERY TIME (etcdguard: park x3, restore --new-cluster, join x2): {:.1} s from the first command to 3 healthy members, snapshot {:.1} MiB, {} keys",
        took.as_secs_f64(),
        size as f64 / 1048576.0,
        want.len()
    );

    // What stays behind: the old data dirs and the manifests' previous versions.
    assert_eq!(entries(&m1.root.join("var/lib"), "etcd.etcdguard-").len(), 1);
    let copies = m2.kubernetes.join("etcdguard-manifest-copies");
    assert_eq!(entries(&copies, "etcd.yaml.").len(), 1);
    let rewritten = std::fs::read_to_string(m2.manifests.join("etcd.yaml")).unwrap();
    assert!(
        rewritten.contains("--initial-cluster-state=existing")
            && rewritten.contains(&format!("m1={}", m1.peer)),
        "{rewritten}"
    );
    for n in &nodes {
        assert!(
            entries(&n.kubernetes, "manifests.etcdguard-").is_empty(),
            "{} is still parked",
            n.name
        );
    }
    // Joining again changes nothing.
    let out = join(m3, &m1.client, &[]).output().unwrap();
    expect_code(&out, 0, "join again");
    assert!(text(&out.stdout).contains("started in the cluster already"), "{}", text(&out.stdout));
    assert_eq!(nodes[2].kubelet.as_ref().unwrap().starts(), 2, "a second join restarted m3's etcd");
    drop(nodes);
}

#[test]
fn member_replacement_survives_a_crash_between_add_and_promote() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_nodes(tmp.path());
    let (m1, m2, m3) = (&nodes[0], &nodes[1], &nodes[2]);
    load(&m1.client, 300, 1024);
    let want = dump(&m1.client);

    // m3 breaks: its etcd stops and its data is lost.
    expect_code(&park(m3), 0, "park m3");
    std::fs::remove_dir_all(&m3.data).unwrap();
    let old = members(&m1.client).into_iter().find(|m| m.0 == "m3").unwrap();
    let both = format!("{},{}", m1.client, m2.client);
    let out = etcdguard()
        .args(["cluster", "member", "remove", &old.1, "--endpoints", &both])
        .output()
        .unwrap();
    expect_code(&out, 0, "member remove m3");
    assert_eq!(members(&m1.client).len(), 2);

    // The join dies right after the learner was added.
    let out =
        join(m3, &m1.client, &[]).env("ETCDGUARD_FAILPOINT", "join-after-add").output().unwrap();
    expect_code(&out, 86, "join with the join-after-add failpoint");
    let ms = members(&m1.client);
    let learner = ms.iter().find(|m| m.3.contains(&m3.peer)).expect("the learner was added");
    assert!(learner.2 && learner.0.is_empty(), "an unstarted learner: {ms:?}");
    assert!(!m3.manifests.join("etcd.yaml").exists(), "m3 was unparked before the crash");

    // Run again: the learner is reused, started, promoted.
    let out = join(m3, &m1.client, &[]).output().unwrap();
    expect_code(&out, 0, "join again after the crash");
    assert!(
        text(&out.stderr).contains(&format!("is member {} already; reusing it", learner.1)),
        "{}",
        text(&out.stderr)
    );
    assert_recovered(&nodes, &want);
    assert_eq!(members(&m1.client).len(), 3);
    drop(nodes);
}

/// The same quorum loss recovered the way the runbooks do it by hand, with etcdutl and
/// etcdctl (scripted here, so it is the tools' time without a person's typing): stop the
/// static pods by moving their manifests, `etcdutl snapshot restore` on m1 as a one-member
/// cluster, then for m2 and m3 `etcdctl member add --learner`, the manifest edited with the
/// printed ETCD_INITIAL_CLUSTER, the pods started, `member promote` retried until etcd takes it.
/// For comparison with `quorum_loss_restore_one_then_join_two`'s time.
#[test]
fn quorum_loss_by_hand_for_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_nodes(tmp.path());
    let (m1, m2, m3) = (&nodes[0], &nodes[1], &nodes[2]);
    let value_bytes = 4096;
    load(&m1.client, megabytes() * 1024 * 1024 / value_bytes, value_bytes);
    let snap = tmp.path().join("snapshot.db");
    // A later --command-timeout wins over etcdctl()'s 3 s: the benches save up to 1.5 GiB.
    let saved = etcdctl(
        &m1.client,
        &["--command-timeout", "600s", "snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(saved.status.success(), "snapshot save: {}", String::from_utf8_lossy(&saved.stderr));
    let want = dump(&m1.client);
    for n in [m2, m3] {
        expect_code(&park(n), 0, "park (the disaster)");
        std::fs::remove_dir_all(&n.data).unwrap();
    }

    let started = Instant::now();
    let parked = |n: &SimNode| n.kubernetes.join("parked-by-hand");
    for n in &nodes {
        // m2 and m3 were parked by the disaster; their manifests are moved back first, as a
        // person finds them, and then parked by hand with the others.
        for d in entries(&n.kubernetes, "manifests.etcdguard-") {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                std::fs::rename(&f, n.manifests.join(f.file_name().unwrap())).unwrap();
            }
            std::fs::remove_dir(&d).unwrap();
        }
    }
    for n in &nodes {
        std::fs::create_dir_all(parked(n)).unwrap();
        for f in ["etcd.yaml", "kube-apiserver.yaml"] {
            std::fs::rename(n.manifests.join(f), parked(n).join(f)).unwrap();
        }
    }
    for n in &nodes {
        let addr = n.client.trim_start_matches("http://").to_string();
        wait_until(Duration::from_secs(60), "etcd down", || {
            std::net::TcpStream::connect(&addr).is_err()
        });
    }
    let restored = m1.root.join("var/lib/etcd-restored");
    let out = EtcdVersion::V3_5
        .binaries()
        .snapshot_tool()
        .args([
            "snapshot",
            "restore",
            snap.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
            "--name",
            "m1",
        ])
        .args([
            "--initial-cluster",
            &format!("m1={}", m1.peer),
            "--initial-advertise-peer-urls",
            &m1.peer,
            "--initial-cluster-token",
            "by-hand",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdutl snapshot restore: {}", text(&out.stderr));
    std::fs::rename(&m1.data, m1.root.join("var/lib/etcd-old")).unwrap();
    std::fs::rename(&restored, &m1.data).unwrap();
    let unpark = |n: &SimNode| {
        for f in ["etcd.yaml", "kube-apiserver.yaml"] {
            std::fs::rename(parked(n).join(f), n.manifests.join(f)).unwrap();
        }
    };
    unpark(m1);
    wait_until(Duration::from_secs(60), "m1 healthy", || healthy(&m1.client));
    for n in [m2, m3] {
        let out =
            etcdctl(&m1.client, &["member", "add", &n.name, "--peer-urls", &n.peer, "--learner"]);
        assert!(out.status.success(), "member add: {}", text(&out.stderr));
        let printed = text(&out.stdout);
        let id =
            printed.split("Member ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        let initial = printed
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let manifest = parked(n).join("etcd.yaml");
        let text_now = std::fs::read_to_string(&manifest).unwrap();
        let edited: Vec<String> = text_now
            .lines()
            .map(|l| {
                if l.contains("--initial-cluster=") {
                    format!("    - --initial-cluster={initial}")
                } else if l.contains("--initial-cluster-state=") {
                    "    - --initial-cluster-state=existing".into()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&manifest, edited.join("\n") + "\n").unwrap();
        unpark(n);
        wait_until(Duration::from_secs(240), "promote", || {
            etcdctl(&m1.client, &["member", "promote", &id]).status.success()
        });
        wait_until(Duration::from_secs(60), "member healthy", || healthy(&n.client));
    }
    let took = started.elapsed();
    println!(
        "RECOVERY TIME (by hand: etcdutl snapshot restore + etcdctl member add/promote, scripted): {:.1} s from the first command to 3 healthy members, snapshot {:.1} MiB, {} keys",
        took.as_secs_f64(),
        std::fs::metadata(&snap).unwrap().len() as f64 / 1048576.0,
        want.len()
    );
    assert_recovered(&nodes, &want);
}

/// A manifest that sets the initial cluster and its state in the env, not as flags: the
/// plan reads them, `node join` rewrites both values (ETCD_INITIAL_CLUSTER_STATE from `new`).
#[test]
fn join_rewrites_initial_cluster_env_values() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_nodes_with(tmp.path(), true);
    let (m1, m2) = (&nodes[0], &nodes[1]);
    load(&m1.client, 200, 512);
    let snap = tmp.path().join("snapshot.db");
    // A later --command-timeout wins over etcdctl()'s 3 s: the benches save up to 1.5 GiB.
    let saved = etcdctl(
        &m1.client,
        &["--command-timeout", "600s", "snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(saved.status.success(), "snapshot save: {}", String::from_utf8_lossy(&saved.stderr));
    let want = dump(&m1.client);
    for n in &nodes {
        expect_code(&park(n), 0, "park all");
    }
    let out = etcdguard()
        .args([
            "node",
            "restore",
            snap.to_str().unwrap(),
            "--new-cluster",
            "--kubernetes-dir",
            m1.kdir(),
            "--wait-timeout",
            &wait_timeout(),
        ])
        .output()
        .unwrap();
    expect_code(&out, 0, "restore --new-cluster");
    assert!(
        text(&out.stdout)
            .contains(&format!("m2 peer URL {} (from the manifest): no answer", m2.peer)),
        "the env's initial cluster is probed\n{}",
        text(&out.stdout)
    );
    let out = join(m2, &m1.client, &[]).output().unwrap();
    expect_code(&out, 0, "join m2");
    let rewritten = std::fs::read_to_string(m2.manifests.join("etcd.yaml")).unwrap();
    // The members in etcd's order (by member id, random): either way round.
    let (ab, ba) = (
        format!("value: \"m1={},m2={}\"", m1.peer, m2.peer),
        format!("value: \"m2={},m1={}\"", m2.peer, m1.peer),
    );
    assert!(
        (rewritten.contains(&ab) || rewritten.contains(&ba))
            && rewritten.contains("value: \"existing\""),
        "{rewritten}"
    );
    assert!(
        !rewritten.contains("--initial-cluster-state"),
        "no flag added beside the env value\n{rewritten}"
    );
    assert_eq!(members(&m1.client).len(), 2);
    // A learner just joined may still be catching up on a loaded machine.
    wait_until(Duration::from_secs(60), "m2 serves the snapshot's data", || {
        dump(&m2.client) == want
    });
    drop(nodes);
}
