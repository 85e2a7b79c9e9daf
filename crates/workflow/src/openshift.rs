//! `backup restore --format openshift`: a backup written out as OpenShift's
//! `cluster-backup.sh` writes one (`snapshot_<time>.db` and `static_kuberesources_<time>.tar.gz`
//! holding `static-pod-resources/<component>-pod-<N>/…` of kube-apiserver,
//! kube-controller-manager, kube-scheduler and etcd), so that `cluster-restore.sh` takes it.
//!
//! OpenShift restores only a backup of the cluster's own z-stream, and a backup taken in the
//! cluster's first 24 hours holds certificates that were rotated since. The backup's version
//! and the cluster's installation time are read from the snapshot's ClusterVersion object;
//! the node's version from the machine config the machine-config daemon last applied.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use etcdguard_repo::manifest::Manifest;

use crate::error::{db_error, Error, Kind, Result};
use crate::repo::{resolve, RepoSpec};
use crate::snapshot::open_snapshot;
use crate::spool;

/// The static pods whose resources cluster-backup.sh saves (and cluster-restore.sh reads).
pub const COMPONENTS: [&str; 4] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"];

/// The static pod resources of a component's newest revision: `<dir>/<component>-pod-<N>`
/// with the highest N (`import` reads them from cluster-backup.sh's tarball too).
pub(crate) fn newest_revision(dir: &Path, component: &str) -> Option<PathBuf> {
    let prefix = format!("{component}-pod-");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Where the machine-config daemon leaves the machine config it applied last (and, before it
/// first ran, where the machine-config server's copy is); rendered configs carry the release
/// version in an annotation.
pub const MACHINE_CONFIGS: [&str; 2] =
    ["/etc/machine-config-daemon/currentconfig", "/etc/mcs-machine-config-content.json"];
const RELEASE_VERSION_ANNOTATION: &str = "machineconfiguration.openshift.io/release-image-version";
const CLUSTER_VERSION_KEY: &[u8] = b"/kubernetes.io/config.openshift.io/clusterversions/version";

pub struct OpenShiftRestoreOptions {
    pub repo: RepoSpec,
    /// Backup id, unique prefix or `latest`.
    pub id: String,
    /// Where the two files go (made 0700 when missing); neither may exist.
    pub dir: PathBuf,
    /// The node's OpenShift version, when given (else read from `machine_config`).
    pub node_version: Option<String>,
    /// The node's machine config file [default: [`MACHINE_CONFIGS`]].
    pub machine_config: Option<PathBuf>,
    /// Write the files although the version check refuses or resources are missing.
    pub force: bool,
    pub scratch_dir: Option<PathBuf>,
}

/// What the snapshot's ClusterVersion says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterVersion {
    /// The newest version the cluster completed an update (or installation) to.
    pub version: Option<String>,
    /// An update that had not completed when the snapshot was taken.
    pub updating_to: Option<String>,
    /// When the cluster was installed (the oldest history entry, else the object's creation).
    pub installed: Option<DateTime<Utc>>,
}

/// The files written.
pub struct Written {
    pub manifest: Manifest,
    pub snapshot: PathBuf,
    pub resources: PathBuf,
}

/// Writes backup `opts.id` as cluster-backup.sh would into `opts.dir`; lines for the
/// operator (the checks and their outcome) go to `note`.
pub fn restore(opts: &OpenShiftRestoreOptions, note: &mut dyn FnMut(&str)) -> Result<Written> {
    let repo = opts.repo.open_unlocked()?;
    let m = resolve(&repo, &opts.id)?;
    let dirty = m.labels.get("openshift.possibly-dirty").is_some_and(|v| v == "true");
    let stamp = format!(
        "{}{}",
        m.created.format("%Y-%m-%d_%H%M%S"),
        if dirty { "__POSSIBLY_DIRTY__" } else { "" }
    );
    let snapshot_path = opts.dir.join(format!("snapshot_{stamp}.db"));
    let resources_path = opts.dir.join(format!("static_kuberesources_{stamp}.tar.gz"));
    for p in [&snapshot_path, &resources_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(Error::new(
                Kind::DestinationExists,
                format!("{}: already exists; nothing was overwritten", p.display()),
            ));
        }
    }
    // cluster-restore.sh takes the last snapshot*.db and static_kuberesources*.tar.gz of the
    // directory (`ls -v | tail -1`), whichever backup they are: other ones there could be
    // restored instead of this one.
    let others = other_backups_in(&opts.dir);
    if !others.is_empty() {
        return Err(Error::new(
            Kind::DestinationExists,
            format!(
                "{} already holds {}; cluster-restore.sh restores the last of them by name, which may not be backup {}: use an empty directory",
                opts.dir.display(),
                others.join(", "),
                m.id
            ),
        ));
    }
    // Refuse before downloading anything when the node's version cannot be known.
    let node = node_version(opts);
    if let Err(why) = &node {
        if !opts.force {
            return Err(Error::new(
                Kind::Refused,
                format!("cannot tell this node's OpenShift version ({why}); OpenShift restores only a backup of its own z-stream: give --node-version X.Y.Z, or --force to write the files unchecked"),
            ));
        }
        note(&format!("warning: cannot tell this node's OpenShift version ({why}); writing the files unchecked (--force)"));
    }
    let index = repo.load_index()?;
    let parent = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (spool, _) = spool::create(&parent)?;
    let scratch_snapshot = spool.path().join("snapshot.db");
    repo.restore_snapshot_to_file(&index, &m.snapshot, &scratch_snapshot, 0o600)?;
    let cv = cluster_version(&scratch_snapshot)?;
    check_versions(
        &m,
        cv.as_ref(),
        node.as_ref().ok().map(|(v, s)| (v.as_str(), s.as_str())),
        opts.force,
        note,
    )?;
    // The control-plane files, unpacked privately, then the four components' newest revisions.
    let files = spool.path().join("files");
    repo.restore_files(&index, &m, &files)?;
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    for c in COMPONENTS {
        let found = [files.join("files/static-pod-resources"), files.join("files")]
            .iter()
            .find_map(|root| newest_revision(root, c));
        match found {
            Some(dir) => chosen.push(dir),
            None => missing.push(c),
        }
    }
    if !missing.is_empty() {
        let what = format!(
            "backup {} holds no static pod resources of {} (files/static-pod-resources/<component>-pod-<N>/, as `backup import` stores a cluster-backup.sh directory or `backup create --file /etc/kubernetes/static-pod-resources/<component>-pod-<N>` does); cluster-restore.sh starts kube-apiserver, kube-controller-manager and kube-scheduler from them",
            m.id,
            missing.join(", ")
        );
        if !opts.force {
            return Err(Error::new(
                Kind::Refused,
                format!("{what}; --force writes the tarball without them"),
            ));
        }
        note(&format!("warning: {what}"));
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.dir)
            .map_err(|e| Error::failure(format!("creating {}: {e}", opts.dir.display())))?;
    }
    let tmp_tar = opts
        .dir
        .join(format!(".static_kuberesources_{stamp}.tar.gz.{:08x}", spool::rand_u64() as u32));
    write_tarball(&tmp_tar, &chosen).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp_tar);
    })?;
    let tmp_snap = opts.dir.join(format!(".snapshot_{stamp}.db.{:08x}", spool::rand_u64() as u32));
    // The scratch copy may be on another file system: copy, then rename in place.
    let copied = std::fs::copy(&scratch_snapshot, &tmp_snap)
        .and_then(|_| std::fs::File::open(&tmp_snap)?.sync_all());
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp_snap);
        let _ = std::fs::remove_file(&tmp_tar);
        return Err(Error::failure(format!("writing {}: {e}", snapshot_path.display())));
    }
    // No existing name is replaced: link, then drop the temporary name.
    for (tmp, dest) in [(&tmp_tar, &resources_path), (&tmp_snap, &snapshot_path)] {
        let linked = std::fs::hard_link(tmp, dest);
        let _ = std::fs::remove_file(tmp);
        linked.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::new(
                Kind::DestinationExists,
                format!("{}: already exists; nothing was overwritten", dest.display()),
            ),
            _ => Error::failure(format!("writing {}: {e}", dest.display())),
        })?;
    }
    if let Ok(d) = std::fs::File::open(&opts.dir) {
        let _ = d.sync_all();
    }
    drop(spool);
    Ok(Written { manifest: m, snapshot: snapshot_path, resources: resources_path })
}

