//! Damage records: `damaged/<pack>.json` says which blobs of a pack a check found broken
//! (or that the whole pack is), so that no later backup is made of them.
//!
//! Whatever reads a pack whole or a blob's bytes and finds them wrong records it here: a
//! restore or `backup verify` naming a damaged chunk, the agent's scrub, `backup verify
//! --packs`, and `backup create` checking the packs it reuses. From then on:
//! - `backup create` does not deduplicate against a recorded blob: it stores a fresh copy of
//!   that content (a new backup never depends on known damage);
//! - readers take another stored copy of a recorded blob when there is one;
//! - `backup repair` salvages what the damaged packs still hold, stores fresh copies from the
//!   data at hand, and removes the damaged packs and their records.
//!
//! A record is a hint, never a verdict: every blob read is still checked against its id, so a
//! planted record costs at most a fresh copy, and a wrong one cannot make damage pass.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::*;
use crate::pack::{decode_blob, Index, PackEntry};

const PREFIX: &str = "damaged/";

pub(crate) fn damage_key(pack: &Id) -> String {
    format!("{PREFIX}{}.json", pack.hex())
}

/// One pack's record, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DamageRecord {
    pub pack: Id,
    /// The blobs found damaged; `None`: the whole pack (its framing is broken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<Vec<Id>>,
    /// When damage in this pack was first found, and last.
    pub found: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// What found it (`backup verify`, `scrub`, `backup create`, …) and what was wrong.
    pub by: String,
    pub reason: String,
}

impl DamageRecord {
    pub fn whole_pack(&self) -> bool {
        self.blobs.is_none()
    }
}

/// Every damage record of a repository.
#[derive(Clone, Debug, Default)]
pub struct Damage {
    packs: HashMap<Id, Option<HashSet<Id>>>,
    records: Vec<DamageRecord>,
}

impl Damage {
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// Whether the copy of `blob` stored in `pack` is known to be damaged.
    pub fn is_bad(&self, pack: &Id, blob: &Id) -> bool {
        match self.packs.get(pack) {
            Some(None) => true,
            Some(Some(blobs)) => blobs.contains(blob),
            None => false,
        }
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.packs.contains_key(pack)
    }

    pub fn records(&self) -> &[DamageRecord] {
        &self.records
    }

    /// The damaged packs, sorted.
    pub fn packs(&self) -> Vec<Id> {
        let mut p: Vec<Id> = self.packs.keys().copied().collect();
        p.sort();
        p
    }

    /// `index` with every blob located in a copy not known to be damaged, where one exists
    /// (what readers use). Pack entries are left as they are.
    pub fn prefer_good_copies(&self, index: &mut Index) {
        if !self.is_empty() {
            index.prefer_locations(|pack, blob| self.is_bad(pack, blob));
        }
    }

    /// `index` without the blobs whose only copies are known to be damaged (what a create
    /// deduplicates against: such content is stored again).
    pub fn without_damaged(&self, index: &mut Index) {
        if !self.is_empty() {
            index.prefer_locations(|pack, blob| self.is_bad(pack, blob));
            index.forget_blobs_located(|pack, blob| self.is_bad(pack, blob));
        }
    }
}

/// What checking the blobs of one pack found.
#[derive(Debug, Default)]
pub struct PackCheck {
    /// The pack's bytes hash to its name: nothing is wrong.
    pub intact: bool,
    /// Blobs whose bytes decode to their id (all of them when `intact`).
    pub good: Vec<PackEntry>,
    /// Blobs that do not; with `whole` set, the pack's own header could not be read and
    /// these are the entries the index expected.
    pub bad: Vec<PackEntry>,
    pub whole: bool,
    pub reason: String,
}

