//! `etcdguard node restore`: the control-plane runbook as one command. The work (fetch and
//! check, plan, steps with rollback) is `etcdguard_workflow::node`; this prints the plan and
//! the outcome.

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use etcdguard_node::park::{Park, ParkRequest, Unpark};
use etcdguard_node::Timings;
use etcdguard_repo::retention::parse_duration;
use etcdguard_workflow::error::node_error;
use etcdguard_workflow::join::{join_node, JoinEvent, JoinOptions, JoinOutcome};
use etcdguard_workflow::node::{restore_node, Layout, NodeEvent, NodeOutcome, NodeRestoreOptions};
use etcdguard_workflow::rancher::restore_rancher;

use crate::args::ConnArgs;
use crate::args::RepoArg;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Restore etcd on this control-plane node from a snapshot, as the runbooks do by hand.
    ///
    /// For nodes whose etcd runs as a static pod (kubeadm, OpenShift, GKE on-prem and the
    /// like). The member name, data dir (through the pod's hostPath volume), peer URLs and
    /// --initial-cluster come from etcd's manifest (etcd.yaml, else OpenShift's etcd-pod.yaml,
    /// in --manifests-dir; or --etcd-manifest), also when its command is a `sh -c` script;
    /// flags override them. ${VAR}, $VAR and $(VAR) are filled in from the container's env
    /// (valueFrom.fieldRef spec.nodeName / status.hostIP from this host, or --node-name /
    /// --node-ip) and the script's own assignments (export ETCD_NAME=…); a value only the
    /// running pod knows (OpenShift's ETCD_INITIAL_CLUSTER=$(discover-etcd-initial-cluster …))
    /// must be given, or use --new-cluster. An --etcd-manifest outside --manifests-dir is a
    /// copy the values are read from; the kubelet's own manifest is the one parked. The
    /// snapshot is checked before anything is touched, and refused when it comes from a newer
    /// etcd minor than the manifest's image runs. Then:
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
    /// A cluster that lost quorum ("restore one, grow back"):
    ///   1. `etcdguard node park` on every control-plane node;
    ///   2. `etcdguard node restore SNAPSHOT --new-cluster` on one of them: a cluster of this
    ///      member only, with a fresh cluster token. Before anything is touched it checks
    ///      that no other member of the old cluster (the manifest's --initial-cluster, the
    ///      snapshot's member list) answers on its peer or client URL, and refuses (exit 17)
    ///      while one does; --force overrides. --dry-run shows each URL probed;
    ///   3. `etcdguard node join --endpoints <this member's client URL>` on each other node.
    ///
    /// Encryption at rest: before anything is touched, every key name the snapshot's
    /// encrypted values use (k8s:enc:<provider>:v1:<name>:) must be in the API server's
    /// EncryptionConfiguration (its --encryption-provider-config, or on OpenShift the
    /// encryption-provider-config of its --openshift-config file; or --encryption-config) and
    /// one value per key must decrypt; otherwise it refuses (exit 17); --force goes on.
    /// (Restoring every node with the same snapshot, the same --initial-cluster of all
    /// members and one new --initial-cluster-token also works, but needs all nodes at once.)
    ///
    /// k3s and RKE2 (--layout k3s|rke2): their etcd is embedded in the server, so there is no
    /// manifest and nothing to park: stop the server first (systemctl stop k3s; RKE2:
    /// systemctl stop rke2-server, then rke2-killall.sh); etcdguard refuses (exit 11) while
    /// <data-dir>/server/db/etcd is locked or port 2379 answers. It does what `k3s server
    /// --cluster-reset --cluster-reset-restore-path=FILE` does: moves server/db/etcd to
    /// server/db/etcd-old-<unix time>, restores a one-member cluster with the member name of
    /// server/db/etcd/name (or --name) and peer URL https://<node IP>:2380 (--node-ip, else
    /// node-ip in /etc/rancher/<layout>/config.yaml, else the current member's); it refuses
    /// (exit 17) when that disagrees with the member the current data dir or the snapshot
    /// records; writes server/db/reset-flag (the next start then clears the reset, as after
    /// --cluster-reset). A backup that keeps the server token (`backup import --file
    /// …/server/token`) must match server/token and the config's token, else it refuses
    /// (exit 17); it is written to server/token when the node has none. Then start the
    /// server here, and on every other server move server/db aside and start it to rejoin.
    ///
    /// Examples:
    ///   etcdguard node restore /root/snapshot.db --dry-run
    ///   etcdguard node restore /root/snapshot.db --new-cluster
    ///   etcdguard node restore /root/snapshot.db --bump-revision 1000000000 --mark-compacted
    ///   etcdguard node restore --backup latest --repo s3://etcd-backups/prod --restore-pki
    ///   systemctl stop k3s && etcdguard node restore --layout k3s --backup latest --repo s3://etcd-backups/k3s
    ///   etcdguard node restore --layout rke2 /root/on-demand-cp-1-1764000000 --dry-run
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
    /// Make this node's etcd a member of a running cluster: the "grow back" step after
    /// `node restore --new-cluster`, and the on-node half of a member replacement.
    ///
    /// The order of a quorum-loss recovery:
    ///   1. `etcdguard node park` on every control-plane node (all old members down);
    ///   2. `etcdguard node restore SNAPSHOT --new-cluster` on one node;
    ///   3. `etcdguard node join --endpoints <that node's etcd client URL>` on each other
    ///      node, one node at a time.
    /// For a member replacement: `etcdguard cluster member remove ID` of the broken member,
    /// then this on the node that gets the new member.
    ///
    /// What it does, each step skipped when it is done already (so after a crash or a
    /// timeout, running it again goes on where it stopped):
    ///   1. park etcd and the API server on this node (as `node park`) and move the old data
    ///      dir aside to <data-dir>.etcdguard-<time> (kept, never deleted);
    ///   2. add this member (--name and peer URLs from the manifest, its variables filled in
    ///      as for `node restore`) as a learner through --endpoints; a member with these peer
    ///      URLs is reused (refused, exit 17, when it has started under another name). Where
    ///      the server refuses learners, it is added as a voting member, and etcdguard says so;
    ///   3. rewrite etcd's manifest atomically (the previous version kept in
    ///      <manifests-dir>/../etcdguard-manifest-copies/) with --initial-cluster-state=existing
    ///      and --initial-cluster listing every member (flags, or ETCD_INITIAL_CLUSTER(_STATE)
    ///      env values); an initial cluster the pod computes when it starts (OpenShift) is left
    ///      to it. A form it cannot rewrite is refused before anything changes;
    ///   4. unpark: the kubelet starts etcd, which fetches the data from the leader;
    ///   5. wait until the learner's applied index has caught up with the leader's, then
    ///      promote it;
    ///   6. wait until every member is healthy (`cluster health --cluster`), then until this
    ///      node's API server is ready.
    /// An unreachable cluster, or a refused add (quorum, a name in use), changes nothing.
    /// --etcd-manifest names etcd's manifest when it is neither etcd.yaml nor etcd-pod.yaml;
    /// join reads no connection values from it (it runs the member being joined).
    ///
    /// Examples:
    ///   etcdguard node join --endpoints https://10.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt \
    ///     --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key --dry-run
    #[command(verbatim_doc_comment)]
    Join(NodeJoinArgs),
    /// Print what a recovery needs to know about this node; change nothing.
    ///
    /// etcdguard's version, the host's clock (the stamp `node rollback --since` takes), etcd's
    /// manifest (live or parked) with the member's name, data dir, peer and client URLs and
    /// TLS files, the free space on the data dir's file system, whether etcd answers and
    /// whether a linearizable read commits through it (the cluster has quorum); with
    /// --snapshot, that file checked (sha256 trailer and structure). `cluster recover` runs it
    /// on every host over SSH before it changes anything.
    ///
    /// Examples:
    ///   etcdguard node preflight
    ///   etcdguard node preflight --snapshot /var/tmp/snapshot.db -w json
    #[command(verbatim_doc_comment)]
    Preflight(NodePreflightArgs),
    /// Undo what `node restore` and `node join` did on this node since a stamp.
    ///
    /// Parks the node (as `node park`), then puts back the data dir moved aside at or after
    /// --since (<data-dir>.etcdguard-<stamp>; the current one is kept as
    /// <data-dir>.etcdguard-rolledback-<now>) and etcd's manifest as it was before `node join`
    /// rewrote it (etcdguard-manifest-copies/). With --unpark the manifests then go back and
    /// it waits until etcd's port is open (not for the API server: without quorum it never
    /// becomes ready). Running it again finds nothing more to undo. `cluster recover` runs it
    /// on every host it touched when a step fails, with the stamp `node preflight` printed.
    ///
    /// Examples:
    ///   etcdguard node rollback --since 20261206T001500Z --dry-run
    ///   etcdguard node rollback --since 20261206T001500Z --unpark
    #[command(verbatim_doc_comment)]
    Rollback(NodeRollbackArgs),
}

