//! `etcdguard node restore`: the control-plane runbook as one command. The steps and their
//! rollback are `etcdguard_node::Plan`; this module checks the snapshot first, prints the plan
//! and runs the restore step with `snapshot restore`'s code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_node::park::{Park, ParkRequest, Unpark};
use etcdguard_node::{check_snapshot_version, NodeError, Plan, Request, RestoreSpec, Timings};
use etcdguard_repo::retention::parse_duration;
use etcdguard_storage::restore::{self, membership, Cluster, Destination, Flavor, Options};

use crate::cmd::snapshot::{check_snapshot, open_snapshot};
use crate::exit::{Code, Failure};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Restore etcd on this control-plane node from a snapshot, as the runbooks do by hand.
    ///
    /// For nodes whose etcd runs as a static pod (kubeadm, OpenShift, GKE on-prem and the
    /// like). The member name, data dir (through the pod's hostPath volume), peer URLs and
    /// --initial-cluster come from etcd's manifest (etcd.yaml, else OpenShift's etcd-pod.yaml,
    /// in --manifests-dir; or --etcd-manifest), also when its command is a `sh -c` script;
    /// flags override them. The snapshot is checked before anything is touched, and refused
    /// when it comes from a newer etcd minor than the manifest's image runs. Then:
    ///   1. every static pod manifest is moved to <kubernetes-dir>/manifests.etcdguard-<time>,
    ///      so the kubelet stops etcd, the API server and the rest of the control plane;
    ///   2. etcd's client port must close, its database lock go, and the API server's port
    ///      close (at most --wait-timeout);
    ///   3. the data dir is moved aside to <data-dir>.etcdguard-<time> (kept, never deleted);
    ///      with --restore-pki the PKI dir is swapped for the backup's the same way;
    ///   4. the snapshot is restored into the data dir (as `snapshot restore`), which then
    ///      gets the old data dir's owner, group, mode and SELinux context;
    ///   5. the manifests go back and etcdguard waits until the new etcd serves, then until
    ///      the API server is ready (its /readyz, or its port); each wait's time is reported.
    ///
    /// If a step before 5 fails, what was done is undone: the node is left as it was.
    /// On a node parked with `node park`, step 1 is already done, and a failure leaves the
    /// manifests parked.
    ///
    /// On a multi-member cluster, run `node park` on every control-plane node first, then
    /// this on every node with the same snapshot, the same --initial-cluster (all members)
    /// and the same new --initial-cluster-token.
    ///
    /// Examples:
    ///   etcdguard node restore /root/snapshot.db --dry-run
    ///   etcdguard node restore /root/snapshot.db --bump-revision 1000000000 --mark-compacted
    ///   etcdguard node restore --backup latest --repo s3://etcd-backups/prod --restore-pki
    #[command(verbatim_doc_comment)]
    Restore(NodeRestoreArgs),
    /// Stop etcd and the API server on this node, and wait until they are down.
    ///
    /// Moves etcd's and the API server's static pod manifests out of --manifests-dir, to
    /// <manifests-dir>.etcdguard-<time> (where `node restore` parks them), so the kubelet stops
    /// both pods; then waits until etcd's client ports are closed, its database lock is gone
    /// and the API server's port is closed. Running it again is fine: what is parked stays.
    ///
    /// Where it fits: recovering a cluster that lost quorum. Park every control-plane node
    /// first, so no old member or API server is running when the restored data comes back;
    /// then `node restore` each node (it uses the parked manifests and puts them back); a
    /// node you decide not to restore gets `node unpark`.
    ///
    /// Examples:
    ///   etcdguard node park --dry-run
    ///   etcdguard node park                      # on every control-plane node, first
    ///   etcdguard node restore /root/snapshot.db # then on each node
    #[command(verbatim_doc_comment)]
    Park(NodeParkArgs),
    /// Put manifests parked by `node park` back, and wait until etcd and the API server serve.
    ///
    /// Moves every file of <manifests-dir>.etcdguard-<time> back into --manifests-dir (and
    /// refuses if a file of that name is there already), then waits until etcd serves and
    /// the API server is ready (/readyz, or its port when /readyz cannot be read). With
    /// nothing parked it says so and changes nothing.
    ///
    /// Examples:
    ///   etcdguard node unpark --dry-run
    ///   etcdguard node unpark --timeout 10m
    #[command(verbatim_doc_comment)]
    Unpark(NodeParkArgs),
}

