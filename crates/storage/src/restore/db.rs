//! The restored member's `snap/db`: a byte copy of the snapshot's bbolt image plus one small
//! copy-on-write commit that rewrites the buckets a restore changes (`members`,
//! `members_removed`, `meta`, and the tail of `key` for `--bump-revision`) into new pages at
//! the end of the file, then a new meta page. The rest of the file is never loaded.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use etcdguard_bolt::page::NO_FREELIST;
use etcdguard_bolt::write::{self, Appender, Entry, WriteError};
use etcdguard_bolt::{walk, BucketHeader, Db, MappedFile, Meta, Visitor, WalkOptions, WalkReport};

use super::membership::Cluster;

pub const KEY: &[u8] = b"key";
pub const META: &[u8] = b"meta";
pub const MEMBERS: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const CLUSTER: &[u8] = b"cluster";
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";

/// Small buckets are read whole; more entries than this in one means the file is not what
/// we think it is.
const SMALL_BUCKET_LIMIT: usize = 100_000;

/// What the commit writes.
#[derive(Debug, Clone)]
pub struct Edit<'a> {
    pub cluster: &'a Cluster,
    pub consistent_index: u64,
    pub term: u64,
    /// `--bump-revision B --mark-compacted`: B.
    pub bump: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot rewrite the database: {0}")]
    Format(#[from] WriteError),
    #[error("cannot rewrite the database: {0}")]
    Schema(String),
    /// The requested bump takes the revision past etcd's largest (i64::MAX): a wrong flag.
    #[error("--bump-revision {bump} takes the snapshot's revision {latest} past etcd's largest revision ({}); use a smaller bump, e.g. 1000000000", i64::MAX)]
    BumpTooLarge { bump: u64, latest: u64 },
}

/// An etcd revision key: main and sub revision, big-endian, joined by `_`.
pub fn revision_key(main: u64, sub: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// Copies the first `len` bytes of `src` (the image without its trailer) into a new file
/// `dst` (mode 0600) with the kernel's copy path, and fsyncs it.
pub fn copy_image(src: &Path, len: u64, dst: &Path) -> io::Result<()> {
    copy_image_unsynced(src, len, dst)?;
    File::open(dst)?.sync_all()
}

/// [`copy_image`] without the fsync, for a copy that its caller makes durable later.
pub fn copy_image_unsynced(src: &Path, len: u64, dst: &Path) -> io::Result<()> {
    let mut input = File::open(src)?.take(len);
    let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
    let n = io::copy(&mut input, &mut out)?;
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {n} of {len} bytes: the snapshot shrank"),
        ));
    }
    Ok(())
}

/// What the commit did.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub txid: u64,
    pub pages_before: u64,
    pub pages_after: u64,
    /// Revision of the bump marker, when one was written.
    pub bumped_to: Option<u64>,
}

/// Applies `edit` to the database file at `path` (a private copy) as one bbolt commit: the
/// new pages made durable before the meta page that points at them, as bbolt does.
pub fn commit(path: &Path, edit: &Edit<'_>) -> Result<Committed, DbError> {
    commit_with(path, edit, true)
}

/// [`commit`] with no fsync, for a file that is not in use until its caller has made it
/// durable as a whole (a restore's unpublished data dir: a crash leaves it unpublished, so
/// the order of its writes does not matter, only that all are on disk before it is put in
/// place).
pub fn commit_unsynced(path: &Path, edit: &Edit<'_>) -> Result<Committed, DbError> {
    commit_with(path, edit, false)
}

