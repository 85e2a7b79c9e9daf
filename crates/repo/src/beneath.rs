//! Writing files under a directory without ever following a symlink there.
//!
//! `backup restore --files-to DIR` runs as root on a control-plane node from a manifest
//! an attacker with write access to an unencrypted repository can edit. Every path is
//! therefore resolved one component at a time from a descriptor of `DIR`, each directory
//! opened with `O_NOFOLLOW | O_DIRECTORY` (a symlink there is refused, whoever made it),
//! and every file created with `O_CREAT | O_EXCL | O_NOFOLLOW` relative to its parent's
//! descriptor: nothing is written outside `DIR`, and nothing that exists is overwritten.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Component, Path};

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

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

/// Opens directory `name` in `parent` without following a symlink.
pub fn open_dir_at(parent: &File, name: &OsStr) -> Result<File, BeneathError> {
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is owned below.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                BeneathError::Symlink(name.to_string_lossy().into_owned())
            }
            _ => BeneathError::Io(e),
        });
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens (creating with mode 0700 when missing) directory `name` in `parent`; an existing
/// symlink or non-directory there is refused.
pub fn mkdir_at(parent: &File, name: &OsStr) -> Result<File, BeneathError> {
    let c = cstr(name)?;
    // SAFETY: as above.
    let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(BeneathError::Io(e));
        }
    }
    open_dir_at(parent, name)
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
    let c = cstr(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: as above.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EEXIST) {
            BeneathError::Exists
        } else {
            BeneathError::Io(e)
        });
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Links `from` to `to`, both in `dir`; fails if `to` exists (unlike a rename).
pub fn link_at(dir: &File, from: &OsStr, to: &OsStr) -> Result<(), BeneathError> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: as above; flags 0: do not follow `from` if it were a symlink.
    let rc = unsafe { libc::linkat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr(), 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EEXIST) {
            BeneathError::Exists
        } else {
            BeneathError::Io(e)
        });
    }
    Ok(())
}

pub fn unlink_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: as above.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
}

/// Creates symlink `name` in `dir` pointing at `target` (which is not followed here).
pub fn symlink_at(target: &OsStr, dir: &File, name: &OsStr) -> Result<(), BeneathError> {
    let (t, n) = (cstr(target)?, cstr(name)?);
    // SAFETY: as above.
    let rc = unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EEXIST) {
            BeneathError::Exists
        } else {
            BeneathError::Io(e)
        });
    }
    Ok(())
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
