//! Point-in-time databases: a snapshot's bbolt image plus the changes etcd made after it,
//! written offline.
//!
//! etcd's `key` bucket is keyed by revision (`main_sub`, big-endian), so every change after a
//! snapshot sorts after everything in it: replaying a revision means appending its entries
//! at the bucket's right edge, which `bolt::write::Appender::append_sorted` does without
//! reading or copying the rest of the tree. The entries are the ones etcd itself writes:
//! a put is `main_sub` → the full `mvccpb.KeyValue`; a delete is `main_sub` + `t` → a
//! `KeyValue` holding only the key. The `lease` bucket is replaced by the lease set the
//! caller knows for the target revision, so keys attached to leases keep working leases.
//!
//! Revision arithmetic is the proof that nothing is missing: every etcd revision has at
//! least one change, so the events must continue the database's last revision without a
//! hole (the same revision for the changes of one Txn, then the next one).
//!
//! ## How it works
//!
//! `replay` builds point-in-time databases offline (`backup restore --at`): etcd keys its `key`
//! bucket by revision, so the changes after a snapshot sort after everything in it and are
//! appended at the bucket's right edge with `bolt::write::Appender::append_sorted` (only the
//! rightmost path is rewritten; new leaves are streamed to the file as they fill, so a million
//! revisions never sit in memory). Puts become `main_sub` → the full `mvccpb.KeyValue`
//! marshalled exactly as etcd does, deletes `main_sub` + `t` → the key alone, so `hashkv` of
//! the result equals the source cluster's. A `Sequencer` numbers sub-revisions and refuses any
//! hole in the revisions (every etcd revision has a change); the `lease` bucket becomes the
//! lease set known at the target revision; `replay_snapshot` copies the image, replays, and
//! writes a fresh sha256 trailer.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use etcdguard_bolt::page::NO_FREELIST;
use etcdguard_bolt::write::{self, Appender, Entry, WriteError};
use etcdguard_bolt::{BucketHeader, Db, MappedFile, Meta};

use crate::restore::db::{revision_key, KEY};

pub const LEASE: &[u8] = b"lease";

/// Buckets read whole while rewriting the root (the root itself, `lease`).
const SMALL_BUCKET_LIMIT: usize = 1_000_000;

