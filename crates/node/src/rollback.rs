//! `node rollback --since STAMP`: put a node back as it was before a recovery that failed
//! part way (`cluster recover` runs it on every host it touched). What `node restore` and
//! `node join` did since STAMP is undone by what they left behind, never by guessing:
//!
//! - the data dir they moved aside (`<data-dir>.etcdguard-<stamp>`, the oldest one at or
//!   after STAMP) is the node's original data dir: the current one (the new cluster's) is
//!   moved aside as `<data-dir>.etcdguard-rolledback-<now>` (kept, never deleted) and the
//!   original renamed back; with none, the node had no data dir and the current one goes aside;
//! - the manifest copy `node join` kept (`etcdguard-manifest-copies/<name>.<stamp>`, the
//!   oldest at or after STAMP) is the original etcd manifest and is written back atomically
//!   (the copy is then renamed `….rolledback`, so a second run finds nothing left to undo).
//!
//! The node is parked first (etcd must be down while its data dir moves) and stays parked;
//! `unpark` puts the manifests back and waits for etcd's port only (an etcd without quorum
//! serves no API server, and the state before the recovery may be exactly that).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::park::{Park, ParkRequest, Unpark};
use crate::{io, secs, NodeError, Timings};

/// A stamp as etcdguard writes it in names: `20261123T124500Z`.
pub fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(|c| c.is_ascii_digit())
}

/// What to undo.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub park: ParkRequest,
    /// Undo what was moved aside at or after this stamp (the host's clock, UTC).
    pub since: String,
    /// Put the manifests back afterwards (the node ran before the recovery).
    pub unpark: bool,
}

/// The rollback, found; nothing changed yet.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub park: Park,
    pub data_dir: PathBuf,
    /// The data dir moved aside since the stamp: the original, to put back.
    pub original_data_dir: Option<PathBuf>,
    /// Where the current data dir goes (when there is one).
    pub current_aside: Option<PathBuf>,
    /// The etcd manifest as it was before `node join` rewrote it.
    pub original_manifest: Option<PathBuf>,
    pub unpark: bool,
}

