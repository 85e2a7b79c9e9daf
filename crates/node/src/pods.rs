//! The static pod manifests a kubeadm-style control plane keeps in `/etc/kubernetes/manifests`:
//! what etcdguard needs from them to restore etcd where the kubelet will start it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::NodeError;

#[derive(Deserialize)]
struct Pod {
    spec: PodSpec,
}

#[derive(Deserialize)]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default, rename = "volumeMounts")]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Deserialize)]
struct VolumeMount {
    name: String,
    #[serde(rename = "mountPath")]
    mount_path: String,
}

#[derive(Deserialize)]
struct Volume {
    name: String,
    #[serde(rename = "hostPath")]
    host_path: Option<HostPath>,
}

#[derive(Deserialize)]
struct HostPath {
    path: String,
}

/// The etcd member a static pod manifest runs, as far as a restore needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPod {
    pub manifest: PathBuf,
    /// `--name` (etcd's default: `default`).
    pub name: String,
    /// `--data-dir` on the host (through the pod's hostPath volume).
    pub data_dir: PathBuf,
    /// `--wal-dir` on the host, when the manifest sets one.
    pub wal_dir: Option<PathBuf>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    /// `host:port` of each `--listen-client-urls` entry, `0.0.0.0`/`[::]` as loopback.
    pub client_addrs: Vec<String>,
}

/// The API server of a static pod manifest: where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerPod {
    pub manifest: PathBuf,
    /// `127.0.0.1:<--secure-port>` (6443 by default).
    pub addr: String,
}

/// `--flag=value` and `--flag value` arguments of a container's command line.
fn flags(argv: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < argv.len() {
        if let Some(flag) = argv[i].strip_prefix("--") {
            if let Some((k, v)) = flag.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            } else if i + 1 < argv.len() && !argv[i + 1].starts_with("--") {
                out.insert(flag.to_string(), argv[i + 1].clone());
                i += 1;
            } else {
                out.insert(flag.to_string(), "true".to_string());
            }
        }
        i += 1;
    }
    out
}

/// The container of `pod` whose command starts with `program`, with its flags.
fn read_container(path: &Path, program: &str) -> Result<(Pod, usize, BTreeMap<String, String>), NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::Manifest(path.to_path_buf(), e.to_string()))?;
    let pod: Pod = serde_norway::from_str(&text).map_err(|e| NodeError::Manifest(path.to_path_buf(), e.to_string()))?;
    let index = pod
        .spec
        .containers
        .iter()
        .position(|c| c.command.first().or(c.args.first()).is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == program)))
        .ok_or_else(|| NodeError::Manifest(path.to_path_buf(), format!("no container runs {program}")))?;
    let c = &pod.spec.containers[index];
    let argv: Vec<String> = c.command.iter().chain(&c.args).cloned().collect();
    let flags = flags(&argv);
    Ok((pod, index, flags))
}

/// Where a path inside the container is on the host: through the hostPath volume mounted at
/// the longest prefix of it.
fn host_path(pod: &Pod, container: usize, path: &str) -> Option<PathBuf> {
    let c = &pod.spec.containers[container];
    c.volume_mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .and_then(|m| {
            let host = pod.spec.volumes.iter().find(|v| v.name == m.name)?.host_path.as_ref()?;
            let rest = Path::new(path).strip_prefix(&m.mount_path).ok()?;
            Some(Path::new(&host.path).join(rest))
        })
}

/// `host:port` to probe for each URL; wildcard hosts are probed on loopback.
fn probe_addrs(urls: &str) -> Vec<String> {
    urls.split(',')
        .filter_map(|u| {
            let rest = u.trim().split_once("://")?.1;
            let hostport = rest.split('/').next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let host = match host {
                "0.0.0.0" | "" => "127.0.0.1",
                "[::]" => "[::1]",
                h => h,
            };
            Some(format!("{host}:{port}"))
        })
        .collect()
}

