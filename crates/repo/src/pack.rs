//! Blobs, packs and index files: the binary parts of the repository format
//! (`docs/formats/repository.md`).
//!
//! A blob is one chunk of content (a slice of a snapshot, of a control-plane file, or of a
//! chunk list), named by the sha256 of its plain bytes and stored encoded (zstd, or raw when
//! zstd does not make it smaller). A pack is several blobs back to back followed by a header
//! that lists them, the header's length and a magic, so it is written in one pass and can be
//! read without the index. A pack's object name is the sha256 of the whole pack, so
//! `sha256sum` checks it. Index files list, per pack, where each blob is; they can be
//! rebuilt from the pack headers.

use std::collections::HashMap;

use crate::crypto::Keys;
use crate::id::Id;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// A slice of a snapshot or of a file.
    Data = 0,
    /// A piece of a chunk list: concatenated 32-byte blob ids.
    List = 1,
}

impl BlobKind {
    fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::List),
            _ => None,
        }
    }
}

/// How a blob's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
    /// Raw, then sealed with the repository key (encrypted repositories).
    SealedRaw = 2,
    /// zstd, then sealed with the repository key.
    SealedZstd = 3,
}

impl Encoding {
    pub fn from_u8(v: u8) -> Option<Encoding> {
        match v {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::SealedRaw),
            3 => Some(Encoding::SealedZstd),
            _ => None,
        }
    }

    pub fn is_sealed(self) -> bool {
        matches!(self, Encoding::SealedRaw | Encoding::SealedZstd)
    }

    fn is_zstd(self) -> bool {
        matches!(self, Encoding::Zstd | Encoding::SealedZstd)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("pack is too short to hold a header ({0} bytes)")]
    PackTooShort(u64),
    #[error("pack does not end with the pack magic")]
    BadPackMagic,
    #[error("pack header length {0} is impossible")]
    BadHeaderLength(u64),
    #[error("pack header is damaged: {0}")]
    BadHeader(String),
    #[error("index file is damaged: {0}")]
    BadIndex(String),
    #[error("blob {id:?}: {reason}")]
    BadBlob { id: Id, reason: String },
}

pub const PACK_MAGIC: &[u8; 8] = b"EGPACK01";
/// No blob is larger: chunks are at most 16 MiB and chunk lists at most `2^20` ids of 32
/// bytes. A larger length in a pack header or index is damage, and is refused before any
/// buffer is sized from it.
pub const MAX_BLOB_LEN: u32 = 32 << 20;
const HEADER_ENTRY: usize = 1 + 1 + 4 + 4 + 32;
/// Bytes after the header: header length (u32 LE) and the magic.
pub const PACK_TAIL: usize = 4 + 8;

/// One blob in a pack header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub encoding: Encoding,
    /// Offset of the stored bytes in the pack.
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// The id of a blob: sha256 of its content, or the keyed hash of an encrypted repository.
pub fn blob_id(keys: Option<&Keys>, raw: &[u8]) -> Id {
    match keys {
        Some(k) => k.blob_id(raw),
        None => Id::of(raw),
    }
}

/// Encodes one blob (`id` from [`blob_id`]): zstd when that is smaller, otherwise raw; then
/// sealed, bound to its id, when the repository is encrypted.
pub fn encode_blob(id: &Id, raw: &[u8], level: i32, keys: Option<&Keys>) -> (Encoding, Vec<u8>) {
    let (encoding, plain) = match compress(raw, level) {
        Ok(z) if z.len() < raw.len() => (Encoding::Zstd, z),
        _ => (Encoding::Raw, raw.to_vec()),
    };
    match keys {
        None => (encoding, plain),
        Some(k) => {
            let sealed_as =
                if encoding == Encoding::Zstd { Encoding::SealedZstd } else { Encoding::SealedRaw };
            (sealed_as, k.seal(id, sealed_as as u8, &plain))
        }
    }
}

thread_local! {
    // A zstd context per thread and level: making one per 16 KiB chunk cost more than
    // compressing it at level 1 (a compression context is a few hundred KiB to set up).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            None => *slot = Some((level, zstd::bulk::Compressor::new(level)?)),
            Some((l, c)) if *l != level => {
                c.set_compression_level(level)?;
                *l = level;
            }
            Some(_) => {}
        }
        slot.as_mut().expect("set above").1.compress(raw)
    })
}

fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(stored, capacity)
    })
}

