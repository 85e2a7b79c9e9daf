//! Who owns etcd's data dir. A restore runs as root and writes root-owned files with mode
//! 0700/0600; an etcd that runs as another user (GKE on-prem: uid 2001) cannot open them, and
//! on SELinux hosts a dir without the container's label is refused too. So the restored dir
//! gets what the old one had.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const SELINUX_XATTR: &std::ffi::CStr = c"security.selinux";

/// Owner, group, permission bits and SELinux context of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o700`).
    pub mode: u32,
    /// The `security.selinux` extended attribute, when the dir has one.
    pub selinux: Option<Vec<u8>>,
}

/// The SELinux context of `path` (not following a symlink); `None` when it has none or the
/// filesystem keeps no extended attributes.
fn selinux_of(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use rustix::io::Errno;
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, SELINUX_XATTR, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

fn set_selinux(path: &Path, context: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::lsetxattr(path, SELINUX_XATTR, context, rustix::fs::XattrFlags::empty())?)
}

impl Ownership {
    /// What `path` has now.
    pub fn of(path: &Path) -> io::Result<Ownership> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Ownership {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            selinux: selinux_of(path)?,
        })
    }

    /// `owner 2001:2001, mode 0700, SELinux context …`, for the plan.
    pub fn describe(&self) -> String {
        let label = match &self.selinux {
            Some(c) => {
                format!(", SELinux context {}", String::from_utf8_lossy(c).trim_end_matches('\0'))
            }
            None => String::new(),
        };
        format!("owner {}:{}, mode {:04o}{label}", self.uid, self.gid, self.mode)
    }

    /// `root` gets the owner, mode and context; everything under it the owner and context
    /// (files keep their own, private, modes). Symlinks are not followed.
    pub fn apply_tree(&self, root: &Path) -> io::Result<()> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::lchown(&p, Some(self.uid), Some(self.gid))?;
            if let Some(c) = &self.selinux {
                set_selinux(&p, c)?;
            }
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                for e in std::fs::read_dir(&p)? {
                    stack.push(e?.path());
                }
            }
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(self.mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_gets_the_owner_mode_and_label() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("etcd");
        std::fs::create_dir_all(root.join("member/snap")).unwrap();
        std::fs::write(root.join("member/snap/db"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("member/snap/db"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let is_root = rustix::process::geteuid().is_root();
        let (uid, gid) = if is_root {
            (2001, 2002)
        } else {
            (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
        };
        // A label is set only where the kernel keeps one (an SELinux host, or a filesystem
        // that stores security.* attributes as root may).
        let label = b"system_u:object_r:container_var_lib_t:s0\0".to_vec();
        let selinux = set_selinux(dir.path(), &label).ok().map(|()| label.clone());
        let o = Ownership { uid, gid, mode: 0o750, selinux: selinux.clone() };
        o.apply_tree(&root).unwrap();
        for p in [root.clone(), root.join("member"), root.join("member/snap/db")] {
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", p.display());
            assert_eq!(selinux_of(&p).unwrap(), selinux, "{}", p.display());
        }
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(
            std::fs::metadata(root.join("member/snap/db")).unwrap().mode() & 0o777,
            0o600,
            "files keep their modes"
        );
        assert_eq!(Ownership::of(&root).unwrap(), o);
        if selinux.is_none() {
            eprintln!("note: this filesystem keeps no security.selinux attribute; only owner and mode were checked");
        }
    }
}
