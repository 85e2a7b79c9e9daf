//! Pages and their elements. Every offset read from the file is bounds-checked before use:
//! a hostile file can put any value in any field, and the reader must answer with an error.

use crate::{read_u16, read_u32, read_u64};

pub const PAGE_HEADER_SIZE: usize = 16;
pub const ELEMENT_SIZE: usize = 16;
pub const BUCKET_HEADER_SIZE: usize = 16;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;

/// Leaf element flag: the value is a bucket header (and maybe an inline page).
pub const LEAF_FLAG_BUCKET: u32 = 0x01;

/// A page id that stands for "no freelist persisted" in the meta page.
pub const NO_FREELIST: u64 = u64::MAX;

/// The kind of page, from its header flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    Branch,
    Leaf,
    Meta,
    Freelist,
    /// Flags that are not exactly one known type.
    Unknown(u16),
}

impl PageKind {
    pub fn from_flags(flags: u16) -> PageKind {
        match flags {
            FLAG_BRANCH => PageKind::Branch,
            FLAG_LEAF => PageKind::Leaf,
            FLAG_META => PageKind::Meta,
            FLAG_FREELIST => PageKind::Freelist,
            other => PageKind::Unknown(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PageKind::Branch => "branch",
            PageKind::Leaf => "leaf",
            PageKind::Meta => "meta",
            PageKind::Freelist => "freelist",
            PageKind::Unknown(_) => "unknown",
        }
    }
}

/// A page (or an inline bucket page) with its whole span: header, elements, data and any
/// overflow continuation.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    pub id: u64,
    pub kind: PageKind,
    pub count: u16,
    pub overflow: u32,
    /// The whole span, header included.
    pub bytes: &'a [u8],
}

/// What is wrong with one element of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementError {
    /// The element table itself does not fit in the page.
    TableOutOfBounds { count: u16 },
    /// Element `index`'s key or value lies (partly) outside the page.
    OutOfBounds { index: usize },
    /// bbolt never stores an empty key.
    EmptyKey { index: usize },
}

impl std::fmt::Display for ElementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElementError::TableOutOfBounds { count } => {
                write!(f, "element table of {count} entries does not fit in the page")
            }
            ElementError::OutOfBounds { index } => {
                write!(f, "element {index} points outside the page")
            }
            ElementError::EmptyKey { index } => write!(f, "element {index} has an empty key"),
        }
    }
}

/// One element of a leaf page.
#[derive(Clone, Copy, Debug)]
pub struct LeafElement<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl LeafElement<'_> {
    pub fn is_bucket(&self) -> bool {
        self.flags & LEAF_FLAG_BUCKET != 0
    }
}

/// One element of a branch page.
#[derive(Clone, Copy, Debug)]
pub struct BranchElement<'a> {
    pub key: &'a [u8],
    pub child: u64,
}

impl<'a> Page<'a> {
    /// Parses the header at the start of `bytes` (which must be the page's whole span).
    /// Returns `None` when fewer than 16 bytes are given.
    pub fn parse(bytes: &'a [u8]) -> Option<Page<'a>> {
        if bytes.len() < PAGE_HEADER_SIZE {
            return None;
        }
        Some(Page {
            id: read_u64(bytes, 0),
            kind: PageKind::from_flags(read_u16(bytes, 8)),
            count: read_u16(bytes, 10),
            overflow: read_u32(bytes, 12),
            bytes,
        })
    }

    fn check_table(&self) -> Result<(), ElementError> {
        let needed = PAGE_HEADER_SIZE as u64 + self.count as u64 * ELEMENT_SIZE as u64;
        if needed > self.bytes.len() as u64 {
            return Err(ElementError::TableOutOfBounds { count: self.count });
        }
        Ok(())
    }

    fn slice(&self, index: usize, start: u64, len: u64) -> Result<&'a [u8], ElementError> {
        let end = start.checked_add(len).ok_or(ElementError::OutOfBounds { index })?;
        if end > self.bytes.len() as u64 {
            return Err(ElementError::OutOfBounds { index });
        }
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// Element `index` of a leaf page, bounds-checked.
    pub fn leaf_element(&self, index: usize) -> Result<LeafElement<'a>, ElementError> {
        self.check_table()?;
        let at = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
        let flags = read_u32(self.bytes, at);
        let pos = read_u32(self.bytes, at + 4) as u64;
        let ksize = read_u32(self.bytes, at + 8) as u64;
        let vsize = read_u32(self.bytes, at + 12) as u64;
        let key_start = at as u64 + pos;
        let key = self.slice(index, key_start, ksize)?;
        let value = self.slice(index, key_start + ksize, vsize)?;
        if key.is_empty() {
            return Err(ElementError::EmptyKey { index });
        }
        Ok(LeafElement { flags, key, value })
    }

    /// Element `index` of a branch page, bounds-checked.
    pub fn branch_element(&self, index: usize) -> Result<BranchElement<'a>, ElementError> {
        self.check_table()?;
        let at = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
        let pos = read_u32(self.bytes, at) as u64;
        let ksize = read_u32(self.bytes, at + 4) as u64;
        let child = read_u64(self.bytes, at + 8);
        let key = self.slice(index, at as u64 + pos, ksize)?;
        if key.is_empty() {
            return Err(ElementError::EmptyKey { index });
        }
        Ok(BranchElement { key, child })
    }

    /// Page ids listed by a freelist page (the 0xFFFF count escape included).
    pub fn freelist_ids(&self) -> Result<impl Iterator<Item = u64> + 'a, ElementError> {
        let (start, n) = if self.count == 0xFFFF {
            if self.bytes.len() < PAGE_HEADER_SIZE + 8 {
                return Err(ElementError::TableOutOfBounds { count: self.count });
            }
            (PAGE_HEADER_SIZE + 8, read_u64(self.bytes, PAGE_HEADER_SIZE))
        } else {
            (PAGE_HEADER_SIZE, self.count as u64)
        };
        let needed = n.checked_mul(8).and_then(|b| b.checked_add(start as u64));
        match needed {
            Some(end) if end <= self.bytes.len() as u64 => {
                let bytes = &self.bytes[start..end as usize];
                Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())))
            }
            _ => Err(ElementError::TableOutOfBounds { count: self.count }),
        }
    }
}

/// A bucket as stored in its parent's leaf value: a 16-byte header, and for an inline
/// bucket (root 0) the leaf page that follows it.
#[derive(Clone, Copy, Debug)]
pub struct BucketHeader<'a> {
    pub root: u64,
    pub sequence: u64,
    /// The inline leaf page when `root == 0`.
    pub inline_page: Option<&'a [u8]>,
}

impl<'a> BucketHeader<'a> {
    /// Parses a bucket value; `None` when it is shorter than the 16-byte header.
    pub fn parse(value: &'a [u8]) -> Option<BucketHeader<'a>> {
        if value.len() < BUCKET_HEADER_SIZE {
            return None;
        }
        let root = read_u64(value, 0);
        Some(BucketHeader {
            root,
            sequence: read_u64(value, 8),
            inline_page: (root == 0).then(|| &value[BUCKET_HEADER_SIZE..]),
        })
    }
}