/// Decodes a stored blob and checks that its content hashes to `id`. `keys` are the
/// repository's when it is encrypted; a plain blob in an encrypted repository is refused,
/// so nothing unsealed can be slipped in.
pub fn decode_blob(
    keys: Option<&Keys>,
    id: Id,
    encoding: Encoding,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let raw = open_blob(keys, id, encoding, raw_len, stored)?;
    if blob_id(keys, &raw) != id {
        return Err(FormatError::BadBlob {
            id,
            reason: "content does not match its hash (damaged)".into(),
        });
    }
    Ok(raw)
}

/// [`decode_blob`] without the check of the content against its id: decrypted (which
/// authenticates a sealed blob) and decompressed to its recorded length. For readers that
/// check one hash over many blobs instead (a part's sha256, see `Repository::read_part`),
/// and name a damaged blob with [`decode_blob`] only when that hash fails.
pub fn open_blob(
    keys: Option<&Keys>,
    id: Id,
    encoding: Encoding,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let bad = |reason: String| FormatError::BadBlob { id, reason };
    if raw_len > MAX_BLOB_LEN {
        return Err(bad(format!(
            "length {raw_len} is over the largest blob ({MAX_BLOB_LEN} bytes): damaged"
        )));
    }
    let opened;
    let plain = if encoding.is_sealed() {
        let k = keys.ok_or_else(|| bad("blob is encrypted and no key was given".into()))?;
        opened = k.open(&id, encoding as u8, stored).ok_or_else(|| {
            bad("does not decrypt with the repository key (damaged or altered)".into())
        })?;
        &opened[..]
    } else if keys.is_some() {
        // An encrypted repository stores every blob sealed: a plain one was slipped in.
        return Err(bad("blob is not encrypted in an encrypted repository (altered)".into()));
    } else {
        stored
    };
    let raw = if encoding.is_zstd() {
        decompress(plain, raw_len as usize).map_err(|e| bad(format!("zstd: {e}")))?
    } else {
        plain.to_vec()
    };
    if raw.len() != raw_len as usize {
        return Err(bad(format!("{} bytes, expected {raw_len}", raw.len())));
    }
    Ok(raw)
}

/// Builds a pack in memory (packs are a few MiB).
pub struct PackBuilder {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder::new()
    }
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        PackBuilder { data: Vec::new(), entries: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, id: Id, kind: BlobKind, encoding: Encoding, raw_len: u32, stored: &[u8]) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(stored);
        self.entries.push(PackEntry {
            id,
            kind,
            encoding,
            offset,
            stored_len: stored.len() as u32,
            raw_len,
        });
    }

    /// The finished pack, its name and what it holds.
    pub fn finish(mut self) -> (Id, Vec<u8>, Vec<PackEntry>) {
        let header = encode_header(&self.entries);
        self.data.extend_from_slice(&header);
        self.data.extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.data.extend_from_slice(PACK_MAGIC);
        (Id::of(&self.data), self.data, self.entries)
    }
}

fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut h = Vec::with_capacity(4 + entries.len() * HEADER_ENTRY);
    h.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        h.push(e.kind as u8);
        h.push(e.encoding as u8);
        h.extend_from_slice(&e.stored_len.to_le_bytes());
        h.extend_from_slice(&e.raw_len.to_le_bytes());
        h.extend_from_slice(&e.id.0);
    }
    h
}

/// Reads the length of the header from a pack's last [`PACK_TAIL`] bytes.
pub fn parse_pack_tail(tail: &[u8], pack_len: u64) -> Result<u64, FormatError> {
    if pack_len < PACK_TAIL as u64 + 4 || tail.len() != PACK_TAIL {
        return Err(FormatError::PackTooShort(pack_len));
    }
    if &tail[4..] != PACK_MAGIC {
        return Err(FormatError::BadPackMagic);
    }
    let len = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
    if len < 4 || len + PACK_TAIL as u64 > pack_len {
        return Err(FormatError::BadHeaderLength(len));
    }
    Ok(len)
}

