//! Restore orchestration on a control-plane node whose etcd and API server are static pods
//! (kubeadm and its relatives). The runbook's steps become one [`Plan`]:
//!
//! 1. move the static pod manifests out of the manifests directory, so the kubelet stops
//!    etcd, the API server and the rest of the control plane;
//! 2. wait until etcd's client port is closed, its database is no longer locked, and the API
//!    server's port is closed;
//! 3. move the data directory (and WAL directory) aside, under a name with a time stamp;
//! 4. restore the snapshot into the data directory with the member name, peer URLs and
//!    cluster taken from the etcd manifest (the restore itself is the caller's, so this crate
//!    does not depend on the storage code);
//! 5. put the manifests back and wait until the new etcd serves.
//!
//! A failure before step 5 undoes what was done (the old data directory and the manifests go
//! back), so the node is left as it was. Nothing is deleted: the old data directory stays
//! beside the new one.

pub mod pods;
pub mod pki;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use pods::{read_apiserver_pod, read_etcd_pod, ApiServerPod, EtcdPod};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}: {1}")]
    Manifest(PathBuf, String),
    #[error("{0}")]
    Preflight(String),
    #[error("{what} still running after {secs} s; the manifests were put back, nothing else was changed")]
    StillRunning { what: String, secs: u64 },
    #[error("restore failed: {0}; the old data directory and the manifests were put back")]
    Restore(String),
    #[error("{0}")]
    Io(String),
    #[error("the restored etcd did not start within {secs} s; the restored data is in {data_dir}, the old one in {old}; check the kubelet and etcd logs")]
    NotStarted { secs: u64, data_dir: String, old: String },
}

/// What to restore with; `None` fields come from the etcd manifest.
#[derive(Debug, Clone)]
pub struct Request {
    /// `/etc/kubernetes` (the manifests are in its `manifests/`).
    pub kubernetes_dir: PathBuf,
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
    pub manifests: Vec<PathBuf>,
    pub etcd: EtcdPod,
    pub apiserver: Option<ApiServerPod>,
    /// Where the current data dir goes (`None` when there is none).
    pub old_data_dir: Option<PathBuf>,
    pub old_wal_dir: Option<PathBuf>,
    pub restore: RestoreSpec,
    pub pki: Option<PkiSwap>,
    pub wait_timeout: Duration,
}

fn aside(path: &Path, stamp: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".etcdguard-{stamp}"));
    path.with_file_name(name)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> NodeError {
    NodeError::Io(format!("{what} {}: {e}", path.display()))
}

impl Plan {
    /// Reads the manifests and checks that every step can be taken; changes nothing.
    pub fn build(req: &Request) -> Result<Plan, NodeError> {
        let manifests_dir = req.kubernetes_dir.join("manifests");
        let mut manifests: Vec<PathBuf> = std::fs::read_dir(&manifests_dir)
            .map_err(|e| io("reading", &manifests_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        manifests.sort();
        let etcd_manifest = manifests
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s == "etcd"))
            .cloned()
            .ok_or_else(|| NodeError::Preflight(format!("no etcd.yaml in {}: is etcd a static pod on this node?", manifests_dir.display())))?;
        let etcd = read_etcd_pod(&etcd_manifest)?;
        let apiserver = match manifests.iter().find(|p| p.file_stem().is_some_and(|s| s == "kube-apiserver")) {
            Some(p) => Some(read_apiserver_pod(p)?),
            None => None,
        };
        let parked_dir = aside(&manifests_dir, &req.stamp);
        let data_dir = etcd.data_dir.clone();
        let old_data_dir = data_dir.exists().then(|| aside(&data_dir, &req.stamp));
        let old_wal_dir = etcd.wal_dir.as_ref().filter(|w| w.exists()).map(|w| aside(w, &req.stamp));
        let pki = match &req.pki_from {
            Some(staged) => {
                if !staged.is_dir() {
                    return Err(NodeError::Preflight(format!("{} is not a directory of PKI files", staged.display())));
                }
                let current = req.kubernetes_dir.join("pki");
                Some(PkiSwap { aside: aside(&current, &req.stamp), current, staged: staged.clone() })
            }
            None => None,
        };
        for p in [Some(&parked_dir), old_data_dir.as_ref(), old_wal_dir.as_ref(), pki.as_ref().map(|p| &p.aside)].into_iter().flatten() {
            if p.exists() {
                return Err(NodeError::Preflight(format!("{} already exists; use another time stamp", p.display())));
            }
        }
        let name = req.name.clone().unwrap_or_else(|| etcd.name.clone());
        let peer_urls = req
            .initial_advertise_peer_urls
            .clone()
            .or_else(|| etcd.initial_advertise_peer_urls.clone())
            .unwrap_or_else(|| "http://localhost:2380".into());
        let initial_cluster = req
            .initial_cluster
            .clone()
            .or_else(|| etcd.initial_cluster.clone())
            .unwrap_or_else(|| format!("{name}={peer_urls}"));
        let restore = RestoreSpec {
            data_dir,
            wal_dir: etcd.wal_dir.clone(),
            name,
            initial_cluster,
            initial_cluster_token: req
                .initial_cluster_token
                .clone()
                .or_else(|| etcd.initial_cluster_token.clone())
                .unwrap_or_else(|| "etcd-cluster".into()),
            initial_advertise_peer_urls: peer_urls,
        };
        Ok(Plan { manifests_dir, parked_dir, manifests, etcd, apiserver, old_data_dir, old_wal_dir, restore, pki, wait_timeout: req.wait_timeout })
    }