fn commit_with(path: &Path, edit: &Edit<'_>, sync: bool) -> Result<Committed, DbError> {
    let map = MappedFile::open(path).map_err(|e| io::Error::other(e.to_string()))?;
    let db = Db::open(map.bytes()).map_err(|e| DbError::Schema(e.to_string()))?;
    let old = *db.meta();
    let mut app = Appender::new(old.page_size, old.pgid);

    let mut root: BTreeMap<Vec<u8>, Entry> =
        write::collect_entries(&db, old.root, SMALL_BUCKET_LIMIT)?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
    let sequence = |root: &BTreeMap<Vec<u8>, Entry>, name: &[u8]| {
        root.get(name).and_then(|e| BucketHeader::parse(&e.value)).map_or(0, |h| h.sequence)
    };
    for name in [MEMBERS, MEMBERS_REMOVED, CLUSTER, META, KEY] {
        if let Some(e) = root.get(name) {
            if !e.is_bucket() {
                return Err(DbError::Schema(format!(
                    "top-level key {:?} is not a bucket",
                    String::from_utf8_lossy(name)
                )));
            }
        }
    }

    // members: exactly the new cluster, keyed by hex id (sorted as strings).
    let mut members: Vec<Entry> = edit
        .cluster
        .members
        .iter()
        .map(|m| Entry::new(m.hex_id().into_bytes(), m.json().into_bytes()))
        .collect();
    members.sort_by(|a, b| a.key.cmp(&b.key));
    let v = app.bucket(&members, sequence(&root, MEMBERS))?;
    root.insert(MEMBERS.to_vec(), Entry::bucket(MEMBERS, v));
    let v = app.bucket(&[], sequence(&root, MEMBERS_REMOVED))?;
    root.insert(MEMBERS_REMOVED.to_vec(), Entry::bucket(MEMBERS_REMOVED, v));
    if !root.contains_key(CLUSTER) {
        let v = app.bucket(&[], 0)?;
        root.insert(CLUSTER.to_vec(), Entry::bucket(CLUSTER, v));
    }

    // key: the bump marker after the newest revision.
    let mut bumped_to = None;
    if let Some(bump) = edit.bump {
        let (latest, value) = match root.get(KEY) {
            None => (0, None),
            Some(e) => {
                let header = BucketHeader::parse(&e.value)
                    .ok_or_else(|| DbError::Schema("bucket \"key\": bad header".into()))?;
                let last = match header.inline_page {
                    Some(_) => write::collect_bucket(&db, &e.value, SMALL_BUCKET_LIMIT)?.pop(),
                    None => write::last_entry(&db, header.root)?,
                };
                let latest = match &last {
                    None => 0,
                    Some(l) if l.key.len() >= 17 && l.key[8] == b'_' => {
                        u64::from_be_bytes(l.key[..8].try_into().unwrap())
                    }
                    Some(l) => {
                        return Err(DbError::Schema(format!(
                            "bucket \"key\": the newest key {} is not a revision",
                            etcdguard_bolt::walk::display_key(&l.key)
                        )))
                    }
                };
                (latest, Some((header, e.value.clone())))
            }
        };
        let target = latest
            .checked_add(bump)
            .filter(|&t| t <= i64::MAX as u64)
            .ok_or(DbError::BumpTooLarge { bump, latest })?;
        let marker = Entry::new(revision_key(target, 0), Vec::new());
        let v = match value {
            None => app.bucket(&[marker], 0)?,
            Some((header, raw)) if header.inline_page.is_some() => {
                let mut entries = write::collect_bucket(&db, &raw, SMALL_BUCKET_LIMIT)?;
                entries.push(marker);
                app.bucket(&entries, header.sequence)?
            }
            Some((header, _)) => {
                let new_root = app.append_last(&db, header.root, marker)?;
                write::bucket_value(new_root, header.sequence, None)
            }
        };
        root.insert(KEY.to_vec(), Entry::bucket(KEY, v));
        bumped_to = Some(target);
    }

    // meta: consistent index and term (and the scheduled compaction for a bump).
    let mut meta: BTreeMap<Vec<u8>, Vec<u8>> = match root.get(META) {
        Some(e) => write::collect_bucket(&db, &e.value, SMALL_BUCKET_LIMIT)?
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect(),
        None => BTreeMap::new(),
    };
    meta.insert(CONSISTENT_INDEX.to_vec(), edit.consistent_index.to_be_bytes().to_vec());
    meta.insert(TERM.to_vec(), edit.term.to_be_bytes().to_vec());
    if let Some(target) = bumped_to {
        meta.insert(SCHEDULED_COMPACT.to_vec(), revision_key(target, 0));
    }
    let meta_entries: Vec<Entry> = meta.into_iter().map(|(k, v)| Entry::new(k, v)).collect();
    let v = app.bucket(&meta_entries, sequence(&root, META))?;
    root.insert(META.to_vec(), Entry::bucket(META, v));

    let root_entries: Vec<Entry> = root.into_values().collect();
    let new_root = app.tree(&root_entries)?;
    let txid =
        old.txid.checked_add(1).ok_or_else(|| DbError::Schema("transaction id overflow".into()))?;
    let new_meta =
        Meta { root: new_root, freelist: NO_FREELIST, pgid: app.next_pgid(), txid, ..old };
    let appended = app.bytes().to_vec();
    let start = app.start() * old.page_size as u64;
    drop(map);

    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&appended, start)?;
    if sync {
        file.sync_all()?;
    }
    let meta_page = txid % 2;
    file.write_all_at(
        &write::encode_meta_page(meta_page, &new_meta),
        meta_page * old.page_size as u64,
    )?;
    if sync {
        file.sync_all()?;
    }
    Ok(Committed { txid, pages_before: old.pgid, pages_after: new_meta.pgid, bumped_to })
}

