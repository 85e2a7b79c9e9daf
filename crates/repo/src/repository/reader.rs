//! Reading a backup back: chunk lists, parts (checked chunk by chunk and whole), files
//! restored under a directory without following symlinks, the check of a whole backup, and
//! exports / presigned URLs for restore flows that only take a URL.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::id::{hex, Id};
use crate::manifest::*;
use crate::pack::{decode_blob, Index, Location};
use crate::RepoError;

use sha2::{Digest, Sha256};

/// A file written front to back whose pages are handed to the disk as they are written
/// (`sync_file_range` without waiting) instead of piling up dirty in memory: the fsync at the
/// end, by whoever makes the file durable, then has little left to do, and the disk works
/// while the restore still decompresses.
struct EarlyWriteback {
    file: fs::File,
    written: u64,
    kicked: u64,
}

impl EarlyWriteback {
    const WINDOW: u64 = 32 << 20;

    fn wrote(&mut self, n: usize) -> usize {
        self.written += n as u64;
        if self.written - self.kicked >= Self::WINDOW {
            use std::os::fd::AsRawFd;
            // Only a hint: an error (a filesystem without it) changes nothing.
            // rustix has no sync_file_range.
            // SAFETY: a plain syscall on an open descriptor; no memory is passed.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.kicked as i64,
                    (self.written - self.kicked) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.kicked = self.written;
        }
        n
    }
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        Ok(self.wrote(n))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        Ok(self.wrote(n))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A reassembly's file behind a `BufWriter` for small writes, where a large vectored write
/// (a run of decoded chunks) goes to the file in one `writev`, past the buffer: `BufWriter`
/// copies each slice into its buffer unless it knows its writer takes vectored writes, which
/// a writer cannot tell it on stable Rust.
struct RunWriter(io::BufWriter<EarlyWriteback>);

impl RunWriter {
    /// Vectored writes at least this large bypass the buffer.
    const DIRECT: usize = 256 << 10;
}

impl Write for RunWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total < Self::DIRECT {
            for b in bufs {
                self.0.write_all(b)?;
            }
            return Ok(total);
        }
        self.0.flush()?;
        self.0.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes all of `chunks` to `out`, in as few calls as `out` takes (one `writev` a run for
/// a file).
fn write_chunks(out: &mut dyn Write, chunks: &[Vec<u8>]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> =
        chunks.iter().filter(|c| !c.is_empty()).map(|c| io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An etcd snapshot ends with the sha256 of what comes before it when its size is 32 over a
/// multiple of 512 (a bbolt file is a whole number of pages), as etcd's restore decides and
/// `etcdguard_storage::SnapshotFile::open` reads it (this crate does not depend on that one).
const TRAILER_LEN: u64 = 32;

/// The trailer check of a snapshot reassembled front to back: the part's hasher is cloned
/// where the trailer starts, so the one sha256 pass yields both digests.
struct Trailer {
    at: u64,
    content: Option<[u8; 32]>,
    stored: Vec<u8>,
}

impl Trailer {
    fn new(size: u64) -> Trailer {
        Trailer {
            at: size - TRAILER_LEN,
            content: None,
            stored: Vec::with_capacity(TRAILER_LEN as usize),
        }
    }

    /// Feeds `chunk`, which starts at `pos` in the part, to `hasher`.
    fn update(&mut self, hasher: &mut Sha256, pos: u64, chunk: &[u8]) {
        let end = pos + chunk.len() as u64;
        if self.content.is_none() && end > self.at {
            let split = self.at.saturating_sub(pos) as usize;
            hasher.update(&chunk[..split]);
            self.content = Some(hasher.clone().finalize().into());
            hasher.update(&chunk[split..]);
        } else {
            hasher.update(chunk);
        }
        if end > self.at && self.stored.len() < TRAILER_LEN as usize {
            let from = self.at.saturating_sub(pos) as usize;
            let take = (chunk.len() - from).min(TRAILER_LEN as usize - self.stored.len());
            self.stored.extend_from_slice(&chunk[from..from + take]);
        }
    }

    fn matches(&self) -> bool {
        self.content.is_some_and(|d| d[..] == self.stored[..])
    }
}

/// Parts smaller than this restore or back up without progress reports.
pub(crate) const PROGRESS_MIN: u64 = 4 << 20;

impl Repository {
    /// Every chunk id of a part, in order.
    pub fn chunk_ids(&self, index: &Index, part: &Part) -> Result<Vec<Id>, RepoError> {
        let mut ids = Vec::with_capacity(part.chunks as usize);
        for list in &part.chunk_lists {
            let raw = self.read_blob(index, list)?;
            if raw.len() % 32 != 0 {
                return Err(RepoError::Damaged(format!(
                    "chunk list {list:?} is {} bytes, not a multiple of 32",
                    raw.len()
                )));
            }
            ids.extend(raw.chunks_exact(32).map(|c| Id(c.try_into().unwrap())));
        }
        if ids.len() as u64 != part.chunks {
            return Err(RepoError::Damaged(format!(
                "chunk lists name {} chunks, the manifest says {}",
                ids.len(),
                part.chunks
            )));
        }
        Ok(ids)
    }

    /// Checks every chunk of `runs` against its id, records the damaged ones (`damaged/`, so
    /// no later backup reuses them) and returns an error naming them; `None` when every
    /// chunk is sound.
    pub(crate) fn find_damage(&self, runs: &[super::pipeline::Run]) -> Option<RepoError> {
        let keys = self.keys().ok()?;
        let mut bad: BTreeMap<Id, (Vec<Id>, String)> = BTreeMap::new();
        let mut missing = Vec::new();
        for run in runs {
            let bytes = match self.pack_range(&run.pack, run.start..run.end) {
                Ok(b) => b,
                Err(RepoError::Damaged(_)) => {
                    missing.push(run.pack);
                    continue;
                }
                Err(e) => return Some(e),
            };
            for (id, loc) in &run.blobs {
                let off = (loc.offset as u64 - run.start) as usize;
                let stored = bytes.get(off..off + loc.stored_len as usize);
                let verdict = match stored {
                    Some(stored) => decode_blob(keys, *id, loc.encoding, loc.raw_len, stored)
                        .err()
                        .map(|e| e.to_string()),
                    None => Some("the pack is shorter than its index says".into()),
                };
                if let Some(why) = verdict {
                    let entry = bad.entry(loc.pack).or_insert_with(|| (Vec::new(), why));
                    entry.0.push(*id);
                }
            }
        }
        missing.dedup();
        if bad.is_empty() && missing.is_empty() {
            return None;
        }
        let mut named = Vec::new();
        for (pack, (blobs, why)) in &bad {
            self.note_damage(pack, Some(blobs), "read", why);
            named.push(format!(
                "pack {}: {} damaged chunk(s), first {} ({why})",
                pack.hex(),
                blobs.len(),
                blobs[0].hex()
            ));
        }
        for pack in &missing {
            named.push(format!(
                "pack {} is in the index but missing from the repository",
                pack.hex()
            ));
        }
        let advice = if bad.is_empty() {
            "run `etcdguard backup repair`"
        } else {
            "recorded under damaged/: the next backup stores fresh copies, and `etcdguard backup repair` salvages \
             what the damaged packs still hold"
        };
        Some(RepoError::Damaged(format!("{}; {advice}", named.join("; "))))
    }

    pub(crate) fn locate<'i>(&self, index: &'i Index, id: &Id) -> Result<&'i Location, RepoError> {
        index.get(id).ok_or_else(|| {
            RepoError::Damaged(format!(
                "blob {} is in no index: the repository lost data (run `backup verify`)",
                id.hex()
            ))
        })
    }

    /// Reads bytes of a pack; a pack the index names but the store lacks is damage, not "not found".
    pub(crate) fn pack_range(
        &self,
        pack: &Id,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, RepoError> {
        match self.store.get_range(&pack_key(pack), range) {
            Ok(b) => Ok(b),
            Err(StoreError::NotFound(_)) => Err(RepoError::Damaged(format!(
                "pack {} is in the index but missing from the repository",
                pack.hex()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>, RepoError> {
        let loc = *self.locate(index, id)?;
        let stored = self
            .pack_range(&loc.pack, loc.offset as u64..loc.offset as u64 + loc.stored_len as u64)?;
        decode_blob(self.keys()?, *id, loc.encoding, loc.raw_len, &stored).map_err(|e| {
            self.note_damage(&loc.pack, Some(&[*id]), "read", &e.to_string());
            RepoError::Damaged(format!("pack {}: {e} (recorded under damaged/)", loc.pack.hex()))
        })
    }

    /// Writes a part's content to `out`, checking the whole part's sha256 (which covers
    /// every chunk: when it fails, a second pass checks each chunk's hash to name the damaged
    /// pack). Consecutive chunks stored next to each other are fetched in one range read.
    pub fn read_part(
        &self,
        index: &Index,
        part: &Part,
        out: &mut dyn Write,
    ) -> Result<(), RepoError> {
        self.read_part_to(index, part, out, None, false)
    }

    /// As [`Repository::read_part`]; a failed write names `dest` ("writing /x: No space left
    /// on device"). `snapshot`: the part is an etcd snapshot, whose sha256 trailer (when it
    /// has one) is checked too, from the same pass.
    pub(crate) fn read_part_to(
        &self,
        index: &Index,
        part: &Part,
        out: &mut dyn Write,
        dest: Option<&Path>,
        snapshot: bool,
    ) -> Result<(), RepoError> {
        let ids = self.chunk_ids(index, part)?;
        let runs = self.plan_runs(index, &ids)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut trailer =
            (snapshot && part.size % 512 == TRAILER_LEN).then(|| Trailer::new(part.size));
        // Progress is about the snapshot; control-plane files are a few KiB each.
        let progress = self.transfer.progress.clone().filter(|_| part.size >= PROGRESS_MIN);
        if let Some(p) = &progress {
            p.begin(Some(part.size));
        }
        let first = self.read_runs(&runs, false, &mut |chunks: &[Vec<u8>]| {
            let mut bytes = 0;
            for c in chunks {
                match trailer.as_mut() {
                    Some(t) => t.update(&mut hasher, written + bytes, c),
                    None => hasher.update(c),
                }
                bytes += c.len() as u64;
            }
            written += bytes;
            write_chunks(out, chunks).map_err(|e| match dest {
                Some(d) => RepoError::Io(format!("writing {}: {e}", d.display())),
                None => RepoError::Io(format!("writing: {e}")),
            })?;
            if let Some(p) = &progress {
                p.advance(bytes);
            }
            Ok(())
        });
        if let Some(p) = &progress {
            p.end();
        }
        match first {
            // A chunk that did not open or decompress: find every damaged one and record it.
            Err(RepoError::Damaged(e)) => {
                return Err(self.find_damage(&runs).unwrap_or(RepoError::Damaged(e)))
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let actual = hex(&hasher.finalize());
        if written != part.size || actual != part.sha256 {
            // Name the damaged chunk's pack when one is (the usual error of a damaged pack).
            if let Some(e) = self.find_damage(&runs) {
                return Err(e);
            }
            return Err(RepoError::ChecksumMismatch(format!(
                "reassembled content is {written} bytes with sha256 {actual}; the manifest says {} bytes with sha256 {}",
                part.size, part.sha256
            )));
        }
        if trailer.is_some_and(|t| !t.matches()) {
            return Err(RepoError::ChecksumMismatch(
                "the snapshot's sha256 trailer does not match its content (it was backed up so)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Reassembles a backup's snapshot into `dest` (must not exist): a private temporary file
    /// next to it, fsynced and renamed only once the sha256 and the snapshot's own trailer (when
    /// it has one) match.
    pub fn restore_snapshot_to_file(
        &self,
        index: &Index,
        part: &Part,
        dest: &Path,
        mode: u32,
    ) -> Result<(), RepoError> {
        self.write_snapshot_file(index, part, dest, mode, true)
    }

    /// [`Repository::restore_snapshot_to_file`] for a private scratch file that its caller makes
    /// durable itself, if at all (a restore moves it into a data dir and fsyncs it there):
    /// the same checks, without the fsync of the whole file here, which would write it to
    /// the disk twice over.
    pub fn restore_snapshot_to_scratch(
        &self,
        index: &Index,
        part: &Part,
        dest: &Path,
    ) -> Result<(), RepoError> {
        self.write_snapshot_file(index, part, dest, 0o600, false)
    }

    fn write_snapshot_file(
        &self,
        index: &Index,
        part: &Part,
        dest: &Path,
        mode: u32,
        durable: bool,
    ) -> Result<(), RepoError> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.etcdguard-{:08x}",
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            rand::random::<u32>()
        ));
        let io_err = |what: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", what.display()));
        let write_err = |e: io::Error| RepoError::Io(format!("writing {}: {e}", dest.display()));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_err(&tmp, e))?;
            let mut w = RunWriter(io::BufWriter::with_capacity(
                1 << 20,
                EarlyWriteback { file: f, written: 0, kicked: 0 },
            ));
            self.read_part_to(index, part, &mut w, Some(dest), true)?;
            let f = w.0.into_inner().map_err(|e| write_err(e.into_error()))?.file;
            if durable {
                f.sync_all().map_err(write_err)?;
            }
            if mode != 0o600 {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| io_err(&tmp, e))?;
            }
            drop(f);
            // Refuse to replace: link() fails if dest exists, unlike rename().
            fs::hard_link(&tmp, dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    RepoError::DestinationExists(dest.display().to_string())
                } else {
                    io_err(dest, e)
                }
            })?;
            if durable {
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
            }
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Unpacks the control-plane files of a backup under `dir` with their modes. Existing
    /// files are not overwritten, nothing is written through a symlink (one the backup
    /// names or one already in `dir`), and private keys are written 0600 whatever the
    /// manifest says (see `beneath`: the manifest of an unencrypted repository is not
    /// authenticated).
    pub fn restore_files(
        &self,
        index: &Index,
        manifest: &Manifest,
        dir: &Path,
    ) -> Result<usize, RepoError> {
        use crate::beneath::{mkdir_at, mkdirs_beneath, open_beneath, symlink_at};
        let io_err = |what: &Path, e: io::Error| RepoError::Io(format!("{}: {e}", what.display()));
        let entries = restore_plan(manifest)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode_private()
            .create(dir)
            .map_err(|e| io_err(dir, e))?;
        let root = fs::File::open(dir).map_err(|e| io_err(dir, e))?;
        let mut n = 0;
        let mut dir_modes = Vec::new();
        let mut private_dirs: HashSet<&Path> = HashSet::new();
        for (f, rel) in entries {
            let dest = dir.join(rel);
            let name = rel.file_name().expect("a planned path has a name");
            let parent_rel = rel.parent().unwrap_or(Path::new(""));
            let parent = mkdirs_beneath(&root, parent_rel).map_err(|e| beneath_error(&dest, e))?;
            match f.kind {
                FileKind::Dir => {
                    mkdir_at(&parent, name).map_err(|e| beneath_error(&dest, e))?;
                    dir_modes.push((rel, f.mode));
                }
                FileKind::Symlink => {
                    let target = f.target.as_deref().unwrap_or_default();
                    symlink_at(std::ffi::OsStr::new(target), &parent, name)
                        .map_err(|e| beneath_error(&dest, e))?;
                }
                FileKind::File => {
                    let part = f.content.as_ref().ok_or_else(|| {
                        RepoError::Damaged(format!("file {:?} has no content", f.path))
                    })?;
                    let private =
                        self.restore_part_at(index, part, &parent, name, &dest, &f.path, f.mode)?;
                    if private {
                        private_dirs.extend(rel.ancestors().skip(1));
                    }
                }
            }
            n += 1;
        }
        // Directory modes last, so a read-only directory does not stop its own restore; a
        // directory holding a private key is never group- or world-writable.
        for (rel, mode) in dir_modes.into_iter().rev() {
            let d = dir.join(rel);
            let mut mode = mode & 0o777;
            if private_dirs.contains(rel) {
                mode &= !0o022;
            }
            let handle = open_beneath(&root, rel).map_err(|e| beneath_error(&d, e))?;
            handle.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io_err(&d, e))?;
        }
        Ok(n)
    }

    /// Reassembles a part as `name` in the directory `parent` (a private temporary file
    /// created there without following symlinks, linked into place only once complete).
    /// Returns whether it holds a private key (then it is 0600 whatever `mode` says).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore_part_at(
        &self,
        index: &Index,
        part: &Part,
        parent: &fs::File,
        name: &std::ffi::OsStr,
        dest: &Path,
        manifest_path: &str,
        mode: u32,
    ) -> Result<bool, RepoError> {
        use crate::beneath::{create_file_at, link_at, unlink_at, BeneathError};
        let tmp_name = std::ffi::OsString::from(format!(
            ".{}.etcdguard-{:08x}",
            name.to_string_lossy(),
            rand::random::<u32>()
        ));
        let write_err = |e: io::Error| RepoError::Io(format!("writing {}: {e}", dest.display()));
        let f = create_file_at(parent, &tmp_name).map_err(|e| beneath_error(dest, e))?;
        let result = (|| {
            let mut scan = PrivateKeyScan::new(io::BufWriter::with_capacity(1 << 20, f));
            self.read_part_to(index, part, &mut scan, Some(dest), false)?;
            let private = scan.found || is_private_key_path(manifest_path);
            let f = scan.inner.into_inner().map_err(|e| write_err(e.into_error()))?;
            let mode = if private { 0o600 } else { mode & 0o777 };
            f.set_permissions(fs::Permissions::from_mode(mode)).map_err(write_err)?;
            f.sync_all().map_err(write_err)?;
            drop(f);
            link_at(parent, &tmp_name, name).map_err(|e| match e {
                BeneathError::Exists => RepoError::DestinationExists(dest.display().to_string()),
                other => beneath_error(dest, other),
            })?;
            parent.sync_all().map_err(write_err)?;
            Ok(private)
        })();
        let _ = unlink_at(parent, &tmp_name);
        result
    }

    /// Reads every part of a backup back (without writing it anywhere but `snapshot_out`)
    /// and checks all hashes.
    pub fn check_backup(
        &self,
        index: &Index,
        manifest: &Manifest,
        snapshot_out: &mut dyn Write,
    ) -> Result<(), RepoError> {
        self.read_part(index, &manifest.snapshot, snapshot_out)
            .map_err(|e| e.context(&format!("backup {} snapshot", manifest.id)))?;
        for f in &manifest.files {
            if let Some(part) = &f.content {
                self.read_part(index, part, &mut io::sink())
                    .map_err(|e| e.context(&format!("backup {} file {}", manifest.id, f.path)))?;
            }
        }
        Ok(())
    }

    /// Reassembles a backup's snapshot into one object, `exports/<id>/snapshot.db`, streamed
    /// (multipart) and checked against the manifest's sha256 before the upload completes, so
    /// restore flows that only take a URL can fetch it. Refused for an encrypted repository:
    /// the export would put the cluster's data in the bucket in clear. An earlier export of
    /// the right size is reused (backups never change). Returns the object's key.
    pub fn export_snapshot(&self, manifest: &Manifest) -> Result<String, RepoError> {
        if self.is_encrypted() {
            return Err(RepoError::Invalid(format!(
                "{} is encrypted; exporting the snapshot would store it in the bucket in clear.\n  \
                 Use `backup url --objects` (sealed objects, for etcdguard), or `backup restore --to-file` and upload the file yourself",
                self.location()
            )));
        }
        let key = export_key(&manifest.id);
        let existing = self.store.list(&format!("exports/{}/", manifest.id))?;
        if existing.iter().any(|o| o.key == key && o.size == manifest.snapshot.size) {
            return Ok(key);
        }
        let index = self.load_index()?;
        let mut failure = None;
        let put = self.store.put_streaming(&key, &mut |w: &mut dyn Write| {
            self.read_part(&index, &manifest.snapshot, w).map_err(|e| {
                let m = e.to_string();
                failure = Some(e);
                io::Error::other(m)
            })
        });
        match (put, failure) {
            (_, Some(e)) => Err(e.context(&format!("exporting backup {}", manifest.id))),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(key),
        }
    }

    /// A presigned GET URL for one object of the repository.
    pub fn presigned_url(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<String, RepoError> {
        Ok(self.store.presigned_url(key, expires)?)
    }

    pub fn presigned_urls(
        &self,
        manifest: &Manifest,
        expires: std::time::Duration,
    ) -> Result<Vec<(String, String)>, RepoError> {
        let index = self.load_index()?;
        let mut packs: Vec<Id> = Vec::new();
        let mut seen = HashSet::new();
        let parts = std::iter::once(&manifest.snapshot)
            .chain(manifest.files.iter().filter_map(|f| f.content.as_ref()));
        for part in parts {
            for id in part.chunk_lists.iter().copied().chain(self.chunk_ids(&index, part)?) {
                let loc = self.locate(&index, &id)?;
                if seen.insert(loc.pack) {
                    packs.push(loc.pack);
                }
            }
        }
        let mut out = vec![(
            manifest_key(&manifest.id),
            self.store.presigned_url(&manifest_key(&manifest.id), expires)?,
        )];
        for key in self.store.list("index/")?.into_iter().map(|o| o.key) {
            out.push((key.clone(), self.store.presigned_url(&key, expires)?));
        }
        for p in packs {
            out.push((pack_key(&p), self.store.presigned_url(&pack_key(&p), expires)?));
        }
        Ok(out)
    }
}

/// The files of a manifest to restore, checked as a whole before anything is written:
/// plain relative paths, each once, and none below a symlink or a file of the same backup
/// (`add_path` never descends into either, so such a manifest was made by hand).
fn restore_plan(manifest: &Manifest) -> Result<Vec<(&FileEntry, &Path)>, RepoError> {
    let mut seen = HashSet::new();
    let mut not_dirs = HashSet::new();
    let mut out = Vec::new();
    for f in &manifest.files {
        let rel = safe_relative(&f.path).ok_or_else(|| {
            RepoError::Damaged(format!("file path {:?} escapes the target", f.path))
        })?;
        if !seen.insert(rel) {
            return Err(RepoError::Damaged(format!(
                "file path {:?} appears twice in backup {}",
                f.path, manifest.id
            )));
        }
        if f.kind != FileKind::Dir {
            not_dirs.insert(rel);
        }
        out.push((f, rel));
    }
    for (f, rel) in &out {
        if let Some(p) = rel.ancestors().skip(1).find(|a| not_dirs.contains(a)) {
            return Err(RepoError::Damaged(format!(
                "backup {}: {:?} lies below {:?}, which the backup holds as a symlink or file; refusing to write \
                 through it (was the manifest modified?); nothing was restored",
                manifest.id,
                f.path,
                p.display()
            )));
        }
    }
    Ok(out)
}

fn beneath_error(dest: &Path, e: crate::beneath::BeneathError) -> RepoError {
    use crate::beneath::BeneathError;
    match e {
        BeneathError::Exists => RepoError::DestinationExists(dest.display().to_string()),
        BeneathError::Symlink(c) => RepoError::Io(format!(
            "{}: {c:?} on the way is a symlink or not a directory; refusing to write through it (restore into an empty directory)",
            dest.display()
        )),
        BeneathError::Io(e) => RepoError::Io(format!("writing {}: {e}", dest.display())),
    }
}

/// Files restored 0600 by name: `*.key`, and the API server's encryption config.
fn is_private_key_path(path: &str) -> bool {
    path.ends_with(".key") || path.starts_with("encryption-config/")
}

/// Passes bytes through and notes whether they contain a private key: a PEM private key
/// (`-----BEGIN … PRIVATE KEY-----`) or a kubeconfig's embedded client key.
struct PrivateKeyScan<W: Write> {
    inner: W,
    /// The last bytes seen, so a marker split across writes is still found.
    tail: Vec<u8>,
    found: bool,
}

const PRIVATE_KEY_MARKERS: [&[u8]; 2] = [b"PRIVATE KEY-----", b"client-key-data:"];

impl<W: Write> PrivateKeyScan<W> {
    fn new(inner: W) -> Self {
        PrivateKeyScan { inner, tail: Vec::new(), found: false }
    }
}

impl<W: Write> Write for PrivateKeyScan<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if !self.found {
            let mut window = std::mem::take(&mut self.tail);
            window.extend_from_slice(&buf[..n]);
            self.found =
                PRIVATE_KEY_MARKERS.iter().any(|m| window.windows(m.len()).any(|w| w == *m));
            let keep = window.len().saturating_sub(32);
            self.tail = window.split_off(keep);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_support::*;
    use crate::store::LocalDir;
    #[allow(unused_imports)]
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn export_streams_the_snapshot_whole_and_prune_removes_it_with_its_backup() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 64 * 1024);
        let first = db(7);
        let m1 = backup(&r, &first);
        let m2 = backup(&r, &db(8));
        let key = r.export_snapshot(&m1).unwrap();
        assert_eq!(key, format!("exports/{}/snapshot.db", m1.id));
        assert!(fs::read(dir.path().join(&key)).unwrap() == first);
        assert_eq!(r.export_snapshot(&m1).unwrap(), key, "an export is reused");
        // A damaged chunk fails the export and leaves no object.
        let index = r.load_index().unwrap();
        let loc = *index.get(&r.chunk_ids(&index, &m2.snapshot).unwrap()[3]).unwrap();
        let pack = dir.path().join(pack_key(&loc.pack));
        let mut bytes = fs::read(&pack).unwrap();
        bytes[loc.offset as usize + 2] ^= 0x55;
        fs::write(&pack, bytes).unwrap();
        assert!(r.export_snapshot(&m2).is_err());
        assert!(
            r.store.list(&format!("exports/{}/", m2.id)).unwrap().is_empty(),
            "a failed export left an object"
        );
        // Forgetting the backup removes its export.
        r.delete_backup(&m1.id).unwrap();
        assert!(r.store.list("exports/").unwrap().is_empty());
        // An encrypted repository never exports in clear.
        let edir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalDir::new(edir.path().to_path_buf()));
        let opts = InitOptions {
            chunk_size: 4096,
            pack_size: 64 * 1024,
            passphrase: Some(Passphrase::new(b"p".to_vec())),
            kdf: cheap_kdf(),
        };
        let er = Repository::init(store, &opts).unwrap();
        let em = backup(&er, &first);
        assert!(matches!(er.export_snapshot(&em), Err(RepoError::Invalid(_))));
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let data = db(2);
        let m = backup(&r, &data);
        let packs = r.store.list("packs/").unwrap();
        let path = dir.path().join(&packs[0].key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0x55;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, &bytes).unwrap();
        let index = r.load_index().unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(_)), "{err}");
        let (n, problems) = r.check_packs().unwrap();
        assert_eq!(n, packs.len());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_missing_pack_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let m = backup(&r, &db(6));
        for p in r.store.list("packs/").unwrap() {
            r.store.delete(&p.key).unwrap();
        }
        let index = r.load_index().unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(ref s) if s.contains("missing")), "{err}");
        // Prune refuses to touch a repository that lost data a backup needs.
        assert!(matches!(r.prune(None, false), Err(RepoError::Damaged(_))));
    }

