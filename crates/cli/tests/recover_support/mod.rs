//! Three simulated control-plane hosts for the quorum-loss tests (cluster_recover.rs,
//! recover_to_ready.rs): 127.0.0.11–.13, each a root dir named after its address
//! (etc/kubernetes/manifests, var/lib/etcd), its own kubelet stand-in (kubelet_support)
//! running a real etcd 3.5 from its manifest, and its own real `sshd` (ssh_support).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcdguard_testkit::{free_port, free_port_on, node_host, EtcdVersion};

use crate::etcdctl_support::*;
use crate::kubelet_support::Kubelet;
use crate::live_support::*;
use crate::ssh_support::SshHosts;

pub struct Host {
    pub addr: String,
    pub name: String,
    pub manifests: PathBuf,
    pub data: PathBuf,
    pub client: String,
    pub kubelet: Option<Kubelet>,
}

pub struct Site {
    pub tmp: tempfile::TempDir,
    pub hosts: Vec<Host>,
    pub ssh: SshHosts,
}

impl Site {
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn addrs(&self) -> String {
        self.hosts.iter().map(|h| h.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// `etcdguard cluster recover` for these hosts, with `extra` flags.
    pub fn recover(&self, extra: &[&str]) -> std::process::Command {
        let mut c = etcdguard();
        c.args(["cluster", "recover", "--hosts", &self.addrs()])
            .arg("--manifests-dir")
            .arg(self.path().join("{host}/etc/kubernetes/manifests"))
            .arg("--remote-dir")
            .arg(self.path().join("{host}/var/tmp"))
            .arg("--state-file")
            .arg(self.path().join("recover-state.json"))
            .args(self.ssh.flags())
            .args(extra);
        if !extra.contains(&"--wait-timeout") {
            c.args(["--wait-timeout", &wait_timeout()]);
        }
        if !extra.contains(&"--known-hosts") {
            c.arg("--known-hosts").arg(&self.ssh.known_hosts);
        }
        c
    }
}

/// Three kubeadm-shaped hosts bootstrapping one cluster, and an sshd on each address.
pub fn start_site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let specs: Vec<(String, String, String, String)> = (0..3)
        .map(|i| {
            let host = node_host(i);
            (
                host.clone(),
                format!("m{}", i + 1),
                format!("http://{host}:{}", free_port_on(&host)),
                format!("http://{host}:{}", free_port_on(&host)),
            )
        })
        .collect();
    let initial: Vec<String> = specs.iter().map(|(_, n, _, p)| format!("{n}={p}")).collect();
    let mut hosts = Vec::new();
    for (addr, name, client, peer) in specs {
        let root = tmp.path().join(&addr);
        let manifests = root.join("etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let data = root.join("var/lib/etcd");
        let etcd_yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - etcd\n    - --advertise-client-urls={client}\n    - --data-dir=/var/lib/etcd\n    - --initial-advertise-peer-urls={peer}\n    - --initial-cluster={}\n    - --initial-cluster-state=new\n    - --initial-cluster-token=old-cluster\n    - --listen-client-urls={client}\n    - --listen-peer-urls={peer}\n    - --name={name}\n    image: registry.k8s.io/etcd:3.5.1-0\n    name: etcd\n    volumeMounts:\n    - mountPath: /var/lib/etcd\n      name: etcd-data\n  hostNetwork: true\n  volumes:\n  - hostPath:\n      path: {}\n      type: DirectoryOrCreate\n    name: etcd-data\n",
            initial.join(","),
            data.display()
        );
        std::fs::write(manifests.join("etcd.yaml"), etcd_yaml).unwrap();
        std::fs::write(
            manifests.join("kube-apiserver.yaml"),
            format!("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --etcd-servers={client}\n    - --secure-port={}\n    name: kube-apiserver\n", free_port()),
        )
        .unwrap();
        let kubelet = Some(Kubelet::start(manifests.clone(), root.clone()));
        hosts.push(Host { addr, name, manifests, data, client, kubelet });
    }
    for h in &hosts {
        wait_until(Duration::from_secs(60), &format!("{} healthy", h.name), || healthy(&h.client));
    }
    let addrs: Vec<String> = hosts.iter().map(|h| h.addr.clone()).collect();
    let ssh = SshHosts::start(tmp.path(), &addrs);
    Site { tmp, hosts, ssh }
}

/// Three voting members m1–m3 of one cluster, each serving exactly `want`.
pub fn assert_recovered(hosts: &[Host], want: &[(String, String)]) -> u64 {
    let v = json(&hosts[0].client, &["member", "list"]);
    let mut ms: Vec<(String, bool)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    ms.sort();
    assert_eq!(
        ms,
        vec![("m1".to_string(), false), ("m2".to_string(), false), ("m3".to_string(), false)]
    );
    let ids: Vec<u64> = hosts.iter().map(|h| cluster_id(&h.client)).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "cluster ids differ: {ids:x?}");
    for h in hosts {
        assert!(healthy(&h.client), "{} is not healthy", h.name);
        wait_until(
            Duration::from_secs(60),
            &format!("{} serves the snapshot's data", h.name),
            || dump(&h.client) == want,
        );
    }
    ids[0]
}