/// Where etcd runs on the node (`node restore --layout`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeLayout {
    /// A static pod: kubeadm, OpenShift, GKE on-prem and the like (etcd's manifest).
    StaticPod,
    /// k3s with embedded etcd.
    K3s,
    /// RKE2.
    Rke2,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NodeFormat {
    Table,
    Json,
}

#[derive(Args)]
pub struct NodePreflightArgs {
    /// The kubelet's static pod manifests dir (its staticPodPath).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// etcd's manifest, when it is neither etcd.yaml nor etcd-pod.yaml.
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// Also check this snapshot file here (sha256 trailer, structure) and report its size.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = NodeFormat::Table)]
    pub write_out: NodeFormat,
    #[command(flatten)]
    pub node: NodeFactArgs,
}

#[derive(Args)]
pub struct NodeRollbackArgs {
    /// Undo what was moved aside or rewritten at or after this stamp (UTC, this host's clock,
    /// as `node preflight` prints it: 20261206T001500Z).
    #[arg(long, value_name = "STAMP")]
    pub since: String,
    /// Put the manifests back afterwards and wait for etcd's port (the node ran before).
    #[arg(long)]
    pub unpark: bool,
    /// Its dry-run flag and `-w json` are those of `node park`.
    #[command(flatten)]
    pub park: NodeParkArgs,
}

