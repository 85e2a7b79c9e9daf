//! Segments: the changes between full backups (continuous capture).
//!
//! A segment holds every change of a contiguous revision range `first..=last`, in order,
//! with the time each revision was seen and the lease set at `last`. It belongs to the full
//! backup whose snapshot it continues (`base`): `segments/<base>/<first>-<last>` (revisions
//! as 16 hex digits, so names sort by revision). The object is self-checking (`EGSEG001`,
//! blob id, encoding, raw length, stored bytes, exactly as a pack's blob, sealed in an
//! encrypted repository), and it is written like every object: complete or absent.
//! Coverage is proved by arithmetic on the names: see [`chain`].

use crate::crypto::Keys;
use crate::id::Id;
use crate::pack::{blob_id, decode_blob, encode_blob, Encoding};

const MAGIC: &[u8; 8] = b"EGSEG001";
const RAW_MAGIC: &[u8; 8] = b"EGSEGV01";
/// Segments are flushed well below this; larger ones are refused as damaged.
pub const MAX_SEGMENT_BYTES: usize = 30 << 20;

/// One change (a put or a delete) at `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub put: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The changes of `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    /// The full backup these changes follow.
    pub base: String,
    pub first: i64,
    pub last: i64,
    /// (revision, unix milliseconds when it was seen), for each revision of the range.
    pub times: Vec<(i64, i64)>,
    /// Leases alive at `last`: (id, TTL seconds).
    pub leases: Vec<(i64, i64)>,
    pub changes: Vec<Change>,
}

pub fn segment_prefix(base: &str) -> String {
    format!("segments/{base}/")
}

pub fn segment_key(base: &str, first: i64, last: i64) -> String {
    format!("segments/{base}/{:016x}-{:016x}", first as u64, last as u64)
}

/// `(base, first, last)` of a segment object's key.
pub fn parse_segment_key(key: &str) -> Option<(String, i64, i64)> {
    let rest = key.strip_prefix("segments/")?;
    let (base, range) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    let first = u64::from_str_radix(a, 16).ok()? as i64;
    let last = u64::from_str_radix(b, 16).ok()? as i64;
    (first >= 1 && last >= first && !base.is_empty()).then(|| (base.to_string(), first, last))
}

/// The first gap of a chain: (covered up to, the next range's first revision).
pub type Gap = (i64, i64);

/// Which segments (given as `(first, last)`, any order) carry every revision after `from`,
/// oldest first, and the first gap if there is one: `Err((covered_up_to, next_first))`.
/// Overlaps are fine (a restarted writer may repeat a range); a reader skips what it has.
pub fn chain(from: i64, ranges: &[(i64, i64)]) -> (Vec<(i64, i64)>, Option<Gap>) {
    let mut sorted = ranges.to_vec();
    sorted.sort();
    let mut covered = from;
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        // Of the segments that start in time, the one reaching furthest.
        let mut best: Option<(i64, i64)> = None;
        while i < sorted.len() && sorted[i].0 <= covered + 1 {
            if sorted[i].1 > covered && best.is_none_or(|b| sorted[i].1 > b.1) {
                best = Some(sorted[i]);
            }
            i += 1;
        }
        match best {
            Some(b) => {
                out.push(b);
                covered = b.1;
            }
            None => {
                if i < sorted.len() {
                    return (out, Some((covered, sorted[i].0)));
                }
            }
        }
    }
    (out, None)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn int(&mut self) -> Result<i64, String> {
        Ok(self.varint()? as i64)
    }
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let n = self.varint()?;
        // Every counted item takes at least one byte.
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(format!("{what}: count {n} runs past the end"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.count("length")?;
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }
}

