//! Copying backups into another repository (`backup copy`, the agent's `--copy-to`).
//!
//! A copy is a create whose input is the source's reassembled parts: each part is read from
//! the source (its sha256 checked, as a restore checks it) and stored here as `create` stores
//! a snapshot, cut at the part's own chunk size, deduplicated against this repository's
//! index and encoded (and sealed) under this repository's key; then index, then manifest.
//! So a copy re-encrypts, works between any two kinds of store, needs nothing but read
//! access at the source, and is listed here only once complete. The manifest keeps the
//! backup's id, creation time, host, labels and etcd status, so both sites name a backup
//! the same way, and continuous-capture segments (named after their full backup's id) copy
//! over unchanged in meaning.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::*;
use crate::lock::Lock;
use crate::manifest::*;
use crate::pack::Index;
use crate::segment::SegmentInfo;
use crate::RepoError;

/// What happened to one backup of a copy.
#[derive(Debug, Clone)]
pub enum CopyOutcome {
    /// Stored here now: the manifest as written here.
    Copied(Box<Manifest>),
    /// The destination already holds this backup (same id, same content).
    AlreadyThere,
}

/// Chunks of a part in flight between the source's reader and this repository's writer, at
/// most (each is one chunk, a few KiB to a few MiB).
const PIPE_DEPTH: usize = 256;
/// A copy indexes what it stored every this many packs (256 MiB at the default pack
/// size), so a copy of a large backup that was stopped resumes near where it was.
const CHECKPOINT_PACKS: usize = 32;

impl InitOptions {
    /// A new repository chunked as `source` is (so copies of its backups deduplicate as they
    /// did there), encrypted under `passphrase` when one is given.
    pub fn like(source: &Config, passphrase: Option<Passphrase>) -> InitOptions {
        InitOptions {
            chunk_size: source.chunking.chunk_size,
            pack_size: source.pack_size,
            passphrase,
            ..InitOptions::default()
        }
    }
}

/// A manifest without what depends on the repository it is stored in (chunk list ids,
/// which are keyed in an encrypted repository; encoding; what storing it cost): two copies
/// of one backup have the same.
fn identity(m: &Manifest) -> Manifest {
    let strip = |p: &Part| Part { chunk_lists: Vec::new(), ..p.clone() };
    Manifest {
        version: 0,
        snapshot: strip(&m.snapshot),
        files: m
            .files
            .iter()
            .map(|f| FileEntry { content: f.content.as_ref().map(strip), ..f.clone() })
            .collect(),
        encoding: PartEncoding { compression: String::new(), encryption: String::new() },
        sizes: Sizes { original: m.sizes.original, ..Sizes::default() },
        tool_version: String::new(),
        sealed: None,
        ..m.clone()
    }
}

impl Repository {
    /// Copies backup `manifest` of `source` (unlocked; `source_index` its index) into this
    /// repository (unlocked), keeping its id and times. A backup already here with the same
    /// content is left as it is; one with the same id and other content is refused
    /// (`DestinationExists`). A damaged source blob fails the copy (`Damaged`, naming its
    /// pack) before anything is listed here; a copy killed midway leaves only what a killed
    /// create leaves, and the next copy stores what is missing.
    pub fn copy_backup_from(
        &self,
        source: &Repository,
        source_index: &Index,
        manifest: &Manifest,
    ) -> Result<CopyOutcome, RepoError> {
        self.copy_backup_checkpointed(source, source_index, manifest, CHECKPOINT_PACKS)
    }

    fn copy_backup_checkpointed(
        &self,
        source: &Repository,
        source_index: &Index,
        manifest: &Manifest,
        checkpoint_packs: usize,
    ) -> Result<CopyOutcome, RepoError> {
        if manifest.contents_sealed() {
            return Err(RepoError::KeyRequired(source.location()));
        }
        if self.already_holds(manifest)? {
            return Ok(CopyOutcome::AlreadyThere);
        }
        let mut writer = self.begin_backup()?;
        writer.checkpoint_every(checkpoint_packs);
        let snapshot = copy_part(source, source_index, &manifest.snapshot, &mut writer)
            .map_err(|e| e.context(&format!("backup {}: snapshot", manifest.id)))?;
        let mut files = Vec::with_capacity(manifest.files.len());
        for f in &manifest.files {
            let content = match &f.content {
                Some(part) => {
                    Some(copy_part(source, source_index, part, &mut writer).map_err(|e| {
                        e.context(&format!("backup {}: file {}", manifest.id, f.path))
                    })?)
                }
                None => None,
            };
            files.push(FileEntry { content, ..f.clone() });
        }
        // Two copies of one backup racing, or a backup made here meanwhile under the same
        // random id (practically never): checked again just before the manifest is written.
        if self.already_holds(manifest)? {
            return Ok(CopyOutcome::AlreadyThere);
        }
        Ok(CopyOutcome::Copied(Box::new(writer.commit_copy(manifest, snapshot, files)?)))
    }