/// This node as the kubelet knows it, for manifest values from `valueFrom.fieldRef`.
#[derive(Args)]
pub struct NodeFactArgs {
    /// This node's name, for `fieldRef: spec.nodeName` in etcd's manifest [default: the
    /// host name, in lower case].
    #[arg(long, value_name = "NAME", value_parser = crate::args::non_empty)]
    pub node_name: Option<String>,
    /// This node's IP, for `fieldRef: status.hostIP` (and `status.podIP` of a host-network
    /// pod) [default: the first non-loopback address the host name resolves to].
    #[arg(long, value_name = "IP", value_parser = clap::value_parser!(std::net::IpAddr))]
    pub node_ip: Option<std::net::IpAddr>,
}

impl NodeFactArgs {
    fn facts(&self) -> etcdguard_node::NodeFacts {
        etcdguard_node::NodeFacts {
            node_name: self.node_name.clone(),
            node_ip: self.node_ip.map(|ip| ip.to_string()),
        }
    }
}

#[derive(Args)]
pub struct NodeJoinArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The kubelet's static pod manifests dir (its staticPodPath).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// This member's name [default: the manifest's --name].
    #[arg(long)]
    pub name: Option<String>,
    /// This member's peer URLs [default: the manifest's --initial-advertise-peer-urls].
    #[arg(long, value_name = "URLS")]
    pub peer_urls: Option<String>,
    /// Bound for each wait (pods down, etcd up, learner caught up, cluster healthy).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Print the plan and stop (the cluster is asked for its member list; nothing changes).
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub node: NodeFactArgs,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
}

