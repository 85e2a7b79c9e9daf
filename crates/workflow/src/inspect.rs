//! Object-level reads of a snapshot for `inspect extract`, `inspect history` and `inspect
//! diff` (and the per-resource changes `cluster finish --compare-with` reports): from a
//! snapshot file, or from a backup of a repository (fetched, sha256 checked, into a private
//! spool removed afterwards) together with the EncryptionConfiguration the backup holds.

use std::path::{Path, PathBuf};

use etcdguard_kube::encryption::EncryptionConfig;
use etcdguard_kube::extract::{ExtractError, ExtractSummary, Extracted};
use etcdguard_kube::history::comparable;
use etcdguard_kube::history::Version;
use etcdguard_kube::jsondiff::Op;
use etcdguard_kube::listing::{Change, ChangeCounts, LiveKeys};
use etcdguard_kube::selector::Filter;

use crate::error::{db_error, Error, Kind, Result};
use crate::repo::{resolve, RepoSpec};
use crate::snapshot::open_snapshot;
use crate::spool::{self, Spool};

/// Where the objects come from.
pub enum Origin<'a> {
    File(&'a Path),
    /// Backup id, unique prefix or `latest` of a repository; fetched under `scratch`.
    Backup {
        repo: &'a RepoSpec,
        id: &'a str,
        scratch: Option<&'a Path>,
    },
}

/// A snapshot ready to read, and the keys to decrypt it with.
pub struct Opened {
    pub snapshot: PathBuf,
    pub config: Option<EncryptionConfig>,
    /// Where `config` came from, for the operator (`None` with no config).
    pub config_source: Option<String>,
    _spool: Option<Spool>,
}

/// Opens `origin`. `config` (from `--encryption-config`) wins; else a backup's stored
/// EncryptionConfiguration is used when it has one.
pub fn open(
    origin: &Origin<'_>,
    config: Option<EncryptionConfig>,
    note: &mut dyn FnMut(&str),
) -> Result<Opened> {
    open_with(origin, config, true, note)
}

/// [`open`], looking for a backup's stored EncryptionConfiguration only when `find_stored`.
fn open_with(
    origin: &Origin<'_>,
    config: Option<EncryptionConfig>,
    find_stored: bool,
    note: &mut dyn FnMut(&str),
) -> Result<Opened> {
    let given = config.is_some().then(|| "--encryption-config".to_string());
    match origin {
        Origin::File(path) => {
            Ok(Opened { snapshot: path.to_path_buf(), config, config_source: given, _spool: None })
        }
        Origin::Backup { repo, id, scratch } => {
            let r = repo.open_unlocked()?;
            let m = resolve(&r, id)?;
            let parent = scratch.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
            let (spool, _) = spool::create(&parent)?;
            let snapshot = spool.path().join("snapshot.db");
            note(&format!(
                "fetching backup {} ({}, revision {}) from {}",
                m.id,
                m.created.format("%Y-%m-%d %H:%M:%S UTC"),
                m.etcd.revision,
                r.location()
            ));
            let index = r.load_index()?;
            r.restore_snapshot_to_file(&index, &m.snapshot, &snapshot, 0o600)?;
            let (config, config_source) = match config {
                Some(c) => (Some(c), given),
                None if !find_stored => (None, None),
                None => match crate::keycheck::stored_config(&r, &m)? {
                    Some((path, bytes)) => {
                        let c = EncryptionConfig::parse(&bytes).map_err(|e| {
                            Error::new(Kind::Corrupt, format!("backup {}: {path}: {e}", m.id))
                        })?;
                        (
                            Some(c),
                            Some(format!(
                                "the EncryptionConfiguration stored in backup {} ({path})",
                                m.id
                            )),
                        )
                    }
                    None => (None, None),
                },
            };
            Ok(Opened { snapshot, config, config_source, _spool: Some(spool) })
        }
    }
}

/// The selected objects of the snapshot, handed to `sink` one at a time in apply order as
/// they are rendered, with memory that does not grow with the data (see
/// `etcdguard_kube::extract::extract_to`). A sink error stops it and is returned as
/// `Kind::Failure` with the sink's message; a caller that needs the error itself keeps it.
pub fn extract_to(
    opened: &Opened,
    prefix: &str,
    filter: &Filter,
    include_owned: bool,
    sink: &mut dyn FnMut(Extracted) -> std::io::Result<()>,
) -> Result<ExtractSummary> {
    let file = open_snapshot(&opened.snapshot)?;
    let db = file.db().map_err(|e| db_error(&opened.snapshot, e))?;
    let config = opened.config.as_ref();
    etcdguard_kube::extract::extract_to(&file, &db, prefix, filter, include_owned, config, sink)
        .map_err(|e| match e {
            ExtractError::Read(e) => {
                Error::new(Kind::Corrupt, format!("{}: {e}", opened.snapshot.display()))
            }
            ExtractError::Sink(e) => Error::new(Kind::Failure, e.to_string()),
        })
}

