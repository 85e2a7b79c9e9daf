//! The backup workflows: create (from a file or the live cluster), verify, restore, delete,
//! prune, export URLs and the passphrase keys of a repository. Each takes plain options and
//! returns what it did; lines for the operator go through the `note` callback.
//!
//! ## Following one backup from flag to object store
//!
//! `etcdguard backup create --repo s3://b/p --endpoints …`: clap fills
//! `cmd::backup::CreateArgs`; `cmd::backup::create` calls `CreateArgs::options()` (a
//! `workflow::backup::CreateOptions` with a `RepoSpec` whose passphrase callback wraps
//! `read_passphrase`) and then `workflow::backup::create` → `create_live`: `connect` resolves
//! the etcdctl-style flags into a `client::Session`, `Session::probe_all` +
//! `client::choose_member` pick the member, `spool::create` makes the private spool (sweeping
//! dead ones), and the repository is opened first: `repo::open_url` gives the `Store`
//! (`store::ObjectStoreBackend` for s3://, `LocalDir` for a path), `Repository::open_or_init`
//! reads or writes `config` (and unlocks keys), `Repository::begin_backup` takes a shared lock
//! and returns a `BackupWriter`. Then the snapshot is stored while it streams in:
//! `Session::save_into` runs `Maintenance.Snapshot` on its own thread into a `Tee` that writes
//! each message to `snapshot.db` in the spool and sends a copy down a bounded channel; on the
//! caller's thread `BackupWriter::add_snapshot_unhashed` reads that channel (the chunk size
//! from the first page's page size), cuts page-aligned chunks, and the pipeline
//! (`repository/pipeline.rs`) hashes, dedups and compresses them (`pack::encode_blob`) into
//! packs that `Store::put` uploads. The part's whole-file sha256 is not computed there: the
//! stream's `TrailerHasher` has seen the same bytes and gives it
//! (`SnapshotSummary::file_sha256`, `UnhashedPart::with_sha256`), once the streamed and stored
//! byte counts agree. When the stream has ended (trailer checked as it came), `check_snapshot`
//! checks the spooled file with `storage`: `workflow::snapshot::open_snapshot`
//! (`SnapshotFile::open`, layout) and `storage::verify` (bbolt walk and schema, which also
//! yields the `Status`); the trailer is not hashed again (the stream's verdict is passed in),
//! while a `--from-file` backup runs `SnapshotFile::check_trailer` beside the walk. Only if
//! that passed does `finish` go on: `add_path`/`add_path_as` add the PKI and other files;
//! `commit` writes the index and then `backups/<id>.json`, the manifest, last. The `Manifest`
//! comes back up to `cmd::backup::create`, which prints `text::created_line` or the JSON; the
//! spool is removed when its `Spool` drops. An error anywhere is a `workflow::Error`;
//! `exit::report` prints it and exits with `exit::code_of(kind)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcdguard_client::{
    choose_member, ConnectConfig, ConnectFlags, NoProgress, Session, SnapshotFrom,
};
use etcdguard_repo::manifest::{EtcdInfo, FileKind, Manifest, Source};
use etcdguard_repo::repository::KeyInfo;
use etcdguard_repo::retention::Policy;
use etcdguard_repo::{open_url, BackupMeta, InitOptions, PruneReport, RepoError, Repository};
use etcdguard_storage::{Layout, TrailerCheck};

use crate::error::{client_error, db_error, repo_error, Error, Kind, Result};
use crate::repo::{resolve, PassphraseSource, RepoSpec};
use crate::snapshot::open_snapshot;
use crate::spool;
use crate::stop::Stop;

/// Resolves connection flags and environment as etcdctl does and opens a session; the notes
/// (e.g. a variable ignored) go to `note`.
pub fn connect(flags: &ConnectFlags, note: &mut dyn FnMut(&str)) -> Result<Session> {
    let (cfg, notes) = ConnectConfig::resolve(flags.clone()).map_err(client_error)?;
    for n in notes {
        note(&format!("note: {n}"));
    }
    Session::new(cfg).map_err(client_error)
}

/// A snapshot of the live cluster (a healthy follower, as `snapshot save` picks) in a new
/// private spool under `scratch`, trailer checked; the spool (and the file) go when it is
/// dropped. `why` finishes the note that names the member.
pub(crate) fn snapshot_into_spool(
    flags: &ConnectFlags,
    scratch: &Path,
    why: &str,
    note: &mut dyn FnMut(&str),
) -> Result<(spool::Spool, PathBuf)> {
    let session = connect(flags, note)?;
    let probes = session.probe_all();
    let choice = choose_member(&probes, &SnapshotFrom::Follower).map_err(client_error)?;
    let (dir, _) = spool::create(scratch)?;
    let path = dir.path().join("snapshot.db");
    note(&format!(
        "taking a snapshot of {} (revision {}) {why}",
        choice.status.endpoint, choice.status.revision
    ));
    session
        .save(
            &choice.status.endpoint,
            &etcdguard_client::Destination::File(path.clone()),
            &mut NoProgress,
        )
        .map_err(client_error)?;
    Ok((dir, path))
}