#[derive(Args)]
pub struct NodeParkArgs {
    /// The kubelet's static pod manifests dir (its staticPodPath).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// etcd's manifest, when it is neither etcd.yaml nor etcd-pod.yaml; outside
    /// --manifests-dir, a copy to read the member's values from.
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// How long to wait for the pods to stop (park) or serve (unpark).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print what would be moved and waited for, and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub node: NodeFactArgs,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
}

/// The new cluster's flags are `snapshot restore`'s, with the manifest's values as defaults.
#[derive(Args)]
#[command(
    mut_arg("name", |a| a.help("Member name [default: --name of etcd.yaml]")),
    mut_arg("initial_cluster", |a| {
        a.help("Every member of the restored cluster [default: --initial-cluster of etcd.yaml]")
    }),
    mut_arg("initial_cluster_token", |a| {
        a.help("Token of the restored cluster [default: etcd.yaml's, else etcd-cluster]")
    }),
    mut_arg("initial_advertise_peer_urls", |a| a.help("This member's peer URLs [default: etcd.yaml's]")),
)]
pub struct NodeRestoreArgs {
    /// Snapshot file (from `snapshot save`, `backup restore --to-file` or etcdctl); or give
    /// --backup instead.
    #[arg(required_unless_present_any = ["backup", "at"], conflicts_with = "backup")]
    pub snapshot: Option<PathBuf>,
    /// Restore this backup (id, unique prefix or `latest`) of --repo: its snapshot is
    /// downloaded and checked before anything on the node is touched.
    #[arg(long, value_name = "ID", requires = "repo")]
    pub backup: Option<String>,
    /// Point in time: restore the database as it was at this revision, or at the last revision
    /// seen at or before this time (RFC 3339), built from --repo's newest full backup before it
    /// and the changes `backup follow` stored (find the moment with `backup log`).
    #[arg(long, value_name = "REV|TIME", value_parser = crate::cmd::capture::parse_at, requires = "repo", conflicts_with_all = ["backup", "snapshot"])]
    pub at: Option<etcdguard_workflow::capture::At>,
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
    #[command(flatten)]
    pub parallel: crate::args::ParallelArg,
    /// Kubernetes configuration directory; the PKI is its pki/.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes")]
    pub kubernetes_dir: PathBuf,
    /// The kubelet's static pod manifests dir [default: --etcd-manifest's dir, else
    /// <kubernetes-dir>/manifests].
    #[arg(long, value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// etcd's static pod manifest, any name [default: etcd.yaml, else etcd-pod.yaml, in
    /// --manifests-dir]; outside an explicit --manifests-dir, a copy to read the member's
    /// values from.
    #[arg(long, value_name = "FILE")]
    pub etcd_manifest: Option<PathBuf>,
    /// Print the plan (what would be moved, waited for and restored, and where) and stop.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub cluster: crate::cmd::restore::ClusterArgs,
    /// Do not compare the sha256 trailer (for a copied member/snap/db).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// How long to wait for the pods to stop, and for the restored etcd to serve.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Restore a one-member cluster (this member only, a fresh cluster token), refusing
    /// while another member of the old cluster answers; then `node join` the other nodes.
    #[arg(long, conflicts_with = "initial_cluster")]
    pub new_cluster: bool,
    /// The EncryptionConfiguration to check the snapshot's encryption key names against
    /// [default: the file the kube-apiserver manifest names with --encryption-provider-config,
    /// or in its --openshift-config file].
    #[arg(long, value_name = "FILE", value_parser = crate::args::path)]
    pub encryption_config: Option<PathBuf>,
    /// Restore although a safety check refuses: an old member still answers (--new-cluster),
    /// or a key name the snapshot's encrypted values use is missing from, or does not decrypt
    /// with, the EncryptionConfiguration (those objects stay unreadable until it has the key).
    #[arg(long)]
    pub force: bool,
    /// Where etcd runs: static-pod (from etcd's manifest), or k3s / rke2 (embedded etcd
    /// under --rancher-data-dir; see above).
    #[arg(long, value_enum, default_value_t = NodeLayout::StaticPod)]
    pub layout: NodeLayout,
    /// k3s/RKE2: the server's --data-dir [default: /var/lib/rancher/k3s or /var/lib/rancher/rke2].
    #[arg(long, value_name = "DIR")]
    pub rancher_data_dir: Option<PathBuf>,
    /// k3s/RKE2: the server's config file, read for node-ip and token [default:
    /// /etc/rancher/k3s/config.yaml or /etc/rancher/rke2/config.yaml].
    #[arg(long, value_name = "FILE")]
    pub rancher_config: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeFactArgs,
    #[command(flatten)]
    pub out: crate::args::WriteOut,
}