impl Repository {
    /// Every damage record. A record that cannot be read counts as a whole damaged pack
    /// (the safe side: its content is stored again rather than reused).
    pub fn damage(&self) -> Result<Damage, RepoError> {
        let mut out = Damage::default();
        for obj in self.store.list(PREFIX)? {
            let Some(pack) = obj
                .key
                .strip_prefix(PREFIX)
                .and_then(|k| k.strip_suffix(".json"))
                .and_then(Id::parse)
            else {
                continue;
            };
            let record = match self.store.get(&obj.key) {
                Ok(b) => serde_json::from_slice::<DamageRecord>(&b).ok().filter(|r| r.pack == pack),
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let when = DateTime::from_timestamp(obj.modified, 0).unwrap_or_else(Utc::now);
            let record = record.unwrap_or_else(|| DamageRecord {
                pack,
                blobs: None,
                found: when,
                updated: when,
                by: "unknown".into(),
                reason: format!("{}: unreadable damage record", obj.key),
            });
            out.packs.insert(pack, record.blobs.as_ref().map(|b| b.iter().copied().collect()));
            out.records.push(record);
        }
        out.records.sort_by_key(|r| r.pack);
        Ok(out)
    }

    /// Records damage found in `pack` (`blobs`: the damaged ones; `None`: the whole pack),
    /// merged with what was recorded before. Best effort for callers that are reporting
    /// the damage anyway: see [`Repository::note_damage`].
    pub fn record_damage(
        &self,
        pack: &Id,
        blobs: Option<&[Id]>,
        by: &str,
        reason: &str,
    ) -> Result<(), RepoError> {
        let now = Utc::now();
        let previous = match self.store.get(&damage_key(pack)) {
            Ok(b) => serde_json::from_slice::<DamageRecord>(&b).ok().filter(|r| r.pack == *pack),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let blobs = match (previous.as_ref().map(|p| p.blobs.clone()), blobs) {
            (Some(None), _) | (_, None) => None,
            (Some(Some(old)), Some(new)) => {
                let mut all: Vec<Id> = old.into_iter().chain(new.iter().copied()).collect();
                all.sort();
                all.dedup();
                Some(all)
            }
            (None, Some(new)) => {
                let mut all = new.to_vec();
                all.sort();
                all.dedup();
                Some(all)
            }
        };
        let record = DamageRecord {
            pack: *pack,
            blobs,
            found: previous.as_ref().map_or(now, |p| p.found),
            updated: now,
            by: by.to_string(),
            reason: reason.to_string(),
        };
        if previous.as_ref().is_some_and(|p| p.blobs == record.blobs) {
            return Ok(());
        }
        self.store.put(
            &damage_key(pack),
            Bytes::from(serde_json::to_vec_pretty(&record).expect("record serializes")),
        )?;
        Ok(())
    }

    /// [`Repository::record_damage`] where the damage is reported to the user anyway: a
    /// record that cannot be written (a read-only bucket) must not hide the damage itself.
    pub(crate) fn note_damage(&self, pack: &Id, blobs: Option<&[Id]>, by: &str, reason: &str) {
        let _ = self.record_damage(pack, blobs, by, reason);
    }

    /// Checks the blobs of a pack whose bytes are at hand: a pack that hashes to its name is
    /// intact; otherwise each blob (from the pack's header, or `expected` when the header is
    /// unreadable) is decoded and checked against its id.
    pub(crate) fn check_pack_bytes(
        &self,
        pack: &Id,
        bytes: &[u8],
        expected: &[PackEntry],
    ) -> Result<PackCheck, RepoError> {
        if Id::of(bytes) == *pack {
            let good = crate::pack::parse_pack(bytes).unwrap_or_else(|_| expected.to_vec());
            return Ok(PackCheck { intact: true, good, ..Default::default() });
        }
        let keys = self.keys()?;
        let (entries, whole, reason) = match crate::pack::parse_pack(bytes) {
            Ok(entries) => {
                (entries, false, "its content does not match its sha256 name".to_string())
            }
            Err(e) => (
                expected.to_vec(),
                true,
                format!("its content does not match its sha256 name, and {e}"),
            ),
        };
        let mut check = PackCheck { intact: false, whole, reason, ..Default::default() };
        for e in entries {
            let start = e.offset as usize;
            let ok = bytes.get(start..start.saturating_add(e.stored_len as usize)).is_some_and(
                |stored| decode_blob(keys, e.id, e.encoding, e.raw_len, stored).is_ok(),
            );
            if ok {
                check.good.push(e);
            } else {
                check.bad.push(e);
            }
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backup, db, encrypted_repo, meta, repo, restore};
    use super::*;
    use std::path::Path;

    /// Flips one byte in the middle of the stored bytes of `blob` (as damage at rest would).
    fn flip(dir: &Path, index: &Index, blob: &Id) -> Id {
        let loc = *index.get(blob).unwrap();
        let path = dir.join(pack_key(&loc.pack));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(loc.offset + loc.stored_len / 2) as usize] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        loc.pack
    }

    fn backup_from_file(r: &Repository, file: &Path) -> Result<Manifest, RepoError> {
        let mut w = r.begin_backup()?;
        w.snapshot_source(file);
        let part = w.add_snapshot(&mut std::fs::File::open(file).unwrap(), 4096)?;
        w.commit(part, meta())
    }

    #[test]
    fn records_merge_and_an_unreadable_one_means_the_whole_pack() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 << 10);
        let (p, a, b) = (Id::of(b"pack"), Id::of(b"a"), Id::of(b"b"));
        assert!(r.damage().unwrap().is_empty());
        r.record_damage(&p, Some(&[a]), "test", "flipped").unwrap();
        r.record_damage(&p, Some(&[b, a]), "test", "flipped").unwrap();
        let d = r.damage().unwrap();
        assert!(d.is_bad(&p, &a) && d.is_bad(&p, &b) && !d.is_bad(&p, &Id::of(b"c")));
        assert_eq!(d.records()[0].blobs.as_ref().unwrap().len(), 2);
        r.store().put(&damage_key(&p), Bytes::from_static(b"{not json")).unwrap();
        assert!(r.damage().unwrap().is_bad(&p, &Id::of(b"c")));
    }