#[derive(Args)]
pub struct NodeParkArgs {
    /// The kubelet's static pod manifests dir (its staticPodPath).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// etcd's manifest, when it is neither etcd.yaml nor etcd-pod.yaml.
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// How long to wait for the pods to stop (park) or serve (unpark).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print what would be moved and waited for, and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
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
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository (or ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Also put the backup's PKI directory in place of <kubernetes-dir>/pki (the current one
    /// is kept as pki.etcdguard-<time>): for a node rebuilt without its certificates.
    #[arg(long, requires = "backup")]
    pub restore_pki: bool,
    /// Kubernetes configuration directory; the PKI is its pki/.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes")]
    pub kubernetes_dir: PathBuf,
    /// The kubelet's static pod manifests dir [default: --etcd-manifest's dir, else
    /// <kubernetes-dir>/manifests].
    #[arg(long, value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// etcd's static pod manifest, any name [default: etcd.yaml, else etcd-pod.yaml, in
    /// --manifests-dir].
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// Print the plan (what would be moved, waited for and restored, and where) and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Member name [default: --name of etcd.yaml].
    #[arg(long)]
    pub name: Option<String>,
    /// Every member of the restored cluster [default: --initial-cluster of etcd.yaml].
    #[arg(long, value_name = "NAME=URL,…")]
    pub initial_cluster: Option<String>,
    /// Token of the restored cluster [default: etcd.yaml's, else etcd-cluster].
    #[arg(long, value_name = "TOKEN")]
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
        NodeCommand::Park(a) => node_park(a),
        NodeCommand::Unpark(a) => node_unpark(a),
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
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.etcd_manifest.clone(),
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
    if let Some(warning) = check_snapshot_version(&plan.etcd, status.storage_version.as_deref(), status.cluster_version.as_deref()).map_err(node_failure)? {
        eprintln!("warning: {warning}");
    }
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
        Ok(timings) => {
            println!("etcd is serving again on {} with the restored data.", plan.etcd.client_addrs.join(", "));
            print_timings(&timings);
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

fn print_timings(t: &Timings) {
    let steps: Vec<String> = t.steps.iter().map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64())).collect();
    println!("Times: {}.", steps.join(", "));
    if let Some(how) = &t.apiserver {
        println!("API server: {how}.");
    }
}

fn node_park(args: NodeParkArgs) -> Result<()> {
    let park = Park::build(&park_request(&args)).map_err(node_failure)?;
    print_steps(&park.steps(), args.dry_run);
    if args.dry_run {
        return Ok(());
    }
    let timings = park.execute(&mut |line| eprintln!("{line}")).map_err(node_failure)?;
    println!("Parked: etcd and the API server are down on this node; their manifests are in {}.", park.parked_dir.display());
    print_timings(&timings);
    println!("Next: park the other control-plane nodes, then `etcdguard node restore SNAPSHOT` here (or `etcdguard node unpark` to bring this node back as it was).");
    Ok(())
}

fn node_unpark(args: NodeParkArgs) -> Result<()> {
    let Some(unpark) = Unpark::build(&park_request(&args)).map_err(node_failure)? else {
        println!("Nothing is parked: etcd's manifest is in {}.", args.manifests_dir.display());
        return Ok(());
    };
    print_steps(&unpark.steps(), args.dry_run);
    if args.dry_run {
        return Ok(());
    }
    let timings = unpark.execute(&mut |line| eprintln!("{line}")).map_err(node_failure)?;
    println!("Unparked: etcd serves on {} again.", unpark.etcd.client_addrs.join(", "));
    print_timings(&timings);
    Ok(())
}

fn park_request(args: &NodeParkArgs) -> ParkRequest {
    ParkRequest {
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.etcd_manifest.clone(),
        stamp: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        wait_timeout: args.timeout,
    }
}

fn print_steps(steps: &[String], dry_run: bool) {
    println!("Plan:");
    for (i, step) in steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
    if dry_run {
        println!("Dry run: nothing was changed.");
    }
}

fn node_failure(e: NodeError) -> Failure {
    let code = match &e {
        NodeError::Manifest(..) | NodeError::Preflight(_) => Code::Usage,
        NodeError::StillRunning { .. } => Code::Locked,
        NodeError::NotStarted { .. } | NodeError::NotReady { .. } => Code::Unreachable,
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
