//! `snapshot restore`: turns a snapshot into the data dir(s) of a new etcd cluster.
//!
//! Every member gets `member/snap/db` (the snapshot's bbolt image with the new membership,
//! consistent index and term committed into it), `member/snap/<term>-<index>.snap` (raft
//! snapshot with the v2 membership store) and `member/wal/…wal` (membership as committed raft
//! entries). The ids are derived from the flags exactly as etcd derives them, so members
//! restored separately agree with each other and with `etcdutl snapshot restore`.
//!
//! Safety rules, in order: flags and destinations are checked first, then the cheap facts of
//! the snapshot (length, trailer presence, meta pages), all before anything is written. The
//! snapshot is then copied into a hidden temporary directory next to the destination while
//! its sha256 trailer and bbolt structure are checked in parallel; a bad snapshot makes the
//! temp dir go away and nothing is published. The copy is committed, fsynced, re-read and
//! checked (bbolt structure, and the values etcd requires: consistent index = WAL commit,
//! term = WAL term), and only then renamed into place. A crash leaves at most a hidden
//! `.<name>.etcdguard-restore-*` dir, never a half-written data dir that etcd would start from.
//!
//! ## How it works
//!
//! `restore/` writes the data dirs of a new cluster from a snapshot (`snapshot restore`):
//! `membership` parses peer URLs and derives member and cluster ids with etcd's SHA-1 rules;
//! `wal` and `snapfile` encode the member's WAL and raft `.snap` (byte-identical to etcdutl
//! 3.5's, 3.6's or 3.7's: `Flavor`, the release that wrote the snapshot or `--etcd-version`);
//! `db` copies the bbolt image with the kernel's copy path and applies one small copy-on-write
//! commit (new `members`, `members_removed`, `meta`, and the tail of `key` for a revision bump)
//! using the page writer in `crates/bolt/src/write.rs`, so a multi-GiB snapshot is never
//! loaded. `mod.rs` orders the work for safety: check flags, destinations and the snapshot's
//! meta pages before writing anything; copy into a hidden temp dir next to the target while the
//! sha256 and the structure are checked in parallel (a bad snapshot discards the temp dir);
//! commit, re-read and self-check, fsync, rename into place. Formats:
//! `docs/formats/wal-and-snap.md`.

pub mod db;
pub mod membership;
pub mod snapfile;
pub mod wal;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use etcdguard_bolt::{Db, OpenError, WalkReport};

pub use membership::{Cluster, ConfigError, Member};
pub use wal::Flavor;

use crate::keys::Revision;
use crate::snapshot_file::{Layout, SnapshotFile, TrailerCheck};

/// Restore options besides the cluster and the destination.
#[derive(Clone)]
pub struct Options {
    pub skip_hash_check: bool,
    /// `--bump-revision` (0 = none).
    pub bump_revision: u64,
    pub mark_compacted: bool,
    pub flavor: Flavor,
    /// The caller proved the snapshot's bytes equal a snapshot that passed the full check
    /// (a backup reassembled with the file's sha256, which covers every chunk, matching a verified
    /// backup): the source's trailer hash and walk are not repeated. The self-check still
    /// walks the result.
    pub source_verified: bool,
    /// A check that may refuse the restore before it is published (see [`Gate`]).
    pub gate: Option<Arc<Mutex<dyn Gate>>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            skip_hash_check: false,
            bump_revision: 0,
            mark_compacted: false,
            flavor: Flavor::V3_5,
            source_verified: false,
            gate: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("skip_hash_check", &self.skip_hash_check)
            .field("bump_revision", &self.bump_revision)
            .field("mark_compacted", &self.mark_compacted)
            .field("flavor", &self.flavor)
            .field("source_verified", &self.source_verified)
            .field("gate", &self.gate.is_some())
            .finish()
    }
}

/// A check of the snapshot's data that can refuse a restore (the encryption key check). It
/// is fed every revision of the restored `key` bucket during the self-check's walk, so it
/// costs no pass of its own, and asked for its verdict before anything is put in place: a
/// refusal leaves the destination as it was.
pub trait Gate: Send {
    fn observe(&mut self, revision: &Revision<'_>);
    /// An entry of the `key` bucket does not decode; no revision after it is observed.
    fn undecodable(&mut self, why: &str);
    /// `Err(reason)` refuses the restore.
    fn verdict(&mut self) -> Result<(), String>;
}

/// Where the result goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// One member, as `etcdutl snapshot restore` does.
    Member { name: String, data_dir: PathBuf, wal_dir: Option<PathBuf> },
    /// Every member of the cluster, each in `<dir>/<name>/`.
    Cluster { dir: PathBuf },
}