/// What a walk of a database saw of etcd's schema (the small buckets in full).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub buckets: Vec<String>,
    /// Main revision of the last key of `key` (0 when empty).
    pub revision: u64,
    pub revision_keys: u64,
    pub meta: BTreeMap<Vec<u8>, Vec<u8>>,
    pub members: BTreeMap<Vec<u8>, Vec<u8>>,
    pub members_removed: u64,
    bucket: Vec<u8>,
}

impl Visitor<'_> for Facts {
    fn entry(&mut self, depth: usize, key: &[u8], value: &[u8], is_bucket: bool) {
        if depth == 0 {
            self.buckets.push(String::from_utf8_lossy(key).into_owned());
            return;
        }
        if depth != 1 || is_bucket {
            return;
        }
        match self.bucket.as_slice() {
            KEY => {
                self.revision_keys += 1;
                if key.len() >= 8 {
                    self.revision = u64::from_be_bytes(key[..8].try_into().unwrap());
                }
            }
            META if self.meta.len() < 1000 => {
                self.meta.insert(key.to_vec(), value.to_vec());
            }
            MEMBERS if self.members.len() < 10_000 => {
                self.members.insert(key.to_vec(), value.to_vec());
            }
            MEMBERS_REMOVED => self.members_removed += 1,
            _ => {}
        }
    }
    fn enter_bucket(&mut self, depth: usize, name: &[u8]) {
        if depth == 1 {
            self.bucket = name.to_vec();
        }
    }
    fn leave_bucket(&mut self, depth: usize, _name: &[u8]) {
        if depth == 1 {
            self.bucket.clear();
        }
    }
}

impl Facts {
    pub fn meta_u64(&self, key: &[u8]) -> Option<u64> {
        self.meta
            .get(key)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
    }
}

/// Walks a whole database (structure checks included), keeping memory flat on large files.
pub fn walk_facts(db: &Db<'_>, release: Option<&dyn Fn()>) -> (Facts, WalkReport) {
    walk_facts_and(db, release, None)
}

/// [`walk_facts`], showing every entry to `also` in the same pass.
pub fn walk_facts_and<'a>(
    db: &Db<'a>,
    release: Option<&dyn Fn()>,
    also: Option<&mut dyn Visitor<'a>>,
) -> (Facts, WalkReport) {
    struct Both<'v, 'a> {
        facts: Facts,
        also: Option<&'v mut dyn Visitor<'a>>,
    }
    impl<'a> Visitor<'a> for Both<'_, 'a> {
        fn entry(&mut self, depth: usize, key: &'a [u8], value: &'a [u8], is_bucket: bool) {
            self.facts.entry(depth, key, value, is_bucket);
            if let Some(v) = self.also.as_mut() {
                v.entry(depth, key, value, is_bucket);
            }
        }
        fn enter_bucket(&mut self, depth: usize, name: &'a [u8]) {
            self.facts.enter_bucket(depth, name);
            if let Some(v) = self.also.as_mut() {
                v.enter_bucket(depth, name);
            }
        }
        fn leave_bucket(&mut self, depth: usize, name: &[u8]) {
            self.facts.leave_bucket(depth, name);
            if let Some(v) = self.also.as_mut() {
                v.leave_bucket(depth, name);
            }
        }
    }
    let mut both = Both { facts: Facts::default(), also };
    let opts = WalkOptions { release, ..WalkOptions::default() };
    let report = walk(db, &mut both, &opts);
    (both.facts, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_key_layout() {
        assert_eq!(revision_key(0x0102, 3), b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03".to_vec());
    }
}
