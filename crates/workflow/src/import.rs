//! `backup import`: backups other tools made, brought into a repository with their original
//! times: OpenShift's `cluster-backup.sh` directories, plain `etcdctl snapshot save` files,
//! k3s/RKE2 `etcd-snapshot` files (plain or zipped) and etcd-druid full snapshots (plain,
//! gzip or zlib). Each is unpacked into a private spool if it must be, then checked and
//! stored exactly as `backup create --from-file` does.
//!
//! ## How it works
//!
//! `import` is `backup import`: `discover` tells each path's layout (OpenShift's
//! `cluster-backup.sh` pair, a plain etcdctl file, k3s/RKE2 `etcd-snapshot` files, etcd-druid
//! full snapshots) and the original time from names (or the mtime, or `--created`), and keeps
//! what the format says as labels; a packed snapshot (zip, gzip, zlib) and cluster-backup.sh's
//! tarball are unpacked into a spool; a snapshot whose sha256 and time a stored manifest
//! already has is skipped; the rest goes through `backup::create_imported`, the `--from-file`
//! path with an `Original` (time, certificate dir, and the archive to name as the files'
//! source), so the checks and the order of writes are the same as `backup create`'s.
//! `openshift` is `backup restore --format openshift`: it reads the node's version
//! (machine-config daemon's `currentconfig` annotation) and the backup's (the snapshot's
//! ClusterVersion, through `storage::keys::newest_live`) before writing, refuses another
//! z-stream with `Kind::Refused`, warns for a backup of the cluster's first 24 hours, and
//! writes cluster-backup.sh's two files (tarball built with the `tar` crate from the backup's
//! newest static-pod-resources revisions) by link into place. `node restore --layout k3s|rke2`
//! (`rancher`) restores what this imports, with the token it kept.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use etcdguard_repo::manifest::{Import, Manifest, Source};

use crate::backup::{create_imported, CreateOptions, Original};
use crate::error::{repo_error, Error, Kind, Result};
use crate::openshift::{cluster_version, newest_revision, ClusterVersion};
use crate::spool;
use crate::stop::Stop;

/// The layouts `backup import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Told from each path's name and place.
    Auto,
    /// `cluster-backup.sh`: `snapshot_<time>.db` + `static_kuberesources_<time>.tar.gz`.
    OpenShift,
    /// A plain `etcdctl snapshot save` (or `etcdguard snapshot save`) file.
    Etcdctl,
    /// `k3s etcd-snapshot`: `<name>-<node>-<unix time>`, or the same `.zip`.
    K3s,
    /// RKE2's, which are k3s's.
    Rke2,
    /// etcd-backup-restore (etcd-druid): `Full-<start>-<last>-<unix time>[.gz|.zlib]`.
    Druid,
}

impl Format {
    /// The name the manifest records (`source.import.format`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::OpenShift => "openshift",
            Format::Etcdctl => "etcdctl",
            Format::K3s => "k3s",
            Format::Rke2 => "rke2",
            Format::Druid => "etcd-druid",
        }
    }
}

/// How a found snapshot file is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Plain,
    /// One entry in a zip archive (k3s `--etcd-snapshot-compress`).
    Zip,
    Gzip,
    Zlib,
}

impl Packing {
    pub fn name(self) -> &'static str {
        match self {
            Packing::Plain => "plain",
            Packing::Zip => "zip",
            Packing::Gzip => "gzip",
            Packing::Zlib => "zlib",
        }
    }
}

/// One backup found among the paths given.
#[derive(Clone, Debug)]
pub struct Found {
    pub format: Format,
    /// The snapshot file as found (packed or not).
    pub snapshot: PathBuf,
    pub packing: Packing,
    /// The original backup's time, and what it was read from.
    pub created: DateTime<Utc>,
    pub time_from: String,
    /// OpenShift: the static pod resources beside the snapshot.
    pub resources: Option<PathBuf>,
    /// What the format says about the backup, kept as labels.
    pub labels: BTreeMap<String, String>,
}

/// What `backup import` stores, and where from.
pub struct ImportOptions {
    /// Repository, labels, cluster, scratch dir (for unpacking), `--skip-verify`, chunk size;
    /// `from_file` and the live-cluster fields are not used.
    pub create: CreateOptions,
    pub paths: Vec<PathBuf>,
    pub format: Format,
    /// The original time, when the name and the file do not tell it (one backup only).
    pub created: Option<DateTime<Utc>>,
}

