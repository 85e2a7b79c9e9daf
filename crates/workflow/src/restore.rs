//! `snapshot restore`: new etcd data dirs from a snapshot file, with etcdutl's flags. The
//! work is `etcdguard_storage::restore`; this checks the flags and says what was made.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use etcdguard_storage::restore::{self, membership, Cluster, Destination, Flavor, Options, Report};

use etcdguard_storage::{Evidence, Provenance, Release, SnapshotFile};

use crate::error::{restore_error, Error, Kind, Result};
use crate::keycheck::KeyGate;
use crate::snapshot::open_snapshot;

/// The flags of `snapshot restore`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRestoreOptions {
    pub file: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    /// Every member (`name=url,…`); default `<name>=http://localhost:2380`.
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    /// One data dir per member under this directory, instead of `data_dir`.
    pub cluster_out: Option<PathBuf>,
    /// The EncryptionConfiguration the restored cluster will use: every key name the
    /// snapshot's encrypted values use must be in it (see [`crate::keycheck`]).
    pub encryption_config: Option<PathBuf>,
    /// Restore although the encryption key check refuses.
    pub force: bool,
    /// The etcd release that will run the restored members: its etcdutl's file layout is
    /// written (default: the snapshot's writer's), and a snapshot written by a newer release
    /// is refused (etcd does not downgrade a data dir).
    pub etcd_version: Option<Release>,
}

/// A finished restore: what was written, and how long it took.
pub struct Restored {
    pub file: PathBuf,
    pub report: Report,
    pub elapsed: Duration,
    /// Lines for the operator from the checks before the restore (keys checked, warnings).
    pub notes: Vec<String>,
}

/// Restores `opts.file` into new data dirs. Flags are checked before anything is written;
/// the encryption key check (against `--encryption-config`) runs during the restore's
/// self-check and refuses before the data dir is put in place.
pub fn snapshot_restore(opts: &SnapshotRestoreOptions) -> Result<Restored> {
    let in_place = match &opts.encryption_config {
        Some(p) => crate::keycheck::InPlace::file(p)?,
        None => crate::keycheck::InPlace {
            config: None,
            source: "none given (--encryption-config FILE names the one the cluster will use)"
                .into(),
        },
    };
    snapshot_restore_with(opts, in_place, Source::default())
}

/// The release that wrote a snapshot and why, when its database opens (a file that does not
/// is left to the restore to report).
pub(crate) fn writer_of(snapshot: &SnapshotFile) -> Option<(Release, Evidence)> {
    snapshot.db().ok().map(|db| Provenance::read(&db).writer())
}

/// The WAL/.snap layout of the release that will run the restore: `target` when given, else
/// the release that wrote the snapshot; 3.5's (which every release reads) when neither is known.
pub(crate) fn flavor_for(writer: Option<&(Release, Evidence)>, target: Option<Release>) -> Flavor {
    let known_writer =
        writer.filter(|(_, evidence)| *evidence != Evidence::Nothing).map(|(r, _)| *r);
    target.or(known_writer).map(Flavor::for_release).unwrap_or(Flavor::V3_5)
}

/// Refuses a snapshot that a newer etcd release than `target` wrote: etcd 3.6+ refuse a data
/// dir whose storage version is newer than theirs, and 3.5 and older would run a newer
/// release's data unchecked. A file that records no version gets a note.
fn check_release(
    path: &std::path::Path,
    writer: Release,
    evidence: &Evidence,
    target: Release,
    notes: &mut Vec<String>,
) -> Result<()> {
    if *evidence == Evidence::Nothing {
        notes.push(format!(
            "note: the snapshot records neither a storage nor a cluster version, so it cannot be checked against etcd {target}"
        ));
        return Ok(());
    }
    if writer > target {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{}: written by etcd {writer} ({evidence}), newer than the etcd {target} given with --etcd-version: etcd does \
                 not downgrade a data dir ({}). Restore it where etcd {writer} or newer runs; to go back to {target}, \
                 downgrade the cluster first (etcdctl downgrade, 3.6+) and take a new snapshot",
                path.display(),
                if target >= Release::V3_6 {
                    format!("etcd {target} refuses to start on it: version \"{writer}.0\" is not supported")
                } else {
                    format!("etcd {target} would run it without knowing the newer release's schema")
                }
            ),
        ));
    }
    Ok(())
}

