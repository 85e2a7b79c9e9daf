//! `etcdguard node restore`: the control-plane runbook as one command. The work (fetch and
//! check, plan, steps with rollback) is `etcdguard_workflow::node`; this prints the plan and
//! the outcome.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::node::{restore_node, NodeEvent, NodeOutcome, NodeRestoreOptions};

use crate::cmd::backup::RepoArg;

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
    #[arg(long, env = "ETCDGUARD_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Passphrase file of an encrypted repository (or ETCDGUARD_PASSPHRASE).
    #[arg(long, env = "ETCDGUARD_PASSPHRASE_FILE", value_name = "FILE")]
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

fn node_restore(args: NodeRestoreArgs) -> Result<()> {
    let repo = args.repo.clone().map(|url| RepoArg { repo: url, passphrase_file: args.passphrase_file.clone() }.spec());
    let opts = NodeRestoreOptions {
        snapshot: args.snapshot.clone(),
        backup: args.backup.clone(),
        repo,
        restore_pki: args.restore_pki,
        kubernetes_dir: args.kubernetes_dir.clone(),
        dry_run: args.dry_run,
        name: args.name.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
        skip_hash_check: args.skip_hash_check,
        wait_timeout: args.wait_timeout,
    };
    let outcome = restore_node(&opts, &mut |event| match event {
        NodeEvent::Note(line) => eprintln!("{line}"),
        NodeEvent::Planned { snapshot, status, plan, members } => {
            println!(
                "snapshot {}: revision {}, {} keys; restoring member {:?} ({} member{} in the new cluster)",
                snapshot.display(),
                status.revision,
                status.total_key,
                plan.restore.name,
                members,
                if members == 1 { "" } else { "s" }
            );
            println!("Plan:");
            for (i, step) in plan.steps().iter().enumerate() {
                println!("  {}. {step}", i + 1);
            }
        }
    })?;
    match outcome {
        NodeOutcome::DryRun => println!("Dry run: nothing was changed."),
        NodeOutcome::Restored(plan) => {
            println!("etcd is serving again on {} with the restored data.", plan.etcd.client_addrs.join(", "));
            if let Some(old) = &plan.old_data_dir {
                println!("The old data dir is kept in {}; remove it once the cluster is healthy.", old.display());
            }
            println!("Next: `etcdguard cluster health` (with the healthcheck client certificate), then `kubectl get nodes`.");
        }
    }
    Ok(())
}