/// What `backup create` stores, and where from.
#[derive(Clone)]
pub struct CreateOptions {
    pub repo: RepoSpec,
    /// Back up this snapshot file; `None` takes one from the live cluster (`conn`).
    pub from_file: Option<PathBuf>,
    /// Live cluster: which member to take the snapshot from.
    pub snapshot_from: SnapshotFrom,
    /// Live cluster: where the snapshot is spooled (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    pub conn: ConnectFlags,
    pub pki_dir: Option<PathBuf>,
    pub manifests_dir: Option<PathBuf>,
    pub encryption_config: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    pub labels: Vec<(String, String)>,
    pub cluster: Option<String>,
    /// Skip the structural and schema check (the sha256 trailer is still checked).
    pub skip_verify: bool,
    /// Chunk size of a new repository.
    pub chunk_size: u32,
}

/// Takes one backup: from `from_file`, or from the live cluster.
pub fn create(opts: &CreateOptions, note: &mut dyn FnMut(&str)) -> Result<Manifest> {
    create_stoppable(opts, note, &Stop::never())
}

/// [`create`], abandoned cleanly (spool removed, repository lock released, nothing listed)
/// soon after `stop` is raised: the snapshot stream and the upload check it as they go.
pub fn create_stoppable(
    opts: &CreateOptions,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<Manifest> {
    refuse_special_paths(opts)?;
    let Some(path) = opts.from_file.clone() else {
        return create_live(opts, note, stop);
    };
    let source = Source::File {
        path: std::fs::canonicalize(&path).unwrap_or(path.clone()).display().to_string(),
        import: None,
    };
    create_from(opts, &path, source, EtcdInfo::default(), None, note, stop)
}

/// What a backup brought in from another tool keeps of it (see [`crate::import`]).
pub(crate) struct Original<'a> {
    /// When the original backup was taken; the manifest's `created`.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Where its certificates were unpacked, to record their expiry as `--pki-dir` does.
    pub certificates: Option<&'a Path>,
    /// Files unpacked from an archive: the scratch directory they are in, and what to record
    /// instead as where they were taken (`ARCHIVE:`, then the path inside it).
    pub unpacked: Option<(&'a Path, String)>,
}

/// `backup create --from-file`, for a snapshot another tool made: checked and stored the
/// same way, with the original's time and `source`.
pub(crate) fn create_imported(
    opts: &CreateOptions,
    path: &Path,
    source: Source,
    original: &Original<'_>,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<Manifest> {
    refuse_special_paths(opts)?;
    create_from(opts, path, source, EtcdInfo::default(), Some(original), note, stop)
}

/// Takes a snapshot from the live cluster and stores it while it streams in: every byte
/// goes to a private spool file and to the chunker at once. When the stream has ended (its
/// sha256 trailer checked) the spooled file is checked as `snapshot verify` does, and the
/// backup is committed only if that passed; packs stored for a snapshot that failed are
/// listed by no backup (`prune` removes them).
fn create_live(opts: &CreateOptions, note: &mut dyn FnMut(&str), stop: &Stop) -> Result<Manifest> {
    let session = connect(&opts.conn, note)?;
    let probes = session.probe_all();
    let choice = choose_member(&probes, &opts.snapshot_from).map_err(client_error)?;
    let st = &choice.status;
    note(&format!(
        "snapshot from {} (member {:x}, revision {}): {}",
        st.endpoint, st.member_id, st.revision, choice.reason
    ));
    let parent = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (spool, swept) = spool::create(&parent)?;
    if !swept.is_empty() {
        note(&format!(
            "removed {} scratch dir(s) of killed runs from {}",
            swept.len(),
            parent.display()
        ));
    }
    stop.check()?;
    let repo = open_for_create(opts, note)?;
    let mut writer = repo.begin_backup()?;
    let path = spool.path().join("snapshot.db");
    // Complete by the time the backup commits; see `finish`.
    writer.snapshot_source(&path);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
    }
    .map_err(|e| Error::failure(format!("{}: {e}", path.display())))?;
    // A few stream messages in flight between the stream and the chunker.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let endpoint = st.endpoint.clone();
    let db_size = st.db_size;
    let target = path.display().to_string();
    let (saved, stored) = std::thread::scope(|s| {
        let saving = s.spawn(move || {
            let mut tee = Tee { file, tx };
            session.save_into(&endpoint, &mut tee, &target, &mut NoProgress)
        });
        let stored = (|| {
            let mut input = ChannelReader { rx, buf: Vec::new(), pos: 0 };
            // The chunk size follows the page size, which the first page names.
            let mut head = vec![0u8; 4096];
            let n = read_full(&mut input, &mut head)
                .map_err(|e| Error::failure(format!("reading the snapshot stream: {e}")))?;
            head.truncate(n);
            let page_size = bolt_page_size(&head).unwrap_or(4096);
            let mut input = stop.reader(std::io::Read::chain(std::io::Cursor::new(head), input));
            // The member's db size is the snapshot's size but for the trailer: enough for an ETA.
            let expected = u64::try_from(db_size).ok().filter(|n| *n > 0).map(|n| n + 32);
            // The stream's own pass over these bytes (its trailer check) gives their sha256.
            writer
                .add_snapshot_unhashed(&mut input, page_size, expected)
                .map_err(|e| stop.error_or(repo_error(e)))
        })();
        // Whatever happened to the chunker, the stream ends (its sends fail once `rx` is gone).
        (
            saving.join().unwrap_or(Err(etcdguard_client::ClientError::Interrupted("a panic"))),
            stored,
        )
    });
    let saved = saved.map_err(|e| stop.error_or(client_error(e)))?;
    let stored = stored?;
    // The chunker read what the tee sent: the bytes the stream hashed, all of them.
    if stored.size() != saved.bytes {
        return Err(Error::failure(format!(
            "{}: {} bytes streamed but {} stored; not backing it up",
            path.display(),
            saved.bytes,
            stored.size()
        )));
    }
    let snapshot = stored.with_sha256(saved.file_sha256);
    stop.check()?;
    let file = open_snapshot(&path)?;
    if file.len() != snapshot.size {
        return Err(Error::failure(format!(
            "{}: {} bytes spooled but {} stored; not backing it up",
            path.display(),
            file.len(),
            snapshot.size
        )));
    }
    let db = file.db().map_err(|e| db_error(&path, e))?;
    let known = EtcdInfo {
        cluster_id: (st.cluster_id != 0).then(|| format!("{:x}", st.cluster_id)),
        member_id: Some(format!("{:x}", st.member_id)),
        version: (!st.version.is_empty()).then(|| st.version.clone()),
        ..Default::default()
    };
    // The stream's sha256 trailer was checked as it arrived, over the very bytes spooled.
    let etcd = check_snapshot(opts, &path, &file, &db, known, Some(TrailerCheck::Verified))?;
    drop(file);
    // The spool outlives the commit: a reused chunk found damaged is stored again from it.
    let result = finish(
        opts,
        &repo,
        writer,
        snapshot,
        Source::Cluster { endpoint: st.endpoint.clone() },
        etcd,
        None,
        note,
        stop,
    );
    drop(spool);
    result
}

