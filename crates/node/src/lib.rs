//! Restore orchestration on a control-plane node whose etcd and API server are static pods
//! (kubeadm and its relatives, OpenShift). The runbook's steps become one [`Plan`]:
//!
//! 1. move the static pod manifests out of the manifests directory, so the kubelet stops
//!    etcd, the API server and the rest of the control plane (already done when the node
//!    was parked with [`park::Parking`]);
//! 2. wait until etcd's client port is closed, its database is no longer locked, and the API
//!    server's port is closed;
//! 3. move the data directory (and WAL directory) aside, under a name with a time stamp;
//! 4. restore the snapshot into the data directory with the member name, peer URLs and
//!    cluster taken from the etcd manifest (the restore itself is the caller's, so this crate
//!    does not depend on the storage code), then give it the old directory's owner, mode and
//!    SELinux context;
//! 5. put the manifests back and wait until the new etcd, then the API server, serve.
//!
//! k3s and RKE2 servers have no etcd manifest: [`rancher`] plans and carries out their restore
//! (the embedded etcd's data dir, name file and reset flag; the server is stopped and started by
//! the operator).
//!
//! A failure before step 5 undoes what was done (the old data directory and the manifests go
//! back, or stay parked when they were parked before), so the node is left as it was.
//! Nothing is deleted: the old data directory stays beside the new one.
//!
//! ## How it works
//!
//! `pods` reads the static pod manifests (`serde_norway`, the maintained fork of the deprecated
//! `serde_yaml` 0.9): etcd's member name, peer URLs, `--initial-cluster`, client ports, image
//! tag (etcd's major.minor when the image is named etcd), runAsUser, and its data dir on the
//! host through the pod's hostPath volume; the API server's port; for clients, etcd's client
//! URLs and TLS files (`read_etcd_client_access`, also from a StatefulSet's or Deployment's pod
//! template). The command line comes from `command` + `args`, from a `sh -c` script (`script`:
//! a small shell-word splitter — quotes, escapes, continuation lines, separators — whose words
//! keep `${VAR}`, `$VAR` and `$(…)` apart; `exec`, `nice`, `ionice`, `hyperkube` and `… --`
//! wrappers skipped), and from `ETCD_*` variables. Variables are filled in as the kubelet and
//! the shell would: the container's env (literal values with the kubelet's `$(VAR)`, and
//! `valueFrom.fieldRef` from `NodeFacts` — flags, else the host's name and address, looked up
//! only for an etcd container that uses them), then the script's assignments and exports before
//! the command that runs etcd (OpenShift's `export ETCD_NAME=${NODE_<node>_ETCD_NAME}`). A
//! value only the running pod knows (a `$(…)` command's output) stays as written, with the
//! reason kept in `EtcdPod::unresolved`, and is refused where it is needed. The API server's
//! encryption config is its `--encryption-provider-config`, else
//! `apiServerArguments.encryption-provider-config` of its `--openshift-config` file, mapped to
//! the host through the pod's volumes. `Plan::build` finds etcd's manifest (`etcd.yaml`,
//! `etcd-pod.yaml`, `--etcd-manifest`; live or parked; a `--etcd-manifest` outside the
//! manifests dir is a copy the values are read from, the live one is what is parked), turns it
//! into the runbook's steps and checks every step can be taken (changing nothing; `steps()` is
//! the `--dry-run` text); `Plan::execute` carries them out — park the manifests outside the
//! watched dir (unless `node park` did), wait for the ports to close and bbolt's flock to go,
//! move the data dir aside, swap in a backup's PKI dir when given one, restore, give the new
//! dir the old one's owner, mode and `security.selinux` (`owner`), put the manifests back, wait
//! for etcd and then the API server (`ready`: `/readyz` over TLS to loopback without
//! certificate checks, else the port) — and undoes what it did when a step before "manifests
//! back" fails. `check_snapshot_version` compares the snapshot's storage/cluster version with
//! the image's. `park` moves etcd's and the API server's manifests aside and waits until both
//! are down, or puts them back and waits until both serve. The restore itself is a callback, so
//! this crate does not depend on `storage`; `workflow::node` passes `snapshot restore`'s code
//! in. `quorum` holds what recovering from quorum loss needs on a node: `probe_targets`/`probe`
//! (every other old member's peer URL from the manifest's `--initial-cluster` and the
//! snapshot's member list, plus client URLs where the snapshot records them, each tried with
//! one TCP connect) and `rewrite_for_join` / `replace_manifest`
//! (`--initial-cluster-state=existing` and the full `--initial-cluster` set in `--flag=value`
//! tokens of a list item or `sh -c` script, or in every container's
//! `ETCD_INITIAL_CLUSTER(_STATE)` env values; an initial cluster the script computes when the
//! pod starts is left to it; written to a hidden temp file, fsynced, renamed, the previous
//! version kept outside the watched dir). `Request::new_cluster` makes the plan restore a
//! cluster of this member only.

pub mod owner;
pub mod park;
pub mod pki;
pub mod pods;
pub mod quorum;
pub mod rancher;
pub mod ready;
pub mod rollback;
pub mod script;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use owner::Ownership;
pub use pods::{
    read_apiserver_pod, read_etcd_client_access, read_etcd_pod, read_etcd_pod_on, ApiServerPod,
    EtcdClientAccess, EtcdPod, NodeFacts,
};
pub use ready::{probe_apiserver, ApiServerState};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}: {1}")]
    Manifest(PathBuf, String),
    #[error("{0}")]
    Preflight(String),
    #[error("{what} still running after {secs} s; {undone}")]
    StillRunning { what: String, secs: u64, undone: String },
    #[error("restore failed: {0}; the old data directory and the manifests were put back")]
    Restore(String),
    #[error("{0}")]
    Io(String),
    #[error("the restored etcd did not start within {secs} s; the restored data is in {data_dir}, the old one in {old}; check the kubelet and etcd logs")]
    NotStarted { secs: u64, data_dir: String, old: String },
    #[error("{what} did not come back within {secs} s ({last}); check the kubelet and its logs")]
    NotReady { what: String, secs: u64, last: String },
}

