//! Writing a backup: chunks are cut, deduplicated against the index, packed and uploaded
//! (a few packs in flight); `commit` writes the index for the new packs, then the manifest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::*;
use crate::host::hostname;
use crate::id::{hex, Id};
use crate::lock::Lock;
use crate::manifest::*;
use crate::pack::{encode_blob, BlobKind, Index, PackBuilder};
use crate::store::{Store, StoreError};
use crate::RepoError;

impl Repository {
    /// Starts a backup. Takes a shared lock held until the writer is committed or dropped.
    pub fn begin_backup(&self) -> Result<BackupWriter<'_>, RepoError> {
        self.keys()?;
        let lock = Lock::acquire(self.store.clone(), false, "backup create")?;
        // Cheap housekeeping (local directories only): temporaries of killed writers.
        let _ = self.store.sweep_temporaries("", TEMPORARY_FILE_MAX_AGE);
        // Dedup only against packs that exist: a blob whose pack is gone (damage, or a
        // prune that ran while this host's lock had expired) is stored again.
        let stored: HashSet<Id> = self
            .store
            .list("packs/")?
            .into_iter()
            .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse))
            .collect();
        let mut index = self.load_index_files()?.1.retain_packs(|p| stored.contains(p));
        // Nor against a blob whose only copies are known to be damaged (`damaged/`).
        self.damage()?.without_damaged(&mut index);
        Ok(BackupWriter {
            repo: self,
            lock,
            index,
            written: Index::new(),
            pending: HashSet::new(),
            pack: PackBuilder::new(),
            uploader: Uploader::start_n(
                self.store.clone(),
                self.transfer.workers().min(UPLOADS_MAX),
            ),
            files: Vec::new(),
            certificates: Vec::new(),
            stats: Sizes::default(),
            reused: HashMap::new(),
            snapshot_source: None,
            checkpoint_every: 0,
        })
    }
}

// -------------------------------------------------------------------------------------
// Uploads

/// Uploads of one backup at once, at most (each holds a pack in memory).
const UPLOADS_MAX: usize = 8;

/// A few threads putting finished packs; at most as many queued as there are threads.
pub(crate) struct Uploader {
    tx: Option<SyncSender<(String, Vec<u8>)>>,
    threads: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<StoreError>>>,
}

impl Uploader {
    pub(crate) fn start(store: Arc<dyn Store>) -> Uploader {
        Self::start_n(store, UPLOADS_IN_FLIGHT)
    }

    pub(crate) fn start_n(store: Arc<dyn Store>, threads: usize) -> Uploader {
        let threads_n = threads.max(1);
        let (tx, rx) = sync_channel::<(String, Vec<u8>)>(threads_n);
        let rx = Arc::new(Mutex::new(rx));
        let error: Arc<Mutex<Option<StoreError>>> = Arc::new(Mutex::new(None));
        let threads = (0..threads_n)
            .map(|i| {
                let rx = rx.clone();
                let store = store.clone();
                let error = error.clone();
                std::thread::Builder::new()
                    .name(format!("etcdguard-upload-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((key, data)) = job else { return };
                        if error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            continue; // drain: a failed backup uploads nothing more
                        }
                        if let Err(e) = store.put(&key, Bytes::from(data)) {
                            error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    })
                    .expect("spawning an upload thread")
            })
            .collect();
        Uploader { tx: Some(tx), threads, error }
    }

    pub(crate) fn check(&self) -> Result<(), RepoError> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    pub(crate) fn send(&self, key: String, data: Vec<u8>) -> Result<(), RepoError> {
        self.check()?;
        self.tx
            .as_ref()
            .expect("uploader open")
            .send((key, data))
            .map_err(|_| RepoError::Io("upload threads stopped".into()))
    }