impl Segment {
    /// The plain bytes (before compression and sealing).
    pub fn encode_raw(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.changes.iter().map(|c| c.key.len() + c.value.len() + 12).sum::<usize>(),
        );
        out.extend_from_slice(RAW_MAGIC);
        put_bytes(&mut out, self.base.as_bytes());
        put_varint(&mut out, self.first as u64);
        put_varint(&mut out, self.last as u64);
        put_varint(&mut out, self.times.len() as u64);
        for (rev, ms) in &self.times {
            put_varint(&mut out, *rev as u64);
            put_varint(&mut out, *ms as u64);
        }
        put_varint(&mut out, self.leases.len() as u64);
        for (id, ttl) in &self.leases {
            put_varint(&mut out, *id as u64);
            put_varint(&mut out, *ttl as u64);
        }
        put_varint(&mut out, self.changes.len() as u64);
        for c in &self.changes {
            out.push(c.put as u8);
            put_varint(&mut out, c.mod_revision as u64);
            put_varint(&mut out, c.create_revision as u64);
            put_varint(&mut out, c.version as u64);
            put_varint(&mut out, c.lease as u64);
            put_bytes(&mut out, &c.key);
            put_bytes(&mut out, &c.value);
        }
        out
    }

    /// Parses plain bytes and checks what the format promises: changes inside
    /// `first..=last`, in revision order, every revision of the range present.
    pub fn decode_raw(raw: &[u8]) -> Result<Segment, String> {
        if raw.get(..8) != Some(RAW_MAGIC) {
            return Err("not a segment".into());
        }
        let mut r = Reader { buf: raw, pos: 8 };
        let base = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| "base id is not text".to_string())?;
        let first = r.int()?;
        let last = r.int()?;
        if first < 1 || last < first {
            return Err(format!("bad revision range {first}..{last}"));
        }
        let n = r.count("times")?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push((r.int()?, r.int()?));
        }
        let n = r.count("leases")?;
        let mut leases = Vec::with_capacity(n);
        for _ in 0..n {
            leases.push((r.int()?, r.int()?));
        }
        let n = r.count("changes")?;
        let mut changes = Vec::with_capacity(n);
        let mut expect = first;
        for _ in 0..n {
            let kind = *raw.get(r.pos).ok_or("truncated")?;
            r.pos += 1;
            if kind > 1 {
                return Err(format!("bad change kind {kind}"));
            }
            let mod_revision = r.int()?;
            let c = Change {
                put: kind == 1,
                mod_revision,
                create_revision: r.int()?,
                version: r.int()?,
                lease: r.int()?,
                key: r.bytes()?.to_vec(),
                value: r.bytes()?.to_vec(),
            };
            // Revisions go up one at a time (several changes may share one: a Txn).
            if mod_revision == expect || (mod_revision == expect - 1 && !changes.is_empty()) {
                if mod_revision == expect {
                    expect += 1;
                }
            } else {
                return Err(format!(
                    "change at revision {mod_revision} where {} was expected",
                    expect
                ));
            }
            changes.push(c);
        }
        if expect != last + 1 {
            return Err(format!(
                "changes end at revision {} but the segment says {last}",
                expect - 1
            ));
        }
        if r.pos != raw.len() {
            return Err(format!("{} bytes after the last change", raw.len() - r.pos));
        }
        Ok(Segment { base, first, last, times, leases, changes })
    }

    /// The stored object: header, then the blob as a pack stores it (compressed, sealed
    /// under the repository key when there is one).
    pub fn encode(&self, level: i32, keys: Option<&Keys>) -> Vec<u8> {
        let raw = self.encode_raw();
        let id = blob_id(keys, &raw);
        let (encoding, stored) = encode_blob(&id, &raw, level, keys);
        let mut out = Vec::with_capacity(stored.len() + 45);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id.0);
        out.push(encoding as u8);
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(&stored);
        out
    }

    /// Opens a stored object (checking its id, and its seal in an encrypted repository).
    pub fn decode(object: &[u8], keys: Option<&Keys>) -> Result<Segment, String> {
        if object.len() < 45 || &object[..8] != MAGIC {
            return Err("not a segment object".into());
        }
        let id = Id(object[8..40].try_into().unwrap());
        let encoding = Encoding::from_u8(object[40])
            .ok_or_else(|| format!("unknown encoding {}", object[40]))?;
        let raw_len = u32::from_le_bytes(object[41..45].try_into().unwrap());
        if raw_len as usize > MAX_SEGMENT_BYTES {
            return Err(format!("length {raw_len} is over the largest segment"));
        }
        if keys.is_some() && !encoding.is_sealed() {
            return Err("a plain segment in an encrypted repository (planted?)".into());
        }
        let raw =
            decode_blob(keys, id, encoding, raw_len, &object[45..]).map_err(|e| e.to_string())?;
        Segment::decode_raw(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(rev: i64, key: &str, put: bool) -> Change {
        Change {
            put,
            key: key.into(),
            value: if put { format!("v{rev}").into() } else { vec![] },
            create_revision: if put { rev } else { 0 },
            mod_revision: rev,
            version: put as i64,
            lease: 0,
        }
    }

    fn sample() -> Segment {
        Segment {
            base: "3f9a1c2b4d5e6f70".into(),
            first: 11,
            last: 13,
            times: vec![(11, 1_700_000_000_000), (12, 1_700_000_000_100), (13, 1_700_000_000_900)],
            leases: vec![(0x694d_7a3b, 60)],
            changes: vec![
                change(11, "a", true),
                change(12, "b", true),
                change(12, "c", true),
                change(13, "a", false),
            ],
        }
    }

    #[test]
    fn round_trip_plain_and_sealed() {
        let s = sample();
        assert_eq!(Segment::decode(&s.encode(3, None), None).unwrap(), s);
        let keys = Keys::generate();
        let sealed = s.encode(3, Some(&keys));
        assert_eq!(Segment::decode(&sealed, Some(&keys)).unwrap(), s);
        assert!(Segment::decode(&sealed, Some(&Keys::generate())).is_err(), "another key");
        assert!(
            Segment::decode(&s.encode(3, None), Some(&keys)).is_err(),
            "plain segment planted in an encrypted repository"
        );
        let mut flipped = s.encode(3, None);
        let n = flipped.len();
        flipped[n - 3] ^= 1;
        assert!(Segment::decode(&flipped, None).is_err());
    }

    #[test]
    fn revisions_must_be_contiguous_and_match_the_range() {
        let mut s = sample();
        s.changes.remove(1); // revision 12 still has "c"
        assert!(Segment::decode_raw(&s.encode_raw()).is_ok());
        s.changes.remove(1); // no revision 12 at all
        assert!(Segment::decode_raw(&s.encode_raw()).is_err());
        let mut s = sample();
        s.last = 14;
        assert!(Segment::decode_raw(&s.encode_raw()).is_err());
        assert!(Segment::decode_raw(b"EGSEGV01\xff").is_err());
        for cut in 0..sample().encode_raw().len() {
            assert!(Segment::decode_raw(&sample().encode_raw()[..cut]).is_err());
        }
    }

    #[test]
    fn keys_sort_by_revision_and_parse_back() {
        let k = segment_key("abc", 11, 300);
        assert_eq!(parse_segment_key(&k), Some(("abc".into(), 11, 300)));
        assert!(segment_key("abc", 9, 9) < segment_key("abc", 10, 10));
        assert_eq!(parse_segment_key("segments/abc/zz-11"), None);
    }

    #[test]
    fn segments_are_stored_listed_and_go_with_their_full_backup() {
        use crate::repository::test_support::{backup, db, encrypted_repo, repo};
        use crate::retention::Policy;
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let old = backup(&r, &db(1));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let new = backup(&r, &db(2));
        let mut s = sample();
        s.base = old.id.clone();
        r.put_segment(&s).unwrap();
        s.base = new.id.clone();
        let info = r.put_segment(&s).unwrap();
        assert_eq!(r.list_segments(Some(&new.id)).unwrap(), vec![info.clone()]);
        assert_eq!(r.read_segment(&info).unwrap(), s);
        // A segment moved under another name is refused.
        let moved = SegmentInfo { key: segment_key(&new.id, 11, 12), last: 12, ..info.clone() };
        r.store().put(&moved.key, r.store().get(&info.key).unwrap()).unwrap();
        assert!(matches!(r.read_segment(&moved), Err(RepoError::Damaged(_))));
        r.store().delete(&moved.key).unwrap();
        r.prune(Some(&Policy { keep_last: 1, ..Default::default() }), false).unwrap();
        assert!(
            r.list_segments(Some(&old.id)).unwrap().is_empty(),
            "the removed full's segments go with it"
        );
        assert_eq!(r.list_segments(None).unwrap(), vec![info]);
        // Encrypted: sealed, and unreadable without the key.
        let edir = tempfile::tempdir().unwrap();
        let (er, _) = encrypted_repo(edir.path());
        let mut e = sample();
        e.base = "0123456789abcdef".into();
        let einfo = er.put_segment(&e).unwrap();
        let raw = std::fs::read(edir.path().join(&einfo.key)).unwrap();
        assert!(!raw.windows(3).any(|w| w == b"v11"), "values are sealed");
        assert_eq!(er.read_segment(&einfo).unwrap(), e);
    }

    #[test]
    fn chain_proves_coverage_or_names_the_gap() {
        assert_eq!(chain(10, &[(11, 20), (21, 30)]), (vec![(11, 20), (21, 30)], None));
        assert_eq!(
            chain(10, &[(21, 30), (11, 25)]),
            (vec![(11, 25), (21, 30)], None),
            "overlap is fine"
        );
        assert_eq!(chain(10, &[(11, 20), (23, 30)]), (vec![(11, 20)], Some((20, 23))));
        assert_eq!(chain(10, &[(12, 20)]), (vec![], Some((10, 12))));
        assert_eq!(
            chain(15, &[(11, 20), (21, 22)]),
            (vec![(11, 20), (21, 22)], None),
            "starts inside the first"
        );
        assert_eq!(chain(30, &[(11, 20)]), (vec![], None), "nothing newer");
    }
}

use crate::repository::Repository;
use crate::store::StoreError;
use crate::RepoError;

/// A stored segment's place: its key and the range its name gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub key: String,
    pub base: String,
    pub first: i64,
    pub last: i64,
    pub size: u64,
}