/// The page size a bbolt file's first meta page names, if it is one.
fn bolt_page_size(head: &[u8]) -> Option<u32> {
    let word = |at: usize| {
        head.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    (word(16)? == 0xED0C_DAED)
        .then(|| word(24))
        .flatten()
        .filter(|p| p.is_power_of_two() && (512..=65536).contains(p))
}

/// Writes the stream to the spool file and hands a copy to the chunker.
struct Tee {
    file: std::fs::File,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        self.tx
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::other("the backup stopped storing the snapshot"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Reads what a [`Tee`] sends; the end of the stream is the end of the input.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Stores the snapshot at `path` while it is checked (sha256 trailer, bbolt structure, etcd
/// schema) on another thread; the backup is committed only when the check passed. Packs
/// stored for a snapshot that fails its check are listed by no backup: `prune` removes them.
fn create_from(
    opts: &CreateOptions,
    path: &Path,
    source: Source,
    known: EtcdInfo,
    original: Option<&Original<'_>>,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<Manifest> {
    let file = open_snapshot(path)?;
    let db = file.db().map_err(|e| db_error(path, e))?;
    let page_size = db.page_size();
    let size = std::fs::metadata(path).map(|m| m.len()).ok();
    let repo = open_for_create(opts, note)?;
    let mut writer = repo.begin_backup()?;
    writer.snapshot_source(path);
    let (checked, stored) = std::thread::scope(|s| {
        let checking = s.spawn(|| check_snapshot(opts, path, &file, &db, known, None));
        let stored = (|| {
            let input = std::fs::File::open(path)
                .map_err(|e| Error::failure(format!("{}: {e}", path.display())))?;
            let mut input = stop.reader(input);
            writer
                .add_snapshot_sized(&mut input, page_size, size)
                .map_err(|e| stop.error_or(repo_error(e)))
        })();
        (
            checking.join().unwrap_or_else(|_| Err(Error::failure("the snapshot check panicked"))),
            stored,
        )
    });
    // A damaged snapshot is reported as such, whatever happened to the upload meanwhile.
    let etcd = checked?;
    let snapshot = stored?;
    drop(file);
    finish(opts, &repo, writer, snapshot, source, etcd, original, note, stop)
}

/// Adds the control-plane files and commits the backup.
#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &CreateOptions,
    repo: &Repository,
    mut writer: etcdguard_repo::BackupWriter<'_>,
    snapshot: etcdguard_repo::manifest::Part,
    source: Source,
    etcd: EtcdInfo,
    original: Option<&Original<'_>>,
    note: &mut dyn FnMut(&str),
    stop: &Stop,
) -> Result<Manifest> {
    stop.check()?;
    // The PKI and manifests directories restore as pki/ and manifests/ themselves; other
    // paths go under their group with their own name.
    let found_config = match (&opts.encryption_config, &opts.manifests_dir) {
        (None, Some(dir)) => apiserver_encryption_config(dir, note),
        _ => None,
    };
    let encryption_config = opts.encryption_config.as_ref().or(found_config.as_ref());
    if encryption_config.is_some() && !repo.is_encrypted() {
        note(&format!(
            "warning: this backup holds the encryption-at-rest keys (EncryptionConfiguration) and {} is not encrypted: anyone who can read it can decrypt the cluster's Secrets. Prefer an encrypted repository (ETCDGUARD_PASSPHRASE or --passphrase-file when it is created)",
            repo.location()
        ));
    }
    let paths: Vec<(&str, bool, &PathBuf)> = opts
        .pki_dir
        .iter()
        .map(|p| ("pki", true, p))
        .chain(opts.manifests_dir.iter().map(|p| ("manifests", true, p)))
        .chain(encryption_config.into_iter().map(|p| ("encryption-config", false, p)))
        .chain(opts.files.iter().map(|p| ("files", false, p)))
        .collect();
    for (group, as_group, p) in paths {
        // The writer skips these; the operator hears of it.
        let mut skipped = Vec::new();
        special_files_under(p, &mut skipped);
        for (path, kind) in skipped {
            note(&format!(
                "note: skipped {} ({kind}): only files, directories and symlinks are backed up",
                path.display()
            ));
        }
        let added = if as_group { writer.add_path_as(group, p) } else { writer.add_path(group, p) };
        added.map_err(|e| match e {
            RepoError::Io(m) if m.contains("No such file") => Error::new(Kind::NotFound, m),
            RepoError::Io(m) if m.contains("ermission denied") => {
                Error::new(Kind::PermissionDenied, m)
            }
            other => repo_error(other),
        })?;
    }
    if let Some(dir) = opts.pki_dir.as_deref().or(original.and_then(|o| o.certificates)) {
        writer.set_certificates(crate::certs::records_of_dir(dir, note));
    }
    if let Some((dir, archive)) = original.and_then(|o| o.unpacked.as_ref()) {
        writer.rename_file_sources(dir, archive);
    }
    stop.check()?;
    let labels: BTreeMap<String, String> = opts.labels.iter().cloned().collect();
    let cluster = opts
        .cluster
        .clone()
        .or_else(|| labels.get("cluster").cloned())
        .or_else(|| etcd.cluster_id.clone());
    let created = original.map(|o| o.created);
    let committed = writer.commit(snapshot, BackupMeta { source, etcd, labels, cluster, created });
    for line in repo.take_notes() {
        note(&line);
    }
    Ok(committed?)
}

/// What a path is when it is none of a file, a directory or a symlink.
fn special_kind(ft: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else {
        None
    }
}

/// Refuses, before anything is read or stored, a path given to back up that is a FIFO, a
/// socket or a device (`--file /dev/zero`): nothing of it could be stored.
fn refuse_special_paths(opts: &CreateOptions) -> Result<()> {
    let given = [
        ("--pki-dir", &opts.pki_dir),
        ("--manifests-dir", &opts.manifests_dir),
        ("--encryption-config", &opts.encryption_config),
    ];
    let given = given
        .iter()
        .filter_map(|(flag, p)| p.as_ref().map(|p| (*flag, p)))
        .chain(opts.files.iter().map(|p| ("--file", p)));
    for (flag, path) in given {
        if let Some(kind) =
            std::fs::symlink_metadata(path).ok().and_then(|m| special_kind(&m.file_type()))
        {
            return Err(Error::usage(format!(
                "{flag} {}: is {kind}; only files, directories and symlinks can be backed up",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The FIFOs, sockets and devices under directory `dir` (symlinks are not followed).
fn special_files_under(dir: &Path, out: &mut Vec<(PathBuf, &'static str)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            special_files_under(&e.path(), out);
        } else if let Some(kind) = special_kind(&ft) {
            out.push((e.path(), kind));
        }
    }
}

/// Checks a snapshot as `snapshot verify` does (unless `skip_verify`: then the trailer
/// only) and returns what the manifest records of it. `trailer` is the verdict on the
/// sha256 trailer when it is known already (checked while the snapshot streamed in).
fn check_snapshot(
    opts: &CreateOptions,
    path: &Path,
    file: &etcdguard_storage::SnapshotFile,
    db: &etcdguard_bolt::Db<'_>,
    known: EtcdInfo,
    trailer: Option<TrailerCheck>,
) -> Result<EtcdInfo> {
    let page_size = db.page_size();
    let release = || file.release_resident();
    // The trailer hash and the walk are independent: run them side by side.
    let (trailer, report) = std::thread::scope(|s| {
        let hashing = s.spawn(|| trailer.map_or_else(|| file.check_trailer(), Ok));
        let report = if opts.skip_verify {
            None
        } else {
            Some(etcdguard_storage::verify(db, Some(&release)))
        };
        (
            hashing
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the trailer check panicked"))),
            report,
        )
    });
    let trailer = trailer
        .map_err(|e| Error::failure(format!("{}: reading for sha256: {e}", path.display())))?;
    if let TrailerCheck::Mismatch { .. } = trailer {
        return Err(Error::new(
            Kind::ChecksumMismatch,
            format!(
                "{}: sha256 trailer mismatch: the snapshot is damaged; not backing it up",
                path.display()
            ),
        ));
    }
    let status = match &report {
        Some(r) if !r.is_ok() => {
            return Err(Error::new(
                Kind::Corrupt,
                format!(
                    "{}: the snapshot is damaged ({} problems); not backing it up. Run `etcdguard snapshot verify {}` for details",
                    path.display(),
                    r.structure.problem_count + r.schema_problem_count + r.metas.iter().filter(|m| m.is_err()).count(),
                    path.display()
                ),
            ))
        }
        Some(r) => r.status.clone(),
        None => etcdguard_storage::status(db, Some(&release)).ok(),
    };
    let Some(status) = status else {
        return Err(Error::new(
            Kind::Corrupt,
            format!("{}: cannot compute the snapshot's status; not backing it up", path.display()),
        ));
    };
    let etcd = EtcdInfo {
        revision: status.revision,
        hash: status.hash,
        total_key: status.total_key,
        total_size: status.total_size,
        page_size,
        compacted_revision: report.as_ref().and_then(|r| r.stats.compacted_revision),
        consistent_index: report.as_ref().and_then(|r| r.stats.consistent_index),
        term: report.as_ref().and_then(|r| r.stats.term),
        trailer: match file.layout() {
            Layout::WithTrailer { .. } => "verified".into(),
            _ => "absent".into(),
        },
        verified: report.is_some(),
        ..known
    };
    Ok(etcd)
}

/// Opens (or creates) the repository of a backup and unlocks it.
fn open_for_create(opts: &CreateOptions, note: &mut dyn FnMut(&str)) -> Result<Repository> {
    let store = open_url(&opts.repo.url).map_err(|e| repo_error(e.into()))?;
    let passphrase = opts.repo.passphrase()?;
    let init = InitOptions {
        chunk_size: opts.chunk_size,
        passphrase: passphrase.clone(),
        ..Default::default()
    };
    if let (Some(kms), None) = (&opts.repo.kms, &passphrase) {
        if matches!(Repository::open(store.clone()), Err(RepoError::NotARepository(_))) {
            // Created without a passphrase it would not be encrypted at all.
            return Err(Error::usage(format!(
                "{} holds no repository yet: a new one is created encrypted with a passphrase; give ETCDGUARD_PASSPHRASE or \
                 --passphrase-file as well and {kms} is added as a second key",
                opts.repo.url
            )));
        }
    }
    let (mut repo, created) = Repository::open_or_init(store, &init)?;
    repo.set_transfer(opts.repo.transfer.clone());
    if let (true, Some(kms)) = (created, &opts.repo.kms) {
        let wrapper = etcdguard_repo::kms::open_kms(kms)?;
        let id = repo.add_kms_key(wrapper.as_ref())?;
        note(&format!("added key {id}, wrapped by {kms}"));
    }
    if created {
        let how = if repo.is_encrypted() {
            "encrypted with the passphrase given"
        } else {
            "not encrypted (give ETCDGUARD_PASSPHRASE or --passphrase-file to encrypt a new one)"
        };
        note(&format!("created repository {}, {how}", repo.location()));
    } else if repo.is_encrypted() {
        opts.repo.unlock(&mut repo)?;
    } else if passphrase.is_some() {
        // Never let a passphrase suggest the CA keys are sealed when they would not be.
        return Err(Error::usage(format!(
            "{} is not encrypted, but a passphrase was given; its backups would be stored in clear.\n  \
             Use a new repository location (it is created encrypted), or unset ETCDGUARD_PASSPHRASE/--passphrase-file",
            repo.location()
        )));
    }
    Ok(repo)
}

/// The API server's `--encryption-provider-config` (on the host) from its manifest in
/// `manifests_dir`, when it sets one and the file is there; what was found goes to `note`.
fn apiserver_encryption_config(
    manifests_dir: &Path,
    note: &mut dyn FnMut(&str),
) -> Option<PathBuf> {
    let manifest = manifests_dir.join("kube-apiserver.yaml");
    if !manifest.is_file() {
        return None;
    }
    match etcdguard_node::pods::read_apiserver_encryption_config(&manifest) {
        Ok(Some(path)) if path.is_file() => {
            note(&format!("storing the API server's EncryptionConfiguration {} (its --encryption-provider-config)", path.display()));
            Some(path)
        }
        Ok(Some(path)) => {
            note(&format!(
                "warning: {} names --encryption-provider-config {}, which is not readable here; the backup holds no encryption keys (give --encryption-config FILE)",
                manifest.display(),
                path.display()
            ));
            None
        }
        Ok(None) => None,
        Err(e) => {
            note(&format!(
                "warning: {e}; the backup holds no encryption keys (give --encryption-config FILE)"
            ));
            None
        }
    }
}

/// What `backup verify` checks.
pub struct VerifyOptions {
    pub repo: RepoSpec,
    /// Backup id, unique prefix, or `latest`.
    pub id: String,
    /// Where the snapshot is reassembled (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    /// Also read every pack of the repository.
    pub packs: bool,
}

/// A backup that passed `verify` (and is now recorded as verified).
pub struct Verified {
    pub manifest: Manifest,
    pub trailer: TrailerCheck,
    /// Packs read with `packs`.
    pub packs_checked: Option<usize>,
}

/// Downloads a backup and checks it completely: the snapshot's sha256 (over every chunk),
/// trailer, bbolt structure and etcd schema, every file; records it as verified.
pub fn verify(opts: &VerifyOptions, note: &mut dyn FnMut(&str)) -> Result<Verified> {
    let repo = opts.repo.open_unlocked()?;
    let m = resolve(&repo, &opts.id)?;
    let index = repo.load_index()?;
    let trailer = check_stored(&repo, &index, &m, opts.scratch_dir.as_deref(), note)?;
    let mut packs_checked = None;
    if opts.packs {
        let (n, problems) = repo.check_packs()?;
        if !problems.is_empty() {
            for p in &problems {
                note(&format!("  {p}"));
            }
            return Err(Error::new(
                Kind::Corrupt,
                format!("{} of {n} packs damaged", problems.len()),
            ));
        }
        note(&format!("{n} packs checked"));
        packs_checked = Some(n);
    }
    repo.record_verification(&m.id)?;
    Ok(Verified { manifest: m, trailer, packs_checked })
}

/// The checks of `backup verify` on one backup, without recording anything: reassembles the
/// snapshot into a private spool under `scratch_dir` (checked against the whole sha256),
/// reads every file, then checks the trailer, bbolt structure, etcd schema and the status
/// against the manifest. The agent's scrub uses it too.
pub(crate) fn check_stored(
    repo: &Repository,
    index: &etcdguard_repo::pack::Index,
    m: &Manifest,
    scratch_dir: Option<&Path>,
    note: &mut dyn FnMut(&str),
) -> Result<TrailerCheck> {
    let parent = scratch_dir.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let (tmp, _) = spool::create(&parent)?;
    let snap_path = tmp.path().join("snapshot.db");
    note(&format!("reading backup {} from {} …", m.id, repo.location()));
    repo.restore_snapshot_to_file(index, &m.snapshot, &snap_path, 0o600)?;
    for f in &m.files {
        if let Some(part) = &f.content {
            repo.read_part(index, part, &mut std::io::sink())
                .map_err(|e| repo_error(e.context(&format!("file {}", f.path))))?;
        }
    }
    // The reassembled snapshot is the original byte for byte; check it as `snapshot verify` does.
    let file = open_snapshot(&snap_path)?;
    let db = file.db().map_err(|e| db_error(&snap_path, e))?;
    let release = || file.release_resident();
    let (trailer, report) = std::thread::scope(|s| {
        let h = s.spawn(|| file.check_trailer());
        let r = etcdguard_storage::verify(&db, Some(&release));
        (h.join().unwrap_or_else(|_| Err(std::io::Error::other("the trailer check panicked"))), r)
    });
    let trailer =
        trailer.map_err(|e| Error::failure(format!("reading the reassembled snapshot: {e}")))?;
    if let TrailerCheck::Mismatch { .. } = trailer {
        return Err(Error::new(
            Kind::ChecksumMismatch,
            format!("backup {}: the snapshot's sha256 trailer does not match its content", m.id),
        ));
    }
    if !report.is_ok() {
        let n = report.structure.problem_count + report.schema_problem_count;
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "backup {}: the snapshot has {n} problems (bbolt structure or etcd schema)",
                m.id
            ),
        ));
    }
    if let Some(st) = &report.status {
        if st.revision != m.etcd.revision || st.hash != m.etcd.hash {
            return Err(Error::new(
                Kind::Corrupt,
                format!("backup {}: status differs from the manifest (revision {} vs {}, hash {:x} vs {:x})", m.id, st.revision, m.etcd.revision, st.hash, m.etcd.hash),
            ));
        }
    }
    drop(file);
    drop(tmp);
    Ok(trailer)
}

/// What `backup restore` brings back, and where.
pub struct RestoreOptions {
    pub repo: RepoSpec,
    /// Backup id, unique prefix, or `latest`; with `at`, the full backup to start from, or
    /// empty to find the newest one before the point.
    pub id: String,
    /// Write the snapshot file here (must not exist).
    pub to_file: Option<PathBuf>,
    /// Unpack the control-plane files under this directory.
    pub files_to: Option<PathBuf>,
    /// Restore into a new data dir (or one per member) as `snapshot restore` does; the
    /// snapshot path and the hash check are filled in here.
    pub data_dir: Option<crate::restore::SnapshotRestoreOptions>,
    /// Point in time: the database as it was at this revision or time, built from the newest
    /// full backup before it (or `id`) and its continuous changes.
    pub at: Option<crate::point_in_time::At>,
}

/// What `backup restore` did, as it happens.
pub enum RestoreEvent<'a> {
    /// The snapshot file was written where the user asked (`to_file`), its sha256 checked.
    SnapshotWritten { manifest: &'a Manifest, path: &'a Path },
    /// The data dir(s) were restored from it.
    DataDirRestored(&'a crate::restore::Restored),
    /// The control-plane files were unpacked.
    FilesWritten { count: usize, dir: &'a Path },
    /// A line for the operator (the encryption key check before a data dir is restored).
    Note(&'a str),
    /// The full backup's changes were replayed up to the point in time.
    Replayed {
        plan: &'a crate::point_in_time::AtPlan,
        replayed: &'a etcdguard_storage::replay::Replayed,
    },
}

/// Brings a backup back: the snapshot file, data dirs built from it, and the files.
/// Returns the snapshot file kept (`to_file`), if any.
pub fn restore(
    opts: &RestoreOptions,
    on: &mut dyn FnMut(RestoreEvent<'_>),
) -> Result<Option<PathBuf>> {
    let mut repo = opts.repo.open_unlocked()?;
    let plan = match opts.at {
        Some(at) => {
            if repo.is_encrypted() {
                opts.repo.unlock(&mut repo)?;
            }
            Some(crate::point_in_time::plan_at(
                &repo,
                at,
                (!opts.id.is_empty()).then_some(opts.id.as_str()),
            )?)
        }
        None => None,
    };
    let m = match &plan {
        Some(p) => p.base.clone(),
        None => resolve(&repo, &opts.id)?,
    };
    let exists = |p: &Path| {
        Error::new(
            Kind::DestinationExists,
            format!("{}: already exists; nothing was overwritten", p.display()),
        )
    };
    // Refuse before downloading anything.
    if let Some(p) = &opts.to_file {
        if p.exists() {
            return Err(exists(p));
        }
    }
    let (data_dir, cluster_out) = match &opts.data_dir {
        Some(d) => (d.data_dir.as_ref(), d.cluster_out.as_ref()),
        None => (None, None),
    };
    for dir in data_dir.iter().chain(cluster_out.iter()) {
        if std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(Error::new(
                Kind::DestinationExists,
                format!("{}: exists and is not empty; nothing was overwritten", dir.display()),
            ));
        }
    }
    // Without `to_file` the snapshot goes to a hidden file next to the data dir, removed after.
    let (snapshot_path, temporary) = match (&opts.to_file, data_dir.or(cluster_out)) {
        (Some(p), _) => (p.clone(), false),
        (None, Some(dir)) => {
            let parent =
                dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            // The data dir's parent is made as `snapshot restore` makes it (private), now
            // because the snapshot is reassembled next to it.
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| Error::failure(format!("creating {}: {e}", parent.display())))?;
            }
            (
                parent.join(format!(
                    ".etcdguard-backup-{}-{:08x}.db",
                    m.id,
                    spool::rand_u64() as u32
                )),
                true,
            )
        }
        (None, None) => return Err(Error::usage("give --to-file, --data-dir or --cluster-out")),
    };
    struct Cleanup(Option<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _cleanup = Cleanup(temporary.then(|| snapshot_path.clone()));
    let index = repo.load_index()?;
    match &plan {
        Some(plan) => {
            let scratch = snapshot_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let replayed = crate::point_in_time::materialize(&repo, plan, &snapshot_path, scratch)?;
            on(RestoreEvent::Replayed { plan, replayed: &replayed });
        }
        None if temporary => {
            repo.restore_snapshot_to_scratch(&index, &m.snapshot, &snapshot_path)?
        }
        None => repo.restore_snapshot_to_file(&index, &m.snapshot, &snapshot_path, 0o600)?,
    }
    if !temporary {
        on(RestoreEvent::SnapshotWritten { manifest: &m, path: &snapshot_path });
    }
    if let Some(d) = &opts.data_dir {
        let mut d = d.clone();
        d.file = snapshot_path.clone();
        // The reassembly checked the file's sha256 (and trailer) against the backup, which
        // was verified when it was made. A point-in-time file is new: it is checked in full.
        d.skip_hash_check = plan.is_none();
        // The keys the restored cluster will have: --encryption-config, else the backup's own.
        let in_place = match &d.encryption_config {
            Some(p) => crate::keycheck::InPlace::file(p)?,
            None => crate::keycheck::InPlace::from_backup(&repo, &m)?,
        };
        let source =
            crate::restore::Source { verified: plan.is_none() && m.etcd.verified, temporary };
        let restored = crate::restore::snapshot_restore_with(&d, in_place, source)?;
        for n in &restored.notes {
            on(RestoreEvent::Note(n));
        }
        on(RestoreEvent::DataDirRestored(&restored));
    }
    if let Some(dir) = &opts.files_to {
        let count = repo.restore_files(&index, &m, dir)?;
        on(RestoreEvent::FilesWritten { count, dir });
    }
    Ok((!temporary).then_some(snapshot_path))
}

/// Removes backup `id` from the list (its data goes at the next prune); refuses the newest
/// verified backup unless `force`. Returns the id removed.
pub fn delete(repo: &RepoSpec, id: &str, force: bool) -> Result<String> {
    let repo = repo.open()?;
    let m = resolve(&repo, id)?;
    if !force {
        let (all, _) = repo.list_backups()?;
        let mut newest_verified = None;
        for b in all.iter().rev() {
            if b.etcd.verified || repo.verification(&b.id)?.is_some() {
                newest_verified = Some(b.id.clone());
                break;
            }
        }
        if newest_verified.as_deref() == Some(m.id.as_str()) {
            return Err(Error::usage(format!(
                "backup {} is the newest verified backup; pass --force to delete it anyway",
                m.id
            )));
        }
    }
    repo.delete_backup(&m.id)?;
    Ok(m.id)
}

/// Applies `policy` (if any) and frees unused data.
pub fn prune(repo: &RepoSpec, policy: Option<&Policy>, dry_run: bool) -> Result<PruneReport> {
    let repo = repo.open_unlocked()?;
    Ok(repo.prune(policy, dry_run)?)
}

/// Removes stale locks (every lock with `remove_all`), unreadable lock files and leftover
/// temporary files of `locks/`; needs no passphrase.
pub fn unlock(repo: &RepoSpec, remove_all: bool) -> Result<etcdguard_repo::lock::UnlockReport> {
    let r = repo.open()?;
    Ok(etcdguard_repo::lock::unlock(r.store().as_ref(), remove_all)?)
}

/// A backup's snapshot exported as one object, and its presigned URL.
pub struct ExportedUrl {
    pub manifest: Manifest,
    /// The object's key and the repository it is in.
    pub key: String,
    pub location: String,
    pub url: String,
}

/// Exports backup `id`'s snapshot as one object and presigns it for `expires`. A store that
/// cannot presign (a local directory) is refused before anything is uploaded.
pub fn export_url(repo: &RepoSpec, id: &str, expires: Duration) -> Result<ExportedUrl> {
    let repo = repo.open()?;
    let m = resolve(&repo, id)?;
    repo.presigned_url(&etcdguard_repo::repository::manifest_key(&m.id), expires).map_err(|e| {
        let mut f = repo_error(e);
        // The hint of a local repository: how to get the snapshot without a URL.
        f.hint = Some(format!(
            "a local repository has no URLs: use `etcdguard backup restore {} --to-file FILE`",
            m.id
        ));
        f
    })?;
    let key = repo.export_snapshot(&m)?;
    let url = repo.presigned_url(&key, expires)?;
    Ok(ExportedUrl { location: repo.location(), manifest: m, key, url })
}

/// Presigned URLs of every object backup `id` needs (manifest, index, packs).
pub fn object_urls(
    repo: &RepoSpec,
    id: &str,
    expires: Duration,
) -> Result<(Manifest, Vec<(String, String)>)> {
    let repo = repo.open()?;
    let m = resolve(&repo, id)?;
    let urls = repo.presigned_urls(&m, expires)?;
    Ok((m, urls))
}

/// The keys of a repository; with the passphrase given (and the repository encrypted) the one
/// it opens is marked current.
pub fn key_list(repo: &RepoSpec) -> Result<Vec<KeyInfo>> {
    let mut r = repo.open()?;
    // Marking the current key needs the passphrase; listing does not.
    if let Some(p) = repo.passphrase()? {
        if r.is_encrypted() {
            r.unlock(&p)?;
        }
    }
    Ok(r.list_keys()?)
}

/// Removes key `id`; returns the repository's location.
pub fn key_remove(repo: &RepoSpec, id: &str) -> Result<String> {
    let r = repo.open_unlocked()?;
    r.remove_key(id)?;
    Ok(r.location())
}

/// What `key add` and `key passwd` did, as it happens.
pub enum KeyEvent<'a> {
    Added {
        id: &'a str,
        location: &'a str,
    },
    /// The key of the old passphrase (`passwd`).
    Removed {
        id: &'a str,
        location: &'a str,
    },
}

/// `key add`, and `key passwd` (`replace`): the new key is stored and proven to open before
/// the old one goes.
pub fn key_add(
    repo: &RepoSpec,
    new_passphrase: &PassphraseSource,
    replace: bool,
    on: &mut dyn FnMut(KeyEvent<'_>),
) -> Result<()> {
    let r = repo.open_unlocked()?;
    let Some(new) = new_passphrase()? else {
        return Err(Error::usage(
            "no new passphrase: give --new-passphrase-file FILE or set ETCDGUARD_NEW_PASSPHRASE",
        ));
    };
    if repo.passphrase()?.is_some_and(|current| current.bytes() == new.bytes()) {
        return Err(Error::usage("the new passphrase is the current one"));
    }
    let id = r.add_key(&new, Default::default())?;
    let location = r.location();
    on(KeyEvent::Added { id: &id, location: &location });
    if replace {
        let Some(old) = r.current_key().map(str::to_string) else {
            return Err(Error::failure(format!(
                "{location}: not encrypted, so it has no passphrase to change"
            )));
        };
        let mut reopened = repo.open()?;
        reopened.unlock(&new)?;
        reopened.remove_key(&old)?;
        on(KeyEvent::Removed { id: &old, location: &location });
    }
    Ok(())
}

/// Manifest helpers the command line shows.
pub fn file_count(m: &Manifest) -> usize {
    m.files.iter().filter(|f| f.kind == FileKind::File).count()
}
