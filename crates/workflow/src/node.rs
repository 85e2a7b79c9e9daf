//! `node restore`: a backup fetched and checked (or a snapshot file checked) before anything
//! on the node is touched, then `etcdguard_node::Plan` carried out with `snapshot restore`'s
//! code as its restore step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcdguard_node::quorum::{probe, probe_targets, KnownMember, ProbeResult};
use etcdguard_node::{check_snapshot_version, NodeError, Plan, Request, RestoreSpec, Timings};
use etcdguard_storage::restore::{self, membership, Cluster, Destination, Flavor, Options};
use etcdguard_storage::Status;

use crate::error::{node_error, restore_error, Error, Kind, Result};
use crate::repo::{resolve, RepoSpec};
use crate::snapshot::{check_snapshot, open_snapshot};

/// The flags of `node restore`.
pub struct NodeRestoreOptions {
    /// A snapshot file, or `backup` from `repo`.
    pub snapshot: Option<PathBuf>,
    /// Backup id, unique prefix or `latest` of `repo`.
    pub backup: Option<String>,
    pub repo: Option<RepoSpec>,
    /// Point in time: the database at this revision or time, from `repo`'s newest full
    /// backup before it and its continuous changes (instead of `backup`).
    pub at: Option<crate::capture::At>,
    /// Put the backup's PKI directory in place too.
    pub restore_pki: bool,
    pub kubernetes_dir: PathBuf,
    /// The static pod manifests [default: `etcd_manifest`'s dir, else `<kubernetes_dir>/manifests`].
    pub manifests_dir: Option<PathBuf>,
    /// etcd's manifest [default: `etcd.yaml`, else `etcd-pod.yaml`].
    pub etcd_manifest: Option<PathBuf>,
    pub dry_run: bool,
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_cluster_token: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    pub skip_hash_check: bool,
    pub wait_timeout: Duration,
    /// Restore a one-member cluster of this member only, with a fresh cluster token: the
    /// first step of recovering from quorum loss (then `node join` on the other nodes).
    pub new_cluster: bool,
    /// Go on although a safety check refuses: an old member still answers (`new_cluster`),
    /// or the snapshot's encryption keys are not in the configuration that will be in place.
    pub force: bool,
    /// The EncryptionConfiguration to check the snapshot's key names against [default: the
    /// one the API server manifest names with `--encryption-provider-config`].
    pub encryption_config: Option<PathBuf>,
    /// This node's name and IP, for manifest values from `valueFrom.fieldRef`.
    pub node: etcdguard_node::NodeFacts,
    /// Where etcd runs on this node.
    pub layout: Layout,
}

/// How etcd is laid out on the node.
#[derive(Debug, Clone, Default)]
pub enum Layout {
    /// A static pod (kubeadm, OpenShift, GKE on-prem …): read from its manifest.
    #[default]
    StaticPod,
    /// k3s or RKE2 with embedded etcd (restored by `rancher::restore_rancher`).
    Rancher {
        distro: etcdguard_node::rancher::Distro,
        /// The server's `--data-dir` (default `/var/lib/rancher/<distro>`).
        data_dir: Option<PathBuf>,
        /// Its config file (default `/etc/rancher/<distro>/config.yaml`).
        config: Option<PathBuf>,
    },
}

/// What `node restore` does, as it happens.
pub enum NodeEvent<'a> {
    /// A line for the operator (fetching, each step as it is taken).
    Note(&'a str),
    /// The snapshot is checked and the plan built; nothing is changed yet.
    Planned {
        snapshot: &'a Path,
        status: &'a Status,
        plan: &'a Plan,
        members: usize,
        probes: &'a [ProbeResult],
    },
    /// k3s/RKE2: the snapshot is checked and the plan built; nothing is changed yet.
    RancherPlanned {
        snapshot: &'a Path,
        status: &'a Status,
        plan: &'a etcdguard_node::rancher::RancherPlan,
    },
}

/// How a `node restore` that did not fail ended.
pub enum NodeOutcome {
    DryRun,
    /// etcd (and the API server) serve again with the restored data; how long each wait took.
    Restored(Box<Plan>, Timings),
    /// k3s/RKE2: the data dir is restored and the reset flag written; the server is the
    /// operator's to start.
    RancherRestored(Box<etcdguard_node::rancher::RancherPlan>),
}

