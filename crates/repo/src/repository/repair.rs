//! `backup repair`: make a damaged repository whole again as far as the data at hand allows.
//!
//! Under an exclusive lock: every stored pack is read whole and checked (a pack that hashes to
//! its name is intact; otherwise each blob is checked against its id). Then
//! 1. the sound blobs of damaged packs are copied into new packs (salvage);
//! 2. blobs that no sound copy holds are looked for in the sources given: snapshot files or
//!    other files (cut at every chunk size the backups use, each chunk's id compared) and
//!    other repositories whose blob ids agree (a plain repository, or one sharing the key);
//!    a source whose sha256 equals a backup part's restores that part's chunk lists too;
//! 3. one new index names the intact packs (from their own headers, so a lost index file is
//!    rebuilt too) and the new ones; then the old index files, the damaged packs and their
//!    damage records are deleted, in that order (a kill at any point leaves every backup as
//!    readable as before: new packs are written before the index naming them, and no pack is
//!    deleted while an index file still needs it for a sound copy);
//! 4. the report names the backups that stay unrestorable, and what they lack.
//!
//! A dry run does all the reading and none of the writing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;

use super::damage::damage_key;
use super::writer::Uploader;
use super::*;
use crate::id::Id;
use crate::lock::Lock;
use crate::pack::{blob_id, decode_blob, BlobKind, Index, PackBuilder, PackEntry};

/// Where repair may find the content of lost blobs.
pub enum RepairSource<'a> {
    /// A file: a snapshot (of the same cluster, the older the better a match) or a
    /// control-plane file.
    File(PathBuf),
    /// Another repository whose blob ids are computed the same way (unlocked if encrypted).
    Repository(&'a Repository),
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    pub packs_checked: usize,
    pub packs_damaged: Vec<String>,
    /// Packs no index named, added to the new index (a create's or the index's loss).
    pub packs_reindexed: usize,
    pub blobs_damaged: usize,
    /// Sound blobs of damaged packs copied into new packs.
    pub blobs_salvaged: usize,
    /// Lost blobs found again, by source.
    pub blobs_refilled: BTreeMap<String, usize>,
    /// Blobs some backup needs that no sound copy and no source holds.
    pub blobs_missing: usize,
    /// Backups that still cannot be restored, with what they lack.
    pub unrestorable: Vec<UnrestorableBackup>,
    /// Manifests that could not be read (their needs are unknown).
    pub unreadable_manifests: Vec<String>,
    pub damage_records_removed: usize,
    pub index_files_replaced: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct UnrestorableBackup {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub missing_blobs: usize,
    /// The parts affected: `snapshot` or a file path.
    pub parts: Vec<String>,
}

impl RepairReport {
    pub fn is_clean(&self) -> bool {
        self.packs_damaged.is_empty()
            && self.blobs_missing == 0
            && self.unreadable_manifests.is_empty()
            && self.packs_reindexed == 0
    }
}

/// A stored pack as the scan found it.
struct Scanned {
    pack: Id,
    intact: bool,
    good: Vec<PackEntry>,
    bad: Vec<PackEntry>,
}

/// New packs of the repair, built and uploaded as blobs come (or only counted, dry).
struct NewPacks<'r> {
    repo: &'r Repository,
    uploader: Option<Uploader>,
    builder: PackBuilder,
    index: Index,
    have: HashSet<Id>,
    /// Chunk lists this repair stores, to read parts whose lists were lost.
    lists: HashMap<Id, Vec<u8>>,
}