    /// Whether `backups/<id>.json` here is this backup already; another backup under that id
    /// is refused.
    fn already_holds(&self, manifest: &Manifest) -> Result<bool, RepoError> {
        match self.manifest(&manifest.id) {
            Ok(here) if identity(&here) == identity(manifest) => Ok(true),
            Ok(_) => Err(RepoError::DestinationExists(format!(
                "{}/{}: a different backup with id {} is already there (it was not overwritten)",
                self.location(),
                manifest_key(&manifest.id),
                manifest.id
            ))),
            Err(RepoError::BackupNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies the continuous-capture segments and gap records of full backup `base` that
    /// this repository lacks (each segment is read and checked at the source, then stored
    /// under this repository's key). Returns how many segments and gap records were copied.
    pub fn copy_segments_from(
        &self,
        source: &Repository,
        base: &str,
    ) -> Result<(usize, usize), RepoError> {
        let segments = source.list_segments(Some(base))?;
        let gap_prefix = format!("gaps/{base}-");
        let gaps: Vec<String> = source
            .store
            .list("gaps/")?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.starts_with(&gap_prefix))
            .collect();
        if segments.is_empty() && gaps.is_empty() {
            return Ok((0, 0));
        }
        // A prune here removes the segments of the backups it removes; with this lock it
        // cannot run between the check of the manifest and the last segment written.
        let _lock = Lock::acquire(self.store.clone(), false, "backup copy")?;
        if self.manifest(base).is_err() {
            return Err(RepoError::Invalid(format!(
                "backup {base} is not in {}: copy it before its changes",
                self.location()
            )));
        }
        let have: HashSet<(i64, i64)> = self
            .list_segments(Some(base))?
            .iter()
            .map(|s: &SegmentInfo| (s.first, s.last))
            .collect();
        let mut copied = 0;
        for info in segments.iter().filter(|s| !have.contains(&(s.first, s.last))) {
            let segment = source.read_segment(info)?;
            self.put_segment(&segment)?;
            copied += 1;
        }
        let have_gaps: HashSet<String> =
            self.store.list("gaps/")?.into_iter().map(|o| o.key).collect();
        let mut gaps_copied = 0;
        for key in gaps.iter().filter(|k| !have_gaps.contains(*k)) {
            let body = source.store.get(key)?;
            // A gap record is plain JSON naming backups by id, which a copy keeps.
            serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| {
                RepoError::Damaged(format!("{}/{key}: not a gap record: {e}", source.location()))
            })?;
            self.store.put(key, body)?;
            gaps_copied += 1;
        }
        Ok((copied, gaps_copied))
    }
}

/// Streams `part` out of `source` into `writer`: the source checks the part's sha256 as it
/// reassembles it (naming a damaged pack), the writer computes it again from what it
/// stored, and both must equal the manifest's.
fn copy_part(
    source: &Repository,
    index: &Index,
    part: &Part,
    writer: &mut BackupWriter<'_>,
) -> Result<Part, RepoError> {
    let (tx, rx) = sync_channel(PIPE_DEPTH);
    let (read, stored) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut out = PipeWriter(tx);
            // On an error the writer must not take a truncated part for a whole one: it is
            // told so, unless it is gone already (the destination failed first).
            source.read_part(index, part, &mut out).map_err(|e| (e, out.0.send(Err(())).is_err()))
        });
        let stored = {
            let mut input = PipeReader { rx, current: Vec::new(), at: 0 };
            writer.add_copied_part(&mut input, part.chunk_size, part.size)
        };
        (
            reader.join().unwrap_or_else(|_| {
                Err((RepoError::Io("the source reader panicked".into()), false))
            }),
            stored,
        )
    });
    match (read, stored) {
        // The destination stopped first (its error says why); the source only saw it go.
        (Err((_, true)), Err(e)) => Err(e),
        // Else the source's error says what is wrong (a damaged pack); the writer's then
        // only says that its input stopped.
        (Err((e, _)), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(stored)) => check_stored(part, stored),
    }
}

fn check_stored(part: &Part, stored: Part) -> Result<Part, RepoError> {
    if stored.size != part.size || stored.sha256 != part.sha256 {
        return Err(RepoError::ChecksumMismatch(format!(
            "stored {} bytes with sha256 {}; the source's manifest says {} bytes with sha256 {}",
            stored.size, stored.sha256, part.size, part.sha256
        )));
    }
    Ok(stored)
}