/// A restored member.
#[derive(Debug, Clone)]
pub struct RestoredMember {
    pub member: Member,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Report {
    pub trailer: TrailerCheck,
    /// Newest revision in the snapshot.
    pub source_revision: u64,
    /// Revision the restored cluster starts at (differs with `--bump-revision`).
    pub revision: u64,
    pub revision_keys: u64,
    pub db_bytes: u64,
    pub cluster: Cluster,
    pub members: Vec<RestoredMember>,
    /// Wall time of each phase, for the curious and for benchmarks.
    pub timings: Vec<(&'static str, std::time::Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    DestinationExists(String),
    #[error("{}: snapshot has no sha256 trailer (is it a copied member/snap/db?); pass --skip-hash-check to restore it without one", .0.display())]
    MissingHash(PathBuf),
    #[error("{}: sha256 mismatch: the file was changed or damaged after the snapshot was taken (trailer {}, content {})", .path.display(), crate::snapshot_file::hex(.expected), crate::snapshot_file::hex(.actual))]
    HashMismatch { path: PathBuf, expected: [u8; 32], actual: [u8; 32] },
    #[error("{}: {why}", .path.display())]
    Truncated { path: PathBuf, why: String },
    #[error("{}: {err}", .path.display())]
    Open { path: PathBuf, err: OpenError },
    #[error("{}: integrity check failed, {} problem{} found (nothing was written):\n  {}", .path.display(), .count, if *.count == 1 { "" } else { "s" }, .problems.join("\n  "))]
    Corrupt { path: PathBuf, count: usize, problems: Vec<String> },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Rewrite(String),
    #[error("self-check of the restored data dir failed (nothing was put in place): {0}")]
    SelfCheck(String),
    #[error("{0}; nothing was put in place")]
    Refused(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// Checks a destination directory: absent, or an empty directory.
fn check_empty_dir(path: &Path, flag: &str) -> Result<(), RestoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("{flag} {}", path.display()))(e)),
        Ok(m) if !m.is_dir() => Err(RestoreError::DestinationExists(format!(
            "{flag} {} exists and is not a directory; nothing was changed",
            path.display()
        ))),
        Ok(_) => {
            let mut entries =
                fs::read_dir(path).map_err(io_err(format!("reading {}", path.display())))?;
            if entries.next().is_some() {
                return Err(RestoreError::DestinationExists(format!(
                    "{flag} {} is not empty; refusing to overwrite it (nothing was changed). Move it aside \
                     (e.g. mv {0} {0}.old) or restore into a new directory",
                    path.display()
                )));
            }
            Ok(())
        }
    }
}

fn check_absent(path: &Path, flag: &str) -> Result<(), RestoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("{flag} {}", path.display()))(e)),
        Ok(_) => Err(RestoreError::DestinationExists(format!(
            "{flag} {} exists; refusing to overwrite it (nothing was changed)",
            path.display()
        ))),
    }
}

fn safe_dir_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn mkdir_private(path: &Path) -> Result<(), RestoreError> {
    DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(path)
        .map_err(io_err(format!("creating {}", path.display())))
}

fn sync_dir(path: &Path) -> Result<(), RestoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io_err(format!("fsync {}", path.display())))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", path.display())))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden temp dir next to `target` (same file system, so the final rename is atomic).
fn temp_next_to(target: &Path) -> Result<tempfile::TempDir, RestoreError> {
    let parent = parent_of(target);
    mkdir_private(&parent)?;
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let dir = tempfile::Builder::new()
        .prefix(&format!(".{base}.etcdguard-restore-"))
        .tempdir_in(&parent)
        .map_err(io_err(format!("creating a temporary directory in {}", parent.display())))?;
    // etcd expects its data dir to be private (0700) and warns otherwise.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.path().display())))?;
    Ok(dir)
}

/// Renames `from` onto `to` (absent or an empty directory) and makes the rename durable.
fn put_in_place(from: &Path, to: &Path) -> Result<(), RestoreError> {
    fs::rename(from, to).map_err(io_err(format!(
        "renaming {} to {}",
        from.display(),
        to.display()
    )))?;
    sync_dir(&parent_of(to))
}

