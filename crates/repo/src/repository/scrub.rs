//! What a scrub (the agent's `--verify-every`) reads besides the backup's own parts: every
//! pack the backup draws on, whole, checked against its sha256 name and parsed (header and
//! every blob's framing), so a flipped bit anywhere in such a pack is found, not only one in
//! a chunk this backup reads.

use std::collections::HashSet;

use super::*;

impl Repository {
    /// The packs holding the blobs of `manifest` (chunk lists and chunks of the snapshot and
    /// of every file), each once, in first-use order.
    pub fn packs_of(&self, index: &Index, manifest: &Manifest) -> Result<Vec<Id>, RepoError> {
        let mut packs = Vec::new();
        let mut seen = HashSet::new();
        let parts = std::iter::once(&manifest.snapshot)
            .chain(manifest.files.iter().filter_map(|f| f.content.as_ref()));
        for part in parts {
            for id in part.chunk_lists.iter().copied().chain(self.chunk_ids(index, part)?) {
                let loc = self.locate(index, &id)?;
                if seen.insert(loc.pack) {
                    packs.push(loc.pack);
                }
            }
        }
        Ok(packs)
    }

    /// Reads one pack whole: its content must hash to its name and parse as a pack.
    /// `Damaged` names the pack and what is wrong; other errors are the store's.
    pub fn check_pack(&self, pack: &Id) -> Result<(), RepoError> {
        match self.read_and_check_pack(pack, &[])? {
            None => Ok(()),
            Some(check) => Err(self.record_pack_check(pack, &check, "pack check")),
        }
    }

    /// Reads one pack whole: `None` when it hashes to its name and parses as a pack, else
    /// what [`Repository::check_pack_bytes`] found (not recorded yet). A missing pack, or an
    /// intact one that does not parse (recorded), is an error.
    fn read_and_check_pack(
        &self,
        pack: &Id,
        expected: &[crate::pack::PackEntry],
    ) -> Result<Option<PackCheck>, RepoError> {
        let bytes = match self.store.get(&pack_key(pack)) {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => {
                return Err(RepoError::Damaged(format!(
                    "pack {} is in the index but missing from the repository",
                    pack.hex()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let check = self.check_pack_bytes(pack, &bytes, expected)?;
        if !check.intact {
            return Ok(Some(check));
        }
        crate::pack::parse_pack(&bytes).map_err(|e| {
            self.note_damage(pack, None, "pack check", &e.to_string());
            RepoError::Damaged(format!("pack {}: {e} (recorded under damaged/)", pack.hex()))
        })?;
        Ok(None)
    }

    /// Every blob `manifest` reads (chunk lists and chunks of every part).
    pub fn blobs_of(&self, index: &Index, manifest: &Manifest) -> Result<HashSet<Id>, RepoError> {
        let mut out = HashSet::new();
        let parts = std::iter::once(&manifest.snapshot)
            .chain(manifest.files.iter().filter_map(|f| f.content.as_ref()));
        for part in parts {
            out.extend(part.chunk_lists.iter().copied());
            out.extend(self.chunk_ids(index, part)?);
        }
        Ok(out)
    }

    /// [`Repository::check_pack`] for one backup that draws on the pack: damage in blobs the
    /// backup does not need from this pack (another sound copy is stored, or the backup does
    /// not use them) is recorded and returned as a note, not an error: the backup restores.
    pub fn check_pack_for(
        &self,
        pack: &Id,
        index: &Index,
        needed: &HashSet<Id>,
    ) -> Result<Option<String>, RepoError> {
        let Some(check) = self.read_and_check_pack(pack, &index.pack_entries(pack))? else {
            return Ok(None);
        };
        let error = self.record_pack_check(pack, &check, "pack check");
        let damage = self.damage()?;
        let lost =
            |id: &Id| !index.packs_holding(id).iter().any(|p| p != pack && !damage.is_bad(p, id));
        if check.whole || check.bad.iter().any(|e| needed.contains(&e.id) && lost(&e.id)) {
            return Err(error);
        }
        Ok(Some(format!(
            "pack {} is damaged ({}; {} blob(s), recorded): this backup reads sound copies or does not need them; \
             `etcdguard backup repair` (or the next prune) rewrites the pack",
            pack.hex(),
            check.reason,
            check.bad.len()
        )))
    }

    /// Records what [`Repository::check_pack_bytes`] found wrong with a pack and words it.
    pub(crate) fn record_pack_check(&self, pack: &Id, check: &PackCheck, by: &str) -> RepoError {
        let bad: Vec<Id> = check.bad.iter().map(|e| e.id).collect();
        let whole = check.whole && check.good.is_empty();
        self.note_damage(pack, if whole { None } else { Some(&bad) }, by, &check.reason);
        let what = if whole {
            "the whole pack is unusable".to_string()
        } else {
            format!("{} of its {} blobs are damaged", bad.len(), bad.len() + check.good.len())
        };
        RepoError::Damaged(format!(
            "pack {}: {} ({what}); recorded under damaged/: the next backup stores fresh copies, and `etcdguard \
             backup repair` salvages the rest",
            pack.hex(),
            check.reason
        ))
    }

    /// The names of the index files: a prune that rewrote the index changes them.
    pub fn index_generation(&self) -> Result<Vec<String>, RepoError> {
        let mut keys: Vec<String> = self.store.list("index/")?.into_iter().map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backup, db, repo};
    use super::*;

    /// A flipped bit anywhere in a pack (here: in its header, which no chunk read touches) is
    /// found by reading the pack whole; a missing pack is damage too. Certificates survive
    /// the manifest round trip.
    #[test]
    fn check_pack_finds_a_flipped_bit_and_a_missing_pack() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 256 << 10);
        let mut w = r.begin_backup().unwrap();
        let data = db(7);
        let part = w.add_snapshot(&mut &data[..], 4096).unwrap();
        let cert = CertificateRecord {
            path: "etcd/server.crt".into(),
            subject: "CN=etcd".into(),
            not_after: Utc::now(),
            not_before: None,
            serial: "01".into(),
            is_ca: false,
        };
        w.set_certificates(vec![cert.clone()]);
        let m = w.commit(part, super::super::test_support::meta()).unwrap();
        assert_eq!(r.manifest(&m.id).unwrap().certificates, vec![cert]);
        let other = backup(&r, &db(8));
        let index = r.load_index().unwrap();
        let packs = r.packs_of(&index, &m).unwrap();
        assert!(packs.len() > 1, "{} packs", packs.len());
        for p in &packs {
            r.check_pack(p).unwrap();
        }
        let path = dir.path().join(pack_key(&packs[0]));
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let err = r.check_pack(&packs[0]).unwrap_err().to_string();
        assert!(err.contains("does not match its sha256 name"), "{err}");
        fs::remove_file(&path).unwrap();
        let err = r.check_pack(&packs[0]).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        // The other backup's packs are untouched.
        for p in r.packs_of(&index, &other).unwrap().iter().filter(|p| !packs.contains(p)) {
            r.check_pack(p).unwrap();
        }
        assert_eq!(r.index_generation().unwrap().len(), 2);
    }
}