/// Parses a pack header; `data_len` is the length of the blob area before it.
pub fn parse_pack_header(header: &[u8], data_len: u64) -> Result<Vec<PackEntry>, FormatError> {
    let bad = |s: &str| FormatError::BadHeader(s.to_string());
    if header.len() < 4 {
        return Err(bad("shorter than its count"));
    }
    let count = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    if header.len() != 4 + count * HEADER_ENTRY {
        return Err(bad(&format!("{} bytes for {count} entries", header.len())));
    }
    let mut entries = Vec::with_capacity(count);
    let mut offset = 0u64;
    for raw in header[4..].chunks_exact(HEADER_ENTRY) {
        let kind = BlobKind::from_u8(raw[0])
            .ok_or_else(|| bad(&format!("unknown blob kind {}", raw[0])))?;
        let encoding = Encoding::from_u8(raw[1])
            .ok_or_else(|| bad(&format!("unknown encoding {}", raw[1])))?;
        let stored_len = u32::from_le_bytes(raw[2..6].try_into().unwrap());
        let raw_len = u32::from_le_bytes(raw[6..10].try_into().unwrap());
        let id = Id(raw[10..42].try_into().unwrap());
        if offset + stored_len as u64 > data_len {
            return Err(bad("entries run past the blob area"));
        }
        entries.push(PackEntry { id, kind, encoding, offset: offset as u32, stored_len, raw_len });
        offset += stored_len as u64;
    }
    if offset != data_len {
        return Err(bad("entries do not cover the blob area"));
    }
    Ok(entries)
}

/// Parses a whole pack held in memory.
pub fn parse_pack(pack: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    let n = pack.len() as u64;
    if pack.len() < PACK_TAIL {
        return Err(FormatError::PackTooShort(n));
    }
    let hlen = parse_pack_tail(&pack[pack.len() - PACK_TAIL..], n)?;
    let hstart = pack.len() - PACK_TAIL - hlen as usize;
    parse_pack_header(&pack[hstart..pack.len() - PACK_TAIL], hstart as u64)
}

// ---------------------------------------------------------------------------------------
// Index

pub const INDEX_MAGIC: &[u8; 8] = b"EGINDX01";
const INDEX_ENTRY: usize = 1 + 1 + 4 + 4 + 4 + 32;

/// Where a blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub kind: BlobKind,
    pub encoding: Encoding,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// The blobs of some packs: what an index file holds, and (merged) the whole repository's.