    pub(crate) fn finish(mut self) -> Result<(), RepoError> {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.check()
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// -------------------------------------------------------------------------------------
// Writing a backup

/// Metadata for [`BackupWriter::commit`].
#[derive(Clone, Debug)]
pub struct BackupMeta {
    pub source: Source,
    pub etcd: EtcdInfo,
    pub labels: BTreeMap<String, String>,
    pub cluster: Option<String>,
    /// The backup's time when it is not now: an imported backup keeps its original time.
    pub created: Option<DateTime<Utc>>,
}

pub struct BackupWriter<'r> {
    repo: &'r Repository,
    lock: Lock,
    /// The repository's index when the backup started.
    index: Index,
    /// Packs written by this backup.
    written: Index,
    /// Blobs added by this backup so far (written or in the open pack).
    pending: HashSet<Id>,
    pack: PackBuilder,
    uploader: Uploader,
    files: Vec<FileEntry>,
    certificates: Vec<CertificateRecord>,
    stats: Sizes,
    /// Blobs this backup reuses from stored packs, by pack, with where their content can
    /// be read again: `commit` reads those packs back and stores a fresh copy of any
    /// damaged one, so a new backup is never made of damaged blobs.
    reused: HashMap<Id, Vec<Reuse>>,
    /// The snapshot as a file, when the caller has one (see [`BackupWriter::snapshot_source`]).
    snapshot_source: Option<Arc<PathBuf>>,
    /// Write an index file every this many packs (0: only at the end); see `checkpoint`.
    checkpoint_every: usize,
}

/// A reused blob and where this backup read its content.
struct Reuse {
    id: Id,
    kind: BlobKind,
    origin: Origin,
}

enum Origin {
    /// `len` bytes at `offset` of a file.
    File { path: Arc<PathBuf>, offset: u64, len: u32 },
    /// Content built in memory (chunk lists).
    Bytes(Vec<u8>),
    /// A stream that cannot be read again.
    Gone,
}

impl<'r> BackupWriter<'r> {
    /// The zstd level of this backup's new blobs: `--compression-level`, else the repository's.
    fn compression_level(&self) -> i32 {
        self.repo.transfer.compression_level.unwrap_or(self.repo.config.compression_level)
    }

    fn add_blob(&mut self, kind: BlobKind, raw: &[u8]) -> Result<Id, RepoError> {
        let keys = self.repo.keys()?;
        let id = crate::pack::blob_id(keys, raw);
        self.stats.blobs_total += 1;
        if self.pending.contains(&id) {
            return Ok(id);
        }
        if let Some(loc) = self.index.get(&id) {
            let pack = loc.pack;
            self.reuse(pack, Reuse { id, kind, origin: Origin::Bytes(raw.to_vec()) });
            return Ok(id);
        }
        let (encoding, stored) = encode_blob(&id, raw, self.compression_level(), keys);
        self.pack.add(id, kind, encoding, raw.len() as u32, &stored);
        self.pending.insert(id);
        self.stats.added += stored.len() as u64;
        self.stats.blobs_added += 1;
        if self.pack.len() as u64 >= self.repo.config.pack_size {
            self.flush_pack()?;
        }
        Ok(id)
    }