/// Validates the snapshot: trailer (unless skipped) and bbolt structure, in parallel.
/// The checks that need no reading of the whole file: length, meta pages, trailer presence.
fn precheck(snapshot: &SnapshotFile, opts: &Options) -> Result<(), RestoreError> {
    let path = snapshot.path().to_path_buf();
    if let Layout::Ragged { remainder } = snapshot.layout() {
        return Err(RestoreError::Truncated {
            path,
            why: format!(
                "truncated: {} bytes long, {remainder} bytes past a 512-byte boundary (neither whole pages nor \
                 pages plus a sha256 trailer)",
                snapshot.len()
            ),
        });
    }
    // What the file is comes before what it lacks: a file of zeros or a tarball is "not a
    // bbolt database", as `snapshot status` says, not "no sha256 trailer".
    snapshot.db().map_err(|err| RestoreError::Open { path: path.clone(), err })?;
    if snapshot.layout() == Layout::Plain && !opts.skip_hash_check {
        return Err(RestoreError::MissingHash(path));
    }
    Ok(())
}

/// Checks the whole snapshot: sha256 trailer (unless skipped) and bbolt structure, in
/// parallel with `alongside` (the copy into the unpublished temp dir, which is thrown away
/// if the check fails). Returns the check's verdict and `alongside`'s result.
fn check_source<T: Send>(
    snapshot: &SnapshotFile,
    opts: &Options,
    alongside: impl FnOnce() -> T + Send,
) -> (Result<(TrailerCheck, db::Facts), RestoreError>, T) {
    let path = snapshot.path().to_path_buf();
    let database = match snapshot.db() {
        Ok(d) => d,
        Err(err) => return (Err(RestoreError::Open { path, err }), alongside()),
    };
    let release = || snapshot.release_resident();
    let (trailer, (facts, report), side) = std::thread::scope(|s| {
        let hashing = (!opts.skip_hash_check).then(|| s.spawn(|| snapshot.check_trailer()));
        let side = s.spawn(alongside);
        let walked = db::walk_facts(&database, Some(&release));
        let trailer = match hashing {
            Some(h) => h.join().unwrap_or_else(|_| Err(io::Error::other("hashing thread failed"))),
            None => Ok(TrailerCheck::Skipped),
        };
        (trailer, walked, side.join().expect("copy thread panicked"))
    });
    (verdict(path, trailer, facts, report), side)
}

fn verdict(
    path: PathBuf,
    trailer: io::Result<TrailerCheck>,
    facts: db::Facts,
    report: WalkReport,
) -> Result<(TrailerCheck, db::Facts), RestoreError> {
    let trailer = trailer.map_err(io_err(format!("reading {}", path.display())))?;
    if let TrailerCheck::Mismatch { expected, actual } = trailer {
        return Err(RestoreError::HashMismatch { path, expected, actual });
    }
    if !report.is_ok() {
        return Err(corrupt(path, &report));
    }
    if !facts.buckets.iter().any(|b| b.as_bytes() == db::META) {
        return Err(RestoreError::Corrupt {
            path,
            count: 1,
            problems: vec!["no \"meta\" bucket: this bbolt file is not an etcd database".into()],
        });
    }
    Ok((trailer, facts))
}

fn corrupt(path: PathBuf, report: &WalkReport) -> RestoreError {
    RestoreError::Corrupt {
        path,
        count: report.problem_count,
        problems: report.problems.iter().take(10).map(|p| p.to_string()).collect(),
    }
}

