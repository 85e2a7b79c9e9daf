//! `etcdguard cluster finish`: the Kubernetes side of a recovery, after etcd is restored.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use etcdguard_finish::{ErrorKind, Options, Report};

use crate::cmd::table;
use crate::exit::{Code, Failure};

#[derive(Clone, Copy, ValueEnum)]
pub enum FinishFormat {
    Table,
    Json,
}

#[derive(Args)]
pub struct FinishArgs {
    /// Admin kubeconfig [default: $KUBECONFIG, else the node's own: /etc/kubernetes/admin.conf
    /// (kubeadm), OpenShift's localhost-recovery.kubeconfig, /etc/rancher/k3s/k3s.yaml,
    /// /etc/rancher/rke2/rke2.yaml]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do it: approve the CSRs judged safe, remove the gone hosts named by --remove-nodes,
    /// force the OpenShift rollouts, and wait for them and for every Node to be Ready.
    /// Without it nothing is changed.
    #[arg(long)]
    pub apply: bool,
    /// The control-plane hosts of the restored cluster (Node names or addresses; the etcd
    /// members). Control-plane Nodes not among them are gone hosts; a bootstrap client CSR
    /// for one of them may be approved before its Node registers.
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub hosts: Vec<String>,
    /// Gone hosts whose Node, node Lease and apiserver endpoints to remove with --apply;
    /// each must be a gone host, named one by one (the confirmation).
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub remove_nodes: Vec<String>,
    /// Bound of each wait (API server ready, rollouts, Nodes Ready), e.g. 90s, 15m
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = etcdguard_repo::retention::parse_duration)]
    pub wait: Duration,
    /// A Node is Ready when its Ready condition is True and its kubelet's last heartbeat (its
    /// node Lease's renewal) is at most this old: right after a restore every Node carries the
    /// backup's conditions, Ready or not today. 0s trusts the condition alone.
    #[arg(long, value_name = "DURATION", default_value = "40s", value_parser = etcdguard_repo::retention::parse_duration)]
    pub heartbeat_grace: Duration,
    /// HyperShift, with the management cluster's kubeconfig: the HostedCluster (NAMESPACE/NAME)
    /// whose managed etcd restores from --restore-snapshot-url-file. With --apply its
    /// reconciliation is paused (spec.pausedUntil), spec.etcd.managed.storage.restoreSnapshotURL
    /// written, and reconciliation resumed; a failed step puts both fields back. Only this
    /// step runs.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub hosted_cluster: Option<String>,
    /// A file holding the snapshot's URL (`etcdguard backup url … > FILE`); a presigned URL is
    /// a credential, so it is read from a file, never taken from the command line
    #[arg(long, value_name = "FILE", requires = "hosted_cluster")]
    pub restore_snapshot_url_file: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = FinishFormat::Table)]
    pub write_out: FinishFormat,
    /// The snapshot file the restore used (or, with --repo, its backup id or `latest`): at the
    /// end a fresh snapshot of the live etcd (--endpoints …) is compared with it and what
    /// changed since is counted per resource (added, deleted, modified keys).
    #[arg(long, value_name = "SNAPSHOT|ID", help_heading = "What changed since the backup")]
    pub compare_with: Option<String>,
    /// The repository holding the backup --compare-with names.
    #[arg(
        long,
        value_name = "URL",
        requires = "compare_with",
        help_heading = "What changed since the backup"
    )]
    pub repo: Option<String>,
    /// The repository's passphrase file (or ETCDGUARD_PASSPHRASE / _FILE).
    #[arg(
        long,
        env = "ETCDGUARD_PASSPHRASE_FILE",
        value_name = "FILE",
        requires = "repo",
        help_heading = "What changed since the backup"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Where the fresh snapshot is kept while it is compared (a private directory, removed
    /// afterwards) [default: the system's temp dir]
    #[arg(
        long,
        value_name = "DIR",
        requires = "compare_with",
        help_heading = "What changed since the backup"
    )]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Connection to etcd (for --compare-with; as etcdctl)")]
    pub conn: crate::args::ConnArgs,
}