impl NodeRestoreArgs {
    fn layout(&self) -> etcdguard_workflow::node::Layout {
        use etcdguard_node::rancher::Distro;
        let rancher = |distro| etcdguard_workflow::node::Layout::Rancher {
            distro,
            data_dir: self.rancher_data_dir.clone(),
            config: self.rancher_config.clone(),
        };
        match self.layout {
            NodeLayout::StaticPod => etcdguard_workflow::node::Layout::StaticPod,
            NodeLayout::K3s => rancher(Distro::K3s),
            NodeLayout::Rke2 => rancher(Distro::Rke2),
        }
    }
}

pub fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Restore(a) => node_restore(a),
        NodeCommand::Park(a) => node_park(a),
        NodeCommand::Unpark(a) => node_unpark(a),
        NodeCommand::Join(a) => node_join(a),
        NodeCommand::Preflight(a) => node_preflight(a),
        NodeCommand::Rollback(a) => node_rollback(a),
    }
}

/// `--version`'s first two lines, which every host of a recovery must share.
pub fn version() -> String {
    format!("{} ({})", env!("CARGO_PKG_VERSION"), env!("ETCDGUARD_COMMIT"))
}

fn node_preflight(args: NodePreflightArgs) -> Result<()> {
    let park = NodeParkArgs {
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.etcd_manifest.clone(),
        timeout: Duration::from_secs(60),
        dry_run: true,
        node: NodeFactArgs { node_name: args.node.node_name.clone(), node_ip: args.node.node_ip },
        out: crate::args::WriteOut { write_out: crate::args::TextJson::Text },
    };
    let facts =
        etcdguard_workflow::recover::host_facts(&etcdguard_workflow::recover::FactsOptions {
            version: version(),
            park: park_request(&park),
            snapshot: args.snapshot.clone(),
            skip_hash_check: false,
        })?;
    match args.write_out {
        NodeFormat::Json => crate::args::print_json(&facts)?,
        NodeFormat::Table => {
            let opt =
                |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
            let mut rows = vec![
                vec!["etcdguard".into(), facts.version.clone()],
                vec!["clock (stamp)".into(), facts.now.clone()],
                vec![
                    "etcd manifest".into(),
                    format!(
                        "{}{}",
                        facts.etcd_manifest.display(),
                        if facts.parked { " (parked)" } else { "" }
                    ),
                ],
                vec!["member".into(), facts.member.clone()],
                vec![
                    "data dir".into(),
                    format!(
                        "{}{}",
                        facts.data_dir.display(),
                        if facts.data_dir_exists { "" } else { " (missing)" }
                    ),
                ],
                vec![
                    "free space".into(),
                    etcdguard_storage::status::humanize_bytes(facts.free_bytes),
                ],
                vec!["peer URLs".into(), facts.peer_urls.clone().unwrap_or_else(|| "-".into())],
                vec!["client URLs".into(), facts.client_urls.join(",")],
                vec![
                    "TLS (ca, cert, key)".into(),
                    format!("{}, {}, {}", opt(&facts.cacert), opt(&facts.cert), opt(&facts.key)),
                ],
                vec!["API server".into(), facts.apiserver.clone().unwrap_or_else(|| "none".into())],
                vec!["etcd answers".into(), facts.etcd_answers.to_string()],
                vec![
                    "etcd healthy (quorum)".into(),
                    match &facts.health_error {
                        None => "true".into(),
                        Some(e) => format!("false ({e})"),
                    },
                ],
            ];
            if let Some(s) = &facts.snapshot {
                rows.push(vec![
                    "snapshot".into(),
                    format!(
                        "{}: {}, revision {}, {} keys, verified; {} free there",
                        s.path.display(),
                        etcdguard_storage::status::humanize_bytes(s.bytes),
                        s.revision,
                        s.total_keys,
                        etcdguard_storage::status::humanize_bytes(s.free_bytes)
                    ),
                ]);
            }
            print!("{}", crate::cmd::table(&rows));
        }
    }
    Ok(())
}

