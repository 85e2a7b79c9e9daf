use crate::{read_u32, read_u64};

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;

/// Offset of the meta structure inside a meta page (right after the page header).
const META_OFFSET: usize = 16;
/// The meta structure up to and including the checksum.
const META_LEN: usize = 64;

/// The contents of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket (the bucket of top-level buckets).
    pub root: u64,
    pub root_sequence: u64,
    /// Freelist page id, or [`crate::page::NO_FREELIST`] when none is persisted (etcd on Linux).
    pub freelist: u64,
    /// High-water mark: pages `[0, pgid)` are in use or free.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("too short to hold a meta page")]
    Short,
    #[error("bad magic number {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported format version {0}")]
    BadVersion(u32),
    #[error("checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    BadChecksum { stored: u64, computed: u64 },
}

impl Meta {
    /// Parses and validates the meta page at the start of `page` in bbolt's order:
    /// magic, then version, then checksum.
    pub fn parse(page: &[u8]) -> Result<Meta, MetaError> {
        if page.len() < META_OFFSET + META_LEN {
            return Err(MetaError::Short);
        }
        let m = &page[META_OFFSET..META_OFFSET + META_LEN];
        let magic = read_u32(m, 0);
        if magic != MAGIC {
            return Err(MetaError::BadMagic(magic));
        }
        let version = read_u32(m, 4);
        if version != VERSION {
            return Err(MetaError::BadVersion(version));
        }
        let stored = read_u64(m, 56);
        let computed = fnv1a64(&m[..56]);
        if stored != computed {
            return Err(MetaError::BadChecksum { stored, computed });
        }
        Ok(Meta {
            page_size: read_u32(m, 8),
            flags: read_u32(m, 12),
            root: read_u64(m, 16),
            root_sequence: read_u64(m, 24),
            freelist: read_u64(m, 32),
            pgid: read_u64(m, 40),
            txid: read_u64(m, 48),
            checksum: stored,
        })
    }

    /// The 64 bytes of the meta structure, checksum recomputed, as bbolt writes them at
    /// offset 16 of a meta page.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut m = [0u8; META_LEN];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        m[12..16].copy_from_slice(&self.flags.to_le_bytes());
        m[16..24].copy_from_slice(&self.root.to_le_bytes());
        m[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        m[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        m[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        m[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        m
    }
}

/// FNV-1a, 64 bit: bbolt's meta checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
