//! Removing data: `delete` (one manifest), `prune` (the only deleter of packs, under an
//! exclusive lock, in the crash-safe order of `docs/formats/repository.md`), and index
//! maintenance: rebuild from pack headers, pack and framing checks.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::writer::Uploader;
use super::*;
use crate::id::Id;
use crate::lock::Lock;
use crate::manifest::*;
use crate::pack::{decode_blob, Index, PackBuilder};
use crate::retention::{self, Candidate, Decision, Policy};
use crate::RepoError;

impl Repository {
    /// Removes one backup's manifest; its data goes at the next prune.
    pub fn delete_backup(&self, id: &str) -> Result<(), RepoError> {
        let _lock = Lock::acquire(self.store.clone(), false, "backup delete")?;
        self.manifest(id)?;
        self.store.delete(&manifest_key(id))?;
        self.store.delete(&verified_key(id))?;
        self.store.delete(&drilled_key(id))?;
        self.store.delete(&export_key(id))?;
        Ok(())
    }

    /// Plans (and unless `dry_run`, carries out) a prune: the policy's decisions, then
    /// removal of everything no remaining backup references.
    pub fn prune(&self, policy: Option<&Policy>, dry_run: bool) -> Result<PruneReport, RepoError> {
        // Used backups are found by reading their chunk lists, which needs the key.
        let keys = self.keys()?;
        let lock = Lock::acquire(
            self.store.clone(),
            true,
            if dry_run { "backup prune --dry-run" } else { "backup prune" },
        )?;
        let (backups, bad) = self.list_backups()?;
        if !bad.is_empty() {
            return Err(RepoError::Damaged(format!(
                "cannot prune while manifests are unreadable (their data would look unused): {}",
                bad.join("; ")
            )));
        }
        let mut candidates = Vec::new();
        for m in &backups {
            let verified = m.etcd.verified || self.verification(&m.id)?.is_some();
            candidates.push(Candidate { id: m.id.clone(), time: m.created, verified });
        }
        let decisions: Vec<Decision> = match policy {
            Some(p) => retention::apply(p, &candidates),
            None => retention::apply(
                &Policy { keep_last: usize::MAX, ..Default::default() },
                &candidates,
            )
            .into_iter()
            .map(|d| Decision { reasons: vec!["no policy given".into()], ..d })
            .collect(),
        };
        let remove: HashSet<String> =
            decisions.iter().filter(|d| !d.keep).map(|d| d.id.clone()).collect();

        let (index_keys, full_index) = self.load_index_files()?;
        let stored_packs: HashMap<Id, u64> = self
            .store
            .list("packs/")?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse).map(|id| (id, o.size)))
            .collect();
        // Only copies that exist count: a blob whose indexed pack is gone but which another
        // stored pack also holds is still kept (and indexed there).
        let mut index = full_index.retain_packs(|p| stored_packs.contains_key(p));
        // Damaged packs are always rewritten: their sound blobs are copied, their damaged
        // ones dropped where another copy is kept (else the prune stops: `backup repair`).
        let damage = self.damage()?;
        damage.prefer_good_copies(&mut index);
        // Everything the remaining backups reference.
        let mut used: HashSet<Id> = HashSet::new();
        for m in backups.iter().filter(|m| !remove.contains(&m.id)) {
            let parts = std::iter::once(&m.snapshot)
                .chain(m.files.iter().filter_map(|f| f.content.as_ref()));
            for part in parts {
                used.extend(part.chunk_lists.iter().copied());
                for id in self
                    .chunk_ids(&index, part)
                    .map_err(|e| e.context(&format!("backup {}", m.id)))?
                {
                    used.insert(id);
                }
            }
        }
        // Checked before anything is written or deleted: a prune of a repository that lost
        // data a kept backup needs would hide the loss (the new index would not name it).
        for id in &used {
            match index.get(id) {
                None => {
                    return Err(RepoError::Damaged(format!(
                        "blob {} used by a remaining backup is in no stored pack; not pruning (run `backup verify`)",
                        id.hex()
                    )))
                }
                // Recorded as damaged, no other copy: read it (a record is a hint, and the
                // pack may have been mended since); refuse before deleting anything if it
                // is damaged indeed.
                Some(loc) if damage.is_bad(&loc.pack, id) && self.read_blob(&index, id).is_err() => {
                    return Err(RepoError::Damaged(format!(
                        "blob {} used by a remaining backup is stored only in pack {}, which is recorded as damaged; not \
                         pruning: run `etcdguard backup repair` (it stores fresh copies from the data at hand and names the \
                         backups that stay unrestorable)",
                        id.hex(),
                        loc.pack.hex()
                    )))
                }
                Some(_) => {}
            }
        }

        let mut report = PruneReport { decisions, dry_run, ..Default::default() };
        report.missing_packs = full_index.packs().filter(|p| !stored_packs.contains_key(p)).count();
        let mut delete_packs = Vec::new();
        let mut repack = Vec::new();
        let mut keep_index = Index::new();
        let mut packs: Vec<Id> = index.packs().copied().collect();
        packs.sort();
        for pack in packs {
            let size = stored_packs[&pack];
            let entries = index.pack_entries(&pack);
            let used_bytes: u64 =
                entries.iter().filter(|e| used.contains(&e.id)).map(|e| e.stored_len as u64).sum();
            let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
            if used_bytes == 0 {
                delete_packs.push((pack, size));
            } else if damage.has_pack(&pack) {
                repack.push((pack, size, entries));
            } else if used_bytes < total && (total - used_bytes) * 5 >= total {
                // More than a fifth unused: rewrite the used blobs into new packs.
                repack.push((pack, size, entries));
            } else {
                keep_index.add_pack(pack, &entries);
            }
        }
        let indexed: HashSet<Id> = full_index.packs().copied().collect();
        for (pack, size) in &stored_packs {
            if !indexed.contains(pack) {
                // Left by a create that did not finish (no index names it, and the exclusive
                // lock means no create is running now).
                report.orphan_packs += 1;
                delete_packs.push((*pack, *size));
            }
        }
        report.packs_deleted = delete_packs.len();
        report.bytes_deleted = delete_packs.iter().map(|(_, s)| s).sum();
        report.packs_repacked = repack.len();
        report.manifests_removed = remove.len();
        report.bytes_before = stored_packs.values().sum();
        if dry_run {
            report.bytes_after = report.bytes_before
                - report.bytes_deleted
                - repack
                    .iter()
                    .map(|(_, s, e)| {
                        s - e
                            .iter()
                            .filter(|e| used.contains(&e.id))
                            .map(|e| e.stored_len as u64)
                            .sum::<u64>()
                    })
                    .sum::<u64>();
            return Ok(report);
        }

        // Temporaries of killed writers: any age where only create and prune write (none
        // runs beside this exclusive lock), old ones elsewhere (`verify` and lock refreshes
        // write without it).
        for prefix in DATA_PREFIXES {
            self.store.sweep_temporaries(prefix, std::time::Duration::ZERO)?;
        }
        self.store.sweep_temporaries("", TEMPORARY_FILE_MAX_AGE)?;
        // Deletions rely on no create running: only while the lock is surely valid.
        lock.check_held()?;
        // 1. Forget the backups the policy removes.
        for id in &remove {
            self.store.delete(&manifest_key(id))?;
            self.store.delete(&verified_key(id))?;
            self.store.delete(&drilled_key(id))?;
        }
        // 2. Repack partly used packs (stored bytes are copied, not re-encoded).
        let uploader = Uploader::start(self.store.clone());
        let mut builder = PackBuilder::new();
        let mut copied: HashSet<Id> = HashSet::new();
        // Sound copies first, so a damaged copy is needed only where no other exists.
        let mut repack_order: Vec<(&Id, &crate::pack::PackEntry)> =
            repack.iter().flat_map(|(p, _, es)| es.iter().map(move |e| (p, e))).collect();
        repack_order.sort_by_key(|(p, e)| damage.is_bad(p, &e.id));
        // One pack in memory at a time (the order keeps each pack's entries together, the
        // damaged ones last).
        let mut cached: Option<(Id, Bytes)> = None;
        for (pack, e) in repack_order.into_iter().filter(|(_, e)| used.contains(&e.id)) {
            // Already in a kept pack or copied: one copy is enough.
            if copied.contains(&e.id) || keep_index.contains(&e.id) {
                continue;
            }
            let bytes = match &cached {
                Some((p, b)) if p == pack => b.clone(),
                _ => {
                    let b = self.store.get(&pack_key(pack))?;
                    cached = Some((*pack, b.clone()));
                    b
                }
            };
            {
                let stored = bytes
                    .get(e.offset as usize..(e.offset + e.stored_len) as usize)
                    .unwrap_or_default();
                decode_blob(keys, e.id, e.encoding, e.raw_len, stored).map_err(|err| {
                    self.note_damage(pack, Some(&[e.id]), "backup prune", &err.to_string());
                    RepoError::Damaged(format!(
                        "pack {} while repacking: {err}; no other copy of blob {} is stored (run `etcdguard backup repair`)",
                        pack.hex(),
                        e.id.hex()
                    ))
                })?;
                builder.add(e.id, e.kind, e.encoding, e.raw_len, stored);
                copied.insert(e.id);
                if builder.len() as u64 >= self.config.pack_size {
                    let (id, data, entries) = std::mem::take(&mut builder).finish();
                    keep_index.add_pack(id, &entries);
                    uploader.send(pack_key(&id), data)?;
                }
            }
        }
        drop(cached);
        delete_packs.extend(repack.iter().map(|(pack, size, _)| (*pack, *size)));
        if !builder.is_empty() {
            let (id, data, entries) = builder.finish();
            keep_index.add_pack(id, &entries);
            uploader.send(pack_key(&id), data)?;
        }
        uploader.finish()?;
        // A pack the new index names is never deleted, whatever put it on the list: pack
        // names are the sha256 of their content, so a repack can recreate, under the same
        // name, a pack an interrupted prune left behind (and this prune listed as orphan).
        let kept_packs: HashSet<Id> = keep_index.packs().copied().collect();
        delete_packs.retain(|(pack, _)| !kept_packs.contains(pack));
        // Never write an index that loses a blob a kept backup needs.
        if let Some(id) = used.iter().find(|id| !keep_index.contains(id)) {
            return Err(RepoError::Damaged(format!(
                "blob {} would be missing from the new index; not pruning further (nothing was deleted but the \
                 removed backups' manifests)",
                id.hex()
            )));
        }
        // 3. One new index for everything kept, then the old index files, then the packs.
        let data = self.encode_index(&keep_index);
        let new_key = format!("index/{}", Id::of(&data).hex());
        self.store.put(&new_key, Bytes::from(data))?;
        lock.check_held()?;
        for key in index_keys.iter().filter(|k| **k != new_key) {
            self.store.delete(key)?;
        }
        for (pack, _) in &delete_packs {
            self.store.delete(&pack_key(pack))?;
        }
        // Damage records of packs that are gone.
        let packs_left: HashSet<Id> = self
            .store
            .list("packs/")?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse))
            .collect();
        for pack in damage.packs().iter().filter(|p| !packs_left.contains(p)) {
            self.store.delete(&super::damage::damage_key(pack))?;
        }
        // 4. Verification records of backups that are gone.
        let remaining: HashSet<String> =
            self.store.list("backups/")?.into_iter().map(|o| o.key).collect();
        let records = [self.store.list("verified/")?, self.store.list("drilled/")?].concat();
        for v in records {
            let id = v.key.split_once('/').map_or("", |(_, name)| name).trim_end_matches(".json");
            if !remaining.contains(&manifest_key(id)) {
                self.store.delete(&v.key)?;
            }
        }
        // 5. Exported snapshots of backups that are gone.
        for e in self.store.list("exports/")? {
            let id = e.key.trim_start_matches("exports/").split('/').next().unwrap_or_default();
            if !remaining.contains(&manifest_key(id)) {
                self.store.delete(&e.key)?;
            }
        }
        // 6. Continuous changes (segments, gap records) of full backups that are gone: they
        // continue nothing any more. Capture writes a full's segments only after its
        // manifest, so a segment without one is a removed full's.
        for prefix in ["segments/", "gaps/"] {
            for o in self.store.list(prefix)? {
                let rest = o.key.trim_start_matches(prefix);
                let id =
                    if prefix == "gaps/" { rest.split('-').next() } else { rest.split('/').next() }
                        .unwrap_or_default();
                if !remaining.contains(&manifest_key(id)) {
                    self.store.delete(&o.key)?;
                }
            }
        }
        report.bytes_after = self.store.list("packs/")?.iter().map(|o| o.size).sum();
        report.bytes_deleted = report.bytes_before.saturating_sub(report.bytes_after);
        Ok(report)
    }

    /// Rebuilds the index from the pack headers (for a repository whose index files were
    /// lost or damaged). Replaces all index files with one.
    pub fn rebuild_index(&self) -> Result<usize, RepoError> {
        // The new index is authenticated under the key in an encrypted repository.
        self.keys()?;
        let _lock = Lock::acquire(self.store.clone(), true, "index rebuild")?;
        let mut index = Index::new();
        let mut n = 0;
        for obj in self.store.list("packs/")? {
            let Some(id) = obj.key.rsplit('/').next().and_then(Id::parse) else { continue };
            let bytes = self.store.get(&obj.key)?;
            if Id::of(&bytes) != id {
                return Err(RepoError::Damaged(format!(
                    "{}: content does not match its name",
                    obj.key
                )));
            }
            let entries = crate::pack::parse_pack(&bytes)
                .map_err(|e| RepoError::Damaged(format!("{}: {e}", obj.key)))?;
            index.add_pack(id, &entries);
            n += 1;
        }
        let old: Vec<String> = self.store.list("index/")?.into_iter().map(|o| o.key).collect();
        let data = self.encode_index(&index);
        let key = format!("index/{}", Id::of(&data).hex());
        self.store.put(&key, Bytes::from(data))?;
        for k in old.iter().filter(|k| **k != key) {
            self.store.delete(k)?;
        }
        Ok(n)
    }

    /// Checks the framing of every pack a backup reads: its trailer and magic, a header that
    /// covers the blob area exactly, and header entries equal to the index's entries for
    /// that pack. Two small range reads per pack. Returns how many packs were checked.
    pub fn check_framing(&self, index: &Index, manifest: &Manifest) -> Result<usize, RepoError> {
        let packs = self.packs_of(index, manifest)?;
        let sizes: HashMap<String, u64> =
            self.store.list("packs/")?.into_iter().map(|o| (o.key, o.size)).collect();
        for pack in &packs {
            let key = pack_key(pack);
            let damaged = |m: String| {
                self.note_damage(pack, None, "framing check", &m);
                RepoError::Damaged(format!("pack {}: {m} (recorded under damaged/)", pack.hex()))
            };
            let Some(&size) = sizes.get(&key) else {
                return Err(damaged("in the index but missing from the repository".into()));
            };
            if size < crate::pack::PACK_TAIL as u64 {
                return Err(damaged(format!("{size} bytes, too short to be a pack")));
            }
            let tail = self.pack_range(pack, size - crate::pack::PACK_TAIL as u64..size)?;
            let header_len =
                crate::pack::parse_pack_tail(&tail, size).map_err(|e| damaged(e.to_string()))?;
            let header_start = size - crate::pack::PACK_TAIL as u64 - header_len;
            let header =
                self.pack_range(pack, header_start..size - crate::pack::PACK_TAIL as u64)?;
            let mut entries = crate::pack::parse_pack_header(&header, header_start)
                .map_err(|e| damaged(e.to_string()))?;
            entries.sort_by_key(|e| e.offset);
            if entries != index.pack_entries(pack) {
                return Err(damaged(
                    "its header does not list what the index says it holds".into(),
                ));
            }
        }
        Ok(packs.len())
    }

    /// Checks every pack's name against its content and header (`backup verify --packs`).
    pub fn check_packs(&self) -> Result<(usize, Vec<String>), RepoError> {
        let mut problems = Vec::new();
        let mut n = 0;
        for obj in self.store.list("packs/")? {
            n += 1;
            let Some(id) = obj.key.rsplit('/').next().and_then(Id::parse) else {
                problems.push(format!("{}: not a pack name", obj.key));
                continue;
            };
            let bytes = self.store.get(&obj.key)?;
            let check = self.check_pack_bytes(&id, &bytes, &[])?;
            if !check.intact {
                problems
                    .push(self.record_pack_check(&id, &check, "backup verify --packs").to_string());
                continue;
            }
            if let Err(e) = crate::pack::parse_pack(&bytes) {
                self.note_damage(&id, None, "backup verify --packs", &e.to_string());
                problems.push(format!("{}: {e}", obj.key));
            }
        }
        Ok((n, problems))
    }
}