/// What to restore with; `None` fields come from the etcd manifest.
#[derive(Debug, Clone)]
pub struct Request {
    /// `/etc/kubernetes` (the PKI is its `pki/`).
    pub kubernetes_dir: PathBuf,
    /// The static pod manifests [default: the `--etcd-manifest`'s directory, else
    /// `<kubernetes_dir>/manifests`].
    pub manifests_dir: Option<PathBuf>,
    /// etcd's manifest, any name [default: `etcd.yaml`, else OpenShift's `etcd-pod.yaml`].
    pub etcd_manifest: Option<PathBuf>,
    /// Goes into the names of what is moved aside, e.g. `20261123T124500Z`.
    pub stamp: String,
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    /// How long to wait for the static pods to stop, and for the new etcd to start.
    pub wait_timeout: Duration,
    /// A PKI directory (from a backup) to put in place of `<kubernetes_dir>/pki` while the
    /// control plane is down. Same filesystem as the kubernetes dir, so it is moved, not copied.
    pub pki_from: Option<PathBuf>,
    /// Restore a one-member cluster (this member only), whatever the manifest's
    /// `--initial-cluster` lists: the first step of recovering from quorum loss.
    pub new_cluster: bool,
    /// This node's name and IP, for values the manifest takes from `valueFrom.fieldRef`.
    pub node: NodeFacts,
}

/// Replacing the PKI directory: `current` moves to `aside`, `staged` moves to `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSwap {
    pub current: PathBuf,
    pub aside: PathBuf,
    pub staged: PathBuf,
}

/// The `snapshot restore` to run: where, and as which member of which cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSpec {
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub manifests_dir: PathBuf,
    /// Where the manifests wait while the control plane is down (outside the watched dir).
    pub parked_dir: PathBuf,
    /// The manifests to park and put back (in `parked_dir` when `already_parked`).
    pub manifests: Vec<PathBuf>,
    /// `node park` parked them before: nothing to move, and a failure leaves them parked.
    pub already_parked: bool,
    pub etcd: EtcdPod,
    /// The copy given with `--etcd-manifest` outside the manifests dir that `etcd` was read from.
    pub values_from: Option<PathBuf>,
    pub apiserver: Option<ApiServerPod>,
    /// Where the current data dir goes (`None` when there is none).
    pub old_data_dir: Option<PathBuf>,
    pub old_wal_dir: Option<PathBuf>,
    pub restore: RestoreSpec,
    /// Owner, mode and SELinux context the restored dirs get (the old data dir's, else the
    /// manifest's runAsUser with mode 0700; `None`: root's, as the restore leaves them).
    pub ownership: Option<Ownership>,
    pub pki: Option<PkiSwap>,
    pub wait_timeout: Duration,
    /// Goes into the names of what is moved aside.
    pub stamp: String,
}

/// How long each wait of a run took, for the report.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// (what, how long), in order: "control plane stopped", "restore", "etcd serving", …
    pub steps: Vec<(String, Duration)>,
    /// How the API server was seen to be back, when there is one.
    pub apiserver: Option<String>,
}

pub(crate) fn aside(path: &Path, stamp: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".etcdguard-{stamp}"));
    path.with_file_name(name)
}

pub(crate) fn io(what: &str, path: &Path, e: std::io::Error) -> NodeError {
    NodeError::Io(format!("{what} {}: {e}", path.display()))
}

/// The names etcd's manifest has, in the order they are looked for.
pub const ETCD_MANIFEST_NAMES: [&str; 2] = ["etcd.yaml", "etcd-pod.yaml"];
const APISERVER_MANIFEST_NAMES: [&str; 2] = ["kube-apiserver.yaml", "kube-apiserver-pod.yaml"];

