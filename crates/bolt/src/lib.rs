//! A read-only reader for bbolt database files, the format etcd keeps its data in.
//!
//! The reader works on a byte slice (usually a memory map of the file, see [`MappedFile`]) and
//! never trusts an offset it has not bounds-checked: any file, however damaged or hostile,
//! gives an error value, never a panic or an out-of-bounds read. The format itself is
//! described in `docs/formats/bolt.md`.
//!
//! Entry points: [`Db::open`] validates the meta pages; [`walk::walk`] visits every bucket and
//! key in byte order while running the consistency checks of bbolt's `tx.Check`.
//!
//! ## How it works
//!
//! Opens a byte slice as a bbolt database (`Db::open`: meta pages, page size, active meta,
//! truncation) and walks it (`walk::walk`): every bucket and key in byte order, handed to a
//! `Visitor`, while running the consistency checks of bbolt's `tx.Check` (page bounds and
//! types, no page used twice, key order, freelist agreement). Problems are collected with the
//! page id, bucket path and key; a damaged subtree is skipped, not followed. `MappedFile`
//! memory-maps a file read-only with a shared `flock` (so a running etcd's lock is detected,
//! not waited on) and can drop its resident pages once the process's file-backed resident
//! memory passes 24 MiB, which keeps the walk of a multi-GiB file at a few MiB of RSS (the heap
//! is not counted: a caller holding results must not make every call drop the map). A `Visitor`
//! gets keys and values for the map's lifetime, so it may keep them without copying. Format
//! notes: `docs/formats/bolt.md`. The one write path, `write`, encodes leaf, branch and meta
//! pages and appends a copy-on-write commit past the high-water mark (new pages for changed
//! nodes only, then a new meta page); restore uses it to change a few buckets of a large file
//! without rewriting it.

mod file;
mod meta;
pub mod page;
pub mod walk;
pub mod write;

pub use file::{MappedFile, OpenFileError};
pub use meta::{Meta, MetaError, MAGIC, VERSION};
pub use page::{BranchElement, BucketHeader, LeafElement, Page, PageKind};
pub use walk::{walk, Problem, ProblemKind, Visitor, WalkOptions, WalkReport};

/// Smallest and largest page sizes we accept. Real files use 4 KiB, 16 KiB or 64 KiB.
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Why a byte slice is not a usable bbolt database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the file is empty")]
    Empty,
    #[error("not a bbolt database (no bbolt magic number in either meta page)")]
    NotBolt,
    #[error("the database was written on a big-endian machine (e.g. s390x); only little-endian files are supported")]
    ForeignByteOrder,
    #[error("unsupported bbolt format version {0} (expected 2)")]
    UnsupportedVersion(u32),
    #[error("both meta pages are corrupt: {0}")]
    BothMetasInvalid(MetaError),
    #[error("invalid page size {0} in the meta page")]
    BadPageSize(u32),
    #[error("truncated: the database needs {needed} bytes ({pages} pages of {page_size}) but the file has {actual}")]
    Truncated { needed: u64, actual: u64, pages: u64, page_size: u32 },
    #[error("invalid meta page: {0}")]
    BadMeta(String),
}

/// An opened database: the bytes, the page size and the active meta page.
#[derive(Debug, Clone)]
pub struct Db<'a> {
    data: &'a [u8],
    page_size: u32,
    metas: [Result<Meta, MetaError>; 2],
    active: usize,
}