/// What `backup import` did, as it happens.
pub enum ImportEvent<'a> {
    Imported {
        found: &'a Found,
        manifest: &'a Manifest,
    },
    /// The same snapshot (sha256) with the same time is in the repository already.
    Skipped {
        found: &'a Found,
        existing: &'a str,
    },
    Note(&'a str),
}

/// Imports every backup found in `opts.paths`, oldest first. Returns how many were stored
/// and how many were skipped as already there.
pub fn import(opts: &ImportOptions, on: &mut dyn FnMut(ImportEvent<'_>)) -> Result<(usize, usize)> {
    let mut found = Vec::new();
    for p in &opts.paths {
        found.extend(discover(p, opts.format, &mut |n| on(ImportEvent::Note(n)))?);
    }
    if found.is_empty() {
        return Err(Error::new(Kind::NotFound, "no backup found in the paths given"));
    }
    if let Some(t) = opts.created {
        if found.len() != 1 {
            return Err(Error::usage(format!("--created names one backup's time, but {} backups were found; import them one at a time", found.len())));
        }
        found[0].created = t;
        found[0].time_from = "--created".into();
    }
    found.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.snapshot.cmp(&b.snapshot)));
    let mut known = stored_snapshots(opts)?;
    let parent = opts.create.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (mut stored, mut skipped) = (0, 0);
    for f in &found {
        let (spool, swept) = spool::create(&parent)?;
        if !swept.is_empty() {
            on(ImportEvent::Note(&format!(
                "removed {} scratch dir(s) of killed runs from {}",
                swept.len(),
                parent.display()
            )));
        }
        let snapshot = unpack_snapshot(f, spool.path())?;
        let sha = sha256_of(&snapshot)?;
        if let Some((_, id)) = known.iter().find(|(k, _)| *k == (sha.clone(), f.created)) {
            skipped += 1;
            on(ImportEvent::Skipped { found: f, existing: id });
            continue;
        }
        let mut create = opts.create.clone();
        let mut labels: BTreeMap<String, String> = f.labels.clone();
        if f.format == Format::OpenShift {
            // The version `backup list` shows and the z-stream a restore must match; a snapshot
            // too damaged to read is reported by the check that follows.
            if let Ok(Some(ClusterVersion { version: Some(v), .. })) = cluster_version(&snapshot) {
                labels.insert("openshift.version".into(), v);
            }
        }
        // The operator's labels win over what the format says.
        labels.extend(opts.create.labels.iter().cloned());
        create.labels = labels.into_iter().collect();
        let unpacked = spool.path().join("resources");
        let mut certificates = None;
        if let Some(tarball) = &f.resources {
            unpack_tarball(tarball, &unpacked)?;
            let resources = unpacked.join("static-pod-resources");
            if resources.is_dir() {
                create.files.push(resources.clone());
                if create.encryption_config.is_none() {
                    create.encryption_config = newest_encryption_config(&resources);
                }
                certificates = Some(resources);
            }
        }
        let source = Source::File {
            path: std::fs::canonicalize(&f.snapshot)
                .unwrap_or_else(|_| f.snapshot.clone())
                .display()
                .to_string(),
            import: Some(Import { format: f.format.name().into(), imported: Utc::now() }),
        };
        let archive =
            f.resources.as_ref().map(|t| (unpacked.as_path(), format!("{}:", t.display())));
        let original = Original {
            created: f.created,
            certificates: certificates.as_deref(),
            unpacked: archive,
        };
        let manifest = create_imported(
            &create,
            &snapshot,
            source,
            &original,
            &mut |n| on(ImportEvent::Note(n)),
            &Stop::never(),
        )?;
        drop(spool);
        known.push(((manifest.snapshot.sha256.clone(), manifest.created), manifest.id.clone()));
        stored += 1;
        on(ImportEvent::Imported { found: f, manifest: &manifest });
    }
    Ok((stored, skipped))
}

/// A stored backup's snapshot sha256 and time, and its id.
type Stored = ((String, DateTime<Utc>), String);