/// One change, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// The revision of the change (for a delete: the deletion's revision).
    pub mod_revision: i64,
    /// Puts only (0 for deletes).
    pub create_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A lease as the `lease` bucket stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseGrant {
    pub id: i64,
    pub ttl: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot append to the database: {0}")]
    Format(#[from] WriteError),
    #[error("the database cannot take the changes: {0}")]
    Schema(String),
    /// Revisions do not follow each other: changes are missing.
    #[error("revision gap: {0}")]
    Gap(String),
    #[error("bad change record: {0}")]
    BadEvent(String),
    #[error("reading the changes: {0}")]
    Source(String),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The database's revision before.
    pub from_revision: i64,
    /// Its revision after (the last revision applied).
    pub to_revision: i64,
    pub revisions: u64,
    pub events: u64,
    /// Events at or below `from_revision` that were skipped (already in the database).
    pub skipped: u64,
}

/// Appends `events` (oldest first) with revisions up to and including `until` (all when
/// `None`) to the database file at `path` (a private copy: it is changed in place, as one
/// bbolt commit written past the old end and made current by a new meta page). Events at or
/// below the database's revision are skipped; the first one after it must be the very next
/// revision. With `leases`, the `lease` bucket becomes exactly that set.
pub fn replay(
    path: &Path,
    events: &mut dyn Iterator<Item = Result<Event, String>>,
    until: Option<i64>,
    leases: Option<&[LeaseGrant]>,
) -> Result<Replayed, ReplayError> {
    let map = MappedFile::open(path).map_err(|e| std::io::Error::other(e.to_string()))?;
    let db = Db::open(map.bytes()).map_err(|e| ReplayError::Schema(e.to_string()))?;
    let old = *db.meta();
    let mut app = Appender::new(old.page_size, old.pgid);
    let file = OpenOptions::new().write(true).open(path)?;
    let page_size = old.page_size as u64;

    let mut root: Vec<Entry> = write::collect_entries(&db, old.root, SMALL_BUCKET_LIMIT)?;
    let key_at = root.iter().position(|e| e.key == KEY);
    let key_bucket = match key_at {
        Some(i) if root[i].is_bucket() => Some(
            BucketHeader::parse(&root[i].value)
                .ok_or_else(|| ReplayError::Schema("bucket \"key\": bad header".into()))?,
        ),
        Some(_) => return Err(ReplayError::Schema("top-level key \"key\" is not a bucket".into())),
        None => None,
    };
    let inline_entries = match (&key_bucket, key_at) {
        (Some(h), Some(i)) if h.inline_page.is_some() => {
            Some(write::collect_bucket(&db, &root[i].value, SMALL_BUCKET_LIMIT)?)
        }
        (None, _) => Some(Vec::new()),
        _ => None,
    };
    let last_key = match (&inline_entries, &key_bucket) {
        (Some(entries), _) => entries.last().map(|e| e.key.clone()),
        (None, Some(h)) => write::last_entry(&db, h.root)?.map(|e| e.key),
        (None, None) => None,
    };
    let from_revision = match &last_key {
        None => 0,
        Some(k) if k.len() >= 17 && k[8] == b'_' => i64::from_be_bytes(k[..8].try_into().unwrap()),
        Some(k) => {
            return Err(ReplayError::Schema(format!(
                "bucket \"key\": the newest key {} is not a revision",
                etcdguard_bolt::walk::display_key(k)
            )))
        }
    };

    let mut state =
        Sequencer { last: from_revision, sub: 0, revisions: 0, events: 0, skipped: 0, error: None };
    let mut entries = events.map_while(|e| state.next(e, until)).flatten();
    let sequence = key_bucket.as_ref().map_or(0, |h| h.sequence);
    let mut sink = |at: u64, pages: &[u8]| {
        file.write_all_at(pages, at * page_size)
            .map_err(|e| WriteError::Invalid(format!("writing pages: {e}")))
    };
    let key_value = match (inline_entries, &key_bucket) {
        (Some(mut small), _) => {
            small.extend(&mut entries);
            app.bucket(&small, sequence)?
        }
        (None, Some(h)) => {
            let (new_root, _) = app.append_sorted(&db, h.root, &mut entries, &mut sink)?;
            write::bucket_value(new_root, h.sequence, None)
        }
        (None, None) => unreachable!("no key bucket reads as an empty inline one"),
    };
    drop(entries);
    if let Some(e) = state.error.take() {
        return Err(e);
    }
    let new_key = Entry::bucket(KEY, key_value);
    match key_at {
        Some(i) => root[i] = new_key,
        None => root.push(new_key),
    }
    if let Some(leases) = leases {
        let mut sorted: Vec<LeaseGrant> = leases.to_vec();
        sorted.sort();
        sorted.dedup_by_key(|l| l.id);
        let lease_entries: Vec<Entry> = sorted
            .iter()
            .map(|l| Entry::new((l.id as u64).to_be_bytes().to_vec(), encode_lease(l)))
            .collect();
        let at = root.iter().position(|e| e.key == LEASE);
        let seq = at.and_then(|i| BucketHeader::parse(&root[i].value)).map_or(0, |h| h.sequence);
        let v = app.bucket(&lease_entries, seq)?;
        match at {
            Some(i) => root[i] = Entry::bucket(LEASE, v),
            None => root.push(Entry::bucket(LEASE, v)),
        }
    }
    root.sort_by(|a, b| a.key.cmp(&b.key));
    let new_root = app.tree(&root)?;
    let txid = old
        .txid
        .checked_add(1)
        .ok_or_else(|| ReplayError::Schema("transaction id overflow".into()))?;
    let new_meta =
        Meta { root: new_root, freelist: NO_FREELIST, pgid: app.next_pgid(), txid, ..old };
    file.write_all_at(app.bytes(), app.pending_start() * page_size)?;
    drop(map);
    file.sync_all()?;
    let meta_page = txid % 2;
    file.write_all_at(&write::encode_meta_page(meta_page, &new_meta), meta_page * page_size)?;
    file.sync_all()?;
    Ok(Replayed {
        from_revision,
        to_revision: state.last,
        revisions: state.revisions,
        events: state.events,
        skipped: state.skipped,
    })
}

/// Writes `out` (new, 0600): the bbolt image of `snapshot` with `events` replayed up to
/// `until`, followed by a fresh sha256 trailer, so the result is a snapshot file like the
/// ones `snapshot save` writes (`snapshot status`, `snapshot restore` and etcdutl take it).
/// The source is not changed; `out` is written as `out.part` and renamed when complete.
pub fn replay_snapshot(
    snapshot: &Path,
    out: &Path,
    events: &mut dyn Iterator<Item = Result<Event, String>>,
    until: Option<i64>,
    leases: Option<&[LeaseGrant]>,
) -> Result<Replayed, ReplayError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};

    let source = crate::SnapshotFile::open(snapshot)
        .map_err(|e| ReplayError::Schema(format!("{}: {e}", snapshot.display())))?;
    if let crate::Layout::Ragged { remainder } = source.layout() {
        return Err(ReplayError::Schema(format!(
            "{}: {remainder} bytes past a whole page: a copy cut short",
            snapshot.display()
        )));
    }
    let image_len = source.image().len() as u64;
    drop(source);
    let mut part = out.as_os_str().to_owned();
    part.push(".part");
    let part = std::path::PathBuf::from(part);
    // A `.part` can only be left by a run that died; it is ours to replace.
    let _ = std::fs::remove_file(&part);
    let result = (|| {
        crate::restore::db::copy_image(snapshot, image_len, &part)?;
        let replayed = replay(&part, events, until, leases)?;
        // The new end: the old image or the appended pages, whichever is longer.
        let page_size = {
            let map = MappedFile::open(&part).map_err(|e| std::io::Error::other(e.to_string()))?;
            Db::open(map.bytes()).map_err(|e| ReplayError::Schema(e.to_string()))?.page_size()
                as u64
        };
        let mut file = OpenOptions::new().read(true).write(true).open(&part)?;
        let len = file.metadata()?.len().div_ceil(page_size) * page_size;
        file.set_len(len)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.write_all(&hasher.finalize())?;
        file.sync_all()?;
        std::fs::rename(&part, out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(replayed)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Turns events into `key` bucket entries, checking that revisions follow each other.
struct Sequencer {
    last: i64,
    /// Next sub-revision within `last`.
    sub: i64,
    revisions: u64,
    events: u64,
    skipped: u64,
    error: Option<ReplayError>,
}

impl Sequencer {
    /// `None` stops the replay (the end, `until` reached, or an error kept in `self.error`);
    /// `Some(None)` skips an event already in the database.
    fn next(&mut self, event: Result<Event, String>, until: Option<i64>) -> Option<Option<Entry>> {
        let stop = |s: &mut Sequencer, e: ReplayError| {
            s.error = Some(e);
            None
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => return stop(self, ReplayError::Source(e)),
        };
        let rev = event.mod_revision;
        if until.is_some_and(|u| rev > u) {
            return None;
        }
        if self.events == 0 && rev <= self.last {
            self.skipped += 1;
            return Some(None);
        }
        if rev == self.last && self.events > 0 {
            // Another change of the same Txn.
        } else if rev == self.last + 1 {
            self.last = rev;
            self.sub = 0;
            self.revisions += 1;
        } else {
            return stop(
                self,
                ReplayError::Gap(format!(
                    "a change at revision {rev} follows revision {}: revisions {}..{} are missing",
                    self.last,
                    self.last + 1,
                    rev - 1
                )),
            );
        }
        if let Err(e) = check_event(&event) {
            return stop(self, ReplayError::BadEvent(e));
        }
        let mut key = revision_key(rev as u64, self.sub as u64);
        let value = match event.kind {
            EventKind::Put => encode_key_value(&event),
            EventKind::Delete => {
                key.push(b't');
                encode_key_value(&Event {
                    kind: EventKind::Delete,
                    key: event.key.clone(),
                    mod_revision: 0,
                    create_revision: 0,
                    version: 0,
                    value: Vec::new(),
                    lease: 0,
                })
            }
        };
        self.sub += 1;
        self.events += 1;
        Some(Some(Entry::new(key, value)))
    }
}

fn check_event(e: &Event) -> Result<(), String> {
    if e.key.is_empty() {
        return Err(format!("revision {}: empty key", e.mod_revision));
    }
    if e.kind == EventKind::Put
        && (e.version < 1 || e.create_revision < 1 || e.create_revision > e.mod_revision)
    {
        return Err(format!(
            "revision {}: put of {:?} with version {} and create revision {}",
            e.mod_revision,
            String::from_utf8_lossy(&e.key),
            e.version,
            e.create_revision
        ));
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    if !b.is_empty() {
        out.push(tag);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn put_int(out: &mut Vec<u8>, tag: u8, v: i64) {
    if v != 0 {
        out.push(tag);
        put_varint(out, v as u64);
    }
}

/// `mvccpb.KeyValue` exactly as etcd marshals it (fields in order, zero values omitted), so
/// `hashkv` of the result equals the source cluster's.
pub fn encode_key_value(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.key.len() + e.value.len() + 40);
    put_bytes(&mut out, 0x0a, &e.key);
    put_int(&mut out, 0x10, e.create_revision);
    put_int(&mut out, 0x18, e.mod_revision);
    put_int(&mut out, 0x20, e.version);
    put_bytes(&mut out, 0x2a, &e.value);
    put_int(&mut out, 0x30, e.lease);
    out
}

/// `leasepb.Lease` as etcd's lessor persists it (no remaining TTL: a restored lease starts
/// its full TTL when a leader takes over, as after any restore).
pub fn encode_lease(l: &LeaseGrant) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    put_int(&mut out, 0x08, l.id);
    put_int(&mut out, 0x10, l.ttl);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{KeyValue, Lease};

    fn put(key: &str, rev: i64, create: i64, version: i64, value: &str) -> Result<Event, String> {
        Ok(Event {
            kind: EventKind::Put,
            key: key.into(),
            mod_revision: rev,
            create_revision: create,
            version,
            value: value.into(),
            lease: 0,
        })
    }

    #[test]
    fn key_values_encode_as_etcd_marshals_them() {
        let e = Event {
            kind: EventKind::Put,
            key: b"a".to_vec(),
            mod_revision: 7,
            create_revision: 5,
            version: 2,
            value: b"x".to_vec(),
            lease: 9,
        };
        let bytes = encode_key_value(&e);
        assert_eq!(
            bytes,
            [0x0a, 0x01, b'a', 0x10, 0x05, 0x18, 0x07, 0x20, 0x02, 0x2a, 0x01, b'x', 0x30, 0x09]
        );
        let kv = KeyValue::decode(&bytes).unwrap();
        assert_eq!(
            (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease),
            (&b"a"[..], 5, 7, 2, &b"x"[..], 9)
        );
        let l = Lease::decode(&encode_lease(&LeaseGrant { id: 0x694d_7a3b_1c2d_3e4f, ttl: 60 }))
            .unwrap();
        assert_eq!((l.id, l.ttl, l.remaining_ttl), (0x694d_7a3b_1c2d_3e4f, 60, 0));
    }

    #[test]
    fn sequencer_numbers_sub_revisions_and_finds_gaps() {
        let mut s =
            Sequencer { last: 10, sub: 0, revisions: 0, events: 0, skipped: 0, error: None };
        assert!(matches!(s.next(put("old", 10, 10, 1, ""), None), Some(None)), "already in the db");
        let a = s.next(put("a", 11, 11, 1, "1"), None).unwrap().unwrap();
        let b = s.next(put("b", 11, 11, 1, "2"), None).unwrap().unwrap();
        assert_eq!(a.key, revision_key(11, 0));
        assert_eq!(b.key, revision_key(11, 1));
        let d = s
            .next(
                Ok(Event {
                    kind: EventKind::Delete,
                    key: b"a".to_vec(),
                    mod_revision: 12,
                    create_revision: 0,
                    version: 0,
                    value: vec![],
                    lease: 0,
                }),
                None,
            )
            .unwrap()
            .unwrap();
        let mut tomb = revision_key(12, 0);
        tomb.push(b't');
        assert_eq!(d.key, tomb);
        assert_eq!(d.value, [0x0a, 0x01, b'a']);
        assert!(s.next(put("c", 13, 13, 1, ""), Some(12)).is_none(), "past until");
        assert!(s.error.is_none());
        assert!(s.next(put("c", 14, 14, 1, ""), None).is_none());
        assert!(
            matches!(s.error, Some(ReplayError::Gap(ref m)) if m.contains("13..13")),
            "{:?}",
            s.error
        );
        let mut s =
            Sequencer { last: 10, sub: 0, revisions: 0, events: 0, skipped: 0, error: None };
        assert!(
            s.next(put("x", 12, 12, 1, ""), None).is_none(),
            "the first change must be the next revision"
        );
        assert!(matches!(s.error, Some(ReplayError::Gap(_))));
        let mut s =
            Sequencer { last: 10, sub: 0, revisions: 0, events: 0, skipped: 0, error: None };
        assert!(s.next(put("x", 11, 12, 1, ""), None).is_none());
        assert!(matches!(s.error, Some(ReplayError::BadEvent(_))));
    }
}