    /// Adds a chunk hashed and compressed by a worker ([`super::pipeline::encode_stream`]).
    /// `reused_from`: the pack holding the blob when the workers skipped it as stored.
    fn add_encoded(
        &mut self,
        kind: BlobKind,
        enc: super::pipeline::Encoded,
        reused_from: Option<Id>,
        origin: Origin,
    ) -> Result<(), RepoError> {
        self.stats.blobs_total += 1;
        let Some((encoding, stored)) = enc.stored else {
            if let Some(pack) = reused_from {
                self.reuse(pack, Reuse { id: enc.id, kind, origin });
            }
            return Ok(());
        };
        if self.pending.contains(&enc.id) {
            return Ok(());
        }
        self.pack.add(enc.id, kind, encoding, enc.raw_len, &stored);
        self.pending.insert(enc.id);
        self.stats.added += stored.len() as u64;
        self.stats.blobs_added += 1;
        if self.pack.len() as u64 >= self.repo.config.pack_size {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn reuse(&mut self, pack: Id, blob: Reuse) {
        self.reused.entry(pack).or_default().push(blob);
    }

    /// Reads back every stored pack this backup reuses (whole, against its sha256 name; on
    /// several threads). A blob found damaged is recorded (`damaged/`) and stored again from
    /// the content this backup read; when that content is not at hand (a stream), the backup
    /// fails: it would depend on damaged data.
    fn check_reused(&mut self) -> Result<(), RepoError> {
        let reused = std::mem::take(&mut self.reused);
        if reused.is_empty() {
            return Ok(());
        }
        let mut packs: Vec<Id> = reused.keys().copied().collect();
        packs.sort();
        let queue = Mutex::new(packs.clone());
        let results = Mutex::new(Vec::new());
        let workers = self.repo.transfer.workers().min(packs.len());
        let (repo, index) = (self.repo, &self.index);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let Some(pack) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                        return;
                    };
                    let checked = match repo.store.get(&pack_key(&pack)) {
                        Ok(bytes) => {
                            repo.check_pack_bytes(&pack, &bytes, &index.pack_entries(&pack))
                        }
                        Err(StoreError::NotFound(_)) => Ok(PackCheck {
                            whole: true,
                            reason: "it is missing from the repository".into(),
                            ..Default::default()
                        }),
                        Err(e) => Err(e.into()),
                    };
                    let failed = checked.is_err();
                    results.lock().unwrap_or_else(|p| p.into_inner()).push((pack, checked));
                    if failed {
                        return;
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        results.sort_by_key(|(p, _)| *p);
        let keys = self.repo.keys()?;
        for (pack, checked) in results {
            let check = checked?;
            if check.intact {
                continue;
            }
            let good: HashSet<Id> = check.good.iter().map(|e| e.id).collect();
            let bad_ids: Vec<Id> = check.bad.iter().map(|e| e.id).collect();
            let whole = check.whole && good.is_empty();
            self.repo.note_damage(
                &pack,
                if whole { None } else { Some(&bad_ids) },
                "backup create",
                &check.reason,
            );
            let blobs = &reused[&pack];
            let damaged: Vec<&Reuse> = blobs.iter().filter(|b| !good.contains(&b.id)).collect();
            self.repo.transfer.note(&format!(
                "pack {} is damaged ({}); {} of the blobs this backup reuses from it are stored again, the damage is recorded \
                 under damaged/ (run `etcdguard backup repair` to salvage the pack)",
                pack.hex(),
                check.reason,
                damaged.len()
            ));
            for blob in damaged {
                let raw = match &blob.origin {
                    Origin::Bytes(b) => Some(b.clone()),
                    Origin::File { path, offset, len } => read_at(path, *offset, *len).ok(),
                    Origin::Gone => None,
                };
                let raw = raw.filter(|r| crate::pack::blob_id(keys, r) == blob.id).ok_or_else(|| {
                    RepoError::Damaged(format!(
                        "blob {} that this backup reuses is damaged in pack {} ({}), and its content is not at hand to \
                         store again; nothing was recorded. The damage is now recorded, so the next backup stores a \
                         fresh copy; or run `etcdguard backup repair`",
                        blob.id.hex(),
                        pack.hex(),
                        check.reason
                    ))
                })?;
                self.add_fresh(blob.kind, blob.id, &raw)?;
            }
        }
        Ok(())
    }

    /// Stores `raw` (whose id is `id`) in a new pack even though the index holds it.
    fn add_fresh(&mut self, kind: BlobKind, id: Id, raw: &[u8]) -> Result<(), RepoError> {
        if !self.pending.insert(id) {
            return Ok(());
        }
        let (encoding, stored) = encode_blob(&id, raw, self.compression_level(), self.repo.keys()?);
        self.pack.add(id, kind, encoding, raw.len() as u32, &stored);
        self.stats.added += stored.len() as u64;
        self.stats.blobs_added += 1;
        if self.pack.len() as u64 >= self.repo.config.pack_size {
            self.flush_pack()?;
        }
        Ok(())
    }

    pub(crate) fn flush_pack(&mut self) -> Result<(), RepoError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let (id, data, entries) = std::mem::take(&mut self.pack).finish();
        self.written.add_pack(id, &entries);
        self.uploader.send(pack_key(&id), data)?;
        if self.checkpoint_every > 0 && self.written.packs().count() >= self.checkpoint_every {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Chunks `reader` at `chunk_size` boundaries and stores what is new; the part's sha256
    /// is computed on the way. `size_hint`: the input's size when known (for progress).
    fn add_stream(
        &mut self,
        reader: &mut dyn Read,
        chunk_size: u32,
        size_hint: Option<u64>,
        source: Option<Arc<PathBuf>>,
    ) -> Result<Part, RepoError> {
        let mut hasher = Sha256::new();
        let part = self.store_stream(reader, chunk_size, size_hint, Some(&mut hasher), source)?;
        Ok(part.with_sha256(hasher.finalize().into()))
    }

    /// [`Self::add_stream`] without the sha256 unless `hasher` is given (it then sees every
    /// byte read). Chunks are hashed and compressed on worker threads and packed in input order.
    /// `source`: the same bytes as a file, to read a reused chunk again if its stored copy
    /// turns out damaged.
    fn store_stream(
        &mut self,
        reader: &mut dyn Read,
        chunk_size: u32,
        size_hint: Option<u64>,
        mut hasher: Option<&mut Sha256>,
        source: Option<Arc<PathBuf>>,
    ) -> Result<UnhashedPart, RepoError> {
        let mut ids: Vec<u8> = Vec::new();
        let mut chunks = 0u64;
        let transfer = self.repo.transfer.clone();
        let progress = transfer
            .progress
            .clone()
            .filter(|_| size_hint.is_none_or(|n| n >= super::reader::PROGRESS_MIN));
        if let Some(p) = &progress {
            p.begin(size_hint);
        }
        let mut throttle = transfer.limit_rate.map(super::pipeline::Throttle::new);
        // The workers check the index the backup started with; this backup's own new blobs
        // (`pending`) are checked here, in order.
        let index = std::mem::take(&mut self.index);
        let keys = self.repo.keys()?;
        let level = self.compression_level();
        let result = super::pipeline::encode_stream(
            reader,
            chunk_size as usize,
            transfer.workers(),
            &index,
            keys,
            level,
            &mut throttle,
            &mut |bytes| {
                if let Some(h) = hasher.as_mut() {
                    h.update(bytes);
                }
                if let Some(p) = &progress {
                    p.advance(bytes.len() as u64);
                }
            },
            &mut |enc| {
                ids.extend_from_slice(&enc.id.0);
                let origin = match &source {
                    Some(path) => Origin::File {
                        path: path.clone(),
                        offset: chunks * chunk_size as u64,
                        len: enc.raw_len,
                    },
                    None => Origin::Gone,
                };
                chunks += 1;
                let reused_from =
                    enc.stored.is_none().then(|| index.get(&enc.id).map(|l| l.pack)).flatten();
                self.add_encoded(BlobKind::Data, enc, reused_from, origin)
            },
        );
        self.index = index;
        if let Some(p) = &progress {
            p.end();
        }
        let size = result?;
        let fanout = self.repo.config.chunking.list_fanout as usize * 32;
        let mut lists = Vec::new();
        for piece in ids.chunks(fanout) {
            lists.push(self.add_blob(BlobKind::List, piece)?);
        }
        Ok(UnhashedPart(Part {
            size,
            sha256: String::new(),
            chunk_size,
            chunks,
            chunk_lists: lists,
        }))
    }

    /// The chunk size used for a database with `page_size`: the repository's, rounded up to
    /// a multiple of the page size.
    pub fn chunk_size_for(&self, page_size: u32) -> u32 {
        let base = self.repo.config.chunking.chunk_size.max(1);
        if page_size == 0 {
            return base;
        }
        base.div_ceil(page_size) * page_size
    }

    /// Records the certificates of the PKI directory in the manifest.
    pub fn set_certificates(&mut self, certificates: Vec<CertificateRecord>) {
        self.certificates = certificates;
    }

    /// Stores the snapshot (the whole file, trailer included, so it comes back byte-identical).
    pub fn add_snapshot(
        &mut self,
        reader: &mut dyn Read,
        page_size: u32,
    ) -> Result<Part, RepoError> {
        self.add_snapshot_sized(reader, page_size, None)
    }

    /// [`Self::add_snapshot`] of an input of `size` bytes, when known (for progress).
    pub fn add_snapshot_sized(
        &mut self,
        reader: &mut dyn Read,
        page_size: u32,
        size: Option<u64>,
    ) -> Result<Part, RepoError> {
        let cs = self.chunk_size_for(page_size);
        let source = self.snapshot_source.clone();
        self.add_stream(reader, cs, size, source)
    }

    /// [`Self::add_snapshot_sized`] for a caller that hashes the same bytes already (a live
    /// backup checks the stream's trailer with one pass that also yields the file's sha256):
    /// the part is complete once it is given that digest.
    pub fn add_snapshot_unhashed(
        &mut self,
        reader: &mut dyn Read,
        page_size: u32,
        size: Option<u64>,
    ) -> Result<UnhashedPart, RepoError> {
        let cs = self.chunk_size_for(page_size);
        let source = self.snapshot_source.clone();
        self.store_stream(reader, cs, size, None, source)
    }

    /// Names the file the snapshot is read from (a `--from-file` snapshot, a live backup's
    /// spool copy), so that a reused chunk whose stored copy turns out damaged is stored
    /// again from it. Without it such a backup fails instead.
    pub fn snapshot_source(&mut self, path: &Path) {
        self.snapshot_source = Some(Arc::new(path.to_path_buf()));
    }

    /// Records `to` instead of `from` as where the files added from under `from` were taken
    /// (files unpacked from an archive into a scratch directory name the archive).
    pub fn rename_file_sources(&mut self, from: &Path, to: &str) {
        let from = from.display().to_string();
        for f in &mut self.files {
            if let Some(rest) = f.source.strip_prefix(&from) {
                f.source = format!("{to}{}", rest.trim_start_matches('/'));
            }
        }
    }

    /// Adds a file, or a directory with everything under it, as `<group>/<its name>…`
    /// (several `--file` paths side by side).
    pub fn add_path(&mut self, group: &str, path: &Path) -> Result<(), RepoError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        self.add_path_as(&format!("{group}/{name}"), path)
    }

    /// Adds a file or a directory tree so that it restores at `dest` under `--files-to`
    /// (the PKI directory becomes `pki/`, ready to copy back as /etc/kubernetes/pki).
    pub fn add_path_as(&mut self, dest: &str, path: &Path) -> Result<(), RepoError> {
        let io_err = |p: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", p.display()));
        let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
        if safe_relative(dest).is_none() {
            return Err(RepoError::Invalid(format!(
                "{dest:?}: not a usable name under --files-to"
            )));
        }
        if self.files.iter().any(|f| {
            f.path == dest
                || f.path.starts_with(&format!("{dest}/"))
                || dest.starts_with(&format!("{}/", f.path))
        }) {
            return Err(RepoError::Invalid(format!(
                "{} would restore as {dest:?}, which another path of this backup already uses",
                path.display()
            )));
        }
        self.add_entry(dest, path, &meta)
    }

    fn add_entry(&mut self, dest: &str, path: &Path, meta: &fs::Metadata) -> Result<(), RepoError> {
        let io_err = |p: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", p.display()));
        let base = FileEntry {
            path: dest.to_string(),
            source: path.display().to_string(),
            kind: FileKind::File,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            target: None,
            content: None,
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| io_err(path, e))?;
            self.files.push(FileEntry {
                kind: FileKind::Symlink,
                target: Some(target.to_string_lossy().into_owned()),
                ..base
            });
        } else if ft.is_dir() {
            self.files.push(FileEntry { kind: FileKind::Dir, ..base });
            let mut entries: Vec<_> = fs::read_dir(path)
                .map_err(|e| io_err(path, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| io_err(path, e))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let m = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
                let child = format!("{dest}/{}", e.file_name().to_string_lossy());
                self.add_entry(&child, &p, &m)?;
            }
        } else if ft.is_file() {
            let mut f = fs::File::open(path).map_err(|e| io_err(path, e))?;
            let cs = self.repo.config.chunking.chunk_size;
            let source = Some(Arc::new(path.to_path_buf()));
            let part = self
                .add_stream(&mut f, cs, None, source)
                .map_err(|e| e.context(&path.display().to_string()))?;
            self.stats.original += part.size;
            self.files.push(FileEntry { content: Some(part), ..base });
        }
        // Sockets, fifos and devices are skipped: nothing in a control plane's files needs them.
        Ok(())
    }

    /// Writes the last pack, the index for this backup's packs and, last, the manifest.
    pub fn commit(mut self, snapshot: Part, meta: BackupMeta) -> Result<Manifest, RepoError> {
        // First, so that fresh copies count in the sizes and go into this backup's packs.
        if !self.repo.transfer.trust_stored {
            self.check_reused()?;
        }
        let created = meta.created.unwrap_or_else(Utc::now);
        let id = format!("{:016x}", rand::random::<u64>());
        let mut sizes = self.stats.clone();
        sizes.original += snapshot.size;
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: id.clone(),
            created,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            hostname: hostname(),
            labels: meta.labels,
            cluster: meta.cluster,
            source: meta.source,
            etcd: meta.etcd,
            snapshot,
            files: std::mem::take(&mut self.files),
            encoding: PartEncoding {
                compression: "zstd".into(),
                encryption: self.repo.config.encryption.clone(),
            },
            sizes,
            certificates: std::mem::take(&mut self.certificates),
            sealed: None,
        };
        self.finish(manifest)
    }