/// The restore's options: the layout of the release that wrote the snapshot (the node's etcd
/// is that or newer) and the revision flags.
pub(crate) fn restore_options(
    snapshot: &Path,
    opts: &NodeRestoreOptions,
    skip_hash_check: bool,
) -> Options {
    let flavor = open_snapshot(snapshot)
        .ok()
        .map(|s| crate::restore::flavor_for(crate::restore::writer_of(&s).as_ref(), None))
        .unwrap_or(Flavor::V3_5);
    Options {
        skip_hash_check,
        bump_revision: opts.bump_revision,
        mark_compacted: opts.mark_compacted,
        flavor,
        ..Options::default()
    }
}

/// Restores `snapshot` into the member `spec` names (the restore step of a node's plan):
/// the line to show, or why it failed.
pub(crate) fn restore_member(
    snapshot: &Path,
    cluster: &Cluster,
    options: &Options,
    spec: &RestoreSpec,
) -> Result<String> {
    let dest = Destination::Member {
        name: spec.name.clone(),
        data_dir: spec.data_dir.clone(),
        wal_dir: spec.wal_dir.clone(),
    };
    let report = open_snapshot(snapshot).and_then(|snapshot| {
        restore::restore(&snapshot, cluster, &dest, options).map_err(restore_error)
    })?;
    Ok(format!("      restored revision {} (cluster id {:x})", report.revision, report.cluster.id))
}