///
/// A blob may be stored in more than one pack (two creates racing before either wrote its
/// index, or a repack whose old pack is still indexed). Every pack keeps all its entries, so
/// dropping one copy never hides the other; [`Index::get`] answers with one of them.
#[derive(Default, Clone, Debug)]
pub struct Index {
    blobs: HashMap<Id, Location>,
    packs: HashMap<Id, Vec<PackEntry>>,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds a pack and its blobs. A pack already known is left as it is: its name is the
    /// sha256 of its content, so two index files naming it describe the same bytes.
    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        if self.packs.contains_key(&pack) {
            return;
        }
        for e in entries {
            self.blobs.entry(e.id).or_insert(Location {
                pack,
                kind: e.kind,
                encoding: e.encoding,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
            });
        }
        let mut sorted = entries.to_vec();
        sorted.sort_by_key(|e| e.offset);
        self.packs.insert(pack, sorted);
    }

    pub fn merge(&mut self, other: &Index) {
        let mut packs: Vec<&Id> = other.packs.keys().collect();
        packs.sort();
        for pack in packs {
            self.add_pack(*pack, &other.packs[pack]);
        }
    }

    /// The same index without the packs `keep` rejects (for instance packs missing from
    /// the store); a blob also stored in a remaining pack stays findable there.
    pub fn retain_packs(&self, keep: impl Fn(&Id) -> bool) -> Index {
        let mut out = Index::new();
        let mut packs: Vec<&Id> = self.packs.keys().filter(|p| keep(p)).collect();
        packs.sort();
        for pack in packs {
            out.add_pack(*pack, &self.packs[pack]);
        }
        out
    }

    /// Moves every blob whose location `avoid` rejects to another pack that holds it, where
    /// one does (packs in name order, so the choice does not depend on load order).
    pub fn prefer_locations(&mut self, avoid: impl Fn(&Id, &Id) -> bool) {
        let mut packs: Vec<&Id> = self.packs.keys().collect();
        packs.sort();
        for pack in packs {
            for e in &self.packs[pack] {
                let Some(loc) = self.blobs.get_mut(&e.id) else { continue };
                if loc.pack != *pack && avoid(&loc.pack, &e.id) && !avoid(pack, &e.id) {
                    *loc = Location {
                        pack: *pack,
                        kind: e.kind,
                        encoding: e.encoding,
                        offset: e.offset,
                        stored_len: e.stored_len,
                        raw_len: e.raw_len,
                    };
                }
            }
        }
    }

    /// Forgets the blobs whose location `avoid` rejects (pack entries stay as they are).
    pub fn forget_blobs_located(&mut self, avoid: impl Fn(&Id, &Id) -> bool) {
        self.blobs.retain(|id, loc| !avoid(&loc.pack, id));
    }

    /// Every pack that holds `id`.
    pub fn packs_holding(&self, id: &Id) -> Vec<Id> {
        let mut out: Vec<Id> = self
            .packs
            .iter()
            .filter(|(_, es)| es.iter().any(|e| e.id == *id))
            .map(|(p, _)| *p)
            .collect();
        out.sort();
        out
    }

    pub fn contains_pack(&self, pack: &Id) -> bool {
        self.packs.contains_key(pack)
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.packs.keys()
    }

    /// Every blob stored in `pack`, as the pack header lists them (in offset order),
    /// including blobs the index also finds in another pack.
    pub fn pack_entries(&self, pack: &Id) -> Vec<PackEntry> {
        self.packs.get(pack).cloned().unwrap_or_default()
    }

    /// Stored bytes of every blob in `pack` (including those indexed elsewhere too).
    pub fn pack_stored_bytes(&self, pack: &Id) -> u64 {
        self.pack_entries(pack).iter().map(|e| e.stored_len as u64).sum()
    }

    /// Binary form, written as `index/<sha256>`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + self.blobs.len() * INDEX_ENTRY + self.packs.len() * 36);
        out.extend_from_slice(INDEX_MAGIC);
        let mut packs: Vec<&Id> = self.packs.keys().collect();
        packs.sort();
        for pack in packs {
            let entries = self.pack_entries(pack);
            out.extend_from_slice(&pack.0);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for e in entries {
                out.push(e.kind as u8);
                out.push(e.encoding as u8);
                out.extend_from_slice(&e.offset.to_le_bytes());
                out.extend_from_slice(&e.stored_len.to_le_bytes());
                out.extend_from_slice(&e.raw_len.to_le_bytes());
                out.extend_from_slice(&e.id.0);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Index, FormatError> {
        let bad = |s: &str| FormatError::BadIndex(s.to_string());
        if bytes.len() < 8 || &bytes[..8] != INDEX_MAGIC {
            return Err(bad("does not start with the index magic"));
        }
        let mut index = Index::new();
        let mut rest = &bytes[8..];
        while !rest.is_empty() {
            if rest.len() < 36 {
                return Err(bad("truncated pack record"));
            }
            let pack = Id(rest[..32].try_into().unwrap());
            let count = u32::from_le_bytes(rest[32..36].try_into().unwrap()) as usize;
            rest = &rest[36..];
            let need =
                count.checked_mul(INDEX_ENTRY).ok_or_else(|| bad("entry count overflows"))?;
            if rest.len() < need {
                return Err(bad("truncated entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for raw in rest[..need].chunks_exact(INDEX_ENTRY) {
                entries.push(PackEntry {
                    kind: BlobKind::from_u8(raw[0]).ok_or_else(|| bad("unknown blob kind"))?,
                    encoding: Encoding::from_u8(raw[1]).ok_or_else(|| bad("unknown encoding"))?,
                    offset: u32::from_le_bytes(raw[2..6].try_into().unwrap()),
                    stored_len: u32::from_le_bytes(raw[6..10].try_into().unwrap()),
                    raw_len: u32::from_le_bytes(raw[10..14].try_into().unwrap()),
                    id: Id(raw[14..46].try_into().unwrap()),
                });
            }
            rest = &rest[need..];
            index.add_pack(pack, &entries);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_blob_length_is_refused_before_allocating() {
        let stored = zstd::bulk::compress(b"tiny", 3).unwrap();
        let err =
            decode_blob(None, Id::of(b"tiny"), Encoding::Zstd, u32::MAX, &stored).unwrap_err();
        assert!(err.to_string().contains("largest blob"), "{err}");
        assert_eq!(
            decode_blob(None, Id::of(b"tiny"), Encoding::Zstd, 4, &stored).unwrap(),
            b"tiny"
        );
    }

    #[test]
    fn pack_round_trip_and_damage() {
        let blobs: Vec<Vec<u8>> = vec![
            vec![0u8; 4096],
            b"hello world".to_vec(),
            (0..5000u32).map(|i| (i * 7) as u8).collect(),
        ];
        let mut b = PackBuilder::new();
        for raw in &blobs {
            let id = blob_id(None, raw);
            assert_eq!(id, Id::of(raw));
            let (enc, stored) = encode_blob(&id, raw, 3, None);
            b.add(id, BlobKind::Data, enc, raw.len() as u32, &stored);
        }
        let (id, pack, entries) = b.finish();
        assert_eq!(id, Id::of(&pack));
        assert_eq!(parse_pack(&pack).unwrap(), entries);
        assert_eq!(entries[0].encoding, Encoding::Zstd);
        assert_eq!(entries[1].encoding, Encoding::Raw, "tiny blobs stay raw");
        for (raw, e) in blobs.iter().zip(&entries) {
            let stored = &pack[e.offset as usize..(e.offset + e.stored_len) as usize];
            assert_eq!(&decode_blob(None, e.id, e.encoding, e.raw_len, stored).unwrap(), raw);
        }
        // A flipped bit in a blob is caught by its hash.
        let e = entries[1];
        let mut stored = pack[e.offset as usize..(e.offset + e.stored_len) as usize].to_vec();
        stored[0] ^= 1;
        assert!(matches!(
            decode_blob(None, e.id, e.encoding, e.raw_len, &stored),
            Err(FormatError::BadBlob { .. })
        ));
        // Damaged tails are errors, never panics.
        assert_eq!(parse_pack(&pack[..pack.len() - 1]), Err(FormatError::BadPackMagic));
        assert!(parse_pack(b"short").is_err());
        for cut in 0..pack.len().min(64) {
            let _ = parse_pack(&pack[cut..]);
        }
        let mut bad_len = pack.clone();
        let n = bad_len.len();
        bad_len[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_pack(&bad_len).is_err());
    }

    #[test]
    fn sealed_blobs_need_the_key_and_hide_content() {
        let keys = Keys::generate();
        let raw = b"-----BEGIN EC PRIVATE KEY----- secret secret secret secret".repeat(20);
        let id = blob_id(Some(&keys), &raw);
        let (enc, stored) = encode_blob(&id, &raw, 3, Some(&keys));
        assert_eq!(enc, Encoding::SealedZstd);
        assert!(!stored.windows(16).any(|w| w == &raw[..16]));
        assert_eq!(decode_blob(Some(&keys), id, enc, raw.len() as u32, &stored).unwrap(), raw);
        assert!(decode_blob(None, id, enc, raw.len() as u32, &stored).is_err(), "no key");
        assert!(
            decode_blob(Some(&Keys::generate()), id, enc, raw.len() as u32, &stored).is_err(),
            "wrong key"
        );
        // A plain blob planted in an encrypted repository fails the keyed id check.
        let plain_id = blob_id(None, &raw);
        let (plain_enc, plain_stored) = encode_blob(&plain_id, &raw, 3, None);
        assert!(
            decode_blob(Some(&keys), plain_id, plain_enc, raw.len() as u32, &plain_stored).is_err()
        );
        // Incompressible content is sealed raw.
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let id = blob_id(Some(&keys), &noise);
        let (enc, stored) = encode_blob(&id, &noise, 3, Some(&keys));
        assert_eq!(enc, Encoding::SealedRaw);
        assert_eq!(decode_blob(Some(&keys), id, enc, noise.len() as u32, &stored).unwrap(), noise);
    }

    #[test]
    fn index_round_trip() {
        let mut idx = Index::new();
        let p1 = Id::of(b"p1");
        let p2 = Id::of(b"p2");
        let e = |n: &[u8], off| PackEntry {
            id: Id::of(n),
            kind: BlobKind::Data,
            encoding: Encoding::Zstd,
            offset: off,
            stored_len: 10,
            raw_len: 20,
        };
        idx.add_pack(p1, &[e(b"a", 0), e(b"b", 10)]);
        idx.add_pack(p2, &[e(b"c", 0)]);
        let bytes = idx.encode();
        let back = Index::decode(&bytes).unwrap();
        assert_eq!(back.blob_count(), 3);
        assert_eq!(back.get(&Id::of(b"b")).unwrap().offset, 10);
        assert_eq!(back.get(&Id::of(b"c")).unwrap().pack, p2);
        assert_eq!(back.encode(), bytes);
        assert!(Index::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Index::decode(b"nope").is_err());
    }
}