impl Repository {
    /// Stores one segment (complete or not at all, like every object). Needs the key in an
    /// encrypted repository.
    pub fn put_segment(&self, segment: &Segment) -> Result<SegmentInfo, RepoError> {
        let keys = self.keys()?;
        let data = segment.encode(self.config().compression_level, keys);
        let key = segment_key(&segment.base, segment.first, segment.last);
        let size = data.len() as u64;
        self.store().put(&key, bytes::Bytes::from(data))?;
        Ok(SegmentInfo {
            key,
            base: segment.base.clone(),
            first: segment.first,
            last: segment.last,
            size,
        })
    }

    /// The segments stored for full backup `base` (all bases when `None`), by revision.
    pub fn list_segments(&self, base: Option<&str>) -> Result<Vec<SegmentInfo>, RepoError> {
        let prefix = base.map_or_else(|| "segments/".to_string(), segment_prefix);
        let mut out: Vec<SegmentInfo> = self
            .store()
            .list(&prefix)?
            .into_iter()
            .filter_map(|o| {
                let (base, first, last) = parse_segment_key(&o.key)?;
                Some(SegmentInfo { key: o.key, base, first, last, size: o.size })
            })
            .collect();
        out.sort_by(|a, b| (&a.base, a.first, a.last).cmp(&(&b.base, b.first, b.last)));
        Ok(out)
    }

    /// Reads and checks one segment; its content must match its name.
    pub fn read_segment(&self, info: &SegmentInfo) -> Result<Segment, RepoError> {
        let keys = self.keys()?;
        let data = self.store().get(&info.key).map_err(|e| match e {
            StoreError::NotFound(_) => {
                RepoError::Damaged(format!("{}: listed but missing", info.key))
            }
            other => other.into(),
        })?;
        let s = Segment::decode(&data, keys)
            .map_err(|e| RepoError::Damaged(format!("{}: {e}", info.key)))?;
        if (s.base.as_str(), s.first, s.last) != (info.base.as_str(), info.first, info.last) {
            return Err(RepoError::Damaged(format!(
                "{}: holds {} {}..{} (moved or renamed)",
                info.key, s.base, s.first, s.last
            )));
        }
        Ok(s)
    }

    /// Removes the segments of full backup `base` (prune, after its manifest is gone).
    pub fn delete_segments(&self, base: &str) -> Result<usize, RepoError> {
        let list = self.list_segments(Some(base))?;
        for s in &list {
            self.store().delete(&s.key)?;
        }
        Ok(list.len())
    }
}