/// The files of a manifests directory the kubelet would run (no hidden files).
pub(crate) fn list_manifests(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io("reading", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    manifests.sort();
    Ok(manifests)
}

/// Directories where `node park` or a running `node restore` parked this manifests dir.
pub fn parked_dirs(manifests_dir: &Path) -> Vec<PathBuf> {
    let prefix =
        format!("{}.etcdguard-", manifests_dir.file_name().unwrap_or_default().to_string_lossy());
    let parent = manifests_dir.parent().unwrap_or(Path::new("."));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_dir()
                        && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Where the control plane's manifests are: live in the manifests dir, or parked beside it.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub manifests_dir: PathBuf,
    pub etcd_manifest: PathBuf,
    /// Set when the etcd manifest is in a parked dir, not in the manifests dir.
    pub parked_in: Option<PathBuf>,
    pub etcd: EtcdPod,
    pub apiserver: Option<ApiServerPod>,
    /// `--etcd-manifest` outside the manifests dir: a copy the member's values were read
    /// from (`etcd` is from it); `etcd_manifest` is the one the kubelet runs.
    pub values_from: Option<PathBuf>,
}

pub(crate) fn locate(
    kubernetes_dir: &Path,
    manifests_dir: Option<&Path>,
    etcd_manifest: Option<&Path>,
    facts: &NodeFacts,
) -> Result<Located, NodeError> {
    let given_dir = etcd_manifest.and_then(|m| m.parent()).filter(|p| !p.as_os_str().is_empty());
    let manifests_dir = manifests_dir
        .map(Path::to_path_buf)
        .or_else(|| given_dir.map(Path::to_path_buf))
        .unwrap_or_else(|| kubernetes_dir.join("manifests"));
    if !manifests_dir.is_dir() {
        return Err(NodeError::Preflight(format!("{} is not a directory: where does the kubelet read static pod manifests on this node (its staticPodPath)? Give it with --manifests-dir", manifests_dir.display())));
    }
    // A manifest outside the manifests dir is a copy (say, with a value written out by
    // hand): the member's values come from it, and the kubelet's own etcd manifest in the
    // manifests dir is the one parked and put back.
    let values_from = match (etcd_manifest, given_dir) {
        (Some(m), Some(dir))
            if std::fs::canonicalize(dir).ok() != std::fs::canonicalize(&manifests_dir).ok() =>
        {
            if !m.is_file() {
                return Err(NodeError::Preflight(format!("{} is not a file", m.display())));
            }
            Some(m.to_path_buf())
        }
        _ => None,
    };
    let names: Vec<String> = match etcd_manifest.filter(|_| values_from.is_none()) {
        Some(m) => vec![m.file_name().unwrap_or_default().to_string_lossy().into_owned()],
        None => ETCD_MANIFEST_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let live = names.iter().map(|n| manifests_dir.join(n)).find(|p| p.is_file());
    let (etcd_manifest, parked_in) = match live {
        Some(p) => (p, None),
        None => {
            let parked: Vec<(PathBuf, PathBuf)> = parked_dirs(&manifests_dir)
                .into_iter()
                .filter_map(|d| {
                    names.iter().map(|n| d.join(n)).find(|p| p.is_file()).map(|p| (d, p))
                })
                .collect();
            match parked.len() {
                0 if values_from.is_some() => {
                    return Err(NodeError::Preflight(format!(
                        "no {} in {}: {} is outside that dir, so it is read as a copy of the manifest the kubelet runs, which must be there (give --manifests-dir, the kubelet's staticPodPath)",
                        names.join(" or "),
                        manifests_dir.display(),
                        values_from.as_deref().unwrap_or(Path::new("")).display()
                    )))
                }
                0 => {
                    return Err(NodeError::Preflight(format!(
                        "no {} in {}: is etcd a static pod on this node? Give its manifest with --etcd-manifest{}",
                        names.join(" or "),
                        manifests_dir.display(),
                        rancher::hint_on_this_host()
                    )))
                }
                1 => {
                    let (d, p) = parked.into_iter().next().unwrap_or_default();
                    (p, Some(d))
                }
                _ => {
                    let list: Vec<String> = parked.iter().map(|(d, _)| d.display().to_string()).collect();
                    return Err(NodeError::Preflight(format!(
                        "etcd's manifest is parked in more than one place ({}); keep one (move the others' files where they belong) and run again",
                        list.join(", ")
                    )));
                }
            }
        }
    };
    let etcd = match &values_from {
        Some(copy) => {
            let etcd = read_etcd_pod_on(copy, facts)?;
            // The copy must describe the member the kubelet runs here.
            if let Ok(live) = read_etcd_pod_on(&etcd_manifest, facts) {
                if live.data_dir != etcd.data_dir {
                    return Err(NodeError::Preflight(format!(
                        "{} (data dir {}) is not a copy of {} (data dir {}): give a copy of the manifest the kubelet runs",
                        copy.display(),
                        etcd.data_dir.display(),
                        etcd_manifest.display(),
                        live.data_dir.display()
                    )));
                }
            }
            etcd
        }
        None => read_etcd_pod_on(&etcd_manifest, facts)?,
    };
    let dir = parked_in.clone().unwrap_or_else(|| manifests_dir.clone());
    let named = APISERVER_MANIFEST_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let apiserver = match named {
        Some(p) => Some(read_apiserver_pod(&p)?),
        // Any other manifest whose container runs kube-apiserver (other names, hyperkube).
        None => list_manifests(&dir)?
            .iter()
            .filter(|p| **p != etcd_manifest)
            .find_map(|p| read_apiserver_pod(p).ok()),
    };
    Ok(Located { manifests_dir, etcd_manifest, parked_in, etcd, apiserver, values_from })
}

/// Waits until etcd's client ports are closed, its database unlocked, and the API server's
/// port closed; `Err(what)` names what still runs at the deadline.
pub(crate) fn wait_down(
    etcd: &EtcdPod,
    apiserver: Option<&ApiServerPod>,
    deadline: Instant,
) -> Result<(), String> {
    let db = etcd.data_dir.join("member/snap/db");
    let mut waits: Vec<(String, Box<dyn Fn() -> bool>)> = Vec::new();
    for a in etcd.client_addrs.clone() {
        waits.push((format!("etcd (port {a})"), Box::new(move || !port_open(&a))));
    }
    let db2 = db.clone();
    waits.push((format!("etcd (lock on {})", db.display()), Box::new(move || !locked(&db2))));
    if let Some(a) = apiserver.cloned() {
        waits.push((
            format!("kube-apiserver (port {})", a.addr),
            Box::new(move || !port_open(&a.addr)),
        ));
    }
    for (what, done) in &waits {
        while !done() {
            if Instant::now() > deadline {
                return Err(what.clone());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// etcd listens on a client port and holds its database lock.
pub(crate) fn etcd_up(etcd: &EtcdPod) -> bool {
    etcd.client_addrs.iter().any(|a| port_open(a)) && locked(&etcd.data_dir.join("member/snap/db"))
}

/// Waits until the API server is ready; `Ok(how it was seen)` or `Err(last state)`.
pub(crate) fn wait_apiserver(a: &ApiServerPod, deadline: Instant) -> Result<String, String> {
    loop {
        let last = match probe_apiserver(&a.addr) {
            ApiServerState::Ready => return Ok(format!("/readyz on {} answered 200", a.addr)),
            ApiServerState::PortOnly(why) => return Ok(format!("port {} open; {why}", a.addr)),
            ApiServerState::NotYet(why) => why,
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Plan {
    /// Reads the manifests and checks that every step can be taken; changes nothing.
    pub fn build(req: &Request) -> Result<Plan, NodeError> {
        let found = locate(
            &req.kubernetes_dir,
            req.manifests_dir.as_deref(),
            req.etcd_manifest.as_deref(),
            &req.node,
        )?;
        let (parked_dir, manifests, already_parked) = match &found.parked_in {
            Some(d) => (d.clone(), list_manifests(d)?, true),
            None => (
                aside(&found.manifests_dir, &req.stamp),
                list_manifests(&found.manifests_dir)?,
                false,
            ),
        };
        let Located { manifests_dir, etcd, apiserver, values_from, .. } = found;
        let data_dir = etcd.data_dir.clone();
        let old_data_dir = data_dir.exists().then(|| aside(&data_dir, &req.stamp));
        let old_wal_dir =
            etcd.wal_dir.as_ref().filter(|w| w.exists()).map(|w| aside(w, &req.stamp));
        let pki = match &req.pki_from {
            Some(staged) => {
                if !staged.is_dir() {
                    return Err(NodeError::Preflight(format!(
                        "{} is not a directory of PKI files",
                        staged.display()
                    )));
                }
                let current = req.kubernetes_dir.join("pki");
                Some(PkiSwap {
                    aside: aside(&current, &req.stamp),
                    current,
                    staged: staged.clone(),
                })
            }
            None => None,
        };
        let new_parked = (!already_parked).then_some(&parked_dir);
        for p in [
            new_parked,
            old_data_dir.as_ref(),
            old_wal_dir.as_ref(),
            pki.as_ref().map(|p| &p.aside),
        ]
        .into_iter()
        .flatten()
        {
            if p.exists() {
                return Err(NodeError::Preflight(format!(
                    "{} already exists; use another time stamp",
                    p.display()
                )));
            }
        }
        // Values the manifest sets with shell variables must come from flags.
        let name = match &req.name {
            Some(n) => n.clone(),
            None => etcd.resolved("name", &etcd.name, "--name")?.to_string(),
        };
        let peer_urls = match (&req.initial_advertise_peer_urls, &etcd.initial_advertise_peer_urls)
        {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => etcd
                .resolved("initial-advertise-peer-urls", u, "--initial-advertise-peer-urls")?
                .to_string(),
            (None, None) => "http://localhost:2380".into(),
        };
        let initial_cluster = match (&req.initial_cluster, &etcd.initial_cluster) {
            (Some(c), _) => c.clone(),
            (None, _) if req.new_cluster => peer_urls.split(',').map(|u| format!("{name}={}", u.trim())).collect::<Vec<_>>().join(","),
            (None, Some(c)) => etcd.resolved("initial-cluster", c, "--initial-cluster (or restore a one-member cluster with --new-cluster, then `node join` the other nodes)")?.to_string(),
            (None, None) => format!("{name}={peer_urls}"),
        };
        let initial_cluster_token = match (&req.initial_cluster_token, &etcd.initial_cluster_token)
        {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => {
                etcd.resolved("initial-cluster-token", t, "--initial-cluster-token")?.to_string()
            }
            (None, None) => "etcd-cluster".into(),
        };
        let ownership = match data_dir.exists() {
            true => Some(
                Ownership::of(&data_dir).map_err(|e| io("reading the owner of", &data_dir, e))?,
            ),
            false => etcd.run_as_user.map(|uid| Ownership {
                uid,
                gid: etcd.run_as_group.unwrap_or(uid),
                mode: 0o700,
                selinux: None,
            }),
        };
        let restore = RestoreSpec {
            data_dir,
            wal_dir: etcd.wal_dir.clone(),
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls: peer_urls,
        };
        Ok(Plan {
            manifests_dir,
            parked_dir,
            manifests,
            already_parked,
            etcd,
            values_from,
            apiserver,
            old_data_dir,
            old_wal_dir,
            restore,
            ownership,
            pki,
            wait_timeout: req.wait_timeout,
            stamp: req.stamp.clone(),
        })
    }

    /// The steps, in words, as `--dry-run` prints them.
    pub fn steps(&self) -> Vec<String> {
        let secs = self.wait_timeout.as_secs();
        let mut s = Vec::new();
        let names: Vec<String> = self
            .manifests
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect();
        if self.already_parked {
            s.push(format!("the static pod manifests ({}) are already parked in {} (by `node park`): nothing to move", names.join(", "), self.parked_dir.display()));
        } else {
            s.push(format!(
                "move the static pod manifests ({}) from {} to {}: the kubelet stops those pods",
                names.join(", "),
                self.manifests_dir.display(),
                self.parked_dir.display()
            ));
        }
        let mut waits = vec![format!(
            "etcd's client port{} {} closed",
            if self.etcd.client_addrs.len() > 1 { "s" } else { "" },
            self.etcd.client_addrs.join(", ")
        )];
        waits.push(format!("{} unlocked", self.etcd.data_dir.join("member/snap/db").display()));
        if let Some(a) = &self.apiserver {
            waits.push(format!("the API server's port {} closed", a.addr));
        }
        s.push(format!("wait (at most {secs} s) for {}", waits.join(", ")));
        match &self.old_data_dir {
            Some(old) => s.push(format!(
                "move the data dir {} to {}",
                self.etcd.data_dir.display(),
                old.display()
            )),
            None => {
                s.push(format!("(no data dir at {} to move aside)", self.etcd.data_dir.display()))
            }
        }
        if let (Some(w), Some(old)) = (&self.etcd.wal_dir, &self.old_wal_dir) {
            s.push(format!("move the WAL dir {} to {}", w.display(), old.display()));
        }
        if let Some(p) = &self.pki {
            s.push(format!(
                "put the backup's PKI files in place: {} moves to {}, the backup's to {}",
                p.current.display(),
                p.aside.display(),
                p.current.display()
            ));
        }
        let r = &self.restore;
        let owner = match &self.ownership {
            Some(o) => format!("; then give it {}", o.describe()),
            None => String::new(),
        };
        s.push(format!(
            "restore the snapshot into {} as member {:?} of --initial-cluster {} (--initial-cluster-token {}, --initial-advertise-peer-urls {}){}{owner}",
            r.data_dir.display(),
            r.name,
            r.initial_cluster,
            r.initial_cluster_token,
            r.initial_advertise_peer_urls,
            r.wal_dir.as_ref().map(|w| format!(", WAL in {}", w.display())).unwrap_or_default()
        ));
        if let Some(copy) = &self.values_from {
            let last = s.len() - 1;
            s[last].push_str(&format!(
                " (member values read from {}, a copy of the manifest the kubelet runs)",
                copy.display()
            ));
        }
        s.push(format!(
            "move the manifests back to {}: the kubelet starts the control plane again",
            self.manifests_dir.display()
        ));
        let api = match &self.apiserver {
            Some(a) => format!(", then until the API server on {} is ready (/readyz, or its port when /readyz cannot be read)", a.addr),
            None => String::new(),
        };
        s.push(format!(
            "wait (at most {secs} s) until etcd serves on {} with the restored data{api}",
            self.etcd.client_addrs.join(", ")
        ));
        s
    }

    /// Carries the plan out. `restore` writes the snapshot into the spec's data dir; `log`
    /// hears each step as it starts, and how long each wait took.
    pub fn execute(
        &self,
        restore: &mut dyn FnMut(&RestoreSpec) -> Result<(), String>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Timings, NodeError> {
        let steps = self.steps();
        let mut timings = Timings::default();
        let mut step = 0;
        let mut say = |log: &mut dyn FnMut(&str)| {
            step += 1;
            log(&format!("[{step}/{}] {}", steps.len(), steps[step - 1]));
        };
        let started = Instant::now();

        say(log);
        let mut moved = Vec::new();
        if self.already_parked {
            moved = self.manifests.clone();
        } else {
            std::fs::create_dir(&self.parked_dir)
                .map_err(|e| io("creating", &self.parked_dir, e))?;
            for m in &self.manifests {
                let to = self.parked_dir.join(m.file_name().unwrap_or_default());
                if let Err(e) = std::fs::rename(m, &to) {
                    self.give_back(&moved);
                    return Err(io("moving", m, e));
                }
                moved.push(to);
            }
        }
        // On failure: manifests we parked go back; manifests `node park` parked stay parked.
        let undone = if self.already_parked {
            "the manifests stay parked; nothing else was changed"
        } else {
            "the manifests were put back, nothing else was changed"
        };

        say(log);
        if let Err(what) =
            wait_down(&self.etcd, self.apiserver.as_ref(), Instant::now() + self.wait_timeout)
        {
            self.give_back(&moved);
            return Err(NodeError::StillRunning {
                what,
                secs: self.wait_timeout.as_secs(),
                undone: undone.into(),
            });
        }
        timings.steps.push(("control plane stopped".into(), started.elapsed()));
        log(&format!("      control plane stopped after {}", secs(started.elapsed())));

        say(log);
        let mut set_aside: Vec<(PathBuf, PathBuf)> = Vec::new();
        let pairs = [
            (Some(&self.etcd.data_dir), self.old_data_dir.as_ref()),
            (self.etcd.wal_dir.as_ref(), self.old_wal_dir.as_ref()),
        ];
        for (from, to) in pairs.into_iter().filter_map(|(f, t)| Some((f?, t?))) {
            if let Err(e) = std::fs::rename(from, to) {
                self.undo_aside(&set_aside);
                self.give_back(&moved);
                return Err(io("moving aside", from, e));
            }
            set_aside.push((from.clone(), to.clone()));
        }
        if self.old_wal_dir.is_some() {
            say(log);
        }
        if let Some(p) = &self.pki {
            say(log);
            let had_current = p.current.exists();
            let mut swapped = !had_current || std::fs::rename(&p.current, &p.aside).is_ok();
            if swapped && std::fs::rename(&p.staged, &p.current).is_err() {
                if had_current {
                    let _ = std::fs::rename(&p.aside, &p.current);
                }
                swapped = false;
            }
            if !swapped {
                self.undo_aside(&set_aside);
                self.give_back(&moved);
                return Err(NodeError::Io(format!(
                    "could not put {} in place of {}; nothing was changed",
                    p.staged.display(),
                    p.current.display()
                )));
            }
            if had_current {
                set_aside.push((p.current.clone(), p.aside.clone()));
            }
        }

        say(log);
        let t = Instant::now();
        let restored = restore(&self.restore).and_then(|()| self.adopt_ownership());
        if let Err(e) = restored {
            // The restore builds in a hidden temporary dir and renames at the end, so on failure
            // the data dir does not exist, or is complete; either way it makes room for the old
            // one (a complete one is kept aside, not deleted).
            if std::fs::remove_dir(&self.restore.data_dir).is_err()
                && self.restore.data_dir.exists()
            {
                let mut failed =
                    aside(&self.restore.data_dir, &format!("{}-not-started", self.stamp));
                if failed.exists() {
                    failed = aside(&failed, "2");
                }
                let _ = std::fs::rename(&self.restore.data_dir, &failed);
            }
            self.undo_aside(&set_aside);
            self.give_back(&moved);
            return Err(NodeError::Restore(e));
        }
        timings.steps.push(("restore".into(), t.elapsed()));
        log(&format!("      restored in {}", secs(t.elapsed())));

        say(log);
        self.put_back(&moved);
        if moved.iter().any(|m| m.exists()) {
            return Err(NodeError::Io(format!(
                "could not move every manifest back from {}; move them to {} by hand",
                self.parked_dir.display(),
                self.manifests_dir.display()
            )));
        }

        say(log);
        let t = Instant::now();
        let deadline = t + self.wait_timeout;
        while !etcd_up(&self.etcd) {
            if Instant::now() > deadline {
                return Err(NodeError::NotStarted {
                    secs: self.wait_timeout.as_secs(),
                    data_dir: self.restore.data_dir.display().to_string(),
                    old: self.old_data_dir.as_ref().map_or("-".into(), |p| p.display().to_string()),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        timings.steps.push(("etcd serving".into(), t.elapsed()));
        log(&format!("      etcd serving after {}", secs(t.elapsed())));
        if let Some(a) = &self.apiserver {
            let how = wait_apiserver(a, deadline).map_err(|last| NodeError::NotReady {
                what: format!("etcd serves, but the API server ({})", a.manifest.display()),
                secs: self.wait_timeout.as_secs(),
                last,
            })?;
            timings.steps.push(("API server ready".into(), t.elapsed()));
            log(&format!("      API server ready after {} ({how})", secs(t.elapsed())));
            timings.apiserver = Some(how);
        }
        timings.steps.push(("total".into(), started.elapsed()));
        Ok(timings)
    }

    /// The restored data (and WAL) dir get the old one's owner, mode and SELinux context.
    fn adopt_ownership(&self) -> Result<(), String> {
        let Some(o) = &self.ownership else { return Ok(()) };
        for dir in std::iter::once(&self.restore.data_dir).chain(self.restore.wal_dir.as_ref()) {
            o.apply_tree(dir)
                .map_err(|e| format!("giving {} {}: {e}", dir.display(), o.describe()))?;
        }
        Ok(())
    }

    /// After a failure: manifests this run parked go back; ones `node park` parked stay.
    fn give_back(&self, moved: &[PathBuf]) {
        if !self.already_parked {
            self.put_back(moved);
        }
    }

    /// Moves parked manifests back (best effort; what fails stays in the parked dir).
    fn put_back(&self, moved: &[PathBuf]) {
        for m in moved {
            let _ = std::fs::rename(m, self.manifests_dir.join(m.file_name().unwrap_or_default()));
        }
        let _ = std::fs::remove_dir(&self.parked_dir);
    }

    /// Moves back what was moved aside; a swapped-in PKI dir first goes back to its staging
    /// place, so the original can return.
    fn undo_aside(&self, set_aside: &[(PathBuf, PathBuf)]) {
        for (from, to) in set_aside.iter().rev() {
            if let Some(p) = self.pki.as_ref().filter(|p| &p.current == from) {
                let _ = std::fs::rename(&p.current, &p.staged);
            }
            let _ = std::fs::rename(to, from);
        }
    }
}

/// `3.5.0` / `3.6` → (3, 5) / (3, 6).
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses a snapshot written by a newer etcd minor than the one the manifest's image runs
/// (etcd refuses, or panics on, a data dir from a newer minor). `storage_version` is the
/// snapshot's `meta/storageVersion` (3.6+), `cluster_version` its `cluster/clusterVersion`.
/// `Ok(Some(warning))` when either side cannot be told.
pub fn check_snapshot_version(
    etcd: &EtcdPod,
    storage_version: Option<&str>,
    cluster_version: Option<&str>,
) -> Result<Option<String>, NodeError> {
    let image = etcd.image.as_deref().unwrap_or("(no image)");
    let snapshot = match (
        storage_version.filter(|v| !v.is_empty()),
        cluster_version.filter(|v| !v.is_empty()),
    ) {
        (Some(v), _) => major_minor(v).map(|mm| (mm, format!("storage version {v}"))),
        (None, Some(v)) => major_minor(v).map(|mm| (mm, format!("cluster version {v}"))),
        (None, None) => None,
    };
    let Some(((s_major, s_minor), what)) = snapshot else {
        return Ok(Some("the snapshot records no storage or cluster version, so it cannot be checked against the etcd on this node".into()));
    };
    let Some((b_major, b_minor)) = etcd.image_version else {
        return Ok(Some(format!(
            "cannot tell which etcd the image {image} runs (a digest, or not an etcd image name); the snapshot has {what}: the etcd on this node must be {s_major}.{s_minor} or newer"
        )));
    };
    if (s_major, s_minor) > (b_major, b_minor) {
        return Err(NodeError::Preflight(format!(
            "the snapshot has {what}, newer than the etcd {b_major}.{b_minor} this node runs (image {image} in {}): etcd {b_major}.{b_minor} cannot open it. Restore it where etcd {s_major}.{s_minor} or newer runs, or upgrade the image in the manifest first",
            etcd.manifest.display()
        )));
    }
    Ok(None)
}

/// Something accepts TCP connections at `addr` (`host:port`).
pub fn port_open(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = addr.to_socket_addrs() else { return false };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

/// Another process holds the bbolt file lock on `db` (a running etcd does).
pub fn locked(db: &Path) -> bool {
    let Ok(f) = std::fs::File::open(db) else { return false };
    // A shared flock, released at once (and on close): refused only while etcd holds its own.
    match f.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
        Ok(()) => {
            let _ = f.unlock();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, with_data: bool) -> Request {
        let k = dir.join("kubernetes");
        std::fs::create_dir_all(k.join("manifests")).unwrap();
        let data = dir.join("var-lib-etcd");
        if with_data {
            std::fs::create_dir_all(data.join("member/snap")).unwrap();
            std::fs::write(data.join("member/snap/db"), b"old").unwrap();
        }
        std::fs::write(
            k.join("manifests/etcd.yaml"),
            format!(
                "kind: Pod\nspec:\n  containers:\n  - command: [etcd, --name=n1, --data-dir=/var/lib/etcd, --listen-client-urls=http://127.0.0.1:1, --initial-advertise-peer-urls=http://127.0.0.1:2, --initial-cluster=n1=http://127.0.0.1:2]\n    volumeMounts: [{{name: data, mountPath: /var/lib/etcd}}]\n  volumes: [{{name: data, hostPath: {{path: {}}}}}]\n",
                data.display()
            ),
        )
        .unwrap();
        std::fs::write(k.join("manifests/kube-scheduler.yaml"), "kind: Pod\n").unwrap();
        Request {
            kubernetes_dir: k,
            manifests_dir: None,
            etcd_manifest: None,
            stamp: "T1".into(),
            name: None,
            initial_cluster: None,
            initial_cluster_token: Some("tok".into()),
            initial_advertise_peer_urls: None,
            wait_timeout: Duration::from_secs(2),
            pki_from: None,
            new_cluster: false,
            node: NodeFacts::default(),
        }
    }

    #[test]
    fn plan_comes_from_the_manifest_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), true);
        let plan = Plan::build(&req).unwrap();
        assert_eq!(plan.restore.name, "n1");
        assert_eq!(plan.restore.initial_cluster, "n1=http://127.0.0.1:2");
        assert_eq!(plan.restore.initial_cluster_token, "tok");
        assert_eq!(plan.restore.data_dir, dir.path().join("var-lib-etcd"));
        assert_eq!(plan.old_data_dir, Some(dir.path().join("var-lib-etcd.etcdguard-T1")));
        assert_eq!(plan.manifests.len(), 2);
        assert!(plan.steps().len() >= 6);
        assert!(req.kubernetes_dir.join("manifests/etcd.yaml").exists());
        assert!(!plan.parked_dir.exists());
    }

    #[test]
    fn new_cluster_restores_this_member_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = node(dir.path(), true);
        let m = req.kubernetes_dir.join("manifests/etcd.yaml");
        std::fs::write(
            &m,
            std::fs::read_to_string(&m).unwrap().replace(
                "--initial-cluster=n1=http://127.0.0.1:2",
                "\"--initial-cluster=n1=http://127.0.0.1:2,n2=http://127.0.0.2:2\"",
            ),
        )
        .unwrap();
        assert_eq!(
            Plan::build(&req).unwrap().restore.initial_cluster,
            "n1=http://127.0.0.1:2,n2=http://127.0.0.2:2"
        );
        req.new_cluster = true;
        assert_eq!(Plan::build(&req).unwrap().restore.initial_cluster, "n1=http://127.0.0.1:2");
    }

    #[test]
    fn a_failed_restore_puts_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), true);
        let plan = Plan::build(&req).unwrap();
        let mut seen = None;
        let err = plan
            .execute(
                &mut |spec| {
                    seen = Some((
                        spec.data_dir.exists(),
                        req.kubernetes_dir.join("manifests/etcd.yaml").exists(),
                    ));
                    Err("the snapshot is damaged".into())
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(
            seen,
            Some((false, false)),
            "restore runs with the data dir moved aside and the pods stopped"
        );
        assert!(err.to_string().contains("the snapshot is damaged"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("var-lib-etcd/member/snap/db")).unwrap(), b"old");
        assert!(
            req.kubernetes_dir.join("manifests/etcd.yaml").exists()
                && req.kubernetes_dir.join("manifests/kube-scheduler.yaml").exists()
        );
        assert!(
            !plan.parked_dir.exists() && !dir.path().join("var-lib-etcd.etcdguard-T1").exists()
        );
    }

    #[test]
    fn a_failed_restore_puts_the_old_pki_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = node(dir.path(), true);
        std::fs::create_dir_all(req.kubernetes_dir.join("pki")).unwrap();
        std::fs::write(req.kubernetes_dir.join("pki/ca.crt"), "current").unwrap();
        let staged = req.kubernetes_dir.join(".staged-pki");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("ca.crt"), "from backup").unwrap();
        req.pki_from = Some(staged.clone());
        let plan = Plan::build(&req).unwrap();
        let mut during = String::new();
        plan.execute(
            &mut |_| {
                during = std::fs::read_to_string(req.kubernetes_dir.join("pki/ca.crt")).unwrap();
                Err("no".into())
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(during, "from backup", "the backup's PKI is in place while restoring");
        assert_eq!(
            std::fs::read_to_string(req.kubernetes_dir.join("pki/ca.crt")).unwrap(),
            "current"
        );
        assert_eq!(std::fs::read_to_string(staged.join("ca.crt")).unwrap(), "from backup");
        assert!(!req.kubernetes_dir.join("pki.etcdguard-T1").exists());
    }

    #[test]
    fn a_pod_that_does_not_stop_is_given_back_its_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = node(dir.path(), true);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let m = req.kubernetes_dir.join("manifests/etcd.yaml");
        std::fs::write(
            &m,
            std::fs::read_to_string(&m)
                .unwrap()
                .replace("127.0.0.1:1", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        req.wait_timeout = Duration::from_millis(600);
        let plan = Plan::build(&req).unwrap();
        let err = plan.execute(&mut |_| panic!("must not restore"), &mut |_| {}).unwrap_err();
        assert!(matches!(err, NodeError::StillRunning { .. }), "{err}");
        assert!(m.exists() && dir.path().join("var-lib-etcd/member/snap/db").exists());
        drop(listener);
    }

    #[test]
    fn park_then_restore_then_unpark_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = node(dir.path(), true);
        let manifests = req.kubernetes_dir.join("manifests");
        std::fs::write(manifests.join("kube-apiserver.yaml"), "kind: Pod\nspec:\n  containers:\n  - command: [/bin/sh, -c, \"exec hyperkube kube-apiserver --secure-port=1\"]\n").unwrap();
        let preq = park::ParkRequest {
            manifests_dir: manifests.clone(),
            etcd_manifest: None,
            stamp: "P1".into(),
            wait_timeout: Duration::from_secs(2),
            node: NodeFacts::default(),
        };
        let p = park::Park::build(&preq).unwrap();
        assert_eq!(p.to_move.len(), 2, "etcd and the API server, nothing else");
        p.execute(&mut |_| {}).unwrap();
        assert!(
            !manifests.join("etcd.yaml").exists()
                && !manifests.join("kube-apiserver.yaml").exists()
        );
        assert!(manifests.join("kube-scheduler.yaml").exists());
        // Twice is fine: nothing more to move.
        let again =
            park::Park::build(&park::ParkRequest { stamp: "P2".into(), ..preq.clone() }).unwrap();
        assert!(again.already_parked && again.to_move.is_empty());
        again.execute(&mut |_| {}).unwrap();
        assert_eq!(parked_dirs(&manifests).len(), 1);

        // A restore on the parked node uses the parked manifests and, failing, leaves them parked.
        req.stamp = "T2".into();
        let plan = Plan::build(&req).unwrap();
        assert!(
            plan.already_parked && plan.steps()[0].contains("already parked"),
            "{:?}",
            plan.steps()
        );
        plan.execute(&mut |_| Err("no".into()), &mut |_| {}).unwrap_err();
        assert!(!manifests.join("etcd.yaml").exists(), "a failed restore unparked a parked node");
        assert_eq!(std::fs::read(dir.path().join("var-lib-etcd/member/snap/db")).unwrap(), b"old");

        let u = park::Unpark::build(&preq).unwrap().expect("parked");
        u.execute(&mut |_| {}).unwrap_err(); // nothing runs etcd here, so it never serves
        assert!(
            manifests.join("etcd.yaml").exists() && manifests.join("kube-apiserver.yaml").exists()
        );
        assert!(parked_dirs(&manifests).is_empty());
        assert!(park::Unpark::build(&preq).unwrap().is_none(), "nothing parked");
    }

    #[test]
    fn the_restored_dir_gets_the_old_ones_owner_and_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), true);
        let data = dir.path().join("var-lib-etcd");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        let euid = rustix::process::geteuid().as_raw();
        let uid = if euid == 0 { 2001 } else { euid };
        std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
        let plan = Plan::build(&req).unwrap();
        assert!(
            plan.steps().iter().any(|s| s.contains(&format!("owner {uid}:{uid}, mode 0750"))),
            "{:?}",
            plan.steps()
        );
        // The restore writes as root with private modes; nothing runs etcd, so the wait fails.
        let _ = plan.execute(
            &mut |spec| {
                std::fs::create_dir_all(spec.data_dir.join("member/snap")).unwrap();
                std::fs::write(spec.data_dir.join("member/snap/db"), b"new").unwrap();
                std::fs::set_permissions(&spec.data_dir, std::fs::Permissions::from_mode(0o700))
                    .unwrap();
                Ok(())
            },
            &mut |_| {},
        );
        let m = std::fs::metadata(&data).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, uid, 0o750));
        assert_eq!(std::fs::metadata(data.join("member/snap/db")).unwrap().uid(), uid);
    }

    #[test]
    fn a_snapshot_from_a_newer_minor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), true);
        let mut etcd = Plan::build(&req).unwrap().etcd;
        etcd.image = Some("registry.k8s.io/etcd:3.5.9-0".into());
        etcd.image_version = Some((3, 5));
        let err =
            check_snapshot_version(&etcd, Some("3.6.0"), Some("3.6.0")).unwrap_err().to_string();
        assert!(err.contains("storage version 3.6.0") && err.contains("etcd 3.5"), "{err}");
        assert!(
            check_snapshot_version(&etcd, None, Some("3.6.0")).is_err(),
            "cluster version when there is no storage version"
        );
        assert_eq!(
            check_snapshot_version(&etcd, Some(""), Some("3.5.0")).unwrap(),
            None,
            "an empty storageVersion (mid-migration) falls back"
        );
        assert_eq!(check_snapshot_version(&etcd, None, Some("3.4.0")).unwrap(), None);
        assert!(check_snapshot_version(&etcd, None, None)
            .unwrap()
            .unwrap()
            .contains("no storage or cluster version"));
        etcd.image_version = None;
        assert!(check_snapshot_version(&etcd, None, Some("3.6.0"))
            .unwrap()
            .unwrap()
            .contains("cannot tell"));
    }

    #[test]
    fn a_manifest_copy_outside_the_manifests_dir_gives_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = node(dir.path(), true);
        let live = req.kubernetes_dir.join("manifests/etcd.yaml");
        let copy = dir.path().join("etcd-copy.yaml");
        std::fs::write(
            &copy,
            std::fs::read_to_string(&live).unwrap().replace("--name=n1", "--name=written-out"),
        )
        .unwrap();
        req.etcd_manifest = Some(copy.clone());
        req.manifests_dir = Some(req.kubernetes_dir.join("manifests"));
        let plan = Plan::build(&req).unwrap();
        assert_eq!(plan.restore.name, "written-out", "values from the copy");
        assert!(
            plan.manifests.contains(&live),
            "the kubelet's own manifest is parked: {:?}",
            plan.manifests
        );
        assert!(
            plan.steps()
                .iter()
                .any(|s| s.contains(&format!("member values read from {}", copy.display()))),
            "{:?}",
            plan.steps()
        );
        // A copy of another member's manifest (another data dir) is refused.
        std::fs::write(
            &copy,
            std::fs::read_to_string(&live)
                .unwrap()
                .replace("data-dir=/var/lib/etcd", "data-dir=/var/lib/etcd/other"),
        )
        .unwrap();
        assert!(Plan::build(&req).unwrap_err().to_string().contains("is not a copy of"));
        // Without the kubelet's manifest in the manifests dir there is nothing to park.
        std::fs::remove_file(&live).unwrap();
        assert!(Plan::build(&req).unwrap_err().to_string().contains("read as a copy"));
    }

    #[test]
    fn preflight_refuses_a_node_without_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), false);
        std::fs::remove_file(req.kubernetes_dir.join("manifests/etcd.yaml")).unwrap();
        assert!(matches!(Plan::build(&req), Err(NodeError::Preflight(_))));
    }
}
