//! A snapshot file on disk: the bbolt image, optionally followed by the 32-byte sha256 trailer
//! that `snapshot save` appends. Also accepts a data dir's `member/snap/db`, which has none.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use etcdguard_bolt::{Db, MappedFile, OpenError, OpenFileError};
use sha2::{Digest, Sha256};

/// A snapshot always ends 32 bytes past a multiple of 512 (its image is whole pages, and
/// every page size is a multiple of 512); a raw db file ends on a multiple of 512.
pub const TRAILER_LEN: u64 = 32;

/// How the file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Image followed by its sha256 (written by `snapshot save`).
    WithTrailer { digest: [u8; 32] },
    /// A plain bbolt file, e.g. `member/snap/db`.
    Plain,
    /// Neither: the length is not a multiple of 512 and not 32 past one. A copy cut short.
    Ragged { remainder: u64 },
}

/// Result of comparing the trailer with the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerCheck {
    Verified,
    Absent,
    Skipped,
    Mismatch { expected: [u8; 32], actual: [u8; 32] },
}

pub struct SnapshotFile {
    map: MappedFile,
    layout: Layout,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> Result<SnapshotFile, OpenFileError> {
        let map = MappedFile::open(path)?;
        let bytes = map.bytes();
        let len = bytes.len() as u64;
        let layout = match len % 512 {
            0 => Layout::Plain,
            32 => Layout::WithTrailer { digest: bytes[bytes.len() - 32..].try_into().unwrap() },
            remainder => Layout::Ragged { remainder },
        };
        Ok(SnapshotFile { map, layout })
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }

    pub fn len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The bbolt image (without the trailer).
    pub fn image(&self) -> &[u8] {
        let bytes = self.map.bytes();
        match self.layout {
            Layout::WithTrailer { .. } => &bytes[..bytes.len() - TRAILER_LEN as usize],
            _ => bytes,
        }
    }

    pub fn db(&self) -> Result<Db<'_>, OpenError> {
        Db::open(self.image())
    }

    /// Lets the memory map shed resident pages; pass to walks over large files.
    pub fn release_resident(&self) {
        self.map.release_resident()
    }

    /// Copies `part` of [`SnapshotFile::image`] into `buf` without mapping its pages
    /// ([`MappedFile::copy_out`]).
    pub fn copy_out(&self, part: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        self.map.copy_out(part, buf)
    }

    /// Hashes the image with positioned reads into a small buffer (so a multi-GiB file does
    /// not become resident) and compares it with the trailer.
    pub fn check_trailer(&self) -> io::Result<TrailerCheck> {
        let Layout::WithTrailer { digest } = self.layout else { return Ok(TrailerCheck::Absent) };
        let file = std::fs::File::open(self.path())?;
        let end = self.len() - TRAILER_LEN;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < end {
            let want = buf.len().min((end - offset) as usize);
            let n = file.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being read",
                ));
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        let actual: [u8; 32] = hasher.finalize().into();
        Ok(if actual == digest {
            TrailerCheck::Verified
        } else {
            TrailerCheck::Mismatch { expected: digest, actual }
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