/// The oldest `<prefix><stamp><suffix>` entry of `dir` with stamp ≥ `since`.
fn oldest_since(dir: &Path, prefix: &str, since: &str) -> Option<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stamp = name.strip_prefix(prefix)?.to_string();
            (is_stamp(&stamp) && stamp.as_str() >= since).then(|| (stamp, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().next().map(|(_, p)| p)
}

impl Rollback {
    pub fn build(req: &RollbackRequest) -> Result<Rollback, NodeError> {
        if !is_stamp(&req.since) {
            return Err(NodeError::Preflight(format!(
                "--since {:?} is not a stamp like 20261123T124500Z (UTC, the host's clock)",
                req.since
            )));
        }
        let park = Park::build(&req.park)?;
        let data_dir = park.etcd.data_dir.clone();
        let parent = data_dir.parent().unwrap_or(Path::new("/"));
        let base = data_dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let original_data_dir = oldest_since(parent, &format!("{base}.etcdguard-"), &req.since);
        let current_aside = data_dir.exists().then(|| {
            let mut n = data_dir.file_name().unwrap_or_default().to_os_string();
            n.push(format!(".etcdguard-rolledback-{}", req.park.stamp));
            data_dir.with_file_name(n)
        });
        if let Some(a) = current_aside.as_ref().filter(|a| a.exists()) {
            return Err(NodeError::Preflight(format!(
                "{} already exists; run again in a second",
                a.display()
            )));
        }
        let manifest_name =
            park.etcd_manifest.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let copies =
            park.manifests_dir.parent().unwrap_or(Path::new("/")).join("etcdguard-manifest-copies");
        let original_manifest = oldest_since(&copies, &format!("{manifest_name}."), &req.since);
        Ok(Rollback {
            park,
            data_dir,
            original_data_dir,
            current_aside,
            original_manifest,
            unpark: req.unpark,
        })
    }

    /// True when there is nothing to undo but (maybe) the park.
    pub fn data_untouched(&self) -> bool {
        self.original_data_dir.is_none() && self.original_manifest.is_none()
    }

    pub fn steps(&self) -> Vec<String> {
        let mut s: Vec<String> =
            self.park.steps().into_iter().map(|s| format!("park: {s}")).collect();
        match (&self.original_data_dir, &self.current_aside) {
            (Some(orig), Some(cur)) => s.push(format!(
                "move the data dir {} aside to {} and the original {} back",
                self.data_dir.display(),
                cur.display(),
                orig.display()
            )),
            (Some(orig), None) => {
                s.push(format!("move the original data dir {} back", orig.display()))
            }
            (None, Some(cur)) if self.original_manifest.is_some() => s.push(format!(
                "move the data dir {} aside to {} (there was none before)",
                self.data_dir.display(),
                cur.display()
            )),
            _ => s.push(format!(
                "the data dir {} stays (nothing was moved aside since the stamp)",
                self.data_dir.display()
            )),
        }
        match &self.original_manifest {
            Some(m) => s.push(format!(
                "write etcd's manifest back as it was ({} → {})",
                m.display(),
                self.park
                    .parked_dir
                    .join(self.park.etcd_manifest.file_name().unwrap_or_default())
                    .display()
            )),
            None => s.push("etcd's manifest stays (it was not rewritten since the stamp)".into()),
        }
        if self.unpark {
            s.push(format!(
                "unpark: move the manifests back to {} and wait (at most {} s) for etcd's port",
                self.park.manifests_dir.display(),
                self.park.wait_timeout.as_secs()
            ));
        } else {
            s.push("leave the manifests parked".into());
        }
        s
    }

    /// Carries the rollback out; each step is skipped when done, so it can run again.
    pub fn execute(
        &self,
        req: &RollbackRequest,
        log: &mut dyn FnMut(&str),
    ) -> Result<Timings, NodeError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        self.park.execute(log)?;
        timings.steps.push(("parked".into(), started.elapsed()));
        let move_current = self.original_data_dir.is_some() || self.original_manifest.is_some();
        if let (true, Some(cur)) = (move_current, &self.current_aside) {
            if self.data_dir.exists() {
                std::fs::rename(&self.data_dir, cur)
                    .map_err(|e| io("moving aside", &self.data_dir, e))?;
                log(&format!("moved {} aside to {}", self.data_dir.display(), cur.display()));
            }
        }
        if let Some(orig) = &self.original_data_dir {
            std::fs::rename(orig, &self.data_dir).map_err(|e| io("moving back", orig, e))?;
            log(&format!(
                "moved the original data dir {} back to {}",
                orig.display(),
                self.data_dir.display()
            ));
        }
        if let Some(copy) = &self.original_manifest {
            let parked = Park::build(&req.park)?;
            let target =
                parked.parked_dir.join(parked.etcd_manifest.file_name().unwrap_or_default());
            write_back(copy, &target)?;
            // Marked used, so a second run (the unpark pass) does not take it for new work.
            let mut used = copy.as_os_str().to_os_string();
            used.push(".rolledback");
            std::fs::rename(copy, &used).map_err(|e| io("marking as used", copy, e))?;
            log(&format!("wrote {} back as {}", copy.display(), target.display()));
        }
        timings.steps.push(("put back".into(), started.elapsed()));
        if self.unpark {
            if let Some(u) = Unpark::build(&req.park)? {
                u.move_back()?;
                let t = Instant::now();
                u.wait_etcd(t + self.park.wait_timeout)?;
                log(&format!("etcd runs again after {}", secs(t.elapsed())));
                timings.steps.push(("etcd running".into(), started.elapsed()));
            }
        }
        Ok(timings)
    }
}

/// Copies `from` over `to` through a hidden temp file (fsync, rename), keeping `to`'s mode.
fn write_back(from: &Path, to: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.parent().unwrap_or(Path::new("."));
    let name = to.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let tmp = dir.join(format!(".{name}.etcdguard-tmp"));
    let mode = std::fs::metadata(to).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    std::fs::copy(from, &tmp).map_err(|e| io("copying", from, e))?;
    let f = std::fs::File::open(&tmp).map_err(|e| io("opening", &tmp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| io("renaming into place", to, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor).
pub fn free_bytes(path: &Path) -> Result<u64, NodeError> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let st = rustix::fs::statvfs(p).map_err(|e| io("statvfs", p, e.into()))?;
    Ok(st.f_bavail * st.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_recognised() {
        assert!(is_stamp("20261123T124500Z"));
        assert!(!is_stamp("rolledback-20261123T124500Z"));
        assert!(!is_stamp("20261123T1245Z"));
    }

    #[test]
    fn oldest_entry_at_or_after_the_stamp() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "etcd.etcdguard-20261101T000000Z",
            "etcd.etcdguard-20261201T000000Z",
            "etcd.etcdguard-20261202T000000Z",
            "etcd.etcdguard-rolledback-20261203T000000Z",
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let got = oldest_since(d.path(), "etcd.etcdguard-", "20261115T000000Z").unwrap();
        assert!(got.ends_with("etcd.etcdguard-20261201T000000Z"), "{got:?}");
        assert!(oldest_since(d.path(), "etcd.etcdguard-", "20261231T000000Z").is_none());
    }
}