/// (sha256, time) of every backup in the repository, with its id; none when it does not exist yet.
fn stored_snapshots(opts: &ImportOptions) -> Result<Vec<Stored>> {
    let store =
        etcdguard_repo::open_url(&opts.create.repo.url).map_err(|e| repo_error(e.into()))?;
    let mut repo = match etcdguard_repo::Repository::open(store) {
        Ok(r) => r,
        Err(etcdguard_repo::RepoError::NotARepository(_)) => return Ok(Vec::new()),
        Err(e) => return Err(repo_error(e)),
    };
    if repo.is_encrypted() {
        // The snapshots' sha256 are sealed: the passphrase opens them (and `create` needs it anyway).
        opts.create.repo.unlock(&mut repo)?;
    }
    let (all, _) = repo.list_backups()?;
    Ok(all.into_iter().map(|m| ((m.snapshot.sha256.clone(), m.created), m.id)).collect())
}

fn sha256_of(path: &Path) -> Result<String> {
    etcdguard_repo::id::file_sha256(path)
        .map_err(|e| Error::failure(format!("{}: {e}", path.display())))
}

// -------------------------------------------------------------------------------------
// Finding backups

/// The backups at `path`: a file, or a directory of them.
pub fn discover(path: &Path, format: Format, note: &mut dyn FnMut(&str)) -> Result<Vec<Found>> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(Kind::NotFound, format!("{}: no such file or directory", path.display()))
        }
        std::io::ErrorKind::PermissionDenied => {
            Error::new(Kind::PermissionDenied, format!("{}: {e}", path.display()))
        }
        _ => Error::failure(format!("{}: {e}", path.display())),
    })?;
    if meta.is_dir() {
        return discover_dir(path, format, 0, note);
    }
    if !meta.is_file() {
        return Err(Error::usage(format!("{}: not a regular file or a directory", path.display())));
    }
    let name = file_name(path);
    let format = match format {
        Format::Auto => guess(path, &name),
        f => f,
    };
    match format {
        Format::OpenShift => {
            let Some((stamp, _)) = openshift_stamp(&name) else {
                return Err(Error::usage(format!(
                    "{}: not a cluster-backup.sh file (snapshot_<YYYY-MM-DD_HHMMSS>.db or static_kuberesources_<…>.tar.gz); give the directory, or --format etcdctl to import a snapshot alone",
                    path.display()
                )));
            };
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Ok(vec![openshift_pair(dir, &stamp, note)?])
        }
        Format::Druid => Ok(vec![druid(path, &name)?]),
        Format::K3s | Format::Rke2 => Ok(vec![k3s(path, &name, format, note)?]),
        Format::Etcdctl | Format::Auto => Ok(vec![etcdctl(path, &name)?]),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The format a file's name and place suggest.
fn guess(path: &Path, name: &str) -> Format {
    if openshift_stamp(name).is_some() {
        return Format::OpenShift;
    }
    if name.starts_with("Full-") || name.starts_with("Incr-") {
        return Format::Druid;
    }
    let in_snapshots_dir =
        path.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "snapshots");
    let stem = name.strip_suffix(".zip").unwrap_or(name);
    let timed = unix_suffix(stem).is_some();
    if name.ends_with(".zip")
        || (timed
            && (in_snapshots_dir
                || stem.starts_with("etcd-snapshot-")
                || stem.starts_with("on-demand-")))
    {
        return if path.to_string_lossy().contains("/rke2/") { Format::Rke2 } else { Format::K3s };
    }
    Format::Etcdctl
}

/// How deep `discover` looks into directories without a backup (one directory per
/// cluster-backup.sh run on a volume, a druid store's `v2/`).
const MAX_DEPTH: usize = 3;