#[derive(Debug, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub manifests_removed: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub orphan_packs: usize,
    pub missing_packs: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_deleted: u64,
}

/// Every blob a part references, for accounting.
pub fn part_blob_ids(repo: &Repository, index: &Index, part: &Part) -> Result<Vec<Id>, RepoError> {
    let mut ids = part.chunk_lists.clone();
    ids.extend(repo.chunk_ids(index, part)?);
    Ok(ids)
}

/// Stored bytes of a set of blobs.
pub fn stored_bytes(index: &Index, ids: impl IntoIterator<Item = Id>) -> u64 {
    let mut seen = HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(*id))
        .filter_map(|id| index.get(&id))
        .map(|l| l.stored_len as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_support::*;
    use crate::store::LocalDir;
    #[allow(unused_imports)]
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn dedup_restore_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let first = db(1);
        let m1 = backup(&r, &first);
        assert_eq!(restore(&r, &m1), first);
        assert_eq!(m1.snapshot.chunks, 257);
        let full = m1.sizes.added;

        // Change 3 pages: only those (and the chunk list) are stored again.
        let mut second = first.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for p in [3usize, 100, 200] {
            rng.fill_bytes(&mut second[p * 4096..p * 4096 + 100]);
        }
        let m2 = backup(&r, &second);
        assert_eq!(m2.sizes.blobs_added, 3 + 1, "three pages and one list");
        assert!(m2.sizes.added < full / 20);
        assert_eq!(restore(&r, &m2), second);
        assert_eq!(restore(&r, &m1), first);

        let (all, bad) = r.list_backups().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            vec![m1.id.clone(), m2.id.clone()]
        );
        assert_eq!(r.resolve(&m2.id[..8]).unwrap(), m2.id);
        assert_eq!(r.resolve("latest").unwrap(), m2.id);
        assert!(matches!(r.resolve("zzzz"), Err(RepoError::BackupNotFound(_))));

        // Nothing unused yet: prune deletes nothing.
        let rep = r.prune(None, false).unwrap();
        assert_eq!(rep.packs_deleted, 0);
        assert_eq!(restore(&r, &m1), first);

        // Forget the first: its three unique pages go, the rest stays for the second.
        let rep = r.prune(Some(&Policy { keep_last: 1, ..Default::default() }), true).unwrap();
        assert_eq!(rep.manifests_removed, 1);
        assert!(r.manifest(&m1.id).is_ok(), "dry run removes nothing");
        let before = rep.bytes_before;
        let rep = r.prune(Some(&Policy { keep_last: 1, ..Default::default() }), false).unwrap();
        assert_eq!(rep.manifests_removed, 1);
        assert!(rep.bytes_after < before, "{rep:?}");
        assert!(matches!(r.manifest(&m1.id), Err(RepoError::BackupNotFound(_))));
        assert_eq!(restore(&r, &m2), second);
        // Packs mostly unused were dropped or rewritten; a few unused blobs may stay in packs
        // that are mostly used (rewriting those would cost more than it frees).
        let index = r.load_index().unwrap();
        let used: HashSet<Id> =
            part_blob_ids(&r, &index, &m2.snapshot).unwrap().into_iter().collect();
        assert!(used.iter().all(|id| index.contains(id)));
        assert!(
            index.blob_count() - used.len() <= 4,
            "{} blobs for {} used",
            index.blob_count(),
            used.len()
        );
        assert!(r.store.list("locks/").unwrap().is_empty(), "locks released");

        // The index can be rebuilt from the packs alone.
        for k in r.store.list("index/").unwrap() {
            r.store.delete(&k.key).unwrap();
        }
        assert_eq!(r.rebuild_index().unwrap(), r.store.list("packs/").unwrap().len());
        assert_eq!(restore(&r, &m2), second);
    }

    #[test]
    fn a_verification_is_recorded_only_when_every_pack_is_framed_right() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let m = backup(&r, &db(51));
        r.record_verification(&m.id).unwrap();
        assert!(r.verification(&m.id).unwrap().is_some());
        let pack = dir.path().join(&r.store.list("packs/").unwrap()[0].key);
        let good = fs::read(&pack).unwrap();
        let n = good.len();
        let count_pos = n
            - crate::pack::PACK_TAIL
            - u32::from_le_bytes(good[n - 12..n - 8].try_into().unwrap()) as usize;
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let damages: Vec<(&str, Damage)> = vec![
            ("magic", Box::new(|b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 0x20)),
            ("header length", Box::new(move |b: &mut Vec<u8>| b[n - 12] ^= 0x01)),
            ("header entry", Box::new(move |b: &mut Vec<u8>| b[count_pos + 4 + 2] ^= 0x01)),
        ];
        for (what, damage) in damages {
            r.store.delete(&verified_key(&m.id)).unwrap();
            let mut bytes = good.clone();
            damage(&mut bytes);
            fs::write(&pack, &bytes).unwrap();
            // The blobs themselves still read back: only the framing is damaged.
            let err = r.record_verification(&m.id).unwrap_err();
            assert!(matches!(err, RepoError::Damaged(_)), "{what}: {err}");
            assert!(r.verification(&m.id).unwrap().is_none(), "{what}: recorded");
        }
        fs::write(&pack, &good).unwrap();
        r.record_verification(&m.id).unwrap();
    }

    #[test]
    fn orphan_packs_of_an_unfinished_backup_are_pruned_and_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let m = backup(&r, &db(3));
        {
            // A backup that writes packs and then fails before its manifest.
            let mut w = r.begin_backup().unwrap();
            w.add_snapshot(&mut &db(4)[..], 4096).unwrap();
            w.flush_pack().unwrap();
            drop(w);
        }
        let (all, _) = r.list_backups().unwrap();
        assert_eq!(all.len(), 1, "no half backup listed");
        let rep = r.prune(None, false).unwrap();
        assert!(rep.orphan_packs > 0, "{rep:?}");
        assert_eq!(restore(&r, &m), db(3));
    }

    /// The state a prune killed between "upload repacked pack" and "write index" leaves:
    /// the repacked pack is stored but no index names it. The next prune recreates the same
    /// pack (same content, same name) and must not delete it as an orphan.
    #[test]
    fn a_prune_after_an_interrupted_prune_keeps_the_repacked_pack() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 8 << 20);
        let mut first = db(21);
        first.extend_from_slice(&db(22)); // blobs only the first backup has, in the same pack
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &first[..], 4096).unwrap();
        w.commit(part, meta()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let newest = backup(&r, &db(21));
        copy_tree(dir.path(), copy.path());
        let r2 = Repository::open(Arc::new(LocalDir::new(copy.path().to_path_buf()))).unwrap();
        let policy = Policy { keep_last: 1, ..Default::default() };
        let rep = r2.prune(Some(&policy), false).unwrap();
        assert!(rep.packs_repacked > 0, "the setup needs a repack: {rep:?}");
        // The killed prune's leftover: the repacked pack, in no index of the original.
        let before: HashSet<String> =
            r.store.list("packs/").unwrap().into_iter().map(|o| o.key).collect();
        let leftovers: Vec<String> = r2
            .store
            .list("packs/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !before.contains(k))
            .collect();
        assert!(!leftovers.is_empty());
        for k in &leftovers {
            r.store.put(k, r2.store.get(k).unwrap()).unwrap();
        }
        r.prune(Some(&policy), false).unwrap();
        assert_eq!(restore(&r, &newest), db(21));
        let (n, problems) = r.check_packs().unwrap();
        assert!(n > 0 && problems.is_empty(), "{problems:?}");
    }

    /// Two creates that ran side by side stored the same blobs in two packs. When the
    /// copy the index prefers is lost, prune must keep (and index) the other one.
    #[test]
    fn a_blob_stored_twice_survives_the_loss_of_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 8 << 20);
        let data = db(31);
        let extra = dir.path().join("extra.txt");
        fs::write(&extra, b"only in the second pack").unwrap();
        let mut wa = r.begin_backup().unwrap();
        let mut wb = r.begin_backup().unwrap();
        let pa = wa.add_snapshot(&mut &data[..], 4096).unwrap();
        let pb = wb.add_snapshot(&mut &data[..], 4096).unwrap();
        wb.add_path("files", &extra).unwrap();
        let ma = wa.commit(pa, meta()).unwrap();
        let pack_a =
            Id::parse(r.store.list("packs/").unwrap()[0].key.rsplit('/').next().unwrap()).unwrap();
        let mb = wb.commit(pb, meta()).unwrap();
        assert_eq!(r.store.list("packs/").unwrap().len(), 2, "the setup needs two copies");
        // Lose the copy the index prefers, keeping a backup the other copy serves.
        let preferred = r.load_index().unwrap().get(&ma.snapshot.chunk_lists[0]).unwrap().pack;
        r.store.delete(&pack_key(&preferred)).unwrap();
        let survivor = if preferred == pack_a {
            mb
        } else {
            r.delete_backup(&mb.id).unwrap();
            ma
        };
        r.prune(None, false).unwrap();
        assert_eq!(restore(&r, &survivor), data);
        let (n, problems) = r.check_packs().unwrap();
        assert!(n == 1 && problems.is_empty(), "{n} {problems:?}");
    }

    #[test]
    fn temporaries_of_killed_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let hour = std::time::Duration::from_secs(3700);
        let fresh = std::time::Duration::ZERO;
        let old_pack = dir.path().join("packs/ab/.tmp-ab12-0000000000000001");
        let old_lock = dir.path().join("locks/.tmp-1234.json-0000000000000002");
        let new_pack = dir.path().join("packs/cd/.tmp-cd34-0000000000000003");
        let new_lock = dir.path().join("locks/.tmp-5678.json-0000000000000004");
        let new_verified = dir.path().join("verified/.tmp-0011.json-0000000000000005");
        plant_temporary(&old_pack, hour);
        plant_temporary(&old_lock, hour);
        plant_temporary(&new_pack, fresh);
        plant_temporary(&new_lock, fresh);
        plant_temporary(&new_verified, fresh);
        // A create sweeps only what is old.
        let m = backup(&r, &db(12));
        assert!(!old_pack.exists() && !old_lock.exists());
        assert!(new_pack.exists() && new_lock.exists() && new_verified.exists());
        // A prune (exclusive lock) also sweeps fresh ones where only create and prune write.
        r.prune(None, false).unwrap();
        assert!(!new_pack.exists());
        assert!(
            new_lock.exists() && new_verified.exists(),
            "a live lock refresh or verify record was swept"
        );
        assert_eq!(restore(&r, &m), db(12));
    }

    #[test]
    fn prune_waits_for_a_running_create() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let w = r.begin_backup().unwrap();
        let err = r.prune(None, false).unwrap_err();
        assert!(matches!(err, RepoError::Locked(_)), "{err}");
        drop(w);
        r.prune(None, false).unwrap();
    }
}