pub fn read_etcd_pod(path: &Path) -> Result<EtcdPod, NodeError> {
    let (pod, c, f) = read_container(path, "etcd")?;
    let bad = |m: String| NodeError::Manifest(path.to_path_buf(), m);
    let data_dir = f.get("data-dir").cloned().unwrap_or_else(|| "default.etcd".into());
    let data_dir = host_path(&pod, c, &data_dir)
        .ok_or_else(|| bad(format!("--data-dir {data_dir} is not on a hostPath volume: the data would not survive the pod")))?;
    let wal_dir = match f.get("wal-dir") {
        Some(w) => Some(host_path(&pod, c, w).ok_or_else(|| bad(format!("--wal-dir {w} is not on a hostPath volume")))?),
        None => None,
    };
    let client_addrs = probe_addrs(f.get("listen-client-urls").map_or("http://localhost:2379", |s| s.as_str()));
    if client_addrs.is_empty() {
        return Err(bad("cannot read --listen-client-urls".into()));
    }
    Ok(EtcdPod {
        manifest: path.to_path_buf(),
        name: f.get("name").cloned().unwrap_or_else(|| "default".into()),
        data_dir,
        wal_dir,
        initial_cluster: f.get("initial-cluster").cloned(),
        initial_cluster_token: f.get("initial-cluster-token").cloned(),
        initial_advertise_peer_urls: f.get("initial-advertise-peer-urls").cloned(),
        client_addrs,
    })
}

pub fn read_apiserver_pod(path: &Path) -> Result<ApiServerPod, NodeError> {
    let (_, _, f) = read_container(path, "kube-apiserver")?;
    let port = f.get("secure-port").map_or("6443", |s| s.as_str());
    port.parse::<u16>().map_err(|_| NodeError::Manifest(path.to_path_buf(), format!("--secure-port {port:?} is not a port")))?;
    Ok(ApiServerPod { manifest: path.to_path_buf(), addr: format!("127.0.0.1:{port}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM_ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.1:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://10.0.0.1:2380
    - --initial-cluster=cp1=https://10.0.0.1:2380
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.1:2379
    - --listen-peer-urls=https://10.0.0.1:2380
    - --name=cp1
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:3.5.15-0
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /mnt/disks/etcd
      type: DirectoryOrCreate
    name: etcd-data
"#;

    #[test]
    fn reads_a_kubeadm_etcd_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.yaml");
        std::fs::write(&p, KUBEADM_ETCD).unwrap();
        let pod = read_etcd_pod(&p).unwrap();
        assert_eq!(pod.name, "cp1");
        assert_eq!(pod.data_dir, PathBuf::from("/mnt/disks/etcd"), "the host side of the volume");
        assert_eq!(pod.initial_cluster.as_deref(), Some("cp1=https://10.0.0.1:2380"));
        assert_eq!(pod.initial_advertise_peer_urls.as_deref(), Some("https://10.0.0.1:2380"));
        assert_eq!(pod.initial_cluster_token, None);
        assert_eq!(pod.client_addrs, vec!["127.0.0.1:2379", "10.0.0.1:2379"]);
    }

    #[test]
    fn refuses_what_it_cannot_restore_into() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.yaml");
        std::fs::write(&p, KUBEADM_ETCD.replace("--data-dir=/var/lib/etcd", "--data-dir=/tmp/etcd")).unwrap();
        let err = read_etcd_pod(&p).unwrap_err().to_string();
        assert!(err.contains("hostPath"), "{err}");
        std::fs::write(&p, "kind: Pod\nspec:\n  containers:\n  - command: [kube-scheduler]\n").unwrap();
        assert!(read_etcd_pod(&p).unwrap_err().to_string().contains("no container runs etcd"));
        std::fs::write(&p, "{{{ not yaml").unwrap();
        assert!(read_etcd_pod(&p).is_err());
    }

    #[test]
    fn flags_in_both_spellings() {
        let argv: Vec<String> = ["etcd", "--name", "a", "--data-dir=/d", "--enable-v2", "--x", "y"].iter().map(|s| s.to_string()).collect();
        let f = flags(&argv);
        assert_eq!(f["name"], "a");
        assert_eq!(f["data-dir"], "/d");
        assert_eq!(f["enable-v2"], "true");
        assert_eq!(f["x"], "y");
    }
}