/// Every revision of `key` still in the snapshot, and how many older versions were compacted.
pub fn history(opened: &Opened, key: &str) -> Result<(Vec<Version>, i64)> {
    let file = open_snapshot(&opened.snapshot)?;
    let db = file.db().map_err(|e| db_error(&opened.snapshot, e))?;
    let release = || file.release_resident();
    etcdguard_kube::history::history(&db, Some(&release), key.as_bytes(), opened.config.as_ref())
        .map_err(|e| Error::new(Kind::Corrupt, format!("{}: {e}", opened.snapshot.display())))
}

/// The EncryptionConfiguration stored in backup `id` of `repo`, and where it came from.
pub fn stored_config(repo: &RepoSpec, id: &str) -> Result<Option<(EncryptionConfig, String)>> {
    let r = repo.open_unlocked()?;
    let m = resolve(&r, id)?;
    match crate::keycheck::stored_config(&r, &m)? {
        Some((path, bytes)) => {
            let c = EncryptionConfig::parse(&bytes)
                .map_err(|e| Error::new(Kind::Corrupt, format!("backup {}: {path}: {e}", m.id)))?;
            Ok(Some((c, format!("the EncryptionConfiguration stored in backup {} ({path})", m.id))))
        }
        None => Ok(None),
    }
}

/// How many keys of one resource were added, deleted or modified between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceChanges {
    /// The resource as its keys name it (`pods`, `apiregistration.k8s.io/apiservices`), or
    /// the key's first segment for keys outside Kubernetes' layout.
    pub resource: String,
    #[serde(flatten)]
    pub changes: ChangeCounts,
}

/// What `inspect diff` compares: two snapshots, or two backups of a repository.
pub struct DiffOptions<'a> {
    pub old: Origin<'a>,
    pub new: Origin<'a>,
    /// Only keys under this prefix.
    pub prefix: &'a [u8],
    /// Changes the filter selects on either side (a relabelled object still shows).
    pub filter: &'a Filter,
    /// Decrypts both sides; without it, the newer backup's stored EncryptionConfiguration.
    pub config: Option<EncryptionConfig>,
    /// Also compare the fields of each changed object (decrypted and rendered).
    pub fields: bool,
}

/// What [`diff`] found, besides the changes it handed on.
pub struct DiffSummary {
    pub counts: ChangeCounts,
    /// Changed keys whose newer value did not decrypt although keys were given, with why.
    pub undecrypted: Vec<(Vec<u8>, String)>,
    /// Whether values were decrypted (keys given, or stored in the newer backup).
    pub decrypted: bool,
}

/// The field-level changes of one changed object (RFC 6902 operations, old to new; an
/// added object is compared with `null`), or why its values could not be compared.
pub type FieldChanges = std::result::Result<Vec<Op>, String>;