/// Re-reads the committed db and runs the checks etcd (and `ETCD_VERIFY=all` etcdutl) would:
/// sound bbolt structure, consistent index = WAL commit = N, term = WAL term = 1, members as
/// written, bump marker and scheduled compaction as asked.
/// `gate` sees every revision in the same walk; its refusal comes after the checks.
fn self_check(
    path: &Path,
    cluster: &Cluster,
    bumped_to: Option<u64>,
    gate: Option<&Mutex<dyn Gate>>,
) -> Result<db::Facts, RestoreError> {
    let map = etcdguard_bolt::MappedFile::open(path)
        .map_err(|e| RestoreError::SelfCheck(e.to_string()))?;
    let database = Db::open(map.bytes())
        .map_err(|e| RestoreError::SelfCheck(format!("{}: {e}", path.display())))?;
    let release = || map.release_resident();
    let mut gate = gate.map(|g| g.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let gated = gate.is_some();
    let (facts, report, undecodable) = {
        let mut feed = |r: Revision<'_>| {
            if let Some(g) = gate.as_mut() {
                g.observe(&r);
            }
        };
        let mut revisions = crate::keys::RevisionVisitor::new(&mut feed);
        let also: Option<&mut dyn etcdguard_bolt::Visitor<'_>> =
            if gated { Some(&mut revisions) } else { None };
        let (facts, report) = db::walk_facts_and(&database, Some(&release), also);
        let undecodable = revisions.first_error().map(str::to_string);
        (facts, report, undecodable)
    };
    let fail = |m: String| Err(RestoreError::SelfCheck(m));
    if !report.is_ok() {
        let first: Vec<String> = report.problems.iter().take(5).map(|p| p.to_string()).collect();
        return fail(format!(
            "the rewritten database has {} structural problems: {}",
            report.problem_count,
            first.join("; ")
        ));
    }
    let n = cluster.members.len() as u64;
    let (wal_commit, wal_term, wal_snapshot_index) = (n, 1, n);
    match facts.meta_u64(db::CONSISTENT_INDEX) {
        Some(ci) if ci == wal_commit && ci >= wal_snapshot_index => {}
        other => {
            return fail(format!(
                "consistent index is {other:?}, expected {wal_commit} (the WAL's commit)"
            ))
        }
    }
    if facts.meta_u64(db::TERM) != Some(wal_term) {
        return fail(format!(
            "term is {:?}, expected {wal_term} (the WAL's term)",
            facts.meta_u64(db::TERM)
        ));
    }
    let expected: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
        cluster.members.iter().map(|m| (m.hex_id().into_bytes(), m.json().into_bytes())).collect();
    if facts.members != expected || facts.members_removed != 0 {
        return fail("the members bucket does not hold exactly the restored cluster".into());
    }
    if let Some(target) = bumped_to {
        if facts.revision != target
            || facts.meta.get(db::SCHEDULED_COMPACT) != Some(&db::revision_key(target, 0))
        {
            return fail(format!(
                "revision bump to {target} not found (newest revision {})",
                facts.revision
            ));
        }
    }
    if let Some(g) = gate.as_mut() {
        if let Some(why) = &undecodable {
            g.undecodable(why);
        }
        g.verdict().map_err(RestoreError::Refused)?;
    }
    Ok(facts)
}