fn node_rollback(args: NodeRollbackArgs) -> Result<()> {
    use etcdguard_node::rollback::{Rollback, RollbackRequest};
    let req = RollbackRequest {
        park: park_request(&args.park),
        since: args.since.clone(),
        unpark: args.unpark,
    };
    let rb = Rollback::build(&req).map_err(node_error)?;
    let steps = rb.steps();
    let json = args.park.out.json();
    if !json {
        print_steps(&steps, args.park.dry_run);
    }
    if args.park.dry_run {
        if json {
            crate::args::print_json(&serde_json::json!({ "dryRun": true, "steps": steps }))?;
        }
        return Ok(());
    }
    let timings = rb.execute(&req, &mut |line| eprintln!("{line}")).map_err(node_error)?;
    if json {
        crate::args::print_json(&serde_json::json!({
            "dryRun": false, "steps": steps,
            "seconds": timings.steps.last().map(|s| s.1.as_secs_f64()),
        }))?;
    } else {
        println!(
            "Rolled back: {}.",
            if rb.unpark {
                "the node runs its original etcd again"
            } else {
                "the node is parked with its original data dir and manifest"
            }
        );
        print_timings(&timings);
    }
    Ok(())
}

fn node_restore(args: NodeRestoreArgs) -> Result<()> {
    let repo = args.repo.clone().map(|url| etcdguard_workflow::RepoSpec {
        transfer: args.parallel.transfer(None),
        ..RepoArg { repo: url, passphrase_file: args.passphrase_file.clone(), kms_key: None }.spec()
    });
    let opts = NodeRestoreOptions {
        snapshot: args.snapshot.clone(),
        at: args.at,
        backup: args.backup.clone(),
        repo,
        restore_pki: args.restore_pki,
        kubernetes_dir: args.kubernetes_dir.clone(),
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.etcd_manifest.clone(),
        dry_run: args.dry_run,
        name: args.cluster.name.clone(),
        initial_cluster: args.cluster.initial_cluster.clone(),
        initial_cluster_token: args.cluster.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.cluster.initial_advertise_peer_urls.clone(),
        bump_revision: args.cluster.bump_revision,
        mark_compacted: args.cluster.mark_compacted,
        skip_hash_check: args.skip_hash_check,
        wait_timeout: args.wait_timeout,
        new_cluster: args.new_cluster,
        force: args.force,
        encryption_config: args.encryption_config.clone(),
        node: args.node.facts(),
        layout: args.layout(),
    };
    if args.out.json() {
        crate::output::text_to_stderr();
    }
    let mut on = |event: NodeEvent<'_>| match event {
        NodeEvent::Note(line) => eprintln!("{line}"),
        NodeEvent::Planned { snapshot, status, plan, members, probes } => {
            println!(
                "snapshot {}: revision {}, {} keys; restoring member {:?} ({} member{} in the new cluster)",
                snapshot.display(),
                status.revision,
                status.total_key,
                plan.restore.name,
                members,
                if members == 1 { "" } else { "s" }
            );
            if args.new_cluster {
                println!(
                    "Old members probed (none may answer before a new one-member cluster starts):"
                );
                if probes.is_empty() {
                    println!("  (the manifest and the snapshot name no other member)");
                }
                for p in probes {
                    let t = &p.target;
                    println!(
                        "  {} {} URL {} (from the {}): {}",
                        t.member,
                        t.kind,
                        t.url,
                        t.source,
                        if p.answered { "ANSWERS" } else { "no answer" }
                    );
                }
            }
            print_steps(&plan.steps(), false);
        }
        NodeEvent::RancherPlanned { snapshot, status, plan } => {
            println!(
                "snapshot {}: revision {}, {} keys; restoring {} member {:?} (one-member cluster)",
                snapshot.display(),
                status.revision,
                status.total_key,
                plan.distro.name(),
                plan.name
            );
            print_steps(&plan.steps(), false);
        }
    };
    // k3s/RKE2 have no static pod: their own flow (the layout picks it).
    let outcome = match &opts.layout {
        Layout::StaticPod => restore_node(&opts, &mut on)?,
        Layout::Rancher { .. } => restore_rancher(&opts, &mut on)?,
    };
    if args.out.json() {
        let value = match &outcome {
            NodeOutcome::DryRun => json!({ "dryRun": true }),
            NodeOutcome::Restored(plan, timings) => json!({
                "dryRun": false, "endpoints": plan.etcd.client_addrs,
                "oldDataDir": plan.old_data_dir, "timings": steps_json(&timings.steps),
            }),
            NodeOutcome::RancherRestored(plan) => json!({
                "dryRun": false, "layout": plan.distro.name(), "name": plan.name,
                "peerUrl": plan.restore.initial_advertise_peer_urls,
                "dataDir": plan.etcd_dir, "oldDataDir": plan.old_dir,
                "resetFlag": plan.reset_flag,
            }),
        };
        return node_json(&args.out, value);
    }
    match outcome {
        NodeOutcome::DryRun => println!("Dry run: nothing was changed."),
        NodeOutcome::Restored(plan, timings) => {
            println!(
                "etcd is serving again on {} with the restored data.",
                plan.etcd.client_addrs.join(", ")
            );
            print_timings(&timings);
            if let Some(old) = &plan.old_data_dir {
                println!(
                    "The old data dir is kept in {}; remove it once the cluster is healthy.",
                    old.display()
                );
            }
            println!("Next: `etcdguard cluster health` (with the healthcheck client certificate), then `kubectl get nodes`.");
        }
        NodeOutcome::RancherRestored(plan) => {
            let d = plan.distro.name();
            println!(
                "Restored: {} holds member {:?} ({}) of a one-member cluster; {} is written.",
                plan.etcd_dir.display(),
                plan.name,
                plan.restore.initial_advertise_peer_urls,
                plan.reset_flag.display()
            );
            if let Some(old) = &plan.old_dir {
                println!(
                    "The old data dir is kept in {}; remove it once the cluster is healthy.",
                    old.display()
                );
            }
            println!(
                "Next: `{}` here; on every other {d} server stop it, move <data-dir>/server/db aside and start it again to rejoin.",
                plan.distro.start_hint()
            );
        }
    }
    Ok(())
}

