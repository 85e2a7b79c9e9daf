use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions, UncheckedAdvice};

/// Why a database file cannot be opened; each case is something the user can act on.
#[derive(Debug, thiserror::Error)]
pub enum OpenFileError {
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),
    #[error("{}: permission denied (run as a user that can read it, e.g. root on a control-plane node)", .0.display())]
    PermissionDenied(PathBuf),
    #[error("{}: is a directory, not a snapshot file (for a data dir, pass <data-dir>/member/snap/db)", .0.display())]
    IsDirectory(PathBuf),
    #[error("{}: not a regular file (a pipe, device or socket); pass a snapshot file or member/snap/db", .0.display())]
    NotRegularFile(PathBuf),
    #[error("{}: locked by another process (a running etcd?); stop it or copy the file first", .0.display())]
    Locked(PathBuf),
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, io::Error),
}

impl OpenFileError {
    fn from_io(path: &Path, e: io::Error) -> OpenFileError {
        let path = path.to_path_buf();
        match e.kind() {
            io::ErrorKind::NotFound => OpenFileError::NotFound(path),
            io::ErrorKind::PermissionDenied => OpenFileError::PermissionDenied(path),
            _ if e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error()) => {
                OpenFileError::IsDirectory(path)
            }
            _ => OpenFileError::Io(path, e),
        }
    }
}

/// A read-only memory map of a database file, with a shared lock held like bbolt's
/// read-only open (so a running etcd, which holds an exclusive lock, is detected instead of
/// waited for).
///
/// Pages of the map count towards the process's resident memory once touched;
/// [`MappedFile::release_resident`] drops them again so that walking a multi-GiB file keeps
/// memory flat. The kernel's page cache keeps the data, so re-reading is cheap.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
    /// `/proc/self/statm`, kept open: reading it tells how much of the map is resident.
    statm: Option<File>,
}

/// File-backed resident memory above which [`MappedFile::release_resident`] drops the mapped pages.
/// Well under the 64 MiB a status or restore may use, and large enough that a walk over a
/// file whose pages map one at a time rarely pays for re-faulting them.
const RESIDENT_LIMIT: u64 = 24 << 20;

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile, OpenFileError> {
        let meta = std::fs::metadata(path).map_err(|e| OpenFileError::from_io(path, e))?;
        if meta.is_dir() {
            return Err(OpenFileError::IsDirectory(path.to_path_buf()));
        }
        // Opening a FIFO would block until a writer appears; a device has no usable length.
        if !meta.is_file() {
            return Err(OpenFileError::NotRegularFile(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|e| OpenFileError::from_io(path, e))?;
        // flock(LOCK_SH | LOCK_NB), as bbolt's read-only open; other failures (a filesystem
        // without locks) are not a reason to refuse a read.
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
            return Err(OpenFileError::Locked(path.to_path_buf()));
        }
        let len = file.metadata().map_err(|e| OpenFileError::from_io(path, e))?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and we hold a shared lock; a writer that ignores
            // the lock and truncates the file could still fault us, as it would bbolt.
            let map = unsafe { MmapOptions::new().map(&file) }
                .map_err(|e| OpenFileError::from_io(path, e))?;
            Some(map)
        };
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            map,
            statm: File::open("/proc/self/statm").ok(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Copies `part`, a slice of [`MappedFile::bytes`], into `buf` with a positioned read of
    /// the file instead of through the map: the kernel copies from its page cache and no page
    /// gets mapped, so a pass over many scattered values neither faults pages in nor has to
    /// drop them again. Fails when `part` is not inside the map.
    pub fn copy_out(&self, part: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let base = self.bytes().as_ptr() as usize;
        let offset = (part.as_ptr() as usize).wrapping_sub(base);
        if offset > self.bytes().len() || part.len() > self.bytes().len() - offset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the slice is not part of this map",
            ));
        }
        // Zero only what the buffer grows by: it is reused for value after value.
        buf.resize(part.len(), 0);
        self.file.read_exact_at(buf, offset as u64)
    }

    /// File-backed resident memory of this process in bytes (statm's `shared`: mapped files,
    /// this map's pages among them, not the heap), when the system says (Linux). The heap is
    /// left out so that a caller holding results in memory does not make every call drop the
    /// whole map.
    fn resident_file_bytes(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.statm.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_whitespace().nth(2)?.parse().ok()?;
        let page = rustix::param::page_size();
        Some(pages * page.max(4096) as u64)
    }

    /// Drops this process's resident copies of the mapped pages (not the page cache) once
    /// the map's resident pages pass a few tens of MiB. A file that was just written sits in the
    /// page cache as large folios, and touching one page maps its whole folio (up to 2 MiB),
    /// so how fast the map grows depends on the file's history, not on how much was read:
    /// measuring beats guessing. Without a readable `/proc/self/statm`, it always drops.
    pub fn release_resident(&self) {
        if self.resident_file_bytes().is_some_and(|r| r < RESIDENT_LIMIT) {
            return;
        }
        if let Some(map) = &self.map {
            // SAFETY: a private read-only file mapping; dropped pages are re-read from the
            // file on the next access, and no reference into the map is invalidated.
            let _ = unsafe { map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }
}