    /// Stores the last pack and the index of this backup's packs, then `manifest` (its
    /// `version` set as the repository writes them).
    fn finish(&mut self, manifest: Manifest) -> Result<Manifest, RepoError> {
        self.flush_pack()?;
        let uploader = std::mem::replace(
            &mut self.uploader,
            Uploader { tx: None, threads: Vec::new(), error: Arc::default() },
        );
        uploader.finish()?;
        if self.written.blob_count() > 0 {
            let data = self.repo.encode_index(&self.written);
            self.repo.store.put(&format!("index/{}", Id::of(&data).hex()), Bytes::from(data))?;
        }
        let id = manifest.id.clone();
        let manifest = match self.repo.metadata_keys() {
            Some(_) => Manifest { version: SEALED_FORMAT_VERSION, ..manifest },
            None => manifest,
        };
        let body = match self.repo.metadata_keys() {
            // Format 2: the whole manifest sealed, beside the public part list/show read.
            Some(keys) => {
                let full = Manifest { version: SEALED_FORMAT_VERSION, ..manifest.clone() };
                let plain = serde_json::to_vec(&full).expect("manifest serializes");
                let sealed = keys.seal_document(&manifest_aad(&id), &plain);
                let public = Manifest { sealed: Some(hex(&sealed)), ..full.public_part() };
                serde_json::to_vec_pretty(&public).expect("manifest serializes")
            }
            None => serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        };
        // Once the lock expired a prune may have run and deleted packs this backup dedups
        // against: record nothing then.
        self.lock.check_held()?;
        self.repo.store.put(&manifest_key(&id), Bytes::from(body))?;
        Ok(manifest)
    }