pub fn run(args: FinishArgs) -> Result<()> {
    let opts = Options {
        kubeconfig: args.kubeconfig.clone(),
        kubeconfig_env: std::env::var("KUBECONFIG").ok(),
        root: PathBuf::from("/"),
        apply: args.apply,
        hosts: args.hosts.clone(),
        remove_nodes: args.remove_nodes.clone(),
        wait: args.wait,
        heartbeat_grace: args.heartbeat_grace,
        poll: Duration::from_secs(1).min(args.wait / 4).max(Duration::from_millis(100)),
        hosted_cluster: args.hosted_cluster.clone(),
        restore_snapshot_url: match &args.restore_snapshot_url_file {
            None => None,
            Some(p) => Some(read_url(p)?),
        },
        failpoint: std::env::var("ETCDGUARD_FAILPOINT").ok(),
    };
    let mut report =
        etcdguard_finish::finish(&opts, &mut |line| eprintln!("{line}")).map_err(|e| {
            let code = match e.kind {
                ErrorKind::Usage => Code::Usage,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::Unreachable => Code::Unreachable,
                ErrorKind::TlsOrAuth => Code::TlsOrAuth,
                ErrorKind::Refused => Code::Refused,
                ErrorKind::Failure => Code::Failure,
            };
            Failure::new(code, e.message)
        })?;
    let changes = match &args.compare_with {
        None => None,
        Some(source) => {
            let repo = args.repo.as_ref().map(|url| {
                crate::args::RepoArg {
                    repo: url.clone(),
                    passphrase_file: args.passphrase_file.clone(),
                    kms_key: None,
                }
                .spec()
            });
            let started = std::time::Instant::now();
            let scratch = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
            let origin = match &repo {
                Some(repo) => etcdguard_workflow::inspect::Origin::Backup {
                    repo,
                    id: source,
                    scratch: Some(&scratch),
                },
                None => etcdguard_workflow::inspect::Origin::File(std::path::Path::new(source)),
            };
            let changes = etcdguard_workflow::inspect::live_changes_since(
                &origin,
                &args.conn.flags(),
                &scratch,
                &mut |line| eprintln!("{line}"),
            )?;
            report.phases.push(etcdguard_finish::Phase {
                name: "compare_with_backup".into(),
                seconds: started.elapsed().as_secs_f64(),
            });
            Some(changes)
        }
    };
    match args.write_out {
        FinishFormat::Json => {
            let mut value = serde_json::to_value(&report)?;
            if let Some(c) = &changes {
                value["changesSinceBackup"] = serde_json::to_value(c)?;
            }
            crate::args::print_json(&value)?
        }
        FinishFormat::Table => {
            print!("{}", render(&report));
            if let Some(c) = &changes {
                print!("{}", render_changes(c));
            }
            print!("{}", render_phases(&report.phases));
        }
    }
    if args.apply && !report.pending.is_empty() {
        return Err(Failure::new(
            Code::Failure,
            format!("not finished: {}", report.pending.join("; ")),
        )
        .into());
    }
    Ok(())
}

/// The URL in `path` (`backup url`'s output: one line).
fn read_url(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(Code::NotFound, format!("--restore-snapshot-url-file {}: {e}", path.display()))
    })?;
    let url = text.trim().to_string();
    if url.lines().count() != 1 || !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Failure::new(
            Code::Usage,
            format!(
                "--restore-snapshot-url-file {}: expected one http(s) URL (the output of `etcdguard backup url`)",
                path.display()
            ),
        ));
    }
    Ok(url)
}

/// The phases and their wall times, with the total.
fn render_phases(phases: &[etcdguard_finish::Phase]) -> String {
    let mut rows = vec![vec!["PHASE".to_string(), "SECONDS".to_string()]];
    for p in phases {
        rows.push(vec![p.name.clone(), format!("{:.1}", p.seconds)]);
    }
    rows.push(vec![
        "total".into(),
        format!("{:.1}", phases.iter().map(|p| p.seconds).sum::<f64>()),
    ]);
    format!("\nPhases:\n{}", indent(&table(&rows)))
}