    #[test]
    fn restore_never_writes_through_symlinks_and_keeps_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let src = dir.path().join("pki");
        fs::create_dir_all(&src).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(src.join("ca.key"), b"secret key").unwrap();
        fs::write(src.join("bundle.pem"), b"cert\n-----BEGIN EC PRIVATE KEY-----\nxyz\n").unwrap();
        fs::write(src.join("ca.crt"), b"cert").unwrap();
        for f in ["ca.key", "bundle.pem", "ca.crt"] {
            fs::set_permissions(src.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        let r = repo(&dir.path().join("repo"), 1 << 20);
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &db(5)[..], 4096).unwrap();
        w.add_path_as("pki", &src).unwrap();
        let m = w.commit(part, meta()).unwrap();
        let index = r.load_index().unwrap();
        let out = dir.path().join("out");
        r.restore_files(&index, &m, &out).unwrap();
        let mode =
            |p: &str| fs::symlink_metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("pki/ca.key"), 0o600, "a key by name");
        assert_eq!(mode("pki/bundle.pem"), 0o600, "a key by content");
        assert_eq!(mode("pki/ca.crt"), 0o644);
        assert_eq!(mode("pki"), 0o755, "a directory holding keys is not group/world-writable");

        // A hand-made symlink entry, then a file below it: refused before anything is written.
        let mut evil = m.clone();
        let file = evil.files.iter().find(|f| f.path == "pki/ca.crt").unwrap().clone();
        evil.files.push(FileEntry {
            path: "pki/evil".into(),
            kind: FileKind::Symlink,
            target: Some(outside.path().display().to_string()),
            content: None,
            ..file.clone()
        });
        evil.files.push(FileEntry { path: "pki/evil/x".into(), ..file.clone() });
        let out2 = dir.path().join("out2");
        let err = r.restore_files(&index, &evil, &out2).unwrap_err();
        assert!(matches!(err, RepoError::Damaged(ref s) if s.contains("symlink")), "{err}");
        assert!(!out2.join("pki").exists(), "something was restored");
        // A symlink already in the target is not followed either.
        let out3 = dir.path().join("out3");
        fs::create_dir_all(&out3).unwrap();
        std::os::unix::fs::symlink(outside.path(), out3.join("pki")).unwrap();
        assert!(r.restore_files(&index, &m, &out3).is_err());
        assert!(
            fs::read_dir(outside.path()).unwrap().next().is_none(),
            "written outside the target"
        );
    }

    /// A full disk names the file being written.
    #[test]
    fn a_failed_write_names_the_file() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(rustix::io::Errno::NOSPC.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let m = backup(&r, &db(61));
        let index = r.load_index().unwrap();
        let dest = Path::new("/srv/restore/pki/ca.key");
        let err = r.read_part_to(&index, &m.snapshot, &mut Full, Some(dest), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "writing /srv/restore/pki/ca.key: No space left on device (os error 28)"
        );
    }

    /// A snapshot reassembled into a file has its sha256 trailer checked from the same pass,
    /// wherever the trailer falls in the last chunk; other sizes have no trailer to check.
    #[test]
    fn a_reassembled_snapshot_has_its_trailer_checked() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), 1 << 20);
        let index = |r: &Repository| r.load_index().unwrap();
        for len in [64 * 4096 + 32, 64 * 4096 + 544, 8 * 4096 + 1024 + 32] {
            let mut data = vec![0u8; len];
            rand::rngs::StdRng::seed_from_u64(len as u64).fill_bytes(&mut data);
            let digest: [u8; 32] = Sha256::digest(&data[..len - 32]).into();
            data[len - 32..].copy_from_slice(&digest);
            let m = backup(&r, &data);
            let dest = dir.path().join(format!("good-{len}.db"));
            r.restore_snapshot_to_file(&index(&r), &m.snapshot, &dest, 0o600).unwrap();
            assert_eq!(fs::read(&dest).unwrap(), data);
            // The same bytes but a wrong trailer: the part's sha256 matches, the trailer does not.
            data[len - 1] ^= 1;
            let m = backup(&r, &data);
            let dest = dir.path().join(format!("bad-{len}.db"));
            let err =
                r.restore_snapshot_to_file(&index(&r), &m.snapshot, &dest, 0o600).unwrap_err();
            assert!(
                matches!(err, RepoError::ChecksumMismatch(ref s) if s.contains("trailer")),
                "{err}"
            );
            assert!(!dest.exists());
        }
        // A bbolt file without a trailer (a copied member/snap/db) is not checked for one.
        let mut plain = vec![0u8; 16 * 4096];
        rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut plain);
        let m = backup(&r, &plain);
        r.restore_snapshot_to_file(&index(&r), &m.snapshot, &dir.path().join("plain.db"), 0o600)
            .unwrap();
    }

    #[test]
    fn files_round_trip_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("pki");
        fs::create_dir_all(src.join("etcd")).unwrap();
        fs::write(src.join("ca.key"), b"secret key").unwrap();
        fs::set_permissions(src.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let big: Vec<u8> =
            (0..20000u32).map(|i| rand::thread_rng().gen::<u8>() ^ (i as u8)).collect();
        fs::write(src.join("etcd/big.crt"), &big).unwrap();
        fs::set_permissions(src.join("etcd/big.crt"), fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("ca.key", src.join("link")).unwrap();
        let r = repo(&dir.path().join("repo"), 1 << 20);
        let mut w = r.begin_backup().unwrap();
        let part = w.add_snapshot(&mut &db(5)[..], 4096).unwrap();
        w.add_path_as("pki", &src).unwrap();
        assert!(w.add_path("files", &src).is_ok(), "the same tree elsewhere is fine");
        assert!(matches!(w.add_path_as("pki/etcd", &src), Err(RepoError::Invalid(_))), "overlap");
        let m = w.commit(part, meta()).unwrap();
        let out = dir.path().join("out");
        let index = r.load_index().unwrap();
        assert_eq!(r.restore_files(&index, &m, &out).unwrap(), 10);
        assert_eq!(fs::read(out.join("pki/ca.key")).unwrap(), b"secret key");
        assert_eq!(
            fs::metadata(out.join("pki/ca.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(out.join("pki/etcd/big.crt")).unwrap(), big);
        assert_eq!(
            fs::metadata(out.join("pki/etcd/big.crt")).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_link(out.join("pki/link")).unwrap(), Path::new("ca.key"));
        // A second restore into the same place refuses to overwrite.
        assert!(matches!(r.restore_files(&index, &m, &out), Err(RepoError::DestinationExists(_))));
    }
}
