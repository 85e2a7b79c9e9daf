//! `etcdguard node restore`: the control-plane runbook as one command. The steps and their
//! rollback are `etcdguard_node::Plan`; this module checks the snapshot first, prints the plan
//! and runs the restore step with `snapshot restore`'s code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_node::{NodeError, Plan, Request, RestoreSpec};
use etcdguard_repo::retention::parse_duration;
use etcdguard_storage::restore::{self, membership, Cluster, Destination, Flavor, Options};

use crate::cmd::snapshot::{check_snapshot, open_snapshot};
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Restore etcd on this control-plane node from a snapshot, as the runbooks do by hand.
    ///
    /// For nodes whose etcd runs as a static pod (kubeadm and the like). The member name,
    /// data dir (through the pod's hostPath volume), peer URLs and --initial-cluster come from
    /// <kubernetes-dir>/manifests/etcd.yaml; flags override them. The snapshot is checked
    /// before anything is touched. Then:
    ///   1. every static pod manifest is moved to <kubernetes-dir>/manifests.etcdguard-<time>,
    ///      so the kubelet stops etcd, the API server and the rest of the control plane;
    ///   2. etcd's client port must close, its database lock go, and the API server's port
    ///      close (at most --wait-timeout);
    ///   3. the data dir is moved aside to <data-dir>.etcdguard-<time> (kept, never deleted);
    ///      with --restore-pki the PKI dir is swapped for the backup's the same way;
    ///   4. the snapshot is restored into the data dir (as `snapshot restore`);
    ///   5. the manifests go back and etcdguard waits until the new etcd serves.
    ///
    /// If a step before 5 fails, what was done is undone: the node is left as it was.
    ///
    /// On a multi-member cluster, run it on every control-plane node with the same snapshot,
    /// the same --initial-cluster (all members) and the same new --initial-cluster-token.
    ///
    /// Examples:
    ///   etcdguard node restore /root/snapshot.db --dry-run
    ///   etcdguard node restore /root/snapshot.db --bump-revision 1000000000 --mark-compacted
    ///   etcdguard node restore --backup latest --repo s3://etcd-backups/prod --restore-pki
    #[command(verbatim_doc_comment)]
    Restore(NodeRestoreArgs),
}

#[derive(Args)]
pub struct NodeRestoreArgs {
    /// Snapshot file (from `snapshot save`, `backup restore --to-file` or etcdctl); or give
    /// --backup instead.
    #[arg(required_unless_present = "backup", conflicts_with = "backup")]
    pub snapshot: Option<PathBuf>,
    /// Restore this backup (id, unique prefix or `latest`) of --repo: its snapshot is
    /// downloaded and checked before anything on the node is touched.
    #[arg(long, value_name = "ID", requires = "repo")]
    pub backup: Option<String>,
    /// The backup repository of --backup.
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL", value_parser = crate::args::repo)]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository (or ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE", value_parser = crate::args::passphrase_file)]
    pub passphrase_file: Option<PathBuf>,
    /// Also put the backup's PKI directory in place of <kubernetes-dir>/pki (the current one
    /// is kept as pki.etcdguard-<time>): for a node rebuilt without its certificates.
    #[arg(long, requires = "backup")]
    pub restore_pki: bool,
    /// Kubernetes configuration directory; the static pod manifests are in its manifests/.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes")]
    pub kubernetes_dir: PathBuf,
    /// Print the plan (what would be moved, waited for and restored, and where) and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Member name [default: --name of etcd.yaml].
    #[arg(long, value_parser = crate::args::non_empty)]
    pub name: Option<String>,
    /// Every member of the restored cluster [default: --initial-cluster of etcd.yaml].
    #[arg(long, value_name = "NAME=URL,…")]
    pub initial_cluster: Option<String>,
    /// Token of the restored cluster [default: etcd.yaml's, else etcd-cluster].
    #[arg(long, value_name = "TOKEN", value_parser = crate::args::non_empty)]
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs [default: etcd.yaml's].
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Raise the revision by this much (needs --mark-compacted); see `snapshot restore --help`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub bump_revision: u64,
    /// Mark every revision up to the bumped one compacted (needs --bump-revision).
    #[arg(long)]
    pub mark_compacted: bool,
    /// Do not compare the sha256 trailer (for a copied member/snap/db).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// How long to wait for the pods to stop, and for the restored etcd to serve.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

pub fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Restore(a) => node_restore(a),
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(Code::Usage, msg)
}