impl<'a> Db<'a> {
    /// Validates the meta pages the way bbolt does when it opens a file, and checks that the
    /// file holds every page the active meta claims (bbolt itself would crash on a short file).
    pub fn open(data: &'a [u8]) -> Result<Db<'a>, OpenError> {
        if data.is_empty() {
            return Err(OpenError::Empty);
        }
        let meta0 = Meta::parse(data);
        let page_size = match &meta0 {
            Ok(m) => m.page_size,
            Err(_) => probe_page_size(data).ok_or_else(|| classify_unusable(data, &meta0))?,
        };
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(OpenError::BadPageSize(page_size));
        }
        let p = page_size as usize;
        let meta1 = if data.len() >= p { Meta::parse(&data[p..]) } else { Err(MetaError::Short) };
        let active = match (&meta0, &meta1) {
            (Ok(a), Ok(b)) => usize::from(b.txid > a.txid),
            (Ok(_), Err(_)) => 0,
            (Err(_), Ok(_)) => 1,
            (Err(e), Err(_)) => return Err(classify_meta_error(data, e)),
        };
        let db = Db { data, page_size, metas: [meta0, meta1], active };
        let meta = db.meta();
        if meta.page_size != page_size {
            return Err(OpenError::BadMeta(format!(
                "meta pages disagree on the page size ({} vs {})",
                meta.page_size, page_size
            )));
        }
        if meta.pgid < 2 {
            return Err(OpenError::BadMeta(format!("high-water mark {} is below 2", meta.pgid)));
        }
        let needed = meta.pgid.checked_mul(page_size as u64).ok_or_else(|| {
            OpenError::BadMeta(format!("high-water mark {} overflows", meta.pgid))
        })?;
        if needed > data.len() as u64 || (data.len() as u64) < 2 * page_size as u64 {
            return Err(OpenError::Truncated {
                needed: needed.max(2 * page_size as u64),
                actual: data.len() as u64,
                pages: meta.pgid,
                page_size,
            });
        }
        Ok(db)
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The meta page in force: the valid one with the larger transaction id.
    pub fn meta(&self) -> &Meta {
        self.metas[self.active].as_ref().expect("active meta is valid")
    }

    /// Which meta page (0 or 1) is in force.
    pub fn active_meta_index(&self) -> usize {
        self.active
    }

    /// Both meta pages as parsed, for reporting a damaged one.
    pub fn metas(&self) -> &[Result<Meta, MetaError>; 2] {
        &self.metas
    }

    /// Size of the database proper: high-water mark × page size. Excludes a snapshot's
    /// sha256 trailer and any preallocated space after the last page.
    pub fn total_size(&self) -> u64 {
        self.meta().pgid * self.page_size as u64
    }

    /// The page with id `id` with its overflow span, after checking that the id and the whole
    /// span lie below the high-water mark. The header's own id is not compared here; the
    /// walker reports a mismatch as a problem.
    pub fn page(&self, id: u64) -> Result<Page<'a>, PageError> {
        let pgid = self.meta().pgid;
        if id >= pgid {
            return Err(PageError::OutOfBounds { pgid });
        }
        let p = self.page_size as u64;
        let start = id * p;
        let header =
            Page::parse(&self.data[start as usize..]).ok_or(PageError::OutOfBounds { pgid })?;
        let end = (id + 1)
            .checked_add(header.overflow as u64)
            .filter(|&last| last <= pgid)
            .map(|last| last * p)
            .ok_or(PageError::SpanOutOfBounds { overflow: header.overflow, pgid })?;
        Ok(Page { bytes: &self.data[start as usize..end as usize], ..header })
    }
}

/// Why a page id cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    /// The id is at or past the high-water mark.
    OutOfBounds { pgid: u64 },
    /// The page's overflow count runs past the high-water mark.
    SpanOutOfBounds { overflow: u32, pgid: u64 },
}

/// bbolt's fallback when meta 0 is unreadable: look for the second meta page at the offsets a
/// page size could put it at.
fn probe_page_size(data: &[u8]) -> Option<u32> {
    (0..15)
        .map(|i| 1024usize << i)
        .take_while(|&offset| offset + 1024 < data.len())
        .find_map(|offset| Meta::parse(&data[offset..]).ok().map(|m| m.page_size))
}

fn classify_meta_error(data: &[u8], meta0_error: &MetaError) -> OpenError {
    match meta0_error {
        MetaError::BadMagic(m) if *m == MAGIC.swap_bytes() => OpenError::ForeignByteOrder,
        MetaError::BadMagic(_) | MetaError::Short => {
            if has_any_magic(data) {
                OpenError::BothMetasInvalid(meta0_error.clone())
            } else {
                OpenError::NotBolt
            }
        }
        MetaError::BadVersion(v) => OpenError::UnsupportedVersion(*v),
        MetaError::BadChecksum { .. } => OpenError::BothMetasInvalid(meta0_error.clone()),
    }
}

fn classify_unusable(data: &[u8], meta0: &Result<Meta, MetaError>) -> OpenError {
    match meta0 {
        Err(e) => classify_meta_error(data, e),
        Ok(_) => OpenError::NotBolt,
    }
}

/// Whether a bbolt magic number stands where a meta page of any page size would hold it.
fn has_any_magic(data: &[u8]) -> bool {
    std::iter::once(0usize)
        .chain((0..15).map(|i| 1024usize << i))
        .any(|offset| data.len() >= offset + 20 && read_u32(data, offset + 16) == MAGIC)
}

pub(crate) fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
pub(crate) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