/// The names in `dir` that cluster-restore.sh would consider.
fn other_backups_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.starts_with("snapshot") && n.ends_with(".db"))
                || (n.starts_with("static_kuberesources") && n.ends_with(".tar.gz"))
        })
        .collect();
    names.sort();
    names
}

/// The z-stream rule and the first-24-hours warning.
fn check_versions(
    m: &Manifest,
    cv: Option<&ClusterVersion>,
    node: Option<(&str, &str)>,
    force: bool,
    note: &mut dyn FnMut(&str),
) -> Result<()> {
    let refuse = |msg: String, note: &mut dyn FnMut(&str)| -> Result<()> {
        if force {
            note(&format!("warning: {msg}; writing the files anyway (--force)"));
            Ok(())
        } else {
            Err(Error::new(Kind::Refused, format!("{msg}; --force writes the files anyway")))
        }
    };
    let Some(cv) = cv else {
        return refuse(format!("backup {}: its snapshot holds no ClusterVersion ({}), so its OpenShift version is unknown", m.id, String::from_utf8_lossy(CLUSTER_VERSION_KEY)), note);
    };
    if let Some(to) = &cv.updating_to {
        note(&format!("warning: backup {} was taken while the cluster was updating to {to}", m.id));
    }
    match (&cv.version, node) {
        (None, _) => refuse(format!("backup {}: its ClusterVersion names no completed version", m.id), note)?,
        (Some(b), Some((n, source))) if zstream(b) != zstream(n) => refuse(format!(
            "backup {} is of OpenShift {b} but this node runs {n} ({source}); OpenShift restores only a backup taken on the same z-stream",
            m.id
        ), note)?,
        (Some(b), Some((n, source))) => note(&format!("backup {} is of OpenShift {b}, the node's z-stream ({n}, {source})", m.id)),
        (Some(b), None) => note(&format!("backup {} is of OpenShift {b}; the node's version is unknown", m.id)),
    }
    match cv.installed {
        Some(at) if m.created - at < chrono::Duration::hours(24) => note(&format!(
            "warning: backup {} was taken {} after the cluster was installed ({}), before the first certificate rotation (24 hours): OpenShift's documentation advises against restoring such a backup, whose certificates have since been replaced",
            m.id,
            crate::certs::rough((m.created - at).to_std().unwrap_or_default()),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        Some(_) => {}
        None => note(&format!("note: backup {}: the cluster's installation time is unknown, so a backup of its first 24 hours cannot be told", m.id)),
    }
    Ok(())
}

/// `X.Y.Z` of a version (`4.15.3`, `4.15.3-rc.1` → `4.15.3`); the whole string otherwise.
fn zstream(v: &str) -> String {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next().unwrap_or(core);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() >= 3
        && parts[..3].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        parts[..3].join(".")
    } else {
        v.trim().to_string()
    }
}

/// The node's OpenShift version and where it was read, or why it cannot be known.
fn node_version(opts: &OpenShiftRestoreOptions) -> std::result::Result<(String, String), String> {
    if let Some(v) = &opts.node_version {
        return Ok((v.clone(), "--node-version".into()));
    }
    let candidates: Vec<PathBuf> = match &opts.machine_config {
        Some(p) => vec![p.clone()],
        None => MACHINE_CONFIGS.iter().map(PathBuf::from).collect(),
    };
    let mut why = Vec::new();
    for p in &candidates {
        match release_version(p) {
            Ok(v) => {
                return Ok((
                    v,
                    format!("the {RELEASE_VERSION_ANNOTATION} annotation of {}", p.display()),
                ))
            }
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// The release version a machine config file's annotation names.
pub fn release_version(path: &Path) -> std::result::Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a machine config (JSON): {e}", path.display()))?;
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(RELEASE_VERSION_ANNOTATION))
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no {RELEASE_VERSION_ANNOTATION} annotation", path.display()))
}

/// The ClusterVersion object of a snapshot, if it has one.
pub fn cluster_version(snapshot: &Path) -> Result<Option<ClusterVersion>> {
    let file = open_snapshot(snapshot)?;
    let db = file.db().map_err(|e| db_error(snapshot, e))?;
    let release = || file.release_resident();
    let live =
        etcdguard_storage::keys::newest_live(&db, Some(&release), &|k| k == CLUSTER_VERSION_KEY)
            .map_err(|e| Error::new(Kind::Corrupt, format!("{}: {e}", snapshot.display())))?;
    let Some(newest) = live.first() else { return Ok(None) };
    let v: serde_json::Value = match serde_json::from_slice(newest.value) {
        Ok(v) => v,
        // Not JSON (encrypted at rest, or protobuf): the version cannot be read.
        Err(_) => return Ok(Some(ClusterVersion::default())),
    };
    Ok(Some(parse_cluster_version(&v)))
}

fn parse_cluster_version(v: &serde_json::Value) -> ClusterVersion {
    let time = |s: Option<&serde_json::Value>| {
        s.and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let history: Vec<&serde_json::Value> = v
        .pointer("/status/history")
        .and_then(|h| h.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // Newest first, as the cluster-version operator keeps it.
    let completed =
        history.iter().find(|h| h.get("state").and_then(|s| s.as_str()) == Some("Completed"));
    let version =
        completed.and_then(|h| h.get("version")).and_then(|s| s.as_str()).map(str::to_string);
    let updating_to = history
        .first()
        .filter(|h| {
            h.get("state").and_then(|s| s.as_str()) == Some("Partial") && completed.is_some()
        })
        .and_then(|h| h.get("version"))
        .and_then(|s| s.as_str())
        .map(str::to_string);
    let installed = history
        .last()
        .and_then(|h| time(h.get("startedTime")))
        .or_else(|| time(v.pointer("/metadata/creationTimestamp")));
    ClusterVersion { version, updating_to, installed }
}

/// `static-pod-resources/<name>/…` of each directory, gzipped, 0600, as cluster-backup.sh's
/// `tar -cpzf` makes it (modes kept, symlinks stored as symlinks).
fn write_tarball(path: &Path, dirs: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::failure(format!("writing {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    for dir in dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        tar.append_dir_all(format!("static-pod-resources/{name}"), dir).map_err(fail)?;
    }
    let gz = tar.into_inner().map_err(fail)?;
    let file = gz.finish().map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_streams_compare_by_x_y_z() {
        assert_eq!(zstream("4.15.3"), "4.15.3");
        assert_eq!(zstream("4.15.3-rc.1"), "4.15.3");
        assert_ne!(zstream("4.15.3"), zstream("4.15.4"));
        assert_eq!(zstream("weird"), "weird");
    }

    #[test]
    fn cluster_version_history_gives_version_update_and_install_time() {
        let v = serde_json::json!({
            "metadata": {"creationTimestamp": "2026-01-01T10:00:00Z"},
            "status": {"history": [
                {"state": "Partial", "version": "4.15.4", "startedTime": "2026-03-01T00:00:00Z"},
                {"state": "Completed", "version": "4.15.3", "startedTime": "2026-02-01T00:00:00Z"},
                {"state": "Completed", "version": "4.15.1", "startedTime": "2026-01-01T09:50:00Z"}
            ]}
        });
        let cv = parse_cluster_version(&v);
        assert_eq!(cv.version.as_deref(), Some("4.15.3"));
        assert_eq!(cv.updating_to.as_deref(), Some("4.15.4"));
        assert_eq!(cv.installed.map(|t| t.to_rfc3339()), Some("2026-01-01T09:50:00+00:00".into()));
    }
}