fn node_join(args: NodeJoinArgs) -> Result<()> {
    let opts = JoinOptions {
        // The manifest runs the member being joined: not where the cluster is reached.
        connect: etcdguard_client::ConnectFlags { etcd_manifest: None, ..args.conn.flags() },
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.conn.etcd_manifest.clone(),
        name: args.name.clone(),
        peer_urls: args.peer_urls.clone(),
        dry_run: args.dry_run,
        wait_timeout: args.wait_timeout,
        node: args.node.facts(),
    };
    if args.out.json() {
        crate::output::text_to_stderr();
    }
    let outcome = join_node(&opts, &mut |event| match event {
        JoinEvent::Note(line) => eprintln!("{line}"),
        JoinEvent::Planned { name, peer_urls, steps } => {
            println!("joining member {name:?} ({}) to the cluster", peer_urls.join(","));
            print_steps(steps, false);
        }
    })?;
    if args.out.json() {
        let value = match &outcome {
            JoinOutcome::DryRun => json!({ "dryRun": true }),
            JoinOutcome::Joined(j) => json!({
                "dryRun": false, "name": j.name, "memberID": format!("{:x}", j.id),
                "learnerPromoted": !j.without_learner, "members": j.members,
                "endpoints": j.endpoints, "oldDataDir": j.old_data_dir,
                "timings": steps_json(&j.steps),
            }),
        };
        return node_json(&args.out, value);
    }
    match outcome {
        JoinOutcome::DryRun => println!("Dry run: nothing was changed."),
        JoinOutcome::Joined(j) => {
            let how = if j.without_learner {
                "a voting member (the server refused learners)"
            } else {
                "a learner, then promoted"
            };
            println!(
                "Joined: {} (member {:x}) is {how}; {} healthy members: {}.",
                j.name,
                j.id,
                j.members,
                j.endpoints.join(", ")
            );
            let steps: Vec<String> = j
                .steps
                .iter()
                .map(|(what, d)| format!("{what} at {:.1} s", d.as_secs_f64()))
                .collect();
            println!("Times: {}.", steps.join(", "));
            if let Some(old) = &j.old_data_dir {
                println!(
                    "The old data dir is kept in {}; remove it once the cluster is healthy.",
                    old.display()
                );
            }
        }
    }
    Ok(())
}