/// Runs `node restore` on a static-pod node (k3s/RKE2: `rancher::restore_rancher`). On failure
/// before the manifests are back, the node is left as it was.
pub fn restore_node(
    opts: &NodeRestoreOptions,
    on: &mut dyn FnMut(NodeEvent<'_>),
) -> Result<NodeOutcome> {
    if (opts.bump_revision > 0) != opts.mark_compacted {
        return Err(Error::usage("--bump-revision and --mark-compacted go together (e.g. --bump-revision 1000000000 --mark-compacted)"));
    }
    if let Layout::Rancher { distro, .. } = &opts.layout {
        return Err(Error::usage(format!(
            "a {} server has no static pod: its restore is rancher::restore_rancher",
            distro.name()
        )));
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    if opts.new_cluster && opts.initial_cluster.is_some() {
        return Err(Error::usage(
            "--new-cluster restores a cluster of this member only; leave out --initial-cluster",
        ));
    }
    // A fresh token: the new cluster's id must differ from the old one's, so an old member
    // that comes back by mistake is refused by the new members instead of joining them.
    let token = match (&opts.initial_cluster_token, opts.new_cluster) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => Some(format!("etcdguard-{}-{}", stamp.to_lowercase(), std::process::id())),
        (None, false) => None,
    };
    // A backup is fetched first, into a private dir beside the PKI (same filesystem, so the
    // PKI is moved into place, not copied), and removed at the end whatever happens.
    let staging = match (&opts.backup, opts.at) {
        (_, Some(_)) => Some(fetch_backup(opts, "", &stamp, &opts.kubernetes_dir, on)?),
        (Some(id), None) => Some(fetch_backup(opts, id, &stamp, &opts.kubernetes_dir, on)?),
        (None, None) => None,
    };
    let snapshot = match (&staging, &opts.snapshot) {
        (Some(s), _) => s.snapshot.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(Error::usage("give a snapshot file or --backup ID")),
    };
    let request = Request {
        kubernetes_dir: opts.kubernetes_dir.clone(),
        manifests_dir: opts.manifests_dir.clone(),
        etcd_manifest: opts.etcd_manifest.clone(),
        pki_from: staging.as_ref().and_then(|s| s.pki.clone()),
        stamp,
        name: opts.name.clone(),
        initial_cluster: opts.initial_cluster.clone(),
        initial_cluster_token: token,
        initial_advertise_peer_urls: opts.initial_advertise_peer_urls.clone(),
        wait_timeout: opts.wait_timeout,
        new_cluster: opts.new_cluster,
        node: opts.node.clone(),
    };
    let plan = Plan::build(&request).map_err(node_error)?;
    // The restore's own flags must hold before the control plane is stopped.
    let cluster = Cluster::new(&plan.restore.initial_cluster, &plan.restore.initial_cluster_token)
        .map_err(|e| Error::usage(e.0))?;
    let advertise = membership::parse_url_list(&plan.restore.initial_advertise_peer_urls)
        .map_err(|e| Error::usage(e.0))?;
    cluster.verify_local(&plan.restore.name, &advertise).map_err(|e| Error::usage(e.0))?;
    let skip_hash_check = opts.skip_hash_check || staging.as_ref().is_some_and(|s| s.no_trailer);
    let (status, _) = check_snapshot(&snapshot, skip_hash_check)?;
    // A snapshot of a newer etcd minor than the manifest's image is refused before anything moves.
    if let Some(warning) = check_snapshot_version(
        &plan.etcd,
        status.storage_version.as_deref(),
        status.cluster_version.as_deref(),
    )
    .map_err(node_error)?
    {
        on(NodeEvent::Note(&format!("warning: {warning}")));
    }
    check_encryption_keys(opts, &plan, &snapshot, on)?;
    let probes = match opts.new_cluster {
        true => probe_old_members(&plan, &snapshot, &advertise)?,
        false => Vec::new(),
    };
    on(NodeEvent::Planned {
        snapshot: &snapshot,
        status: &status,
        plan: &plan,
        members: cluster.members.len(),
        probes: &probes,
    });
    let answering: Vec<String> = probes
        .iter()
        .filter(|p| p.answered)
        .map(|p| format!("{} ({} URL {})", p.target.member, p.target.kind, p.target.url))
        .collect();
    if !answering.is_empty() {
        if !opts.force {
            return Err(Error::new(
                Kind::Refused,
                format!(
                    "not restoring a new one-member cluster: old member{} still answer{}: {}; nothing was changed",
                    if answering.len() == 1 { "" } else { "s" },
                    if answering.len() == 1 { "s" } else { "" },
                    answering.join(", ")
                ),
            )
            .with_hint(
                "run `etcdguard node park` on every other control-plane node first (a running old member would go on with its own copy of the data); --force if those URLs belong to something else",
            ));
        }
        on(NodeEvent::Note(&format!(
            "warning: --force: going on although {} answer",
            answering.join(", ")
        )));
    }
    if opts.dry_run {
        return Ok(NodeOutcome::DryRun);
    }
    let options = restore_options(&snapshot, opts, skip_hash_check);
    let mut restore_error_seen: Option<Error> = None;
    // The step lines and the restore's own line go out in the order they happen.
    let outcome = {
        let on_cell = std::cell::RefCell::new(&mut *on);
        let mut restore_step = |spec: &RestoreSpec| -> Result<(), String> {
            match restore_member(&snapshot, &cluster, &options, spec) {
                Ok(line) => {
                    (on_cell.borrow_mut())(NodeEvent::Note(&line));
                    Ok(())
                }
                Err(e) => {
                    let text = e.to_string();
                    restore_error_seen = Some(e);
                    Err(text)
                }
            }
        };
        plan.execute(&mut restore_step, &mut |line| (on_cell.borrow_mut())(NodeEvent::Note(line)))
    };
    match outcome {
        Ok(timings) => Ok(NodeOutcome::Restored(Box::new(plan), timings)),
        Err(NodeError::Restore(text)) => {
            let rolled_back = "the old data directory and the manifests were put back";
            match restore_error_seen {
                Some(e) => Err(e.context(format!("restore failed; {rolled_back}"))),
                None => Err(node_error(NodeError::Restore(text))),
            }
        }
        Err(e) => Err(node_error(e)),
    }
}

/// The snapshot's encryption key names against the configuration the node's API server
/// will use (`--encryption-config`, else its manifest's `--encryption-provider-config`).
fn check_encryption_keys(
    opts: &NodeRestoreOptions,
    plan: &Plan,
    snapshot: &Path,
    on: &mut dyn FnMut(NodeEvent<'_>),
) -> Result<()> {
    let in_place = match (&opts.encryption_config, &plan.apiserver) {
        (Some(p), _) => crate::keycheck::InPlace::file(p)?,
        (None, Some(api)) => crate::keycheck::InPlace::from_apiserver_manifest(&api.manifest)?,
        (None, None) => {
            on(NodeEvent::Note("note: no kube-apiserver manifest on this node: encryption keys not checked (--encryption-config FILE checks them)"));
            return Ok(());
        }
    };
    let check = crate::keycheck::check(snapshot, &in_place)?;
    crate::keycheck::enforce(&check, opts.force, &mut |n| on(NodeEvent::Note(n)))
}

/// The old cluster's other members (the manifest's `--initial-cluster`, the snapshot's
/// member list), each URL tried once.
fn probe_old_members(
    plan: &Plan,
    snapshot: &Path,
    own_peer_urls: &[String],
) -> Result<Vec<ProbeResult>> {
    let file = open_snapshot(snapshot)?;
    let db = file.db().map_err(|e| crate::error::db_error(snapshot, e))?;
    let known: Vec<KnownMember> = etcdguard_storage::members::stored_members(&db)
        .map_err(|e| Error::new(Kind::Corrupt, format!("{}: {e}", snapshot.display())))?
        .into_iter()
        .map(|m| KnownMember {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        })
        .collect();
    let own: Vec<String> = own_peer_urls.iter().map(|u| u.to_string()).collect();
    let targets = probe_targets(&plan.etcd, &plan.restore.name, &own, &known);
    Ok(probe(&targets, Duration::from_secs(1)))
}

/// A backup fetched for a node restore; the directory goes when this is dropped.
pub(crate) struct Staging {
    dir: PathBuf,
    pub(crate) snapshot: PathBuf,
    pki: Option<PathBuf>,
    /// The k3s/RKE2 server token the backup keeps (`files/token`), for that layout.
    pub(crate) token: Option<PathBuf>,
    /// The backed-up file had no sha256 trailer (a copied member/snap/db).
    pub(crate) no_trailer: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fetches backup `id` (or the `--at` point) into a private dir in `parent`.
pub(crate) fn fetch_backup(
    opts: &NodeRestoreOptions,
    id: &str,
    stamp: &str,
    parent: &Path,
    on: &mut dyn FnMut(NodeEvent<'_>),
) -> Result<Staging> {
    use std::os::unix::fs::DirBuilderExt;
    let spec = opts.repo.clone().unwrap_or_else(|| RepoSpec::new(""));
    let mut repo = spec.open_unlocked()?;
    let plan = match opts.at {
        Some(at) => {
            if repo.is_encrypted() {
                spec.unlock(&mut repo)?;
            }
            Some(crate::capture::plan_at(&repo, at, None)?)
        }
        None => None,
    };
    let m = match &plan {
        Some(p) => p.base.clone(),
        None => resolve(&repo, id)?,
    };
    let dir = parent.join(format!(".etcdguard-restore-{stamp}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::failure(format!("{}: {e}", dir.display())))?;
    let mut staging = Staging {
        snapshot: dir.join("snapshot.db"),
        dir,
        pki: None,
        token: None,
        no_trailer: m.etcd.trailer == "absent",
    };
    on(NodeEvent::Note(&format!(
        "fetching backup {} ({}, revision {}) from {}",
        m.id,
        m.created.format("%Y-%m-%d %H:%M:%S UTC"),
        m.etcd.revision,
        repo.location()
    )));
    let index = repo.load_index()?;
    match &plan {
        Some(plan) => {
            let r = crate::capture::materialize(&repo, plan, &staging.snapshot, &staging.dir)?;
            // The point-in-time file gets a fresh trailer.
            staging.no_trailer = false;
            on(NodeEvent::Note(&format!(
                "point in time: {} changes in {} revisions replayed after revision {}: revision {}",
                r.events, r.revisions, r.from_revision, r.to_revision
            )));
        }
        None => repo.restore_snapshot_to_file(&index, &m.snapshot, &staging.snapshot, 0o600)?,
    }
    let rancher = matches!(opts.layout, Layout::Rancher { .. });
    if rancher && !m.files.is_empty() {
        let files = staging.dir.join("files");
        repo.restore_files(&index, &m, &files)?;
        // `backup import --file …/server/token` keeps it as files/token.
        staging.token = Some(files.join("files/token")).filter(|p| p.is_file());
    }
    if opts.restore_pki {
        let files = staging.dir.join("files");
        repo.restore_files(&index, &m, &files)?;
        let pki = files.join("pki");
        if !pki.is_dir() {
            return Err(Error::usage(format!(
                "backup {} holds no PKI directory (it was taken without --pki-dir)",
                m.id
            )));
        }
        staging.pki = Some(pki);
    }
    Ok(staging)
}