fn node_restore(args: NodeRestoreArgs) -> Result<()> {
    if (args.bump_revision > 0) != args.mark_compacted {
        return Err(usage("--bump-revision and --mark-compacted go together (e.g. --bump-revision 1000000000 --mark-compacted)").into());
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    // A backup is fetched first, into a private dir beside the PKI (same filesystem, so the
    // PKI is moved into place, not copied), and removed at the end whatever happens.
    let staging = match &args.backup {
        Some(id) => Some(fetch_backup(&args, id, &stamp)?),
        None => None,
    };
    let snapshot = match (&staging, &args.snapshot) {
        (Some(s), _) => s.snapshot.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(usage("give a snapshot file or --backup ID").into()),
    };
    let request = Request {
        kubernetes_dir: args.kubernetes_dir.clone(),
        pki_from: staging.as_ref().and_then(|s| s.pki.clone()),
        stamp,
        name: args.name.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        wait_timeout: args.wait_timeout,
    };
    let plan = Plan::build(&request).map_err(node_failure)?;
    // The restore's own flags must hold before the control plane is stopped.
    let cluster = Cluster::new(&plan.restore.initial_cluster, &plan.restore.initial_cluster_token).map_err(|e| usage(e.0))?;
    let advertise = membership::parse_url_list(&plan.restore.initial_advertise_peer_urls).map_err(|e| usage(e.0))?;
    cluster.verify_local(&plan.restore.name, &advertise).map_err(|e| usage(e.0))?;
    let skip_hash_check = args.skip_hash_check || staging.as_ref().is_some_and(|s| s.no_trailer);
    let (status, _) = check_snapshot(&snapshot, skip_hash_check)?;
    println!(
        "snapshot {}: revision {}, {} keys; restoring member {:?} ({} member{} in the new cluster)",
        snapshot.display(),
        status.revision,
        status.total_key,
        plan.restore.name,
        cluster.members.len(),
        if cluster.members.len() == 1 { "" } else { "s" }
    );
    println!("Plan:");
    for (i, step) in plan.steps().iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
    if args.dry_run {
        println!("Dry run: nothing was changed.");
        return Ok(());
    }
    let opts = Options {
        skip_hash_check,
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
        flavor: Flavor::V3_5,
    };
    let mut restore_error = None;
    let mut do_restore = |spec: &RestoreSpec| -> Result<(), String> {
        let dest = Destination::Member { name: spec.name.clone(), data_dir: spec.data_dir.clone(), wal_dir: spec.wal_dir.clone() };
        let result = open_snapshot(&snapshot)
            .map_err(anyhow::Error::from)
            .and_then(|snapshot| restore::restore(&snapshot, &cluster, &dest, &opts).map_err(crate::cmd::restore::failure));
        match result {
            Ok(report) => {
                eprintln!("      restored revision {} (cluster id {:x})", report.revision, report.cluster.id);
                Ok(())
            }
            Err(e) => {
                let text = format!("{e:#}");
                restore_error = Some(e);
                Err(text)
            }
        }
    };
    let outcome = plan.execute(&mut do_restore, &mut |line| eprintln!("{line}"));
    match outcome {
        Ok(()) => {
            println!("etcd is serving again on {} with the restored data.", plan.etcd.client_addrs.join(", "));
            if let Some(old) = &plan.old_data_dir {
                println!("The old data dir is kept in {}; remove it once the cluster is healthy.", old.display());
            }
            println!("Next: `etcdguard cluster health` (with the healthcheck client certificate), then `kubectl get nodes`.");
            Ok(())
        }
        Err(NodeError::Restore(text)) => {
            let rolled_back = "the old data directory and the manifests were put back";
            match restore_error {
                Some(e) => Err(e.context(format!("restore failed; {rolled_back}"))),
                None => Err(node_failure(NodeError::Restore(text)).into()),
            }
        }
        Err(e) => Err(node_failure(e).into()),
    }
}

fn node_failure(e: NodeError) -> Failure {
    let code = match &e {
        NodeError::Manifest(..) | NodeError::Preflight(_) => Code::Usage,
        NodeError::StillRunning { .. } => Code::Locked,
        NodeError::NotStarted { .. } => Code::Unreachable,
        NodeError::Restore(_) | NodeError::Io(_) => Code::Failure,
    };
    Failure::new(code, e.to_string())
}

/// A backup fetched for a node restore; the directory goes when this is dropped.
struct Staging {
    dir: PathBuf,
    snapshot: PathBuf,
    pki: Option<PathBuf>,
    /// The backed-up file had no sha256 trailer (a copied member/snap/db).
    no_trailer: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fetch_backup(args: &NodeRestoreArgs, id: &str, stamp: &str) -> Result<Staging> {
    use std::os::unix::fs::DirBuilderExt;
    let repo_arg = crate::cmd::backup::RepoArg { repo: args.repo.clone().unwrap_or_default(), passphrase_file: args.passphrase_file.clone() };
    let repo = crate::cmd::backup::open_repo_unlocked(&repo_arg)?;
    let id = repo.resolve(id).map_err(crate::cmd::backup::failure)?;
    let m = repo.manifest(&id).map_err(crate::cmd::backup::failure)?;
    let dir = args.kubernetes_dir.join(format!(".etcdguard-restore-{stamp}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Failure::new(Code::Failure, format!("{}: {e}", dir.display())))?;
    let mut staging = Staging { snapshot: dir.join("snapshot.db"), dir, pki: None, no_trailer: m.etcd.trailer == "absent" };
    eprintln!("fetching backup {} ({}, revision {}) from {}", m.id, m.created.format("%Y-%m-%d %H:%M:%S UTC"), m.etcd.revision, repo.location());
    let index = repo.load_index().map_err(crate::cmd::backup::failure)?;
    repo.restore_part_to_file(&index, &m.snapshot, &staging.snapshot, 0o600).map_err(crate::cmd::backup::failure)?;
    if args.restore_pki {
        let files = staging.dir.join("files");
        repo.restore_files(&index, &m, &files).map_err(crate::cmd::backup::failure)?;
        let pki = files.join("pki");
        if !pki.is_dir() {
            return Err(usage(format!("backup {} holds no PKI directory (it was taken without --pki-dir)", m.id)).into());
        }
        staging.pki = Some(pki);
    }
    Ok(staging)
}