    /// The reproduction: a byte flipped in a stored chunk, then a backup of the same
    /// data. The new backup reads back what it reuses, finds the damage, records it and stores
    /// that chunk again, so it restores; the older backup reads the fresh copy too.
    #[test]
    fn a_damaged_reused_chunk_is_stored_again_by_the_next_backup() {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let r =
                if encrypted { encrypted_repo(dir.path()).0 } else { repo(dir.path(), 64 << 10) };
            let data = db(7);
            let file = dir.path().join("snapshot.db");
            std::fs::write(&file, &data).unwrap();
            let m1 = backup_from_file(&r, &file).unwrap();
            let index = r.load_index().unwrap();
            let ids = r.chunk_ids(&index, &m1.snapshot).unwrap();
            let pack = flip(dir.path(), &index, &ids[100]);

            let m2 = backup_from_file(&r, &file).unwrap();
            assert_eq!(
                m2.sizes.blobs_added, 1,
                "exactly the damaged chunk is stored again ({encrypted})"
            );
            assert!(r.damage().unwrap().is_bad(&pack, &ids[100]));
            assert_eq!(restore(&r, &m2), data);
            assert_eq!(restore(&r, &m1), data, "the older backup reads the fresh copy");
            // The next backup reuses the fresh copy, not the damaged one.
            let m3 = backup_from_file(&r, &file).unwrap();
            assert_eq!(m3.sizes.blobs_added, 0);
        }
    }

    /// Without the content at hand (a stream), a backup that would depend on a damaged chunk
    /// fails; the damage is recorded, so the next one stores a fresh copy.
    #[test]
    fn a_stream_that_reuses_a_damaged_chunk_fails_and_the_next_backup_heals() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 << 10);
        let data = db(9);
        let m1 = backup(&r, &data);
        let index = r.load_index().unwrap();
        let ids = r.chunk_ids(&index, &m1.snapshot).unwrap();
        flip(dir.path(), &index, &ids[5]);
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &data[..], 4096).unwrap();
        let err = w.commit(part, meta()).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(ref m) if m.contains(&ids[5].hex())), "{err}");
        assert_eq!(r.list_backups().unwrap().0.len(), 1, "the failed backup is not listed");
        let m2 = backup(&r, &data);
        assert_eq!(m2.sizes.blobs_added, 1);
        assert_eq!(restore(&r, &m2), data);
    }

    /// A restore that meets a damaged chunk records it (and the error names it).
    #[test]
    fn a_restore_records_the_damage_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 << 10);
        let m = backup(&r, &db(3));
        let index = r.load_index().unwrap();
        let ids = r.chunk_ids(&index, &m.snapshot).unwrap();
        let pack = flip(dir.path(), &index, &ids[17]);
        let err = r.read_part(&index, &m.snapshot, &mut std::io::sink()).unwrap_err();
        assert!(
            matches!(err, RepoError::Damaged(ref s) if s.contains(&pack.hex()) && s.contains("damaged/")),
            "{err}"
        );
        assert!(r.damage().unwrap().is_bad(&pack, &ids[17]));
    }

    /// Repair salvages the sound blobs of a damaged pack, names the backup that stays
    /// unrestorable, and with the snapshot at hand stores the lost chunk again.
    #[test]
    fn repair_salvages_names_what_is_lost_and_refills_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 << 10);
        let (old, new) = (db(21), db(22));
        let m1 = backup(&r, &old);
        let m2 = backup(&r, &new);
        let index = r.load_index().unwrap();
        let ids = r.chunk_ids(&index, &m1.snapshot).unwrap();
        let pack = flip(dir.path(), &index, &ids[40]);

        let dry = r.repair(&[], true).unwrap();
        assert_eq!(dry.packs_damaged, vec![pack.hex()]);
        assert!(dir.path().join(pack_key(&pack)).exists(), "a dry run changes nothing");

        let report = r.repair(&[], false).unwrap();
        assert_eq!(report.packs_damaged, vec![pack.hex()]);
        assert!(report.blobs_salvaged > 0);
        assert_eq!(report.unrestorable.len(), 1);
        assert_eq!(report.unrestorable[0].id, m1.id);
        assert!(!dir.path().join(pack_key(&pack)).exists(), "the damaged pack is gone");
        assert!(r.damage().unwrap().is_empty());
        assert_eq!(restore(&r, &m2), new);
        assert!(r.read_part(&r.load_index().unwrap(), &m1.snapshot, &mut std::io::sink()).is_err());

        let file = dir.path().join("old.db");
        std::fs::write(&file, &old).unwrap();
        let report = r.repair(&[RepairSource::File(file)], false).unwrap();
        assert_eq!(report.blobs_refilled.values().sum::<usize>(), 1, "{report:?}");
        assert!(report.unrestorable.is_empty(), "{report:?}");
        assert_eq!(restore(&r, &m1), old);
        assert!(r.repair(&[], true).unwrap().is_clean());
    }

    /// A prune after the damage keeps what the backups need from the sound copies and
    /// removes the damaged pack and its record.
    #[test]
    fn prune_drops_a_damaged_pack_whose_blobs_have_sound_copies() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 << 10);
        let data = db(5);
        let file = dir.path().join("snapshot.db");
        std::fs::write(&file, &data).unwrap();
        let m1 = backup_from_file(&r, &file).unwrap();
        let index = r.load_index().unwrap();
        let ids = r.chunk_ids(&index, &m1.snapshot).unwrap();
        let pack = flip(dir.path(), &index, &ids[3]);
        let m2 = backup_from_file(&r, &file).unwrap();
        r.prune(None, false).unwrap();
        assert!(!dir.path().join(pack_key(&pack)).exists());
        assert!(r.damage().unwrap().is_empty());
        assert_eq!(restore(&r, &m1), data);
        assert_eq!(restore(&r, &m2), data);
    }
}