/// What the caller knows of the snapshot file of a restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct Source {
    /// Reassembled from a verified backup, its sha256 checked: its
    /// trailer and structure are not checked again before use (the self-check walks the
    /// result all the same).
    pub verified: bool,
    /// A private temporary file next to the destination: it is moved into the data dir as
    /// its db instead of copied, and is gone afterwards (see
    /// `storage::restore::restore_consuming`).
    pub temporary: bool,
}

/// [`snapshot_restore`] checked against the keys `in_place` (for a backup: its own
/// EncryptionConfiguration, or `--encryption-config`), with what the caller knows of the
/// file (`source`: a backup's verified reassembly, a private temporary).
pub fn snapshot_restore_with(
    opts: &SnapshotRestoreOptions,
    in_place: crate::keycheck::InPlace,
    source: Source,
) -> Result<Restored> {
    if (opts.bump_revision > 0) != opts.mark_compacted {
        return Err(Error::usage(
            "--mark-compacted required if --bump-revision > 0 (and --mark-compacted needs --bump-revision); \
             e.g. --bump-revision 1000000000 --mark-compacted",
        ));
    }
    let initial_cluster = opts
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}=http://localhost:2380", opts.name));
    let cluster = Cluster::new(&initial_cluster, &opts.initial_cluster_token)
        .map_err(|e| Error::usage(e.0))?;
    let dest = match (&opts.cluster_out, &opts.data_dir) {
        (Some(dir), None) => Destination::Cluster { dir: dir.clone() },
        (Some(_), Some(_)) => {
            return Err(Error::usage(
                "give either --data-dir (one member) or --cluster-out (all members), not both",
            ))
        }
        (None, Some(data_dir)) => {
            let advertise = membership::parse_url_list(&opts.initial_advertise_peer_urls)
                .map_err(|e| Error::usage(e.0))?;
            cluster.verify_local(&opts.name, &advertise).map_err(|e| Error::usage(e.0))?;
            Destination::Member {
                name: opts.name.clone(),
                data_dir: data_dir.clone(),
                wal_dir: opts.wal_dir.clone(),
            }
        }
        (None, None) => {
            return Err(Error::usage(
                "--data-dir is required (or --cluster-out to restore every member)",
            ))
        }
    };
    let snapshot = open_snapshot(&opts.file)?;
    let mut notes = Vec::new();
    let writer = writer_of(&snapshot);
    if let (Some(target), Some((release, evidence))) = (opts.etcd_version, &writer) {
        check_release(&opts.file, *release, evidence, target, &mut notes)?;
    }
    let gate = Arc::new(Mutex::new(KeyGate::new(in_place, opts.force)));
    let options = Options {
        skip_hash_check: opts.skip_hash_check,
        bump_revision: opts.bump_revision,
        mark_compacted: opts.mark_compacted,
        flavor: flavor_for(writer.as_ref(), opts.etcd_version),
        source_verified: source.verified,
        gate: Some(gate.clone()),
    };
    let started = Instant::now();
    let result = if source.temporary {
        restore::restore_consuming(&snapshot, &cluster, &dest, &options)
    } else {
        restore::restore(&snapshot, &cluster, &dest, &options)
    };
    let check = gate.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(check) = &check {
        // Refuses with the full explanation when the gate refused; otherwise notes only.
        crate::keycheck::enforce(check, opts.force, &mut |n| notes.push(n.to_string()))?;
    }
    let report = result.map_err(restore_error)?;
    Ok(Restored { file: opts.file.clone(), report, elapsed: started.elapsed(), notes })
}