    /// A backup copied from another repository ([`super::copy`]): `source`'s manifest under
    /// its own id and times, with the parts stored here (the `files` entries' `content` too).
    pub(super) fn commit_copy(
        mut self,
        source: &Manifest,
        snapshot: Part,
        files: Vec<FileEntry>,
    ) -> Result<Manifest, RepoError> {
        // A copied chunk reused from a damaged pack here has no file to be read again from:
        // the copy of this backup fails, and the damage record makes the next copy store it.
        if !self.repo.transfer.trust_stored {
            self.check_reused()?;
        }
        let mut sizes = self.stats.clone();
        sizes.original = snapshot.size
            + files.iter().filter_map(|f| f.content.as_ref()).map(|c| c.size).sum::<u64>();
        let manifest = Manifest {
            version: FORMAT_VERSION,
            snapshot,
            files,
            encoding: PartEncoding {
                compression: "zstd".into(),
                encryption: self.repo.config.encryption.clone(),
            },
            sizes,
            sealed: None,
            ..source.clone()
        };
        self.finish(manifest)
    }

    /// From now on, index the packs written so far every `packs` packs, so that a run
    /// killed midway leaves them for the next one to deduplicate against (a copy of a
    /// large backup need not start over).
    pub(super) fn checkpoint_every(&mut self, packs: usize) {
        self.checkpoint_every = packs;
    }

