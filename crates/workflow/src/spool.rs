//! Private scratch directories (`.etcdguard-verify-<random>`) for snapshots on their way in
//! or out of a repository: a live backup's spool, a verify's reassembled copy.
//!
//! A spool holds a plaintext snapshot (every Secret of the cluster), so it is 0700 and its
//! files 0600, and it must not outlive its run. A normal end removes it (on drop); a killed
//! run cannot, so each new spool first sweeps the dead ones beside it. "Dead" is judged by
//! an flock the owner holds on `<spool>/.lock` for its whole life, never by a PID (a PID
//! means nothing across containers sharing a temp dir): the kernel drops the lock when the
//! owner dies, however it dies.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Name prefix of every spool directory.
pub const PREFIX: &str = ".etcdguard-verify-";
const LOCK: &str = ".lock";
/// A spool without a lock file is one being set up (the lock is put in place within
/// microseconds) or one of a version before locks; only the second is ever this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(15 * 60);

/// A private scratch directory, locked while it lives and removed on drop.
pub struct Spool {
    dir: PathBuf,
    _lock: File,
}

impl Spool {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d != &self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn try_flock(file: &File) -> bool {
    file.try_lock().is_ok()
}

/// Creates a new spool under `parent`, after removing the spools of dead runs there.
/// Returns the spool and the paths it swept.
pub fn create(parent: &Path) -> Result<(Spool, Vec<PathBuf>)> {
    let swept = sweep_dead(parent);
    let dir = parent.join(format!("{PREFIX}{:016x}", rand_u64()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
        Error::failure(format!("{}: cannot create a scratch directory: {e}", dir.display()))
    })?;
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_dir_all(&dir);
        Error::failure(format!("{}: cannot lock the scratch directory: {e}", dir.display()))
    };
    // Locked under a temporary name, then renamed: a sweeper never sees an unlocked `.lock`.
    let staging = dir.join(".lock.new");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(fail)?;
    if !try_flock(&lock) {
        return Err(fail(std::io::Error::last_os_error()));
    }
    std::fs::rename(&staging, dir.join(LOCK)).map_err(fail)?;
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(dir.clone());
    Ok((Spool { dir, _lock: lock }, swept))
}

/// Removes the spools under `parent` whose owner is gone; returns what it removed. Errors
/// are ignored: sweeping is a courtesy, the new run does not depend on it.
pub fn sweep_dead(parent: &Path) -> Vec<PathBuf> {
    let mut swept = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return swept };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        // Only our own directories (not a symlink planted in a shared temp dir).
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        if !meta.is_dir() || !owned_by_us(&meta) {
            continue;
        }
        let dir = entry.path();
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(dir.join(LOCK))
        {
            // Locked by its owner: alive. Otherwise removed while we hold the lock.
            Ok(lock) => {
                if try_flock(&lock) && std::fs::remove_dir_all(&dir).is_ok() {
                    swept.push(dir);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let age =
                    meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok());
                if age.is_some_and(|a| a > UNLOCKED_GRACE) && std::fs::remove_dir_all(&dir).is_ok()
                {
                    swept.push(dir);
                }
            }
            Err(_) => {}
        }
    }
    swept
}

fn owned_by_us(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == rustix::process::geteuid().as_raw()
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.finish()
}

/// Spools of this process still alive, for [`remove_live`].
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes every spool this process still has (a stop that abandons a running step).
pub fn remove_live() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for dir in live {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_spool_is_private_locked_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let (spool, swept) = create(parent.path()).unwrap();
        assert!(swept.is_empty());
        let mode = std::fs::metadata(spool.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let lock = spool.path().join(LOCK);
        assert_eq!(std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777, 0o600);
        // Another open file description cannot take the lock while the spool lives.
        let other = File::open(&lock).unwrap();
        assert!(!try_flock(&other));
        // So a sweep (e.g. by a concurrent run) keeps it.
        assert!(sweep_dead(parent.path()).is_empty());
        assert!(spool.path().exists());
        let dir = spool.path().to_path_buf();
        drop(spool);
        assert!(!dir.exists());
    }

    #[test]
    fn sweep_removes_unlocked_and_old_lockless_spools_only() {
        let parent = tempfile::tempdir().unwrap();
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), b"").unwrap();
        std::fs::write(dead.join("snapshot.db.part"), b"secret").unwrap();
        // Lockless and young: maybe a run between mkdir and its lock; kept.
        let young = parent.path().join(format!("{PREFIX}young"));
        std::fs::create_dir(&young).unwrap();
        // Lockless and old: an older version's leftover; removed.
        let old = parent.path().join(format!("{PREFIX}old"));
        std::fs::create_dir(&old).unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        File::open(&old).unwrap().set_modified(past).unwrap();
        let other = parent.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();
        let mut swept = sweep_dead(parent.path());
        swept.sort();
        let mut want = vec![dead.clone(), old.clone()];
        want.sort();
        assert_eq!(swept, want);
        assert!(!dead.exists() && !old.exists());
        assert!(young.exists() && other.exists());
    }

    #[test]
    fn remove_live_removes_this_process_spools() {
        let parent = tempfile::tempdir().unwrap();
        let (spool, _) = create(parent.path()).unwrap();
        let dir = spool.path().to_path_buf();
        remove_live();
        assert!(!dir.exists());
        drop(spool);
    }
}