    /// The steps, in words, as `--dry-run` prints them.
    pub fn steps(&self) -> Vec<String> {
        let secs = self.wait_timeout.as_secs();
        let mut s = Vec::new();
        let names: Vec<String> = self.manifests.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        s.push(format!(
            "move the static pod manifests ({}) from {} to {}: the kubelet stops those pods",
            names.join(", "),
            self.manifests_dir.display(),
            self.parked_dir.display()
        ));
        let mut waits = vec![format!("etcd's client port{} {} closed", if self.etcd.client_addrs.len() > 1 { "s" } else { "" }, self.etcd.client_addrs.join(", "))];
        waits.push(format!("{} unlocked", self.etcd.data_dir.join("member/snap/db").display()));
        if let Some(a) = &self.apiserver {
            waits.push(format!("the API server's port {} closed", a.addr));
        }
        s.push(format!("wait (at most {secs} s) for {}", waits.join(", ")));
        match &self.old_data_dir {
            Some(old) => s.push(format!("move the data dir {} to {}", self.etcd.data_dir.display(), old.display())),
            None => s.push(format!("(no data dir at {} to move aside)", self.etcd.data_dir.display())),
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
        s.push(format!(
            "restore the snapshot into {} as member {:?} of --initial-cluster {} (--initial-cluster-token {}, --initial-advertise-peer-urls {}){}",
            r.data_dir.display(),
            r.name,
            r.initial_cluster,
            r.initial_cluster_token,
            r.initial_advertise_peer_urls,
            r.wal_dir.as_ref().map(|w| format!(", WAL in {}", w.display())).unwrap_or_default()
        ));
        s.push(format!("move the manifests back to {}: the kubelet starts the control plane again", self.manifests_dir.display()));
        s.push(format!("wait (at most {secs} s) until etcd serves on {} with the restored data", self.etcd.client_addrs.join(", ")));
        s
    }

    /// Carries the plan out. `restore` writes the snapshot into the spec's data dir; `log`
    /// hears each step as it starts.
    pub fn execute(
        &self,
        restore: &mut dyn FnMut(&RestoreSpec) -> Result<(), String>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), NodeError> {
        let steps = self.steps();
        let mut step = 0;
        let mut say = |log: &mut dyn FnMut(&str)| {
            step += 1;
            log(&format!("[{step}/{}] {}", steps.len(), steps[step - 1]));
        };

        say(log);
        std::fs::create_dir(&self.parked_dir).map_err(|e| io("creating", &self.parked_dir, e))?;
        let mut moved = Vec::new();
        for m in &self.manifests {
            let to = self.parked_dir.join(m.file_name().unwrap_or_default());
            if let Err(e) = std::fs::rename(m, &to) {
                self.put_back(&moved);
                return Err(io("moving", m, e));
            }
            moved.push(to);
        }

        say(log);
        let deadline = Instant::now() + self.wait_timeout;
        let db = self.etcd.data_dir.join("member/snap/db");
        let mut waits: Vec<(String, Box<dyn Fn() -> bool>)> = Vec::new();
        for a in self.etcd.client_addrs.clone() {
            waits.push((format!("etcd (port {a})"), Box::new(move || !port_open(&a))));
        }
        let db2 = db.clone();
        waits.push((format!("etcd (lock on {})", db.display()), Box::new(move || !locked(&db2))));
        if let Some(a) = self.apiserver.clone() {
            waits.push((format!("kube-apiserver (port {})", a.addr), Box::new(move || !port_open(&a.addr))));
        }
        for (what, done) in &waits {
            while !done() {
                if Instant::now() > deadline {
                    self.put_back(&moved);
                    return Err(NodeError::StillRunning { what: what.clone(), secs: self.wait_timeout.as_secs() });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }

        say(log);
        let mut set_aside: Vec<(PathBuf, PathBuf)> = Vec::new();
        let pairs = [(Some(&self.etcd.data_dir), self.old_data_dir.as_ref()), (self.etcd.wal_dir.as_ref(), self.old_wal_dir.as_ref())];
        for (from, to) in pairs.into_iter().filter_map(|(f, t)| Some((f?, t?))) {
            if let Err(e) = std::fs::rename(from, to) {
                self.undo_aside(&set_aside);
                self.put_back(&moved);
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
                self.put_back(&moved);
                return Err(NodeError::Io(format!("could not put {} in place of {}; nothing was changed", p.staged.display(), p.current.display())));
            }
            if had_current {
                set_aside.push((p.current.clone(), p.aside.clone()));
            }
        }

        say(log);
        if let Err(e) = restore(&self.restore) {
            // The restore builds in a hidden temporary dir and renames at the end, so on failure
            // the data dir does not exist; an empty one is removed so the old one fits back.
            let _ = std::fs::remove_dir(&self.restore.data_dir);
            self.undo_aside(&set_aside);
            self.put_back(&moved);
            return Err(NodeError::Restore(e));
        }

        say(log);
        self.put_back(&moved);
        if moved.iter().any(|m| m.exists()) {
            return Err(NodeError::Io(format!("could not move every manifest back from {}; move them to {} by hand", self.parked_dir.display(), self.manifests_dir.display())));
        }

        say(log);
        let deadline = Instant::now() + self.wait_timeout;
        while !(self.etcd.client_addrs.iter().any(|a| port_open(a)) && locked(&db)) {
            if Instant::now() > deadline {
                return Err(NodeError::NotStarted {
                    secs: self.wait_timeout.as_secs(),
                    data_dir: self.restore.data_dir.display().to_string(),
                    old: self.old_data_dir.as_ref().map_or("-".into(), |p| p.display().to_string()),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
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

/// Something accepts TCP connections at `addr` (`host:port`).
pub fn port_open(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = addr.to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

/// Another process holds the bbolt file lock on `db` (a running etcd does).
pub fn locked(db: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::File::open(db) else { return false };
    // SAFETY: flock(2) on a descriptor we own; the lock is released at once (and on close).
    unsafe {
        if libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 {
            return true;
        }
        libc::flock(f.as_raw_fd(), libc::LOCK_UN);
    }
    false
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
            stamp: "T1".into(),
            name: None,
            initial_cluster: None,
            initial_cluster_token: Some("tok".into()),
            initial_advertise_peer_urls: None,
            wait_timeout: Duration::from_secs(2),
            pki_from: None,
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
    fn a_failed_restore_puts_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), true);
        let plan = Plan::build(&req).unwrap();
        let mut seen = None;
        let err = plan
            .execute(
                &mut |spec| {
                    seen = Some((spec.data_dir.exists(), req.kubernetes_dir.join("manifests/etcd.yaml").exists()));
                    Err("the snapshot is damaged".into())
                },
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(seen, Some((false, false)), "restore runs with the data dir moved aside and the pods stopped");
        assert!(err.to_string().contains("the snapshot is damaged"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("var-lib-etcd/member/snap/db")).unwrap(), b"old");
        assert!(req.kubernetes_dir.join("manifests/etcd.yaml").exists() && req.kubernetes_dir.join("manifests/kube-scheduler.yaml").exists());
        assert!(!plan.parked_dir.exists() && !dir.path().join("var-lib-etcd.etcdguard-T1").exists());
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
        assert_eq!(std::fs::read_to_string(req.kubernetes_dir.join("pki/ca.crt")).unwrap(), "current");
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
        std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("127.0.0.1:1", &format!("127.0.0.1:{port}"))).unwrap();
        req.wait_timeout = Duration::from_millis(600);
        let plan = Plan::build(&req).unwrap();
        let err = plan.execute(&mut |_| panic!("must not restore"), &mut |_| {}).unwrap_err();
        assert!(matches!(err, NodeError::StillRunning { .. }), "{err}");
        assert!(m.exists() && dir.path().join("var-lib-etcd/member/snap/db").exists());
        drop(listener);
    }

    #[test]
    fn preflight_refuses_a_node_without_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let req = node(dir.path(), false);
        std::fs::remove_file(req.kubernetes_dir.join("manifests/etcd.yaml")).unwrap();
        assert!(matches!(Plan::build(&req), Err(NodeError::Preflight(_))));
    }
}