fn print_timings(t: &Timings) {
    let steps: Vec<String> =
        t.steps.iter().map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64())).collect();
    println!("Times: {}.", steps.join(", "));
    if let Some(how) = &t.apiserver {
        println!("API server: {how}.");
    }
}

fn node_park(args: NodeParkArgs) -> Result<()> {
    if args.out.json() {
        crate::output::text_to_stderr();
    }
    let park = Park::build(&park_request(&args)).map_err(node_error)?;
    print_steps(&park.steps(), args.dry_run);
    if args.dry_run {
        return node_json(&args.out, json!({ "dryRun": true, "steps": park.steps() }));
    }
    let timings = park.execute(&mut |line| eprintln!("{line}")).map_err(node_error)?;
    if args.out.json() {
        return node_json(
            &args.out,
            json!({
                "dryRun": false, "steps": park.steps(), "parkedDir": park.parked_dir,
                "timings": steps_json(&timings.steps),
            }),
        );
    }
    println!(
        "Parked: etcd and the API server are down on this node; their manifests are in {}.",
        park.parked_dir.display()
    );
    print_timings(&timings);
    println!("Next: park the other control-plane nodes, then `etcdguard node restore SNAPSHOT` here (or `etcdguard node unpark` to bring this node back as it was).");
    Ok(())
}

fn node_unpark(args: NodeParkArgs) -> Result<()> {
    if args.out.json() {
        crate::output::text_to_stderr();
    }
    let Some(unpark) = Unpark::build(&park_request(&args)).map_err(node_error)? else {
        println!("Nothing is parked: etcd's manifest is in {}.", args.manifests_dir.display());
        return node_json(&args.out, json!({ "dryRun": args.dry_run, "parked": false }));
    };
    print_steps(&unpark.steps(), args.dry_run);
    if args.dry_run {
        return node_json(&args.out, json!({ "dryRun": true, "steps": unpark.steps() }));
    }
    let timings = unpark.execute(&mut |line| eprintln!("{line}")).map_err(node_error)?;
    if args.out.json() {
        return node_json(
            &args.out,
            json!({
                "dryRun": false, "steps": unpark.steps(), "endpoints": unpark.etcd.client_addrs,
                "timings": steps_json(&timings.steps),
            }),
        );
    }
    println!("Unparked: etcd serves on {} again.", unpark.etcd.client_addrs.join(", "));
    print_timings(&timings);
    Ok(())
}

/// `-w json`: the command's result as one object on stdout (its text went to stderr).
fn node_json(out: &crate::args::WriteOut, value: serde_json::Value) -> Result<()> {
    if out.json() {
        crate::args::print_json(&value)?;
    }
    Ok(())
}

/// Each step's name and seconds since the command started.
fn steps_json(steps: &[(String, std::time::Duration)]) -> serde_json::Value {
    steps.iter().map(|(n, d)| json!({ "step": n, "seconds": d.as_secs_f64() })).collect()
}

fn park_request(args: &NodeParkArgs) -> ParkRequest {
    ParkRequest {
        manifests_dir: args.manifests_dir.clone(),
        etcd_manifest: args.etcd_manifest.clone(),
        stamp: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        wait_timeout: args.timeout,
        node: args.node.facts(),
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