/// The objects added, deleted and modified from `opts.old` to `opts.new`, handed to `each`
/// in key order with their field changes when `opts.fields`: backups are fetched (sha256
/// checked) into private spools removed afterwards, both snapshots walked once, and only the
/// changed keys decoded, a batch at a time, so memory stays bounded
/// (`etcdguard_kube::listing::diff`). The first error of `each` (a closed stdout) stops it,
/// returned as `Kind::Failure`.
pub fn diff(
    opts: DiffOptions<'_>,
    note: &mut dyn FnMut(&str),
    each: &mut dyn FnMut(&Change<'_>, Option<FieldChanges>) -> std::io::Result<()>,
) -> Result<DiffSummary> {
    let given = opts.config.is_some();
    // One config decrypts both sides: the newer backup's, when none is given.
    let old = open_with(&opts.old, None, false, note)?;
    let new = open(&opts.new, opts.config, note)?;
    if !given {
        if let Some(source) = &new.config_source {
            note(&format!("decrypting with {source}"));
        }
    }
    let config = new.config.as_ref();
    let fields = opts.fields;
    let mut summary = DiffSummary {
        counts: ChangeCounts::default(),
        undecrypted: Vec::new(),
        decrypted: config.is_some(),
    };
    diff_files(&old.snapshot, &new.snapshot, opts.prefix, opts.filter, config, fields, &mut |c| {
        summary.counts.count(c.kind);
        if let Some(why) = c.entry.undecrypted() {
            summary.undecrypted.push((c.key.to_vec(), why));
        }
        let ops = fields.then(|| {
            let side = |value: Option<&[u8]>| {
                value.map_or(Ok(serde_json::Value::Null), |v| comparable(c.key, v, config))
            };
            let (before, after) = (side(c.values.0)?, side(c.values.1)?);
            Ok(etcdguard_kube::jsondiff::diff(&before, &after))
        });
        each(c, ops)
    })
    .map_err(|e| match e {
        DiffError::Snapshot(e) => e,
        DiffError::Each(e) => Error::new(Kind::Failure, e.to_string()),
    })?;
    Ok(summary)
}

/// Why [`diff_files`] stopped.
enum DiffError<E> {
    Snapshot(Error),
    Each(E),
}

/// The changes from the snapshot file `old` to `new` under `prefix` that `filter` selects,
/// handed to `each` in key order (with their stored values when `with_values`).
fn diff_files<E>(
    old: &Path,
    new: &Path,
    prefix: &[u8],
    filter: &Filter,
    config: Option<&EncryptionConfig>,
    with_values: bool,
    each: &mut dyn FnMut(&Change<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), DiffError<E>> {
    let (old_file, new_file) = (
        open_snapshot(old).map_err(DiffError::Snapshot)?,
        open_snapshot(new).map_err(DiffError::Snapshot)?,
    );
    let old_db = old_file.db().map_err(|e| DiffError::Snapshot(db_error(old, e)))?;
    let new_db = new_file.db().map_err(|e| DiffError::Snapshot(db_error(new, e)))?;
    let corrupt = |path: &Path, e: String| {
        DiffError::Snapshot(Error::new(Kind::Corrupt, format!("{}: {e}", path.display())))
    };
    let old_keys = LiveKeys::load(&old_file, &old_db, prefix).map_err(|e| corrupt(old, e))?;
    let new_keys = LiveKeys::load(&new_file, &new_db, prefix).map_err(|e| corrupt(new, e))?;
    etcdguard_kube::listing::diff(&old_keys, &new_keys, filter, config, with_values, each)
        .map_err(DiffError::Each)
}

/// The keys under `/registry/` that differ from `old` to `new`, counted per resource in
/// resource order. Keys are compared by revision and bytes, so encrypted objects need no keys
/// (`config` only helps name a resource whose key alone is ambiguous).
pub fn changes_by_resource(
    old: &Path,
    new: &Path,
    config: Option<&EncryptionConfig>,
) -> Result<Vec<ResourceChanges>> {
    let prefix = b"/registry/";
    let mut by: std::collections::BTreeMap<String, ResourceChanges> = Default::default();
    let counted = diff_files(
        old,
        new,
        prefix,
        &Filter::default(),
        config,
        false,
        &mut |c| -> std::result::Result<(), std::convert::Infallible> {
            let resource = match &c.entry.path {
                Some(p) => p.resource.clone(),
                None => String::from_utf8_lossy(&c.key[prefix.len()..])
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            let counts = by
                .entry(resource.clone())
                .or_insert_with(|| ResourceChanges { resource, ..Default::default() });
            counts.changes.count(c.kind);
            Ok(())
        },
    );
    match counted {
        Ok(()) => Ok(by.into_values().collect()),
        Err(DiffError::Snapshot(e)) => Err(e),
        Err(DiffError::Each(never)) => match never {},
    }
}

/// What changed in the live cluster since `origin` (the snapshot or backup a restore used): a
/// fresh snapshot of a member of `conn` (a healthy follower, as `snapshot save`), taken into a
/// private spool under `scratch` (removed afterwards), compared per resource.
pub fn live_changes_since(
    origin: &Origin<'_>,
    conn: &etcdguard_client::ConnectFlags,
    scratch: &Path,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<ResourceChanges>> {
    let opened = open(origin, None, note)?;
    let (_spool, live) =
        crate::backup::snapshot_into_spool(conn, scratch, "to compare with the backup", note)?;
    changes_by_resource(&opened.snapshot, &live, opened.config.as_ref())
}