/// Renames `src` to `dst` and cuts it to the image (`len` bytes, the trailer dropped);
/// copies when the two are on different filesystems. Not fsynced: see `build_db`.
fn move_image(src: &Path, len: u64, dst: &Path) -> io::Result<()> {
    match fs::rename(src, dst) {
        Ok(()) => OpenOptions::new().write(true).open(dst)?.set_len(len),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            db::copy_image_unsynced(src, len, dst)?;
            let _ = fs::remove_file(src);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Writes the `.snap` and WAL of one member into an (unpublished) member dir.
fn write_raft_files(
    member_dir: &Path,
    wal_dir: &Path,
    cluster: &Cluster,
    local: &Member,
    flavor: Flavor,
) -> Result<(), RestoreError> {
    let snap_dir = member_dir.join("snap");
    write_private(
        &snap_dir.join(snapfile::file_name(cluster)),
        &snapfile::encode(cluster, flavor),
    )?;
    sync_dir(&snap_dir)?;
    mkdir_private(wal_dir)?;
    let wal_path = wal_dir.join(wal::FIRST_SEGMENT_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&wal_path)
        .map_err(io_err(format!("creating {}", wal_path.display())))?;
    wal::write_segment(&file, &wal::encode(cluster, local.id, flavor))
        .map_err(io_err(format!("writing {}", wal_path.display())))?;
    sync_dir(wal_dir)?;
    sync_dir(member_dir)
}

/// Restores `snapshot` for `cluster` into `dest`.
pub fn restore(
    snapshot: &SnapshotFile,
    cluster: &Cluster,
    dest: &Destination,
    opts: &Options,
) -> Result<Report, RestoreError> {
    restore_impl(snapshot, cluster, dest, opts, false)
}

/// [`restore`] of a snapshot file that is a private temporary copy (a restore from a backup
/// repository, reassembled next to the destination): once checked, the file is moved into
/// place as the first member's db and its trailer cut off, instead of being copied. It is
/// gone afterwards whatever the outcome. On another filesystem it is copied as usual.
pub fn restore_consuming(
    snapshot: &SnapshotFile,
    cluster: &Cluster,
    dest: &Destination,
    opts: &Options,
) -> Result<Report, RestoreError> {
    restore_impl(snapshot, cluster, dest, opts, true)
}

fn restore_impl(
    snapshot: &SnapshotFile,
    cluster: &Cluster,
    dest: &Destination,
    opts: &Options,
    consume: bool,
) -> Result<Report, RestoreError> {
    if (opts.bump_revision > 0) != opts.mark_compacted {
        return Err(RestoreError::Config(
            "--mark-compacted required if --bump-revision > 0 (and --mark-compacted needs a --bump-revision); \
             give both, e.g. --bump-revision 1000000000 --mark-compacted"
                .into(),
        ));
    }
    // 1. Destinations (nothing is touched when they are in the way).
    match dest {
        Destination::Member { name, data_dir, wal_dir } => {
            if cluster.member(name).is_none() {
                return Err(RestoreError::Config(format!(
                    "couldn't find local name {name:?} in the initial cluster configuration"
                )));
            }
            check_empty_dir(data_dir, "data-dir")?;
            if let Some(w) = wal_dir {
                check_absent(w, "wal-dir")?;
            }
        }
        Destination::Cluster { dir } => {
            check_empty_dir(dir, "output directory")?;
            if let Some(m) = cluster.members.iter().find(|m| !safe_dir_name(&m.name)) {
                return Err(RestoreError::Config(format!(
                    "member name {:?} cannot be used as a directory name; use names without '/'",
                    m.name
                )));
            }
        }
    }
    // 2. The snapshot's cheap checks, before anything is written.
    let timings = std::cell::RefCell::new(Vec::new());
    let started = std::time::Instant::now();
    precheck(snapshot, opts)?;
    let image_len = snapshot.image().len() as u64;
    let bump = (opts.bump_revision > 0).then_some(opts.bump_revision);
    let edit = db::Edit { cluster, consistent_index: cluster.members.len() as u64, term: 1, bump };

    // 3. Build in temp dirs, check, publish.
    // The snapshot is checked (sha256, structure) while it is copied into the unpublished
    // temp dir; a bad snapshot makes the temp dir go away and nothing is published.
    let source_facts = std::cell::RefCell::new(None);
    // A verified source needs no second look, unless a bump is to change its key bucket.
    let trust_source = opts.source_verified && bump.is_none();
    let build_db = |member_dir: &Path| -> Result<(db::Committed, db::Facts), RestoreError> {
        let snap_dir = member_dir.join("snap");
        mkdir_private(&snap_dir)?;
        let db_path = snap_dir.join("db");
        let t = std::time::Instant::now();
        if consume {
            if !trust_source {
                let (checked, ()) = check_source(snapshot, opts, || ());
                *source_facts.borrow_mut() = Some(checked?);
            }
            move_image(snapshot.path(), image_len, &db_path)
                .map_err(io_err(format!("moving the snapshot to {}", db_path.display())))?;
        } else {
            let copy = || db::copy_image_unsynced(snapshot.path(), image_len, &db_path);
            let copied = if trust_source {
                copy()
            } else {
                let (checked, copied) = check_source(snapshot, opts, copy);
                *source_facts.borrow_mut() = Some(checked?);
                copied
            };
            copied.map_err(io_err(format!("copying the snapshot to {}", db_path.display())))?;
        }
        let copied = t.elapsed();
        let committed = db::commit_unsynced(&db_path, &edit).map_err(|e| match e {
            e @ db::DbError::BumpTooLarge { .. } => RestoreError::Config(e.to_string()),
            e => RestoreError::Rewrite(e.to_string()),
        })?;
        let committed_at = t.elapsed();
        // The db is written to disk while the self-check reads it back from the page cache;
        // it is put in place only once both are done (nothing before is in use).
        let (synced, facts) = std::thread::scope(|s| {
            let syncing = s.spawn(|| File::open(&db_path).and_then(|f| f.sync_all()));
            let facts = self_check(&db_path, cluster, committed.bumped_to, opts.gate.as_deref());
            (
                syncing
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked"))),
                facts,
            )
        });
        let facts = facts?;
        synced.map_err(io_err(format!("writing {} to disk", db_path.display())))?;
        if trust_source {
            // Nothing but the members and meta buckets changed: the key bucket is the source's.
            let trailer = match snapshot.layout() {
                Layout::WithTrailer { .. } => TrailerCheck::Verified,
                _ => TrailerCheck::Absent,
            };
            *source_facts.borrow_mut() = Some((trailer, facts.clone()));
        }
        timings.borrow_mut().extend([
            ("check and copy snapshot", copied),
            ("commit", committed_at - copied),
            ("self-check", t.elapsed() - committed_at),
        ]);
        Ok((committed, facts))
    };
    let mut report = Report {
        trailer: TrailerCheck::Skipped,
        source_revision: 0,
        revision: 0,
        revision_keys: 0,
        db_bytes: 0,
        cluster: cluster.clone(),
        members: Vec::new(),
        timings: Vec::new(),
    };
    match dest {
        Destination::Member { name, data_dir, wal_dir } => {
            let local = cluster.member(name).expect("checked above").clone();
            let data_tmp = temp_next_to(data_dir)?;
            let member_dir = data_tmp.path().join("member");
            let (committed, facts) = build_db(&member_dir)?;
            report.revision = facts.revision;
            report.db_bytes =
                committed.pages_after * snapshot.db().map(|d| d.page_size() as u64).unwrap_or(4096);
            // The WAL goes inside the temp data dir unless --wal-dir points elsewhere.
            let default_wal = data_dir.join("member").join("wal");
            let wal_target = wal_dir.clone().filter(|w| *w != default_wal);
            let inside = wal_target
                .as_ref()
                .and_then(|w| w.strip_prefix(data_dir).ok().map(Path::to_path_buf));
            let wal_tmp = match (&wal_target, &inside) {
                (Some(w), None) => Some(temp_next_to(w)?),
                _ => None,
            };
            let wal_build_dir = match (&wal_tmp, &inside) {
                (Some(t), _) => t.path().join("wal"),
                (None, Some(rel)) => data_tmp.path().join(rel),
                (None, None) => member_dir.join("wal"),
            };
            write_raft_files(&member_dir, &wal_build_dir, cluster, &local, opts.flavor)?;
            sync_dir(data_tmp.path())?;
            // With a separate --wal-dir there are two renames; the WAL goes first and is taken
            // back if the data dir cannot be put in place. (Only a crash between the two
            // renames can leave the WAL alone; a re-run then refuses the existing wal-dir.)
            let mut placed_wal = None;
            if let (Some(t), Some(w)) = (wal_tmp, &wal_target) {
                put_in_place(&t.path().join("wal"), w)?;
                drop(t);
                placed_wal = Some(w.clone());
            }
            let data_tmp = data_tmp.keep();
            if let Err(e) = put_in_place(&data_tmp, data_dir) {
                let _ = fs::remove_dir_all(&data_tmp);
                if let Some(w) = placed_wal {
                    let _ = fs::remove_dir_all(w);
                }
                return Err(e);
            }
            let wal_final = wal_target.unwrap_or(default_wal);
            report.members.push(RestoredMember {
                member: local,
                data_dir: data_dir.clone(),
                wal_dir: wal_final,
            });
        }
        Destination::Cluster { dir } => {
            let tmp = temp_next_to(dir)?;
            let mut first_db: Option<PathBuf> = None;
            for m in &cluster.members {
                let member_dir = tmp.path().join(&m.name).join("member");
                match &first_db {
                    None => {
                        let (committed, facts) = build_db(&member_dir)?;
                        report.revision = facts.revision;
                        report.db_bytes = committed.pages_after
                            * snapshot.db().map(|d| d.page_size() as u64).unwrap_or(4096);
                        first_db = Some(member_dir.join("snap").join("db"));
                    }
                    Some(src) => {
                        // Every member's db is identical: copy the checked one.
                        let snap_dir = member_dir.join("snap");
                        mkdir_private(&snap_dir)?;
                        let len = fs::metadata(src)
                            .map_err(io_err(format!("reading {}", src.display())))?
                            .len();
                        db::copy_image(src, len, &snap_dir.join("db")).map_err(io_err(format!(
                            "copying the database to {}",
                            snap_dir.display()
                        )))?;
                    }
                }
                write_raft_files(&member_dir, &member_dir.join("wal"), cluster, m, opts.flavor)?;
                sync_dir(&tmp.path().join(&m.name))?;
                report.members.push(RestoredMember {
                    member: m.clone(),
                    data_dir: dir.join(&m.name),
                    wal_dir: dir.join(&m.name).join("member").join("wal"),
                });
            }
            sync_dir(tmp.path())?;
            let tmp = tmp.keep();
            if let Err(e) = put_in_place(&tmp, dir) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
    }
    timings.borrow_mut().push(("total", started.elapsed()));
    report.timings = timings.into_inner();
    if let Some((trailer, source)) = source_facts.into_inner() {
        report.trailer = trailer;
        report.source_revision = source.revision;
        report.revision_keys = source.revision_keys;
    }
    Ok(report)
}