/// The source's side of the pipe between a part's reassembly and its writer.
struct PipeWriter(SyncSender<Result<Vec<u8>, ()>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the destination stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PipeReader {
    rx: Receiver<Result<Vec<u8>, ()>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => (self.current, self.at) = (next, 0),
                Ok(Err(())) => return Err(io::Error::other("reading the source failed")),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_support::*;
    use crate::segment::{Change, Segment};
    use crate::store::{LocalDir, StoreError};

    fn copy_all(to: &Repository, from: &Repository) -> Vec<CopyOutcome> {
        let index = from.load_index().unwrap();
        from.list_backups()
            .unwrap()
            .0
            .iter()
            .map(|m| to.copy_backup_from(from, &index, m).unwrap())
            .collect()
    }

    fn copied(o: &CopyOutcome) -> &Manifest {
        match o {
            CopyOutcome::Copied(m) => m,
            CopyOutcome::AlreadyThere => panic!("not copied"),
        }
    }

    #[test]
    fn a_copy_keeps_the_backup_and_its_id_and_re_encrypts_under_the_destination_key() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, _) = encrypted_repo(dirs.0.path());
        let mut w = source.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &db(7)[..], 4096).unwrap();
        let file = dirs.0.path().join("..").join(format!("ca-{}.key", rand::random::<u32>()));
        fs::write(&file, b"-----BEGIN PRIVATE KEY----- copied").unwrap();
        w.add_path("pki", &file).unwrap();
        let m = w.commit(part, meta()).unwrap();
        fs::remove_file(&file).unwrap();

        let store: Arc<dyn Store> = Arc::new(LocalDir::new(dirs.1.path().to_path_buf()));
        let opts = InitOptions {
            kdf: cheap_kdf(),
            ..InitOptions::like(source.config(), Some(Passphrase::new(b"other".to_vec())))
        };
        let dest = Repository::init(store.clone(), &opts).unwrap();
        let out = copy_all(&dest, &source);
        let c = copied(&out[0]);
        assert_eq!(
            (&c.id, c.created, &c.snapshot.sha256, &c.hostname),
            (&m.id, m.created, &m.snapshot.sha256, &m.hostname)
        );
        assert_ne!(
            c.snapshot.chunk_lists, m.snapshot.chunk_lists,
            "chunk ids are keyed with the destination's key"
        );
        assert_eq!(restore(&dest, c), db(7));
        let mut reopened = Repository::open(store).unwrap();
        reopened.unlock(&Passphrase::new(b"other".to_vec())).unwrap();
        let again = reopened.manifest(&m.id).unwrap();
        assert_eq!(again, *c);
        let mut out = Vec::new();
        reopened
            .read_part(
                &reopened.load_index().unwrap(),
                again.files[0].content.as_ref().unwrap(),
                &mut out,
            )
            .unwrap();
        assert_eq!(out, b"-----BEGIN PRIVATE KEY----- copied");
        assert!(!all_stored_bytes(dirs.1.path()).windows(11).any(|w| w == b"PRIVATE KEY"));

        // Copied again: nothing to do.
        assert!(matches!(copy_all(&dest, &source)[0], CopyOutcome::AlreadyThere));
    }

    #[test]
    fn a_copy_dedups_against_the_destination() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = repo(dirs.0.path(), 64 * 1024);
        backup(&source, &db(1));
        let dest = repo(dirs.1.path(), 64 * 1024);
        let first = copy_all(&dest, &source);
        assert!(copied(&first[0]).sizes.blobs_added > 0);
        let mut changed = db(1);
        changed[8192..8200].copy_from_slice(b"changed!");
        backup(&source, &changed);
        let second = copy_all(&dest, &source);
        assert!(matches!(second[0], CopyOutcome::AlreadyThere));
        let m = copied(&second[1]);
        // One changed chunk, and the list blob naming it.
        assert_eq!(m.sizes.blobs_added, 2, "{:?}", m.sizes);
        assert_eq!(restore(&dest, m), changed);
    }

    /// Puts of packs fail after `budget` of them: a destination that goes away midway.
    struct Failing {
        inner: LocalDir,
        budget: std::sync::atomic::AtomicUsize,
    }

    impl Store for Failing {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            use std::sync::atomic::Ordering;
            if key.starts_with("packs/")
                && self
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_err()
            {
                return Err(StoreError::Unreachable("gone".into()));
            }
            self.inner.put(key, data)
        }
        fn put_streaming(
            &self,
            key: &str,
            produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        ) -> Result<(), StoreError> {
            self.inner.put_streaming(key, produce)
        }
        fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
            self.inner.get_range(key, range)
        }
        fn list(&self, prefix: &str) -> Result<Vec<crate::store::ObjectInfo>, StoreError> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn check_reachable(&self) -> Result<(), StoreError> {
            self.inner.check_reachable()
        }
    }

    #[test]
    fn a_stopped_copy_resumes_from_its_last_checkpoint() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = repo(dirs.0.path(), 16 * 1024);
        let data: Vec<u8> = (0..4).flat_map(db).collect();
        let m = backup(&source, &data);
        let index = source.load_index().unwrap();
        let failing: Arc<dyn Store> = Arc::new(Failing {
            inner: LocalDir::new(dirs.1.path().to_path_buf()),
            budget: std::sync::atomic::AtomicUsize::new(30),
        });
        let dest = Repository::init(failing, &InitOptions::like(source.config(), None)).unwrap();
        let err = dest.copy_backup_checkpointed(&source, &index, &m, 4).unwrap_err();
        assert!(matches!(err, RepoError::Store(StoreError::Unreachable(_))), "{err}");
        assert!(dest.list_backups().unwrap().0.is_empty());
        let checkpointed = dest.load_index().unwrap().blob_count();
        assert!(checkpointed > 20, "only {checkpointed} blobs indexed before the failure");
        // Run again: only what was not indexed is stored.
        let dest = Repository::open(Arc::new(LocalDir::new(dirs.1.path().to_path_buf()))).unwrap();
        let c = copied(&dest.copy_backup_checkpointed(&source, &index, &m, 4).unwrap()).clone();
        assert!(
            c.sizes.blobs_added < c.sizes.blobs_total - checkpointed as u64 + 2,
            "{:?}, {checkpointed} indexed",
            c.sizes
        );
        assert_eq!(restore(&dest, &c), data);
    }

    #[test]
    fn another_backup_under_the_same_id_is_refused() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = repo(dirs.0.path(), 64 * 1024);
        let m = backup(&source, &db(2));
        let dest = repo(dirs.1.path(), 64 * 1024);
        let other = backup(&dest, &db(3));
        let forged = dest.store.get(&manifest_key(&other.id)).unwrap();
        let forged = String::from_utf8(forged.to_vec()).unwrap().replace(&other.id, &m.id);
        dest.store.put(&manifest_key(&m.id), Bytes::from(forged)).unwrap();
        let err = dest.copy_backup_from(&source, &source.load_index().unwrap(), &m).unwrap_err();
        assert!(matches!(err, RepoError::DestinationExists(ref s) if s.contains(&m.id)), "{err}");
    }

    #[test]
    fn a_damaged_source_pack_fails_that_copy_and_lists_nothing() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = repo(dirs.0.path(), 64 * 1024);
        let m = backup(&source, &db(4));
        let index = source.load_index().unwrap();
        let ids = source.chunk_ids(&index, &m.snapshot).unwrap();
        let loc = *index.get(&ids[100]).unwrap();
        let path = dirs.0.path().join(pack_key(&loc.pack));
        let mut bytes = fs::read(&path).unwrap();
        bytes[loc.offset as usize + 3] ^= 0x55;
        fs::write(&path, bytes).unwrap();
        let dest = repo(dirs.1.path(), 64 * 1024);
        let err = dest.copy_backup_from(&source, &index, &m).unwrap_err();
        assert!(
            matches!(err, RepoError::Damaged(ref s) if s.contains(&loc.pack.hex()) && s.contains(&m.id)),
            "{err}"
        );
        assert!(dest.list_backups().unwrap().0.is_empty());
    }

    #[test]
    fn segments_and_gap_records_follow_their_backup() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, _) = encrypted_repo(dirs.0.path());
        let m = backup(&source, &db(5));
        let change = Change {
            put: true,
            key: b"/k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 11,
            mod_revision: 11,
            version: 1,
            lease: 0,
        };
        let segment = Segment {
            base: m.id.clone(),
            first: 11,
            last: 11,
            times: vec![(11, 1)],
            leases: vec![],
            changes: vec![change],
        };
        source.put_segment(&segment).unwrap();
        let gap = format!("gaps/{}-{:016x}.json", m.id, 12);
        source.store.put(&gap, Bytes::from_static(b"{\"lost_from_revision\": 12}")).unwrap();
        let (dest, _) = encrypted_repo(dirs.1.path());
        let err = dest.copy_segments_from(&source, &m.id).unwrap_err();
        assert!(matches!(err, RepoError::Invalid(_)), "segments before their backup: {err}");
        copy_all(&dest, &source);
        assert_eq!(dest.copy_segments_from(&source, &m.id).unwrap(), (1, 1));
        let here = dest.list_segments(Some(&m.id)).unwrap();
        assert_eq!(dest.read_segment(&here[0]).unwrap(), segment);
        assert_eq!(dest.store.get(&gap).unwrap(), source.store.get(&gap).unwrap());
        assert_eq!(dest.copy_segments_from(&source, &m.id).unwrap(), (0, 0));
    }
}