pub fn park(h: &Host) {
    let out = etcdguard()
        .args(["node", "park", "--timeout", "60s", "--manifests-dir"])
        .arg(&h.manifests)
        .output()
        .unwrap();
    expect_code(&out, 0, &format!("park {}", h.name));
}

/// The disaster: m2's and m3's etcd stopped with their data gone; m1 runs without quorum.
pub fn lose_quorum(site: &Site) {
    for h in &site.hosts[1..] {
        park(h);
        std::fs::remove_dir_all(&h.data).unwrap();
    }
    assert!(!healthy(&site.hosts[0].client), "m1 alone still has quorum");
}

/// The parked etcd manifest of a host (none when it runs).
pub fn parked_etcd_manifest(h: &Host) -> Option<String> {
    let parent = h.manifests.parent().unwrap();
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("manifests.etcdguard-"))
        .find_map(|d| std::fs::read_to_string(d.join("etcd.yaml")).ok())
}

/// What a host looks like from outside: live manifest, parked manifest, data dir present.
pub fn host_state(h: &Host) -> (Option<String>, Option<String>, bool) {
    (
        std::fs::read_to_string(h.manifests.join("etcd.yaml")).ok(),
        parked_etcd_manifest(h),
        h.data.join("member").exists(),
    )
}

/// `ETCDGUARD_RECOVERY_MB` MiB of 4 KiB values loaded through m1 under `load_prefix`, then
/// etcdctl's snapshot of m1 in `snapshot.db`.
pub fn save_snapshot(site: &Site, load_prefix: &str) -> PathBuf {
    let m1 = &site.hosts[0];
    let mb: usize =
        std::env::var("ETCDGUARD_RECOVERY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    load_under(&m1.client, load_prefix, mb * 1024 * 1024 / 4096, 4096);
    let snap = site.path().join("snapshot.db");
    let saved = EtcdVersion::V3_5
        .binaries()
        .etcdctl()
        .args(["--endpoints", &m1.client, "--command-timeout", "300s", "snapshot", "save"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(saved.status.success(), "snapshot save: {}", text(&saved.stderr));
    snap
}

/// [`save_snapshot`], what etcd holds at that moment, and one more write after it.
pub fn snapshot(site: &Site) -> (PathBuf, Vec<(String, String)>) {
    let m1 = &site.hosts[0];
    let snap = save_snapshot(site, "/registry/configmaps");
    let want = dump(&m1.client);
    assert!(etcdctl(&m1.client, &["put", "/registry/after-the-snapshot", "x"]).status.success());
    (snap, want)
}