/// Every backup in directory `dir`: the cluster-backup.sh pairs in it, or else each k3s/RKE2
/// snapshot and druid full snapshot; or else those of its subdirectories.
fn discover_dir(
    dir: &Path,
    format: Format,
    depth: usize,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Found>> {
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| Error::failure(format!("{}: {e}", dir.display())))?
        .flatten()
        .collect();
    let named = |dirs: bool| {
        let mut v: Vec<String> = entries
            .iter()
            .filter(|e| e.file_type().is_ok_and(|t| if dirs { t.is_dir() } else { t.is_file() }))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (names, subdirs) = (named(false), named(true));
    let mut out = Vec::new();
    if matches!(format, Format::Auto | Format::OpenShift) {
        let stamps: std::collections::BTreeSet<String> = names
            .iter()
            .filter(|n| n.starts_with("snapshot_"))
            .filter_map(|n| openshift_stamp(n))
            .map(|(s, _)| s)
            .collect();
        for stamp in stamps {
            out.push(openshift_pair(dir, &stamp, note)?);
        }
        if !out.is_empty() {
            return Ok(out);
        }
    }
    let mut skipped = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let f = match format {
            Format::Auto => guess(&path, &name),
            f => f,
        };
        match f {
            Format::Druid if name.starts_with("Incr-") => skipped.push(format!("note: skipped {}: a druid delta snapshot (only full snapshots are imported)", path.display())),
            Format::Druid => out.push(druid(&path, &name)?),
            Format::K3s | Format::Rke2 => out.push(k3s(&path, &name, f, note)?),
            _ => skipped.push(format!("note: skipped {}: not a backup this directory's format names (give the file itself to import it)", path.display())),
        }
    }
    if out.is_empty() && depth < MAX_DEPTH {
        // A volume with one directory per run: look one level further down.
        for sub in subdirs.iter().filter(|s| !s.starts_with('.')) {
            match discover_dir(&dir.join(sub), format, depth + 1, note) {
                Ok(found) => out.extend(found),
                Err(e) if e.kind == Kind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if out.is_empty() {
        let what = if format == Format::OpenShift {
            "no cluster-backup.sh snapshot (snapshot_<time>.db)"
        } else {
            "no backup"
        };
        return Err(Error::new(
            Kind::NotFound,
            format!("{}: {what} found in it or below", dir.display()),
        ));
    }
    // Only the files beside backups that were imported are worth a note.
    for n in &skipped {
        note(n);
    }
    Ok(out)
}

/// `snapshot_2026-11-20_101500[__POSSIBLY_DIRTY__].db` or the tarball of the same time:
/// the time stamp (with the dirty marker) and whether the marker is there.
fn openshift_stamp(name: &str) -> Option<(String, bool)> {
    let rest =
        name.strip_prefix("snapshot_").and_then(|r| r.strip_suffix(".db")).or_else(|| {
            name.strip_prefix("static_kuberesources_").and_then(|r| r.strip_suffix(".tar.gz"))
        })?;
    let (time, dirty) = match rest.strip_suffix("__POSSIBLY_DIRTY__") {
        Some(t) => (t, true),
        None => (rest, false),
    };
    NaiveDateTime::parse_from_str(time, "%Y-%m-%d_%H%M%S").ok()?;
    Some((rest.to_string(), dirty))
}

/// The snapshot and tarball of one cluster-backup.sh run. Its time stamp is the node's local
/// time (`date "+%F_%H%M%S"`); RHCOS runs in UTC, so it is read as UTC.
fn openshift_pair(dir: &Path, stamp: &str, note: &mut dyn FnMut(&str)) -> Result<Found> {
    let snapshot = dir.join(format!("snapshot_{stamp}.db"));
    let tarball = dir.join(format!("static_kuberesources_{stamp}.tar.gz"));
    if !snapshot.is_file() {
        return Err(Error::new(
            Kind::NotFound,
            format!(
                "{}: missing; cluster-backup.sh writes it beside {}",
                snapshot.display(),
                tarball.display()
            ),
        ));
    }
    if !tarball.is_file() {
        return Err(Error::new(
            Kind::NotFound,
            format!("{}: missing beside {} (the static pod resources); give --format etcdctl to import the snapshot alone", tarball.display(), snapshot.display()),
        ));
    }
    let dirty = stamp.ends_with("__POSSIBLY_DIRTY__");
    let time = stamp.trim_end_matches("__POSSIBLY_DIRTY__");
    let naive = NaiveDateTime::parse_from_str(time, "%Y-%m-%d_%H%M%S")
        .map_err(|e| Error::usage(format!("{}: {e}", snapshot.display())))?;
    let created = Utc.from_utc_datetime(&naive);
    // The snapshot is written after the tarball, within minutes of the name's time when the
    // node ran in UTC; otherwise the zone was another and the operator should say the time.
    if let Some(mtime) = mtime(&snapshot) {
        let after = (mtime - created).num_seconds();
        if !(-60..=3600).contains(&after) {
            note(&format!(
                "warning: {}: its name says {} (read as UTC) but the file was last modified {}; if the node's clock was not in UTC, give the time with --created (a copy made without keeping times has the copy's time: then the name is right)",
                snapshot.display(),
                created.format("%Y-%m-%d %H:%M:%S UTC"),
                mtime.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
    }
    let mut labels = BTreeMap::new();
    if dirty {
        // cluster-backup.sh --force: taken while an operator was rolling out.
        labels.insert("openshift.possibly-dirty".into(), "true".into());
    }
    Ok(Found {
        format: Format::OpenShift,
        snapshot,
        packing: Packing::Plain,
        created,
        time_from: "its name (UTC)".into(),
        resources: Some(tarball),
        labels,
    })
}

/// `…-<unix seconds>` at the end of a name, when plausible (2001 to 2286).
fn unix_suffix(stem: &str) -> Option<i64> {
    let (_, ts) = stem.rsplit_once('-')?;
    if !(9..=10).contains(&ts.len()) || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok().filter(|t| *t >= 1_000_000_000)
}

/// A file's modification time, in whole seconds as the other formats' times are.
fn mtime(path: &Path) -> Option<DateTime<Utc>> {
    let t = DateTime::<Utc>::from(std::fs::metadata(path).ok()?.modified().ok()?);
    DateTime::from_timestamp(t.timestamp(), 0)
}

fn etcdctl(path: &Path, name: &str) -> Result<Found> {
    let created = mtime(path).ok_or_else(|| {
        Error::failure(format!(
            "{}: cannot read its modification time; give --created",
            path.display()
        ))
    })?;
    let packing = packing_of(path, name)?;
    Ok(Found {
        format: Format::Etcdctl,
        snapshot: path.into(),
        packing,
        created,
        time_from: "its modification time".into(),
        resources: None,
        labels: BTreeMap::new(),
    })
}

/// How the file is packed, by its name, checked against its first bytes.
fn packing_of(path: &Path, name: &str) -> Result<Packing> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::failure(format!("{}: {e}", path.display())))?;
    let head = &head[..n];
    let by_content = if head.starts_with(b"PK\x03\x04") {
        Packing::Zip
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Packing::Gzip
    } else if head.len() >= 2
        && head[0] == 0x78
        && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0
    {
        Packing::Zlib
    } else {
        Packing::Plain
    };
    let by_name = if name.ends_with(".zip") {
        Some(Packing::Zip)
    } else if name.ends_with(".gz") {
        Some(Packing::Gzip)
    } else if name.ends_with(".zlib") {
        Some(Packing::Zlib)
    } else {
        None
    };
    match by_name {
        Some(p) if p != by_content => Err(Error::new(
            Kind::NotSnapshot,
            format!("{}: its name says {} but its content is not", path.display(), p.name()),
        )),
        Some(p) => Ok(p),
        // A bbolt file starts with a page header, never with these magics but zlib's
        // (which a page id may look like): only the name makes a file compressed.
        None if by_content == Packing::Zlib => Ok(Packing::Plain),
        None => Ok(by_content),
    }
}

/// A k3s/RKE2 `etcd-snapshot` file: `<name>-<node>-<unix time>[.zip]`, with the extra
/// metadata k3s keeps in `../.metadata/<file name>` (a JSON object of strings).
fn k3s(path: &Path, name: &str, format: Format, note: &mut dyn FnMut(&str)) -> Result<Found> {
    let stem = name.strip_suffix(".zip").unwrap_or(name);
    let packing = packing_of(path, name)?;
    if !matches!(packing, Packing::Plain | Packing::Zip) {
        return Err(Error::new(
            Kind::NotSnapshot,
            format!("{}: k3s snapshots are plain or .zip", path.display()),
        ));
    }
    let prefix = format.name();
    let mut labels = BTreeMap::new();
    labels.insert(format!("{prefix}.snapshot-name"), name.to_string());
    labels.insert(format!("{prefix}.compressed"), (packing == Packing::Zip).to_string());
    let (created, time_from) =
        match unix_suffix(stem).and_then(|t| Utc.timestamp_opt(t, 0).single()) {
            Some(t) => {
                // `<name>-<node>-<ts>`: the default names are etcd-snapshot and on-demand.
                let without_ts = &stem[..stem.rfind('-').unwrap_or(0)];
                for known in ["etcd-snapshot-", "on-demand-"] {
                    if let Some(node) = without_ts.strip_prefix(known).filter(|n| !n.is_empty()) {
                        labels.insert(format!("{prefix}.node"), node.to_string());
                    }
                }
                (t, "its name".to_string())
            }
            None => {
                let t = mtime(path).ok_or_else(|| {
                    Error::failure(format!(
                        "{}: no time in its name and no modification time; give --created",
                        path.display()
                    ))
                })?;
                note(&format!(
                    "note: {}: no unix time at the end of its name; using its modification time",
                    path.display()
                ));
                (t, "its modification time".to_string())
            }
        };
    let metadata = path.parent().map(|d| d.join("..").join(".metadata").join(name));
    if let Some(meta) = metadata.filter(|m| m.is_file()) {
        let bytes =
            std::fs::read(&meta).map_err(|e| Error::failure(format!("{}: {e}", meta.display())))?;
        match serde_json::from_slice::<BTreeMap<String, String>>(&bytes) {
            Ok(map) => {
                for (k, v) in map {
                    labels.insert(format!("{prefix}.metadata.{k}"), v);
                }
            }
            Err(e) => note(&format!(
                "warning: {}: not k3s snapshot metadata ({e}); not kept",
                meta.display()
            )),
        }
    }
    Ok(Found {
        format,
        snapshot: path.into(),
        packing,
        created,
        time_from,
        resources: None,
        labels,
    })
}

/// An etcd-backup-restore full snapshot: `Full-<start rev>-<last rev>-<unix time>`, then
/// `.gz` (the default), `.zlib` or `.Z` (LZW), then `.final` for the one taken at shutdown.
fn druid(path: &Path, name: &str) -> Result<Found> {
    let base = name.strip_suffix(".final").unwrap_or(name);
    let (base, suffix) = match base.split_once('.') {
        Some((b, s)) => (b, Some(s)),
        None => (base, None),
    };
    let parts: Vec<&str> = base.split('-').collect();
    let bad = || {
        Error::usage(format!("{}: not an etcd-druid snapshot name (Full-<start revision>-<last revision>-<unix time>[.gz|.zlib])", path.display()))
    };
    let [kind, start, last, ts] = parts[..] else { return Err(bad()) };
    if kind == "Incr" {
        return Err(Error::usage(format!("{}: a druid delta snapshot (a list of changes, not a database); import its full snapshot", path.display())));
    }
    let (Ok(start), Ok(last), Ok(ts)) =
        (start.parse::<i64>(), last.parse::<i64>(), ts.parse::<i64>())
    else {
        return Err(bad());
    };
    if kind != "Full" {
        return Err(bad());
    }
    let compression = match suffix {
        None => "none",
        Some("gz") => "gzip",
        Some("zlib") => "zlib",
        Some("Z") => {
            return Err(Error::usage(format!(
                "{}: LZW-compressed (.Z, Go's compress/lzw) druid snapshots are not supported; have etcd-backup-restore write gzip (its default) or decompress it first",
                path.display()
            )))
        }
        Some(other) => return Err(Error::usage(format!("{}: unknown druid compression suffix .{other} (expected .gz or .zlib)", path.display()))),
    };
    let packing = packing_of(path, name.strip_suffix(".final").unwrap_or(name))?;
    let created = Utc.timestamp_opt(ts, 0).single().ok_or_else(bad)?;
    let labels = BTreeMap::from([
        ("druid.kind".to_string(), "Full".to_string()),
        ("druid.start-revision".to_string(), start.to_string()),
        ("druid.last-revision".to_string(), last.to_string()),
        ("druid.compression".to_string(), compression.to_string()),
        ("druid.final".to_string(), name.ends_with(".final").to_string()),
    ]);
    Ok(Found {
        format: Format::Druid,
        snapshot: path.into(),
        packing,
        created,
        time_from: "its name".into(),
        resources: None,
        labels,
    })
}

// -------------------------------------------------------------------------------------
// Unpacking

/// The snapshot of `f` as a plain file: itself, or unpacked into `spool`.
fn unpack_snapshot(f: &Found, spool: &Path) -> Result<PathBuf> {
    let src = &f.snapshot;
    let fail = |e: std::io::Error| {
        Error::new(Kind::NotSnapshot, format!("{}: unpacking: {e}", src.display()))
    };
    let open =
        || std::fs::File::open(src).map_err(|e| Error::failure(format!("{}: {e}", src.display())));
    let mut reader: Box<dyn Read> = match f.packing {
        Packing::Plain => return Ok(src.clone()),
        Packing::Gzip => Box::new(flate2::read::GzDecoder::new(open()?)),
        Packing::Zlib => Box::new(flate2::read::ZlibDecoder::new(open()?)),
        Packing::Zip => {
            let mut zip = zip::ZipArchive::new(open()?).map_err(|e| {
                Error::new(
                    Kind::NotSnapshot,
                    format!("{}: not a readable zip archive: {e}", src.display()),
                )
            })?;
            if zip.len() != 1 {
                return Err(Error::new(
                    Kind::NotSnapshot,
                    format!(
                        "{}: holds {} entries; a k3s snapshot zip holds one",
                        src.display(),
                        zip.len()
                    ),
                ));
            }
            let out = spool.join("snapshot.db");
            let mut entry = zip
                .by_index(0)
                .map_err(|e| Error::new(Kind::NotSnapshot, format!("{}: {e}", src.display())))?;
            write_private(&out, &mut entry).map_err(fail)?;
            return Ok(out);
        }
    };
    let out = spool.join("snapshot.db");
    write_private(&out, &mut reader).map_err(fail)?;
    Ok(out)
}

fn write_private(path: &Path, from: &mut dyn Read) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    std::io::copy(from, &mut out)?;
    out.sync_all()
}

/// Unpacks cluster-backup.sh's tarball under `dir` (entries stay beneath it: the tar crate
/// refuses `..` and absolute names), keeping modes and times.
fn unpack_tarball(tarball: &Path, dir: &Path) -> Result<()> {
    let file = std::fs::File::open(tarball)
        .map_err(|e| Error::failure(format!("{}: {e}", tarball.display())))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::failure(format!("{}: {e}", dir.display())))?;
    }
    archive.unpack(dir).map_err(|e| {
        Error::new(
            Kind::Corrupt,
            format!("{}: not a readable static_kuberesources tarball: {e}", tarball.display()),
        )
    })
}

/// The EncryptionConfiguration of the newest kube-apiserver revision, if it has one
/// (`kube-apiserver-pod-<N>/secrets/encryption-config/encryption-config`).
fn newest_encryption_config(resources: &Path) -> Option<PathBuf> {
    newest_revision(resources, "kube-apiserver")
        .map(|d| d.join("secrets/encryption-config/encryption-config"))
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_the_format_and_time() {
        assert_eq!(
            openshift_stamp("snapshot_2026-11-20_101500.db"),
            Some(("2026-11-20_101500".into(), false))
        );
        assert_eq!(
            openshift_stamp("static_kuberesources_2026-11-20_101500__POSSIBLY_DIRTY__.tar.gz")
                .map(|s| s.1),
            Some(true)
        );
        assert_eq!(openshift_stamp("snapshot_2026-11-20.db"), None);
        assert_eq!(
            guess(Path::new("/x/snapshot_2026-11-20_101500.db"), "snapshot_2026-11-20_101500.db"),
            Format::OpenShift
        );
        assert_eq!(
            guess(
                Path::new("/var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-cp1-1764000000"),
                "etcd-snapshot-cp1-1764000000"
            ),
            Format::K3s
        );
        assert_eq!(
            guess(
                Path::new("/var/lib/rancher/rke2/server/db/snapshots/on-demand-cp1-1764000000.zip"),
                "on-demand-cp1-1764000000.zip"
            ),
            Format::Rke2
        );
        assert_eq!(
            guess(
                Path::new("/b/Full-00000000-00001234-1764000000.gz"),
                "Full-00000000-00001234-1764000000.gz"
            ),
            Format::Druid
        );
        assert_eq!(guess(Path::new("/tmp/snap.db"), "snap.db"), Format::Etcdctl);
        assert_eq!(
            guess(Path::new("/tmp/backup-1764000000"), "backup-1764000000"),
            Format::Etcdctl
        );
        assert_eq!(unix_suffix("etcd-snapshot-cp-1-1764000000"), Some(1_764_000_000));
        assert_eq!(unix_suffix("etcd-snapshot-cp-1"), None);
    }
}