impl NewPacks<'_> {
    fn add_stored(&mut self, e: &PackEntry, stored: &[u8]) -> Result<(), RepoError> {
        if !self.have.insert(e.id) {
            return Ok(());
        }
        if self.uploader.is_some() {
            self.builder.add(e.id, e.kind, e.encoding, e.raw_len, stored);
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn add_raw(&mut self, kind: BlobKind, id: Id, raw: &[u8]) -> Result<(), RepoError> {
        if !self.have.insert(id) {
            return Ok(());
        }
        if kind == BlobKind::List {
            self.lists.insert(id, raw.to_vec());
        }
        if self.uploader.is_some() {
            let level =
                self.repo.transfer.compression_level.unwrap_or(self.repo.config.compression_level);
            let (encoding, stored) = crate::pack::encode_blob(&id, raw, level, self.repo.keys()?);
            self.builder.add(id, kind, encoding, raw.len() as u32, &stored);
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), RepoError> {
        if self.builder.len() as u64 >= self.repo.config.pack_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RepoError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let (id, data, entries) = std::mem::take(&mut self.builder).finish();
        self.index.add_pack(id, &entries);
        self.uploader.as_ref().expect("only a real repair builds packs").send(pack_key(&id), data)
    }
}

impl Repository {
    /// Checks every pack and repairs what it can (see the module's documentation).
    pub fn repair(
        &self,
        sources: &[RepairSource<'_>],
        dry_run: bool,
    ) -> Result<RepairReport, RepoError> {
        let keys = self.keys()?;
        let lock = Lock::acquire(
            self.store.clone(),
            true,
            if dry_run { "backup repair --dry-run" } else { "backup repair" },
        )?;
        let mut report = RepairReport { dry_run, ..Default::default() };
        let (index_keys, old_index) = self.load_index_files()?;
        let damage = self.damage()?;

        // 1. Read every stored pack whole.
        let scanned = self.scan_packs(&old_index)?;
        report.packs_checked = scanned.len();
        let mut sound = Index::new();
        for s in scanned.iter().filter(|s| s.intact) {
            sound.add_pack(s.pack, &s.good);
            if !old_index.contains_pack(&s.pack) {
                report.packs_reindexed += 1;
            }
        }
        let damaged: Vec<&Scanned> = scanned.iter().filter(|s| !s.intact).collect();
        for s in &damaged {
            report.packs_damaged.push(s.pack.hex());
            report.blobs_damaged += s.bad.len();
            if !dry_run {
                let bad: Vec<Id> = s.bad.iter().map(|e| e.id).collect();
                self.note_damage(
                    &s.pack,
                    Some(&bad),
                    "backup repair",
                    "its content does not match its sha256 name",
                );
            }
        }

        // 2. Salvage: sound blobs of damaged packs that no intact pack holds.
        let mut new = NewPacks {
            repo: self,
            uploader: (!dry_run).then(|| Uploader::start(self.store.clone())),
            builder: PackBuilder::new(),
            index: Index::new(),
            have: HashSet::new(),
            lists: HashMap::new(),
        };
        for s in &damaged {
            let wanted: Vec<&PackEntry> =
                s.good.iter().filter(|e| !sound.contains(&e.id)).collect();
            if wanted.is_empty() {
                continue;
            }
            let bytes = self.store.get(&pack_key(&s.pack))?;
            for e in wanted {
                let stored = bytes
                    .get(e.offset as usize..(e.offset + e.stored_len) as usize)
                    .unwrap_or_default();
                // Checked in the scan; checked again, since the object may have changed since.
                if decode_blob(keys, e.id, e.encoding, e.raw_len, stored).is_ok() {
                    new.add_stored(e, stored)?;
                    report.blobs_salvaged += 1;
                }
            }
        }

        // 3. What the backups need and nothing sound holds.
        let (backups, unreadable) = self.list_backups()?;
        report.unreadable_manifests = unreadable;
        let have = |id: &Id, new: &NewPacks| sound.contains(id) || new.have.contains(id);
        let readable = {
            let mut idx = sound.clone();
            for s in &damaged {
                let mut p = Index::new();
                p.add_pack(s.pack, &s.good);
                idx.merge(&p);
            }
            idx
        };
        let parts_of = |m: &Manifest| -> Vec<(String, Part)> {
            std::iter::once(("snapshot".to_string(), m.snapshot.clone()))
                .chain(
                    m.files.iter().filter_map(|f| f.content.clone().map(|p| (f.path.clone(), p))),
                )
                .collect()
        };
        // Chunk ids of every part whose lists can be read; parts whose lists are lost can
        // only come back from a source with the same sha256.
        let mut missing: HashSet<Id> = HashSet::new();
        let mut chunk_sizes: HashSet<u32> = HashSet::new();
        let mut whole_parts: HashMap<String, (u32, u64)> = HashMap::new();
        for m in &backups {
            for (_, part) in parts_of(m) {
                for list in &part.chunk_lists {
                    if !have(list, &new) {
                        missing.insert(*list);
                    }
                }
                match self.chunk_ids(&readable, &part) {
                    Ok(ids) => {
                        for id in ids.into_iter().filter(|id| !have(id, &new)) {
                            missing.insert(id);
                            chunk_sizes.insert(part.chunk_size);
                        }
                    }
                    Err(_) => {
                        whole_parts.insert(part.sha256.clone(), (part.chunk_size, part.size));
                    }
                }
            }
        }

        // 4. Look for the missing content in the sources.
        let fanout = self.config.chunking.list_fanout as usize * 32;
        for source in sources {
            if missing.is_empty() && whole_parts.is_empty() {
                break;
            }
            match source {
                RepairSource::File(path) => {
                    let name = path.display().to_string();
                    let digest = crate::id::file_sha256(path)
                        .map_err(|e| RepoError::Io(format!("{name}: {e}")))?;
                    let mut sizes: Vec<u32> = chunk_sizes.iter().copied().collect();
                    let exact = whole_parts.get(&digest).copied();
                    if let Some((cs, _)) = exact {
                        sizes.push(cs);
                    }
                    sizes.sort();
                    sizes.dedup();
                    let mut found = 0;
                    for cs in sizes {
                        let rebuild_lists = exact.is_some_and(|(c, _)| c == cs);
                        let mut ids: Vec<u8> = Vec::new();
                        let mut f = std::fs::File::open(path)
                            .map_err(|e| RepoError::Io(format!("{name}: {e}")))?;
                        let mut buf = vec![0u8; cs as usize];
                        loop {
                            let n = super::pipeline::read_full(&mut f, &mut buf)
                                .map_err(|e| RepoError::Io(format!("{name}: {e}")))?;
                            if n == 0 {
                                break;
                            }
                            let id = blob_id(keys, &buf[..n]);
                            if rebuild_lists {
                                ids.extend_from_slice(&id.0);
                            }
                            if (missing.contains(&id) || rebuild_lists) && !have(&id, &new) {
                                new.add_raw(BlobKind::Data, id, &buf[..n])?;
                                missing.remove(&id);
                                found += 1;
                            }
                            if n < buf.len() {
                                break;
                            }
                        }
                        for piece in ids.chunks(fanout) {
                            let id = blob_id(keys, piece);
                            if !have(&id, &new) {
                                new.add_raw(BlobKind::List, id, piece)?;
                                missing.remove(&id);
                                found += 1;
                            }
                        }
                    }
                    if exact.is_some() {
                        whole_parts.remove(&digest);
                    }
                    if found > 0 {
                        report.blobs_refilled.insert(name, found);
                    }
                }
                RepairSource::Repository(other) => {
                    let other_index = other.load_index()?;
                    let mut found = 0;
                    let mut wanted: Vec<Id> =
                        missing.iter().copied().filter(|id| other_index.contains(id)).collect();
                    wanted.sort();
                    for id in wanted {
                        let kind = other_index.get(&id).map(|l| l.kind).unwrap_or(BlobKind::Data);
                        let Ok(raw) = other.read_blob(&other_index, &id) else { continue };
                        // Ids must agree under this repository's key, or the content is not ours.
                        if blob_id(keys, &raw) == id {
                            new.add_raw(kind, id, &raw)?;
                            missing.remove(&id);
                            found += 1;
                        }
                    }
                    if found > 0 {
                        report.blobs_refilled.insert(other.location(), found);
                    }
                }
            }
        }

        // 5. Which backups stay unrestorable.
        for m in &backups {
            let mut lacking = 0;
            let mut parts = Vec::new();
            for (name, part) in parts_of(m) {
                let mut n = part.chunk_lists.iter().filter(|l| !have(l, &new)).count();
                if n == 0 {
                    n = match self.chunk_ids_from(&readable, &new, &part) {
                        Some(ids) => ids.iter().filter(|id| !have(id, &new)).count(),
                        None => 1,
                    };
                }
                if n > 0 {
                    lacking += n;
                    parts.push(name);
                }
            }
            if lacking > 0 {
                report.unrestorable.push(UnrestorableBackup {
                    id: m.id.clone(),
                    created: m.created,
                    missing_blobs: lacking,
                    parts,
                });
            }
        }
        report.blobs_missing = missing.len();

        // Records of packs that turned out intact (a pack that hashes to its name is as
        // written) or are gone, and of the damaged packs this repair removes.
        let stored: HashSet<Id> = scanned.iter().map(|s| s.pack).collect();
        let stale_records: Vec<Id> = damage
            .packs()
            .into_iter()
            .filter(|p| !stored.contains(p) || scanned.iter().any(|s| s.pack == *p && s.intact))
            .collect();
        report.damage_records_removed = stale_records.len() + damaged.len();
        report.index_files_replaced = index_keys.len();
        if dry_run {
            return Ok(report);
        }

        // 6. New packs, then one index naming intact and new packs, then the deletions.
        new.flush()?;
        let uploader = new.uploader.take().expect("a real repair has an uploader");
        uploader.finish()?;
        let mut index = sound;
        index.merge(&new.index);
        let data = self.encode_index(&index);
        let new_key = format!("index/{}", Id::of(&data).hex());
        lock.check_held()?;
        self.store.put(&new_key, Bytes::from(data))?;
        for key in index_keys.iter().filter(|k| **k != new_key) {
            self.store.delete(key)?;
        }
        for s in &damaged {
            self.store.delete(&pack_key(&s.pack))?;
            self.store.delete(&damage_key(&s.pack))?;
        }
        for p in stale_records {
            self.store.delete(&damage_key(&p))?;
        }
        Ok(report)
    }

    /// Chunk ids of `part`, reading its lists from the repository or from the blobs the
    /// repair is about to store; `None` when a list is nowhere.
    fn chunk_ids_from(&self, index: &Index, new: &NewPacks, part: &Part) -> Option<Vec<Id>> {
        let mut ids = Vec::with_capacity(part.chunks as usize);
        for list in &part.chunk_lists {
            let raw = match new.lists.get(list) {
                Some(raw) => raw.clone(),
                None => self.read_blob(index, list).ok()?,
            };
            ids.extend(raw.chunks_exact(32).map(|c| Id(c.try_into().unwrap())));
        }
        (ids.len() as u64 == part.chunks).then_some(ids)
    }

    /// Every stored pack read whole and checked, on several threads.
    fn scan_packs(&self, index: &Index) -> Result<Vec<Scanned>, RepoError> {
        let mut packs: Vec<Id> = self
            .store
            .list("packs/")?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse))
            .collect();
        packs.sort();
        let queue = Mutex::new(packs);
        let out = Mutex::new(Vec::new());
        let failed: Mutex<Option<RepoError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.transfer.workers() {
                s.spawn(|| loop {
                    if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    let Some(pack) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                        return;
                    };
                    let result = self
                        .store
                        .get(&pack_key(&pack))
                        .map_err(RepoError::from)
                        .and_then(|bytes| {
                            let check =
                                self.check_pack_bytes(&pack, &bytes, &index.pack_entries(&pack))?;
                            Ok(Scanned {
                                pack,
                                intact: check.intact,
                                good: check.good,
                                bad: check.bad,
                            })
                        });
                    match result {
                        Ok(s) => out.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                        // Gone since the listing: nothing to check.
                        Err(RepoError::Store(StoreError::NotFound(_))) => {}
                        Err(e) => {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
        out.sort_by_key(|s| s.pack);
        Ok(out)
    }
}
