//! Writing files under a directory without ever following a symlink there.
//!
//! `backup restore --files-to DIR` runs as root on a control-plane node from a manifest
//! an attacker with write access to an unencrypted repository can edit. Every path is
//! therefore resolved one component at a time from a descriptor of `DIR`, each directory
//! opened with `O_NOFOLLOW | O_DIRECTORY` (a symlink there is refused, whoever made it),
//! and every file created with `O_CREAT | O_EXCL | O_NOFOLLOW` relative to its parent's
//! descriptor: nothing is written outside `DIR`, and nothing that exists is overwritten.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Why a path could not be used.
#[derive(Debug)]
pub enum BeneathError {
    /// A component on the way is a symlink (or not a directory).
    Symlink(String),
    /// The final name exists already.
    Exists,
    Io(io::Error),
}

impl From<io::Error> for BeneathError {
    fn from(e: io::Error) -> Self {
        BeneathError::Io(e)
    }
}

impl From<Errno> for BeneathError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::EXIST => BeneathError::Exists,
            e => BeneathError::Io(e.into()),
        }
    }
}

/// Opens directory `name` in `parent` without following a symlink.
pub fn open_dir_at(parent: &File, name: &OsStr) -> Result<File, BeneathError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            Err(BeneathError::Symlink(name.to_string_lossy().into_owned()))
        }
        Err(e) => Err(BeneathError::Io(e.into())),
    }
}

/// Opens (creating with mode 0700 when missing) directory `name` in `parent`; an existing
/// symlink or non-directory there is refused.
pub fn mkdir_at(parent: &File, name: &OsStr) -> Result<File, BeneathError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => open_dir_at(parent, name),
        Err(e) => Err(BeneathError::Io(e.into())),
    }
}

/// Walks `rel` (normal components only) from `root`, creating missing directories, and
/// returns the descriptor of its last directory component.
pub fn mkdirs_beneath(root: &File, rel: &Path) -> Result<File, BeneathError> {
    let mut dir = root.try_clone()?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(BeneathError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain relative path",
            )));
        };
        dir = mkdir_at(&dir, name)?;
    }
    Ok(dir)
}

/// Opens an existing directory `rel` under `root`, never through a symlink.
pub fn open_beneath(root: &File, rel: &Path) -> Result<File, BeneathError> {
    let mut dir = root.try_clone()?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(BeneathError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain relative path",
            )));
        };
        dir = open_dir_at(&dir, name)?;
    }
    Ok(dir)
}

/// Creates file `name` in `parent` (0600, must not exist, never through a symlink).
pub fn create_file_at(parent: &File, name: &OsStr) -> Result<File, BeneathError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))?))
}

/// Links `from` to `to`, both in `dir`; fails if `to` exists (unlike a rename).
pub fn link_at(dir: &File, from: &OsStr, to: &OsStr) -> Result<(), BeneathError> {
    // No AT_SYMLINK_FOLLOW: a symlink at `from` is linked itself, not followed.
    Ok(rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?)
}

pub fn unlink_at(dir: &File, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

/// Creates symlink `name` in `dir` pointing at `target` (which is not followed here).
pub fn symlink_at(target: &OsStr, dir: &File, name: &OsStr) -> Result<(), BeneathError> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let root = File::open(dir.path()).unwrap();
        assert!(matches!(
            mkdirs_beneath(&root, Path::new("evil/sub")),
            Err(BeneathError::Symlink(_))
        ));
        assert!(matches!(open_beneath(&root, Path::new("evil")), Err(BeneathError::Symlink(_))));
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("dangling")).unwrap();
        assert!(matches!(create_file_at(&root, OsStr::new("dangling")), Err(BeneathError::Exists)));
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "written outside");
        let sub = mkdirs_beneath(&root, Path::new("a/b")).unwrap();
        create_file_at(&sub, OsStr::new("x")).unwrap();
        assert!(dir.path().join("a/b/x").is_file());
    }
}
