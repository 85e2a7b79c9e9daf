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
    #[command(verbatim_doc_comment)]
    Restore(NodeRestoreArgs),
}

#[derive(Args)]
pub struct NodeRestoreArgs {
    /// Snapshot file (from `snapshot save`, `backup restore --to-file` or etcdctl).
    pub snapshot: PathBuf,
    /// Kubernetes configuration directory; the static pod manifests are in its manifests/.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes")]
    pub kubernetes_dir: PathBuf,
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
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(Code::Usage, msg)
}

fn node_restore(args: NodeRestoreArgs) -> Result<()> {
    if (args.bump_revision > 0) != args.mark_compacted {
        return Err(usage("--bump-revision and --mark-compacted go together (e.g. --bump-revision 1000000000 --mark-compacted)").into());
    }
    let request = Request {
        kubernetes_dir: args.kubernetes_dir.clone(),
        stamp: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
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
    let (status, _) = check_snapshot(&args.snapshot, args.skip_hash_check)?;
    println!(
        "snapshot {}: revision {}, {} keys; restoring member {:?} ({} member{} in the new cluster)",
        args.snapshot.display(),
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
        skip_hash_check: args.skip_hash_check,
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
        flavor: Flavor::V3_5,
    };
    let mut restore_error = None;
    let mut do_restore = |spec: &RestoreSpec| -> Result<(), String> {
        let dest = Destination::Member { name: spec.name.clone(), data_dir: spec.data_dir.clone(), wal_dir: spec.wal_dir.clone() };
        let result = open_snapshot(&args.snapshot)
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