fn render_changes(changes: &[etcdguard_workflow::inspect::ResourceChanges]) -> String {
    let mut out = String::from("\nChanged in etcd since the backup:\n");
    if changes.is_empty() {
        out.push_str("  nothing: every key under /registry/ is as the backup has it\n");
        return out;
    }
    let mut rows = vec![["RESOURCE", "ADDED", "DELETED", "MODIFIED"].map(String::from).to_vec()];
    for c in changes {
        rows.push(vec![
            c.resource.clone(),
            c.changes.added.to_string(),
            c.changes.deleted.to_string(),
            c.changes.modified.to_string(),
        ]);
    }
    for line in table(&rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let verb = |done: bool, would: &str, did: &str| if done { did } else { would }.to_string();
    out.push_str(&format!("API server {} (kubeconfig {})\n", r.server, r.kubeconfig));
    if let Some(h) = &r.hosted_cluster {
        out.push_str(&format!(
            "\nHostedCluster {}: restoreSnapshotURL {} (before: pausedUntil {}, {})\n",
            h.name,
            if h.done { "written, reconciliation resumed" } else { "not written" },
            h.paused_until_before.as_deref().unwrap_or("unset"),
            if h.had_restore_snapshot_url { "a URL was set" } else { "no URL was set" },
        ));
        for p in &r.pending {
            out.push_str(&format!("  - {p}\n"));
        }
        return out;
    }
    out.push_str("\nPending kubelet CSRs:\n");
    if r.csrs.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut rows = vec![vec!["NAME", "SIGNER", "REQUESTOR", "NODE", "ACTION", "WHY"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for c in &r.csrs {
            let action = match c.decision.as_str() {
                "approve" => verb(c.approved, "approve", "approved"),
                _ => "skip".into(),
            };
            rows.push(vec![
                c.name.clone(),
                c.signer.clone(),
                c.requestor.clone(),
                c.node.clone().unwrap_or_else(|| "-".into()),
                action,
                c.reason.clone(),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    out.push_str("\nGone control-plane hosts (Nodes not in --hosts):\n");
    if r.gone_nodes.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut rows = vec![vec!["NODE", "ADDRESSES", "LEASE", "ENDPOINTS", "ACTION"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for g in &r.gone_nodes {
            rows.push(vec![
                g.name.clone(),
                g.addresses.join(","),
                if g.lease { "yes" } else { "no" }.into(),
                if g.endpoints.is_empty() { "-".into() } else { g.endpoints.join(", ") },
                match g.decision.as_str() {
                    "remove" => verb(g.removed, "remove", "removed"),
                    _ => "keep (not in --remove-nodes)".into(),
                },
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    if let Some(rollouts) = &r.openshift {
        out.push_str("\nOpenShift static-pod operators:\n");
        let mut rows = vec![vec!["OPERATOR", "LATEST REVISION", "NODES AT IT", "DONE"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()];
        for o in rollouts {
            let at = o
                .node_revisions
                .iter()
                .filter(|n| n.revision == o.latest_available_revision)
                .count();
            rows.push(vec![
                o.resource.clone(),
                o.latest_available_revision.to_string(),
                format!("{at}/{}", o.node_revisions.len()),
                if o.done { "yes" } else { "no" }.into(),
            ]);
        }
        out.push_str(&indent(&table(&rows)));
    }
    out.push_str("\nNodes:\n");
    let mut rows = vec![vec!["NODE".to_string(), "READY".to_string(), "HEARTBEAT".to_string()]];
    for n in &r.nodes {
        let ready = match (n.ready, n.ready_condition) {
            (true, _) => "yes",
            (false, true) => "no (stale: the stored condition says Ready)",
            (false, false) => "no",
        };
        let heartbeat = match n.heartbeat_age_seconds {
            Some(age) => format!("{age:.0} s ago"),
            None => "-".into(),
        };
        rows.push(vec![n.name.clone(), ready.into(), heartbeat]);
    }
    out.push_str(&indent(&table(&rows)));
    if r.pending.is_empty() {
        out.push_str("\nFinished: nothing left to do.\n");
    } else {
        out.push_str(&format!(
            "\n{}:\n",
            if r.applied { "Still to do" } else { "To do (dry run: nothing was changed)" }
        ));
        for p in &r.pending {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
