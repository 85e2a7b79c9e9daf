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
        let parts = std::iter::once(&manifest.snapshot).chain(manifest.files.iter().filter_map(|f| f.content.as_ref()));
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
        let bytes = match self.store.get(&pack_key(pack)) {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => {
                return Err(RepoError::Damaged(format!("pack {} is in the index but missing from the repository", pack.hex())))
            }
            Err(e) => return Err(e.into()),
        };
        if Id::of(&bytes) != *pack {
            return Err(RepoError::Damaged(format!("pack {}: its content does not match its sha256 name (damaged)", pack.hex())));
        }
        crate::pack::parse_pack(&bytes).map_err(|e| RepoError::Damaged(format!("pack {}: {e}", pack.hex())))?;
        Ok(())
    }

    /// The names of the index files: a prune that rewrote the index changes them.
    pub fn index_generation(&self) -> Result<Vec<String>, RepoError> {
        let mut keys: Vec<String> = self.store.list("index/")?.into_iter().map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }
}