    /// Waits until every pack sent is stored, then writes the index file of those packs
    /// (as `commit` does, before any manifest): indexed packs no manifest uses yet, which
    /// the invariants allow and the next prune frees if no backup comes to use them.
    fn checkpoint(&mut self) -> Result<(), RepoError> {
        let threads = self.repo.transfer.workers().min(UPLOADS_MAX);
        let uploader = std::mem::replace(
            &mut self.uploader,
            Uploader::start_n(self.repo.store.clone(), threads),
        );
        uploader.finish()?;
        // With the lock lost a prune may have deleted these packs: index nothing then.
        self.lock.check_held()?;
        let data = self.repo.encode_index(&self.written);
        self.repo.store.put(&format!("index/{}", Id::of(&data).hex()), Bytes::from(data))?;
        self.written = Index::new();
        Ok(())
    }

    /// Stores one part read from `reader`, cut every `chunk_size` bytes (a copied part keeps
    /// its chunk size, so its chunks dedup against earlier copies).
    pub(super) fn add_copied_part(
        &mut self,
        reader: &mut dyn Read,
        chunk_size: u32,
        size: u64,
    ) -> Result<Part, RepoError> {
        self.add_stream(reader, chunk_size, Some(size), None)
    }
}

/// `len` bytes of `path` at `offset`.
fn read_at(path: &Path, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path)?;
    let mut buf = vec![0; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A stored part whose sha256 the caller computes ([`BackupWriter::add_snapshot_unhashed`]).
#[must_use = "a part needs its sha256 before it goes into a manifest"]
pub struct UnhashedPart(Part);

impl UnhashedPart {
    pub fn size(&self) -> u64 {
        self.0.size
    }

    /// The part, with the sha256 of exactly the bytes that were stored.
    pub fn with_sha256(self, digest: [u8; 32]) -> Part {
        Part { sha256: hex(&digest), ..self.0 }
    }
}

#[cfg(test)]
mod tests {
    use crate::repository::test_support::*;
    #[allow(unused_imports)]
    use rand::{Rng, RngCore, SeedableRng};

    /// A create never deduplicates against a blob whose pack is gone: it stores it again.
    #[test]
    fn a_create_stores_again_what_a_lost_pack_held() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 8 << 20);
        let data = db(32);
        backup(&r, &data);
        for p in r.store.list("packs/").unwrap() {
            r.store.delete(&p.key).unwrap();
        }
        let m = backup(&r, &data);
        assert!(m.sizes.blobs_added > 0);
        assert_eq!(restore(&r, &m), data);
    }
}
